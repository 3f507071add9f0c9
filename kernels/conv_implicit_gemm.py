"""Implicit-GEMM convolution: the matrix products of im2col + GEMM, column matrix never built.

Per group ``gi`` (``Cg = C/groups``, ``Kg = K/groups``), with the implicit matrix

    B[(c, r, s), (n, p, q)] = x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]    (0 outside x)

the three passes are

    forward          Y_g[Kg, N*P*Q]  = W_g[Kg, Cg*R*S] @ B
    backward data    dX_g[Cg, N*H*W] = A[Cg, Kg*R*S] @ B'[Kg*R*S, N*H*W],  A[c, (k, r, s)] = w[gi*Kg + k, c, r, s],
                     B'[(k, r, s), (n, h, w)] = dy[n, gi*Kg + k, (h + ph - r*dh)/sh, (w + pw - s*dw)/sw]
                     when both divisions are exact and land inside dy, else 0
    backward filter  dW_g[Kg, Cg*R*S] = dY_g[Kg, N*P*Q] @ B^T

B and B' exist only as index arithmetic in the loads of a reduction tile. Every output element
has one owner that sums its reduction in a fixed order: no atomics, deterministic results.

CUDA: one block per BM x BN tile of a product, groups on grid z. Reduction tiles BK deep are
staged in shared memory (zero-filled where the implicit matrix is 0), and each thread keeps a
4 x 4 micro-tile of the product in scalar registers. The decoded reduction indices of a tile
sit in shared memory, so the gathers do no integer division. Backward filter, whose reduction
N*P*Q is long and whose product is small, cuts the reduction into fixed slices (grid z = group
x slice) and adds the slices' partial products in order with a second kernel.

CPU: a work item owns a tile of the product. It gathers its part of B (B' for backward data)
chunk by chunk of the reduction into a small thread-local buffer, from a zero-padded copy of
the source through a table of offsets, and multiplies each chunk by a 4 x 3 register-blocked
kernel whose inner loop is a vectorised dot product. Forward and backward data gather with the
reduction index contiguous; backward filter, whose reduction runs over pixels, gathers rows of
pixels. Backward data runs once per stride phase (h mod sh, w mod sw): in a phase only the taps
whose divisions are exact contribute, so no zero of B' is gathered or multiplied. Backward filter
splits the batch into fixed slices only when its product has too few tiles to share out.
"""
import math

import numba
import numpy as np
from numba import cuda, float32, int32, int64, njit, prange, uint64

from .conv_algorithm import ConvAlgorithm, by_rank, check_conv_arrays
from .cuda_util import SIMULATOR, array1, array2, array4, blocks, is_device_array, per_dtype

# The 4 x 4 micro-tile is written out as scalars; the block tile and reduction depth are tunable.
TM = TN = 4
BM = BN = 8 if SIMULATOR else 64
BK = 16
THREADS_M = BM // TM
THREADS_N = BN // TN
NTHREADS = THREADS_M * THREADS_N
A_COLS = BM + 1     # a_s is stored with kk fastest; the pad column keeps those stores off one bank
SUM_THREADS = 32 if SIMULATOR else 256
CUDA_MIN_BLOCKS = 4 if SIMULATOR else 264    # backward filter slices its reduction below this

CPU_CHUNK = 640                # reduction indices per gathered chunk; long dot products, weights in L2
CPU_TILE_ELEMS = 27648         # tile x chunk: a gathered chunk of ~108 KiB float32 stays in L2
CPU_TILE_MIN, CPU_TILE_MAX = 12, 240
CPU_FILTER_COLS = 48           # backward filter: taps (c, r, s) per tile, a multiple of 3
CPU_FILTER_SEG = 512           # backward filter: pixels per reduction segment
CPU_MIN_ITEMS = 8              # backward filter splits the batch until it has this many work items
CPU_RUNS_PER_THREAD = 4


def _gemm_jit_options(dt):
    """Launch bounds for the GEMM kernels: two resident float32 blocks per SM cap ptxas at 128
    registers, which it otherwise overshoots by keeping recomputable addresses live; float64
    needs more than 128 on sm_80 without spilling, so it gets one. The simulator has no such option."""
    return {} if SIMULATOR else {"launch_bounds": (NTHREADS, 2 if dt == float32 else 1)}


@cuda.jit(device=True, inline="always")
def _mma_tile_cuda(a_s, b_s, ty, tx, acc):
    """acc[4*i + j] += sum_kk a_s[kk, ty + i*THREADS_M] * b_s[kk, tx + j*THREADS_N]."""
    (c00, c01, c02, c03, c10, c11, c12, c13,
     c20, c21, c22, c23, c30, c31, c32, c33) = acc
    for kk in range(BK):
        a0 = a_s[kk, ty]
        a1 = a_s[kk, ty + THREADS_M]
        a2 = a_s[kk, ty + 2 * THREADS_M]
        a3 = a_s[kk, ty + 3 * THREADS_M]
        b0 = b_s[kk, tx]
        b1 = b_s[kk, tx + THREADS_N]
        b2 = b_s[kk, tx + 2 * THREADS_N]
        b3 = b_s[kk, tx + 3 * THREADS_N]
        c00 += a0 * b0
        c01 += a0 * b1
        c02 += a0 * b2
        c03 += a0 * b3
        c10 += a1 * b0
        c11 += a1 * b1
        c12 += a1 * b2
        c13 += a1 * b3
        c20 += a2 * b0
        c21 += a2 * b1
        c22 += a2 * b2
        c23 += a2 * b3
        c30 += a3 * b0
        c31 += a3 * b1
        c32 += a3 * b2
        c33 += a3 * b3
    return (c00, c01, c02, c03, c10, c11, c12, c13,
            c20, c21, c22, c23, c30, c31, c32, c33)


@cuda.jit(device=True, inline="always")
def _store_pixels_cuda(out, row, col, ncols, plane, v0, v1, v2, v3):
    """out[n, row, i] = v_j for the columns col + j*THREADS_N = n*plane + i below ncols."""
    if col < ncols:
        out[col // plane, row, col % plane] = v0
    col += THREADS_N
    if col < ncols:
        out[col // plane, row, col % plane] = v1
    col += THREADS_N
    if col < ncols:
        out[col // plane, row, col % plane] = v2
    col += THREADS_N
    if col < ncols:
        out[col // plane, row, col % plane] = v3


@cuda.jit(device=True, inline="always")
def _store_micro_tile_cuda(out, m, rows, row0, col, ncols, plane, acc):
    """Rows m + i*THREADS_M (below ``rows``, written at row0 + that) of a thread's micro-tile."""
    if m < rows:
        _store_pixels_cuda(out, row0 + m, col, ncols, plane, acc[0], acc[1], acc[2], acc[3])
    m += THREADS_M
    if m < rows:
        _store_pixels_cuda(out, row0 + m, col, ncols, plane, acc[4], acc[5], acc[6], acc[7])
    m += THREADS_M
    if m < rows:
        _store_pixels_cuda(out, row0 + m, col, ncols, plane, acc[8], acc[9], acc[10], acc[11])
    m += THREADS_M
    if m < rows:
        _store_pixels_cuda(out, row0 + m, col, ncols, plane, acc[12], acc[13], acc[14], acc[15])


def _fwd_signature(dt):
    return (array4(dt), array2(dt), dt[:, :, ::1]) + (int64,) * 10


# one thread per 4x4 micro-tile of Y_g: channels m0 + ty + i*THREADS_M, pixels col0 + tx + j*THREADS_N
@per_dtype(_fwd_signature)
def conv2d_fwd_implicit_gemm_cuda(dt):
    @cuda.jit(**_gemm_jit_options(dt))
    def kernel(x, w2, y3, S, Q, sh, sw, ph, pw, dh, dw, groups, RS):
        a_s = cuda.shared.array((BK, A_COLS), dt)
        b_s = cuda.shared.array((BK, BN), dt)
        n_s = cuda.shared.array(BN, int32)
        ih0_s = cuda.shared.array(BN, int32)
        iw0_s = cuda.shared.array(BN, int32)
        chan_s = cuda.shared.array(BK, int32)
        roff_s = cuda.shared.array(BK, int32)
        soff_s = cuda.shared.array(BK, int32)
        N, C, H, W = x.shape
        K, PQ = y3.shape[1], y3.shape[2]
        Cg = C // groups
        Kg = K // groups
        L = Cg * RS
        npq = N * PQ
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_N + tx
        gi = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        for j in range(tid, BN, NTHREADS):
            pq = (col0 + j) % PQ
            n_s[j] = (col0 + j) // PQ
            ih0_s[j] = (pq // Q) * sh - ph
            iw0_s[j] = (pq % Q) * sw - pw
        z = dt(0)
        acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
        for k0 in range(0, L, BK):
            for kk in range(tid, BK, NTHREADS):
                c = (k0 + kk) // RS
                rs = k0 + kk - c * RS
                chan_s[kk] = gi * Cg + c
                roff_s[kk] = (rs // S) * dh
                soff_s[kk] = (rs % S) * dw
            cuda.syncthreads()
            for it in range(BM * BK // NTHREADS):
                i = (tid + it * NTHREADS) // BK
                kk = (tid + it * NTHREADS) % BK
                v = z
                if m0 + i < Kg and k0 + kk < L:
                    v = w2[gi * Kg + m0 + i, k0 + kk]
                a_s[kk, i] = v
            for e in range(tid, BK * BN, NTHREADS):
                kk = e // BN
                j = e % BN
                ih = ih0_s[j] + roff_s[kk]
                iw = iw0_s[j] + soff_s[kk]
                v = z
                if col0 + j < npq and k0 + kk < L and ih >= 0 and ih < H and iw >= 0 and iw < W:
                    v = x[n_s[j], chan_s[kk], ih, iw]
                b_s[kk, j] = v
            cuda.syncthreads()
            acc = _mma_tile_cuda(a_s, b_s, ty, tx, acc)
            cuda.syncthreads()
        _store_micro_tile_cuda(y3, m0 + ty, Kg, gi * Kg, col0 + tx, npq, PQ, acc)
    return kernel


@njit(fastmath=True, cache=True)
def _tile_gemm_cpu(a, a_row0, a_col0, m, bt, nt, length, c):
    """c[i, j] += sum_l a[a_row0 + i, a_col0 + l] * bt[j, l] for i < m, j < nt, in 4 x 3 blocks.

    ``c`` is padded to a multiple of 4 rows and 3 columns; past ``m`` and ``nt`` the blocks
    repeat the last valid row of ``a`` or ``bt``, so the padding gets finite values and the loads
    never leave the inputs. The l loop runs 12 independent dot products: each vector of ``a``
    is used 3 times and each vector of ``bt`` 4 times from registers. The column of ``a`` is
    unsigned so that Numba adds no negative-index wraparound, which would stop vectorisation.
    """
    zero = c.dtype.type(0)
    for i0 in range(0, m, 4):
        a0r = a[a_row0 + i0]
        a1r = a[a_row0 + min(i0 + 1, m - 1)]
        a2r = a[a_row0 + min(i0 + 2, m - 1)]
        a3r = a[a_row0 + min(i0 + 3, m - 1)]
        for j0 in range(0, nt, 3):
            b0r = bt[j0]
            b1r = bt[min(j0 + 1, nt - 1)]
            b2r = bt[min(j0 + 2, nt - 1)]
            c00 = zero
            c01 = zero
            c02 = zero
            c10 = zero
            c11 = zero
            c12 = zero
            c20 = zero
            c21 = zero
            c22 = zero
            c30 = zero
            c31 = zero
            c32 = zero
            for l in range(length):
                la = uint64(a_col0 + l)
                b0 = b0r[l]
                b1 = b1r[l]
                b2 = b2r[l]
                a0 = a0r[la]
                c00 += a0 * b0
                c01 += a0 * b1
                c02 += a0 * b2
                a1 = a1r[la]
                c10 += a1 * b0
                c11 += a1 * b1
                c12 += a1 * b2
                a2 = a2r[la]
                c20 += a2 * b0
                c21 += a2 * b1
                c22 += a2 * b2
                a3 = a3r[la]
                c30 += a3 * b0
                c31 += a3 * b1
                c32 += a3 * b2
            c[i0, j0] += c00
            c[i0, j0 + 1] += c01
            c[i0, j0 + 2] += c02
            c[i0 + 1, j0] += c10
            c[i0 + 1, j0 + 1] += c11
            c[i0 + 1, j0 + 2] += c12
            c[i0 + 2, j0] += c20
            c[i0 + 2, j0 + 1] += c21
            c[i0 + 2, j0 + 2] += c22
            c[i0 + 3, j0] += c30
            c[i0 + 3, j0 + 1] += c31
            c[i0 + 3, j0 + 2] += c32


@njit(fastmath=True, cache=True)
def _gather_patches_cpu(src, base, t0, nt, width, row_step, col_step, off, l0, length, bt):
    """bt[t, l] = src[base + i*row_step + j*col_step + off[l0 + l]], (i, j) = divmod(t0 + t, width).

    Unsigned indices (all are >= 0) spare the inner loop Numba's negative-index wraparound.
    """
    for t in range(nt):
        i = (t0 + t) // width
        org = base + i * row_step + (t0 + t - i * width) * col_step
        row = bt[t]
        for l in range(length):
            row[uint64(l)] = src[uint64(org + off[uint64(l0 + l)])]


@njit(parallel=True, fastmath=True, cache=True)
def conv2d_fwd_implicit_gemm_cpu(xf, off, w2, y3, C, Hp, Wp, Q, sh, sw, groups, tile, chunk, runs):
    """Y_g = W_g @ B, one work item per (group, image, tile of ``tile`` output pixels).

    ``xf`` is the zero-padded input (N, C, Hp, Wp) flattened, so that
    ``B[l, (n, p, q)] = xf[((n*C + gi*Cg)*Hp + p*sh)*Wp + q*sw + off[l]]`` with
    ``off[(c*R + r)*S + s] = (c*Hp + r*dh)*Wp + s*dw``; ``w2`` is w as (K, Cg*R*S), ``y3`` is
    y as (N, K, P*Q). An item gathers and multiplies ``chunk`` reduction indices at a time.
    Items are split into ``runs`` contiguous runs, one buffer pair each.
    """
    N, K, PQ = y3.shape
    Cg = C // groups
    Kg = K // groups
    L = off.shape[0]
    tiles = (PQ + tile - 1) // tile
    items = groups * N * tiles
    for run in prange(runs):
        bt = np.empty((tile, chunk), xf.dtype)
        ct = np.empty(((Kg + 3) // 4 * 4, (tile + 2) // 3 * 3), xf.dtype)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (N * tiles)
            n = it // tiles - gi * N
            t0 = (it % tiles) * tile
            nt = min(tile, PQ - t0)
            ct[:, :] = 0
            for l0 in range(0, L, chunk):
                ln = min(chunk, L - l0)
                _gather_patches_cpu(xf, (n * C + gi * Cg) * Hp * Wp, t0, nt, Q, sh * Wp, sw, off, l0, ln, bt)
                _tile_gemm_cpu(w2, gi * Kg, l0, Kg, bt, nt, ln, ct)
            for k in range(Kg):
                y3[n, gi * Kg + k, t0:t0 + nt] = ct[k, :nt]


def _bwd_data_signature(dt):
    return (array4(dt), array2(dt), dt[:, :, ::1]) + (int64,) * 10


# one thread per 4x4 micro-tile of dX_g: channels m0 + ty + i*THREADS_M, pixels col0 + tx + j*THREADS_N
@per_dtype(_bwd_data_signature)
def conv2d_bwd_data_implicit_gemm_cuda(dt):
    @cuda.jit(**_gemm_jit_options(dt))
    def kernel(dy, w2, dx3, S, Wd, sh, sw, ph, pw, dh, dw, groups, RS):
        a_s = cuda.shared.array((BK, A_COLS), dt)
        b_s = cuda.shared.array((BK, BN), dt)
        n_s = cuda.shared.array(BN, int32)
        hq_s = cuda.shared.array(BN, int32)
        hm_s = cuda.shared.array(BN, int32)
        wq_s = cuda.shared.array(BN, int32)
        wm_s = cuda.shared.array(BN, int32)
        k_s = cuda.shared.array(BK, int32)
        rs_s = cuda.shared.array(BK, int32)
        rq_s = cuda.shared.array(BK, int32)
        rm_s = cuda.shared.array(BK, int32)
        sq_s = cuda.shared.array(BK, int32)
        sm_s = cuda.shared.array(BK, int32)
        N, K, P, Q = dy.shape
        C, HW = dx3.shape[1], dx3.shape[2]
        Cg = C // groups
        Kg = K // groups
        L = Kg * RS
        nhw = N * HW
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_N + tx
        gi = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        # (h + ph - r*dh)/sh is exact iff r*dh and h + ph agree mod sh, and is then the
        # difference of their quotients: the gather needs no division
        for j in range(tid, BN, NTHREADS):
            hw = (col0 + j) % HW
            th = hw // Wd + ph
            tw = hw % Wd + pw
            n_s[j] = (col0 + j) // HW
            hq_s[j] = th // sh
            hm_s[j] = th % sh
            wq_s[j] = tw // sw
            wm_s[j] = tw % sw
        z = dt(0)
        acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
        for k0 in range(0, L, BK):
            for kk in range(tid, BK, NTHREADS):
                k = (k0 + kk) // RS
                rs = k0 + kk - k * RS
                k_s[kk] = k
                rs_s[kk] = rs
                rq_s[kk] = (rs // S) * dh // sh
                rm_s[kk] = (rs // S) * dh % sh
                sq_s[kk] = (rs % S) * dw // sw
                sm_s[kk] = (rs % S) * dw % sw
            cuda.syncthreads()
            for it in range(BM * BK // NTHREADS):
                i = (tid + it * NTHREADS) // BK
                kk = (tid + it * NTHREADS) % BK
                v = z
                if m0 + i < Cg and k0 + kk < L:
                    v = w2[gi * Kg + k_s[kk], (m0 + i) * RS + rs_s[kk]]
                a_s[kk, i] = v
            for e in range(tid, BK * BN, NTHREADS):
                kk = e // BN
                j = e % BN
                p = hq_s[j] - rq_s[kk]
                q = wq_s[j] - sq_s[kk]
                v = z
                if (col0 + j < nhw and k0 + kk < L and hm_s[j] == rm_s[kk] and wm_s[j] == sm_s[kk]
                        and p >= 0 and p < P and q >= 0 and q < Q):
                    v = dy[n_s[j], gi * Kg + k_s[kk], p, q]
                b_s[kk, j] = v
            cuda.syncthreads()
            acc = _mma_tile_cuda(a_s, b_s, ty, tx, acc)
            cuda.syncthreads()
        _store_micro_tile_cuda(dx3, m0 + ty, Cg, gi * Cg, col0 + tx, nhw, HW, acc)
    return kernel


@njit(parallel=True, fastmath=True, cache=True)
def conv2d_bwd_data_implicit_gemm_cpu(dyf, off, lens, wpk, phases, dx, K, Pp, Qp, sh, sw, groups,
                                      tile, chunk, runs):
    """dX_g = A @ B', one work item per (group, image, stride phase, tile of ``tile`` pixels).

    Phase ``f`` covers the pixels h = phases[f, 0] + i*sh, w = phases[f, 1] + j*sw with
    i < phases[f, 2], j < phases[f, 3]. Its ``lens[f]`` reduction indices are the (k, r, s) whose
    divisions are exact there: ``B'[l, (n, h, w)] = dyf[((n*K + gi*Kg)*Pp + i)*Qp + j + off[f, l]]``
    in the zero-padded dy (N, K, Pp, Qp) flattened, and ``wpk[f, gi*Cg + c, l]`` the matching
    weights. A phase without taps gets dx = 0. Reduction chunks, tiles and runs as in the forward.
    """
    N, C = dx.shape[0], dx.shape[1]
    Cg = C // groups
    Kg = K // groups
    nph = lens.shape[0]
    tiles = 1
    for f in range(nph):
        tiles = max(tiles, (phases[f, 2] * phases[f, 3] + tile - 1) // tile)
    items = groups * N * nph * tiles
    for run in prange(runs):
        bt = np.empty((tile, chunk), dyf.dtype)
        ct = np.empty(((Cg + 3) // 4 * 4, (tile + 2) // 3 * 3), dyf.dtype)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (N * nph * tiles)
            n = it // (nph * tiles) - gi * N
            f = it // tiles % nph
            t0 = (it % tiles) * tile
            h0, w0, nw = phases[f, 0], phases[f, 1], phases[f, 3]
            nt = min(tile, phases[f, 2] * nw - t0)
            if nt <= 0:
                continue
            ct[:, :] = 0
            for l0 in range(0, lens[f], chunk):
                ln = min(chunk, lens[f] - l0)
                _gather_patches_cpu(dyf, (n * K + gi * Kg) * Pp * Qp, t0, nt, nw, Qp, 1, off[f], l0, ln, bt)
                _tile_gemm_cpu(wpk[f], gi * Cg, l0, Cg, bt, nt, ln, ct)
            for c in range(Cg):
                plane = dx[n, gi * Cg + c]
                for t in range(nt):
                    i = (t0 + t) // nw
                    plane[h0 + i * sh, w0 + (t0 + t - i * nw) * sw] = ct[c, t]


def _bwd_filter_signature(dt):
    return (dt[:, :, ::1], array4(dt), dt[:, :, ::1]) + (int64,) * 11


# one thread per 4x4 micro-tile of one reduction slice of dW_g: channels m0 + ty + i*THREADS_M,
# taps (c, r, s) col0 + tx + j*THREADS_N; grid z = slice * groups + group
@per_dtype(_bwd_filter_signature)
def conv2d_bwd_filter_implicit_gemm_cuda(dt):
    @cuda.jit(**_gemm_jit_options(dt))
    def kernel(dy3, x, ws, R, S, Q, sh, sw, ph, pw, dh, dw, groups, slice_len):
        a_s = cuda.shared.array((BK, A_COLS), dt)
        b_s = cuda.shared.array((BK, BN), dt)
        chan_s = cuda.shared.array(BN, int32)
        roff_s = cuda.shared.array(BN, int32)
        soff_s = cuda.shared.array(BN, int32)
        n_s = cuda.shared.array(BK, int32)
        pq_s = cuda.shared.array(BK, int32)
        ih0_s = cuda.shared.array(BK, int32)
        iw0_s = cuda.shared.array(BK, int32)
        N, K, PQ = dy3.shape
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        L = Cg * RS
        gi = cuda.blockIdx.z % groups
        sl = cuda.blockIdx.z // groups
        red0 = sl * slice_len
        red1 = min(N * PQ, red0 + slice_len)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_N + tx
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        for j in range(tid, BN, NTHREADS):
            c = (col0 + j) // RS
            rs = (col0 + j) % RS
            chan_s[j] = gi * Cg + c
            roff_s[j] = (rs // S) * dh
            soff_s[j] = (rs % S) * dw
        z = dt(0)
        acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
        for k0 in range(red0, red1, BK):
            for kk in range(tid, BK, NTHREADS):
                n = (k0 + kk) // PQ
                pq = k0 + kk - n * PQ
                n_s[kk] = n
                pq_s[kk] = pq
                ih0_s[kk] = (pq // Q) * sh - ph
                iw0_s[kk] = (pq % Q) * sw - pw
            cuda.syncthreads()
            for it in range(BM * BK // NTHREADS):
                i = (tid + it * NTHREADS) // BK
                kk = (tid + it * NTHREADS) % BK
                v = z
                if m0 + i < Kg and k0 + kk < red1:
                    v = dy3[n_s[kk], gi * Kg + m0 + i, pq_s[kk]]
                a_s[kk, i] = v
            for e in range(tid, BK * BN, NTHREADS):
                kk = e // BN
                j = e % BN
                ih = ih0_s[kk] + roff_s[j]
                iw = iw0_s[kk] + soff_s[j]
                v = z
                if col0 + j < L and k0 + kk < red1 and ih >= 0 and ih < H and iw >= 0 and iw < W:
                    v = x[n_s[kk], chan_s[j], ih, iw]
                b_s[kk, j] = v
            cuda.syncthreads()
            acc = _mma_tile_cuda(a_s, b_s, ty, tx, acc)
            cuda.syncthreads()
        # plane sl of ws (slices, K, L) holds columns [sl*L, (sl+1)*L) of ws viewed as (K, slices*L)
        _store_micro_tile_cuda(ws, m0 + ty, Kg, gi * Kg, sl * L + col0 + tx, (sl + 1) * L, L, acc)
    return kernel


@njit(parallel=True, fastmath=True, cache=True)
def conv2d_bwd_filter_implicit_gemm_cpu(xf, off, pix, dy3, ws, C, Hp, Wp, groups, cols, seg, runs):
    """dW_g = dY_g @ B^T, one work item per (group, block of ``cols`` taps, batch slice).

    ``B[l, (n, pq)] = xf[(n*C + gi*Cg)*Hp*Wp + pix[pq] + off[l]]`` in the zero-padded input
    flattened (``pix[p*Q + q] = p*sh*Wp + q*sw``, ``off`` as in the forward kernel). Slice ``sl``
    of ``ws.shape[0]`` sums images [sl*N/slices, (sl+1)*N/slices), segment by segment of ``seg``
    pixels in order, into ``ws[sl]`` (K, Cg*R*S). Items are split into ``runs`` contiguous runs.
    """
    N, K, PQ = dy3.shape
    slices = ws.shape[0]
    Cg = C // groups
    Kg = K // groups
    L = off.shape[0]
    cblocks = (L + cols - 1) // cols
    items = groups * cblocks * slices
    for run in prange(runs):
        bt = np.empty((cols, seg), xf.dtype)
        ct = np.empty(((Kg + 3) // 4 * 4, (cols + 2) // 3 * 3), xf.dtype)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (cblocks * slices)
            l0 = (it // slices % cblocks) * cols
            sl = it % slices
            nc = min(cols, L - l0)
            ct[:, :] = 0
            for n in range(sl * N // slices, (sl + 1) * N // slices):
                base = (n * C + gi * Cg) * Hp * Wp
                for s0 in range(0, PQ, seg):
                    ns = min(seg, PQ - s0)
                    for j in range(nc):
                        org = base + off[l0 + j]
                        row = bt[j]
                        for u in range(ns):
                            row[uint64(u)] = xf[uint64(org + pix[uint64(s0 + u)])]
                    _tile_gemm_cpu(dy3[n], gi * Kg, s0, Kg, bt, nc, ns, ct)
            for k in range(Kg):
                ws[sl, gi * Kg + k, l0:l0 + nc] = ct[k, :nc]


def _sum_slices_signature(dt):
    return (array2(dt), array1(dt))


# one thread per output element e, grid-stride
@per_dtype(_sum_slices_signature)
def sum_slices_cuda(dt):
    @cuda.jit
    def kernel(ws, out):
        for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            acc = dt(0)
            for sl in range(ws.shape[0]):
                acc += ws[sl, e]
            out[e] = acc
    return kernel


@njit(parallel=True, cache=True)
def sum_slices_cpu(ws, out):
    """out[e] = sum over sl of ws[sl, e], slices added in order."""
    for e in prange(out.shape[0]):
        acc = ws[0, e]
        for sl in range(1, ws.shape[0]):
            acc += ws[sl, e]
        out[e] = acc


def _padded_source(x, g):
    """x zero-padded (top/left by pad_h/pad_w) and cut to the (Hp, Wp) window every read falls in."""
    Hp = (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1
    Wp = (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1
    if g.pad_h == 0 and g.pad_w == 0 and Hp <= g.H and Wp <= g.W:
        return x, g.H, g.W
    xp = np.zeros((g.N, g.C, Hp, Wp), x.dtype)
    h = max(0, min(g.H, Hp - g.pad_h))
    w = max(0, min(g.W, Wp - g.pad_w))
    xp[:, :, g.pad_h:g.pad_h + h, g.pad_w:g.pad_w + w] = x[:, :, :h, :w]
    return xp, Hp, Wp


def _patch_offsets(Cg, Hp, Wp, g):
    """off[(c*R + r)*S + s] = (c*Hp + r*dh)*Wp + s*dw: where tap (c, r, s) sits from a window's origin."""
    c = np.arange(Cg)[:, None, None]
    r = np.arange(g.R)[None, :, None]
    s = np.arange(g.S)[None, None, :]
    return ((c * Hp + r * g.dil_h) * Wp + s * g.dil_w).reshape(-1).astype(np.int64)


def _runs(items):
    return max(1, min(items, CPU_RUNS_PER_THREAD * numba.get_num_threads()))


def _even_split(length, most):
    """Piece size that cuts ``length`` into pieces as even as possible, at most ``most`` long,
    rounded up to a multiple of 8 (a float32 vector) so that the dot products have no tail."""
    length = max(1, length)
    piece = -(-length // -(-length // most))
    return min(most, -(-piece // 8) * 8)


def _cpu_tiling(length):
    """(pixels per tile, reduction indices per chunk); the tile is a multiple of 3 (the kernel's
    column block) with tile x chunk near CPU_TILE_ELEMS."""
    chunk = _even_split(length, CPU_CHUNK)
    return min(CPU_TILE_MAX, max(CPU_TILE_MIN, CPU_TILE_ELEMS // chunk // 3 * 3)), chunk


def _stride_phases(n_in, n_out, k, stride, pad, dil):
    """Split one axis of the data gradient by phase a = position mod stride.

    Input position a + i*stride receives, from tap t, the output i + (a + pad - t*dil)/stride
    when that division is exact. Returns ([(a, count, taps, offsets)], before, length): the
    taps (a range: exact divisions recur every stride/gcd(stride, dil) taps) and their output
    offsets per phase, and the zero padding of the output axis (``before`` in front,
    ``length`` in all) that keeps every offset read in range.
    """
    step = stride // math.gcd(stride, dil)
    phases = []
    lo, hi = 0, n_out
    for a in range(stride):
        count = len(range(a, n_in, stride))
        first = next((t for t in range(min(step, k)) if (a + pad - t * dil) % stride == 0), k)
        taps = range(first, k, step)
        offsets = [(a + pad - t * dil) // stride for t in taps]
        if count > 0 and taps:
            lo = min(lo, min(offsets))
            hi = max(hi, count + max(offsets))
        phases.append((a, count, taps, offsets))
    return phases, -lo, hi - lo


def _fwd_cpu(x, w, y, g):
    xp, Hp, Wp = _padded_source(x, g)
    Cg, Kg = g.C // g.groups, g.K // g.groups
    off = _patch_offsets(Cg, Hp, Wp, g)
    tile, chunk = _cpu_tiling(off.shape[0])
    items = g.groups * g.N * -(-g.P * g.Q // tile)
    conv2d_fwd_implicit_gemm_cpu(xp.reshape(-1), off, w.reshape(g.K, -1), y.reshape(g.N, g.K, -1), g.C, Hp, Wp,
                                 g.Q, g.stride_h, g.stride_w, g.groups, tile, chunk, _runs(items))


def _bwd_data_cpu(dy, w, dx, g):
    Cg, Kg = g.C // g.groups, g.K // g.groups
    rows, ptop, Pp = _stride_phases(g.H, g.P, g.R, g.stride_h, g.pad_h, g.dil_h)
    cols, qleft, Qp = _stride_phases(g.W, g.Q, g.S, g.stride_w, g.pad_w, g.dil_w)
    dyp = np.zeros((g.N, g.K, Pp, Qp), dy.dtype)
    dyp[:, :, ptop:ptop + g.P, qleft:qleft + g.Q] = dy
    lmax = Kg * max(len(p[2]) for p in rows) * max(len(p[2]) for p in cols)
    nph = len(rows) * len(cols)
    off = np.zeros((nph, lmax), np.int64)
    lens = np.zeros(nph, np.int64)
    wpk = np.empty((nph, g.C, lmax), w.dtype)
    phases = np.zeros((nph, 4), np.int64)
    wg = w.reshape(g.groups, Kg, Cg, g.R, g.S)
    k = np.arange(Kg)[:, None, None]
    for f, ((h0, nh, rt, ro), (w0, nw, st, so)) in enumerate((a, b) for a in rows for b in cols):
        n = Kg * len(rt) * len(st)
        phases[f] = h0, w0, nh, nw
        lens[f] = n
        if n:
            oh = np.array(ro)[None, :, None] + ptop
            ow = np.array(so)[None, None, :] + qleft
            off[f, :n] = ((k * Pp + oh) * Qp + ow).reshape(-1)
            taps = wg[:, :, :, rt.start:rt.stop:rt.step, st.start:st.stop:st.step]
            packed = wpk[f, :, :n].reshape(g.groups, Cg, Kg, len(rt), len(st))
            packed[...] = taps.transpose(0, 2, 1, 3, 4)
    tile, chunk = _cpu_tiling(lmax)
    tiles = max(-(-p[1] * q[1] // tile) for p in rows for q in cols)
    items = g.groups * g.N * nph * max(1, tiles)
    conv2d_bwd_data_implicit_gemm_cpu(dyp.reshape(-1), off, lens, wpk, phases, dx, g.K, Pp, Qp,
                                      g.stride_h, g.stride_w, g.groups, tile, chunk, _runs(items))


def _bwd_filter_cpu(dy, x, dw, g):
    xp, Hp, Wp = _padded_source(x, g)
    Cg, Kg = g.C // g.groups, g.K // g.groups
    off = _patch_offsets(Cg, Hp, Wp, g)
    L = off.shape[0]
    pix = ((np.arange(g.P) * g.stride_h * Wp)[:, None] + np.arange(g.Q) * g.stride_w).reshape(-1)
    PQ = g.P * g.Q
    seg = _even_split(PQ, CPU_FILTER_SEG)
    cblocks = -(-L // CPU_FILTER_COLS)
    slices = min(g.N, -(-CPU_MIN_ITEMS // (g.groups * cblocks)))
    ws = dw.reshape(1, g.K, L) if slices == 1 else np.empty((slices, g.K, L), dw.dtype)
    items = g.groups * cblocks * slices
    conv2d_bwd_filter_implicit_gemm_cpu(xp.reshape(-1), off, pix.astype(np.int64), dy.reshape(g.N, g.K, PQ),
                                        ws, g.C, Hp, Wp, g.groups, CPU_FILTER_COLS, seg, _runs(items))
    if slices > 1:
        sum_slices_cpu(ws.reshape(slices, -1), dw.reshape(-1))


def _threads():
    return (THREADS_N, THREADS_M)


def _fwd_cuda(x, w, y, g):
    Kg = g.K // g.groups
    grid = (blocks(g.N * g.P * g.Q, BN), blocks(Kg, BM), g.groups)
    conv2d_fwd_implicit_gemm_cuda[x.dtype][grid, _threads()](
        x, w.reshape(g.K, -1), y.reshape(g.N, g.K, g.P * g.Q), g.S, g.Q, g.stride_h, g.stride_w,
        g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups, g.R * g.S)


def _bwd_data_cuda(dy, w, dx, g):
    Cg = g.C // g.groups
    grid = (blocks(g.N * g.H * g.W, BN), blocks(Cg, BM), g.groups)
    conv2d_bwd_data_implicit_gemm_cuda[dy.dtype][grid, _threads()](
        dy, w.reshape(g.K, -1), dx.reshape(g.N, g.C, g.H * g.W), g.S, g.W, g.stride_h, g.stride_w,
        g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups, g.R * g.S)


def _bwd_filter_cuda(dy, x, dw, g):
    Kg = g.K // g.groups
    L = (g.C // g.groups) * g.R * g.S
    red = g.N * g.P * g.Q
    tiles_mn = blocks(L, BN) * blocks(Kg, BM) * g.groups
    slices = min(blocks(CUDA_MIN_BLOCKS, tiles_mn), blocks(red, BK))
    slice_len = blocks(blocks(red, slices), BK) * BK
    slices = blocks(red, slice_len)
    ws = dw.reshape(1, g.K, L) if slices == 1 else cuda.device_array((slices, g.K, L), dw.dtype)
    grid = (blocks(L, BN), blocks(Kg, BM), g.groups * slices)
    conv2d_bwd_filter_implicit_gemm_cuda[dy.dtype][grid, _threads()](
        dy.reshape(g.N, g.K, g.P * g.Q), x, ws, g.R, g.S, g.Q, g.stride_h, g.stride_w,
        g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups, slice_len)
    if slices > 1:
        out = dw.reshape(g.K * L)
        sum_slices_cuda[dw.dtype][blocks(out.shape[0], SUM_THREADS), SUM_THREADS](ws.reshape(slices, -1), out)


def conv2d_fwd_implicit_gemm(x, w, y, g):
    """Forward conv by implicit GEMM, ``Y_g = W_g @ B`` per group; overwrites ``y`` (N, K, P, Q).

    ``y[n, k, p, q] = sum_{c, r, s} x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, c, r, s]``
    with ``gi = k // Kg``. NumPy arrays run on the CPU, CUDA device arrays on the GPU.
    """
    check_conv_arrays("implicit_gemm", g, "fwd", x, w, y)
    (_fwd_cuda if is_device_array(x) else _fwd_cpu)(x, w, y, g)


def conv2d_bwd_data_implicit_gemm(dy, w, dx, g):
    """Data gradient by implicit GEMM, ``dX_g = A @ B'`` per group; overwrites ``dx`` (N, C, H, W).

    ``dx[n, c, h, w] = sum over k in c's group and taps (r, s) with p = (h + ph - r*dh)/sh and
    q = (w + pw - s*dw)/sw exact and inside dy of dy[n, k, p, q] * w[k, c - gi*Cg, r, s]``.
    """
    check_conv_arrays("implicit_gemm", g, "bwd_data", dy, w, dx)
    (_bwd_data_cuda if is_device_array(dy) else _bwd_data_cpu)(dy, w, dx, g)


def conv2d_bwd_filter_implicit_gemm(dy, x, dw, g):
    """Filter gradient by implicit GEMM, ``dW_g = dY_g @ B^T`` per group; overwrites ``dw``.

    ``dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] * x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]``,
    the sum over (n, p, q) cut into fixed slices that are added in order.
    """
    check_conv_arrays("implicit_gemm", g, "bwd_filter", dy, x, dw)
    (_bwd_filter_cuda if is_device_array(dy) else _bwd_filter_cpu)(dy, x, dw, g)


# the 3-D kernels build on this file's helpers, so they are imported after them
from . import conv3d_implicit_gemm  # noqa: E402


_3D = conv3d_implicit_gemm
ALGORITHM = ConvAlgorithm("implicit_gemm", by_rank(conv2d_fwd_implicit_gemm, _3D.conv3d_fwd_implicit_gemm),
                          by_rank(conv2d_bwd_data_implicit_gemm, _3D.conv3d_bwd_data_implicit_gemm),
                          by_rank(conv2d_bwd_filter_implicit_gemm, _3D.conv3d_bwd_filter_implicit_gemm),
                          ranks=(2, 3), preference=lambda g, device, pass_: 2,
                          summary="GEMM tiles gathered straight from the input; no column matrix")
