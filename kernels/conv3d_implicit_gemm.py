"""Implicit-GEMM 3-D convolution (NCDHW, weight (K, C/groups, T, R, S)): the products of
conv_implicit_gemm.py with a three-axis gather, the column matrix never built.

Per group ``gi`` (``Cg = C/groups``, ``Kg = K/groups``, taps ``(t, r, s)``), with the implicit matrix

    B[(c, t, r, s), (n, o, p, q)] = x[n, gi*Cg + c, o*sd - pd + t*dd, p*sh - ph + r*dh, q*sw - pw + s*dw]
                                    (0 outside x)

the three passes are

    forward          Y_g[Kg, N*O*P*Q]  = W_g[Kg, Cg*T*R*S] @ B
    backward data    dX_g[Cg, N*D*H*W] = A[Cg, Kg*T*R*S] @ B',  A[c, (k, t, r, s)] = w[gi*Kg + k, c, t, r, s],
                     B'[(k, t, r, s), (n, d, h, w)] = dy[n, gi*Kg + k, (d + pd - t*dd)/sd, (h + ph - r*dh)/sh,
                     (w + pw - s*dw)/sw] when the three divisions are exact and land inside dy, else 0
    backward filter  dW_g[Kg, Cg*T*R*S] = dY_g[Kg, N*O*P*Q] @ B^T

Every output element has one owner that sums its reduction in a fixed order: no atomics,
deterministic results.

CUDA: the earlier 2-D kernels' tiling (``_mma_tile_cuda``; the 2-D kernels now use the tiled GEMM's
8 x 8 mainloop, which this file has not adopted yet): one block
per BM x BN tile of a product, groups on grid z, reduction tiles BK deep staged in shared memory
(zero where the implicit matrix is 0), a 4 x 4 micro-tile per thread in scalar registers. The
decoded indices of a tile's columns and reduction steps sit in shared int32 tables, so the
gathers do no integer division; backward data compares the remainders of ``d + pd`` and
``t*dd`` (and of the other two axes) by the stride, and takes the difference of the quotients
when they match. Backward filter cuts its long reduction N*O*P*Q into fixed slices (grid z =
group x slice), added in order by ``sum_slices_cuda``.

CPU: the 2-D file's products (forward; backward data once per stride phase d mod sd, h mod sh,
w mod sw, whose exact-division taps alone contribute; backward filter), gathered or turned round
as that file chooses, run on three-axis tables: a per-voxel window origin and a per-reduction-index offset in the
zero-padded source (``run_product``, ``run_filter_product``).
"""
import math

import numpy as np
from numba import cuda, float32, int32, int64, types

from .conv_algorithm import check_conv_arrays
from .conv_implicit_gemm import SUM_THREADS, _stride_phases, run_filter_product, run_product, sum_slices_cuda
from .cuda_util import (SIMULATOR, array2, blocks, device_empty, is_device_array, per_dtype, resident_blocks, stream,
                        wave_splits)

TRIPLE = types.UniTuple(int64, 3)

# The 4 x 4 micro-tile is written out as scalars; the block tile and reduction depth are tunable.
TM = TN = 4
BM = BN = 8 if SIMULATOR else 64
BK = 16
THREADS_M = BM // TM
THREADS_N = BN // TN
NTHREADS = THREADS_M * THREADS_N
A_COLS = BM + 1     # a_s is stored with kk fastest; the pad column keeps those stores off one bank


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


def array5(dt):
    return dt[:, :, :, :, ::1]


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def _fwd_signature(dt):
    return (array5(dt), array2(dt), dt[:, :, ::1]) + (TRIPLE,) * 5 + (int64,)


# one thread per 4x4 micro-tile of Y_g: channels m0 + ty + i*THREADS_M, pixels col0 + tx + j*THREADS_N
@per_dtype(_fwd_signature, threads=NTHREADS)
def conv3d_fwd_implicit_gemm_cuda(dt):
    @cuda.jit(**_gemm_jit_options(dt))
    def kernel(x, w2, y3, ksize, osize, stride, pad, dil, groups):
        a_s = cuda.shared.array((BK, A_COLS), dt)
        b_s = cuda.shared.array((BK, BN), dt)
        n_s = cuda.shared.array(BN, int32)
        id0_s = cuda.shared.array(BN, int32)
        ih0_s = cuda.shared.array(BN, int32)
        iw0_s = cuda.shared.array(BN, int32)
        chan_s = cuda.shared.array(BK, int32)
        toff_s = cuda.shared.array(BK, int32)
        roff_s = cuda.shared.array(BK, int32)
        soff_s = cuda.shared.array(BK, int32)
        T, R, S = ksize
        P, Q = osize[1], osize[2]
        sd, sh, sw = stride
        pd, ph, pw = pad
        dd, dh, dw = dil
        N, C, D, H, W = x.shape
        K, OPQ = y3.shape[1], y3.shape[2]
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        TRS = T * RS
        L = Cg * TRS
        PQ = P * Q
        ncols = N * OPQ
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_N + tx
        gi = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        for j in range(tid, BN, NTHREADS):
            opq = (col0 + j) % OPQ
            pq = opq % PQ
            n_s[j] = (col0 + j) // OPQ
            id0_s[j] = (opq // PQ) * sd - pd
            ih0_s[j] = (pq // Q) * sh - ph
            iw0_s[j] = (pq % Q) * sw - pw
        z = dt(0)
        acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
        for k0 in range(0, L, BK):
            for kk in range(tid, BK, NTHREADS):
                c = (k0 + kk) // TRS
                trs = k0 + kk - c * TRS
                t = trs // RS
                chan_s[kk] = gi * Cg + c
                toff_s[kk] = t * dd
                roff_s[kk] = (trs - t * RS) // S * dh
                soff_s[kk] = (trs % S) * dw
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
                idp = id0_s[j] + toff_s[kk]
                ih = ih0_s[j] + roff_s[kk]
                iw = iw0_s[j] + soff_s[kk]
                v = z
                if (col0 + j < ncols and k0 + kk < L and idp >= 0 and idp < D and ih >= 0 and ih < H
                        and iw >= 0 and iw < W):
                    v = x[n_s[j], chan_s[kk], idp, ih, iw]
                b_s[kk, j] = v
            cuda.syncthreads()
            acc = _mma_tile_cuda(a_s, b_s, ty, tx, acc)
            cuda.syncthreads()
        _store_micro_tile_cuda(y3, m0 + ty, Kg, gi * Kg, col0 + tx, ncols, OPQ, acc)
    return kernel


# ---------------------------------------------------------------------------------------------
# Backward data
# ---------------------------------------------------------------------------------------------

def _bwd_data_signature(dt):
    return (array5(dt), array2(dt), dt[:, :, ::1]) + (TRIPLE,) * 5 + (int64,)


# one thread per 4x4 micro-tile of dX_g: channels m0 + ty + i*THREADS_M, pixels col0 + tx + j*THREADS_N
@per_dtype(_bwd_data_signature, threads=NTHREADS)
def conv3d_bwd_data_implicit_gemm_cuda(dt):
    @cuda.jit(**_gemm_jit_options(dt))
    def kernel(dy, w2, dx3, ksize, isize, stride, pad, dil, groups):
        a_s = cuda.shared.array((BK, A_COLS), dt)
        b_s = cuda.shared.array((BK, BN), dt)
        n_s = cuda.shared.array(BN, int32)
        dq_s = cuda.shared.array(BN, int32)
        dm_s = cuda.shared.array(BN, int32)
        hq_s = cuda.shared.array(BN, int32)
        hm_s = cuda.shared.array(BN, int32)
        wq_s = cuda.shared.array(BN, int32)
        wm_s = cuda.shared.array(BN, int32)
        k_s = cuda.shared.array(BK, int32)
        trs_s = cuda.shared.array(BK, int32)
        tq_s = cuda.shared.array(BK, int32)
        tm_s = cuda.shared.array(BK, int32)
        rq_s = cuda.shared.array(BK, int32)
        rm_s = cuda.shared.array(BK, int32)
        sq_s = cuda.shared.array(BK, int32)
        sm_s = cuda.shared.array(BK, int32)
        T, R, S = ksize
        Hd, Wd = isize[1], isize[2]
        sd, sh, sw = stride
        pd, ph, pw = pad
        dd, dh, dw = dil
        N, K, O, P, Q = dy.shape
        C, DHW = dx3.shape[1], dx3.shape[2]
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        TRS = T * RS
        L = Kg * TRS
        HW = Hd * Wd
        ncols = N * DHW
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_N + tx
        gi = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        # (d + pd - t*dd)/sd is exact iff t*dd and d + pd agree mod sd, and is then the
        # difference of their quotients (likewise for h and w): the gather needs no division
        for j in range(tid, BN, NTHREADS):
            dhw = (col0 + j) % DHW
            hw = dhw % HW
            td = dhw // HW + pd
            th = hw // Wd + ph
            tw = hw % Wd + pw
            n_s[j] = (col0 + j) // DHW
            dq_s[j] = td // sd
            dm_s[j] = td % sd
            hq_s[j] = th // sh
            hm_s[j] = th % sh
            wq_s[j] = tw // sw
            wm_s[j] = tw % sw
        z = dt(0)
        acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
        for k0 in range(0, L, BK):
            for kk in range(tid, BK, NTHREADS):
                k = (k0 + kk) // TRS
                trs = k0 + kk - k * TRS
                t = trs // RS
                r = (trs - t * RS) // S
                k_s[kk] = k
                trs_s[kk] = trs
                tq_s[kk] = t * dd // sd
                tm_s[kk] = t * dd % sd
                rq_s[kk] = r * dh // sh
                rm_s[kk] = r * dh % sh
                sq_s[kk] = (trs % S) * dw // sw
                sm_s[kk] = (trs % S) * dw % sw
            cuda.syncthreads()
            for it in range(BM * BK // NTHREADS):
                i = (tid + it * NTHREADS) // BK
                kk = (tid + it * NTHREADS) % BK
                v = z
                if m0 + i < Cg and k0 + kk < L:
                    v = w2[gi * Kg + k_s[kk], (m0 + i) * TRS + trs_s[kk]]
                a_s[kk, i] = v
            for e in range(tid, BK * BN, NTHREADS):
                kk = e // BN
                j = e % BN
                o = dq_s[j] - tq_s[kk]
                p = hq_s[j] - rq_s[kk]
                q = wq_s[j] - sq_s[kk]
                v = z
                if (col0 + j < ncols and k0 + kk < L and dm_s[j] == tm_s[kk] and hm_s[j] == rm_s[kk]
                        and wm_s[j] == sm_s[kk] and o >= 0 and o < O and p >= 0 and p < P and q >= 0 and q < Q):
                    v = dy[n_s[j], gi * Kg + k_s[kk], o, p, q]
                b_s[kk, j] = v
            cuda.syncthreads()
            acc = _mma_tile_cuda(a_s, b_s, ty, tx, acc)
            cuda.syncthreads()
        _store_micro_tile_cuda(dx3, m0 + ty, Cg, gi * Cg, col0 + tx, ncols, DHW, acc)
    return kernel


# ---------------------------------------------------------------------------------------------
# Backward filter
# ---------------------------------------------------------------------------------------------

def _bwd_filter_signature(dt):
    return (dt[:, :, ::1], array5(dt), dt[:, :, ::1]) + (TRIPLE,) * 5 + (int64, int64)


# one thread per 4x4 micro-tile of one reduction slice of dW_g: channels m0 + ty + i*THREADS_M,
# taps (c, t, r, s) col0 + tx + j*THREADS_N; grid z = slice * groups + group
@per_dtype(_bwd_filter_signature, threads=NTHREADS)
def conv3d_bwd_filter_implicit_gemm_cuda(dt):
    @cuda.jit(**_gemm_jit_options(dt))
    def kernel(dy3, x, ws, ksize, osize, stride, pad, dil, groups, slice_len):
        a_s = cuda.shared.array((BK, A_COLS), dt)
        b_s = cuda.shared.array((BK, BN), dt)
        chan_s = cuda.shared.array(BN, int32)
        toff_s = cuda.shared.array(BN, int32)
        roff_s = cuda.shared.array(BN, int32)
        soff_s = cuda.shared.array(BN, int32)
        n_s = cuda.shared.array(BK, int32)
        opq_s = cuda.shared.array(BK, int32)
        id0_s = cuda.shared.array(BK, int32)
        ih0_s = cuda.shared.array(BK, int32)
        iw0_s = cuda.shared.array(BK, int32)
        T, R, S = ksize
        P, Q = osize[1], osize[2]
        sd, sh, sw = stride
        pd, ph, pw = pad
        dd, dh, dw = dil
        N, K, OPQ = dy3.shape
        C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        TRS = T * RS
        L = Cg * TRS
        PQ = P * Q
        gi = cuda.blockIdx.z % groups
        sl = cuda.blockIdx.z // groups
        red0 = sl * slice_len
        red1 = min(N * OPQ, red0 + slice_len)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_N + tx
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        for j in range(tid, BN, NTHREADS):
            c = (col0 + j) // TRS
            trs = (col0 + j) % TRS
            t = trs // RS
            chan_s[j] = gi * Cg + c
            toff_s[j] = t * dd
            roff_s[j] = (trs - t * RS) // S * dh
            soff_s[j] = (trs % S) * dw
        z = dt(0)
        acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
        for k0 in range(red0, red1, BK):
            for kk in range(tid, BK, NTHREADS):
                n = (k0 + kk) // OPQ
                opq = k0 + kk - n * OPQ
                pq = opq % PQ
                n_s[kk] = n
                opq_s[kk] = opq
                id0_s[kk] = (opq // PQ) * sd - pd
                ih0_s[kk] = (pq // Q) * sh - ph
                iw0_s[kk] = (pq % Q) * sw - pw
            cuda.syncthreads()
            for it in range(BM * BK // NTHREADS):
                i = (tid + it * NTHREADS) // BK
                kk = (tid + it * NTHREADS) % BK
                v = z
                if m0 + i < Kg and k0 + kk < red1:
                    v = dy3[n_s[kk], gi * Kg + m0 + i, opq_s[kk]]
                a_s[kk, i] = v
            for e in range(tid, BK * BN, NTHREADS):
                kk = e // BN
                j = e % BN
                idp = id0_s[kk] + toff_s[j]
                ih = ih0_s[kk] + roff_s[j]
                iw = iw0_s[kk] + soff_s[j]
                v = z
                if (col0 + j < L and k0 + kk < red1 and idp >= 0 and idp < D and ih >= 0 and ih < H
                        and iw >= 0 and iw < W):
                    v = x[n_s[kk], chan_s[j], idp, ih, iw]
                b_s[kk, j] = v
            cuda.syncthreads()
            acc = _mma_tile_cuda(a_s, b_s, ty, tx, acc)
            cuda.syncthreads()
        # plane sl of ws (slices, K, L) holds columns [sl*L, (sl+1)*L) of ws viewed as (K, slices*L)
        _store_micro_tile_cuda(ws, m0 + ty, Kg, gi * Kg, sl * L + col0 + tx, (sl + 1) * L, L, acc)
    return kernel


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _padded_source(x, g):
    """x zero-padded (front/top/left by the before pads) and cut to the (Dp, Hp, Wp) window
    every read falls in; returns it with (Dp, Hp, Wp)."""
    need = tuple((o - 1) * s + (k - 1) * d + 1 for o, k, s, d in zip(g.out_size, g.kernel, g.stride, g.dilation))
    if not any(g.pad_before) and all(n <= i for n, i in zip(need, g.in_size)):
        return x, g.in_size
    xp = np.zeros((g.N, g.C) + need, x.dtype)
    keep = [max(0, min(i, n - b)) for i, n, b in zip(g.in_size, need, g.pad_before)]
    dst = (slice(None), slice(None)) + tuple(slice(b, b + k) for b, k in zip(g.pad_before, keep))
    xp[dst] = x[(slice(None), slice(None)) + tuple(slice(0, k) for k in keep)]
    return xp, need


def _patch_offsets(Cg, padded, g):
    """off[((c*T + t)*R + r)*S + s] = ((c*Dp + t*dd)*Hp + r*dh)*Wp + s*dw: where tap (c, t, r, s)
    sits from a window's origin in the padded source."""
    Dp, Hp, Wp = padded
    (T, R, S), (dd, dh, dw) = g.kernel, g.dilation
    c = np.arange(Cg)[:, None, None, None]
    t = np.arange(T)[None, :, None, None]
    r = np.arange(R)[None, None, :, None]
    s = np.arange(S)[None, None, None, :]
    return (((c * Dp + t * dd) * Hp + r * dh) * Wp + s * dw).reshape(-1).astype(np.int64)


def _pixel_offsets(padded, g):
    """pix[(o*P + p)*Q + q] = (o*sd*Hp + p*sh)*Wp + q*sw: each output window's origin."""
    _, Hp, Wp = padded
    (O, P, Q), (sd, sh, sw) = g.out_size, g.stride
    o = np.arange(O)[:, None, None] * sd * Hp * Wp
    p = np.arange(P)[None, :, None] * sh * Wp
    q = np.arange(Q)[None, None, :] * sw
    return (o + p + q).reshape(-1).astype(np.int64)


def _fwd_cpu(x, w, y, g, bias=None, act=None):
    xp, padded = _padded_source(x, g)
    Cg, Kg = g.C // g.groups, g.K // g.groups
    plane, opq = math.prod(padded), math.prod(g.out_size)
    n = np.arange(g.N, dtype=np.int64)[:, None]
    org = (n * (g.C * plane) + _pixel_offsets(padded, g)).reshape(-1)
    dst = (n * (g.K * opq) + np.arange(opq)).reshape(-1)
    run_product(xp.reshape(-1), _patch_offsets(Cg, padded, g), org, Cg * plane, w.reshape(g.groups, Kg, -1),
                y.reshape(-1), dst, opq, Kg * opq, g.groups, bias, act)


def _phase_tables(g, axes, padded_dy):
    """Per stride phase f (one phase per axis, d-major): the source offsets ``spix`` of its
    pixels in a padded dy channel, their positions ``dpix`` in a dx channel, and their count."""
    _, Pp, Qp = padded_dy
    _, H, W = g.in_size
    combos = [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]
    most = max(1, max(a[1] * b[1] * c[1] for a, b, c in combos))
    spix = np.zeros((len(combos), most), np.int64)
    dpix = np.zeros((len(combos), most), np.int64)
    npix = np.zeros(len(combos), np.int64)
    sd, sh, sw = g.stride
    for f, ((d0, nd, _, _), (h0, nh, _, _), (w0, nw, _, _)) in enumerate(combos):
        i = np.arange(nd)[:, None, None]
        j = np.arange(nh)[None, :, None]
        l = np.arange(nw)[None, None, :]
        npix[f] = nd * nh * nw
        spix[f, :npix[f]] = ((i * Pp + j) * Qp + l).reshape(-1)
        dpix[f, :npix[f]] = (((d0 + i * sd) * H + h0 + j * sh) * W + w0 + l * sw).reshape(-1)
    return combos, spix, dpix, npix


def _bwd_data_cpu(dy, w, dx, g):
    Cg, Kg = g.C // g.groups, g.K // g.groups
    split = [_stride_phases(*a) for a in zip(g.in_size, g.out_size, g.kernel, g.stride, g.pad_before, g.dilation)]
    axes = [s[0] for s in split]
    before = [s[1] for s in split]
    padded_dy = tuple(s[2] for s in split)
    Op, Pp, Qp = padded_dy
    dyp = np.zeros((g.N, g.K) + padded_dy, dy.dtype)
    dyp[(slice(None), slice(None)) + tuple(slice(b, b + o) for b, o in zip(before, g.out_size))] = dy
    combos, spix, dpix, npix = _phase_tables(g, axes, padded_dy)
    plane_dy, dhw = math.prod(padded_dy), math.prod(g.in_size)
    wg = w.reshape((g.groups, Kg, Cg) + g.kernel)
    k = np.arange(Kg)[:, None, None, None]
    n = np.arange(g.N, dtype=np.int64)[:, None]
    for f, ((_, _, td, od), (_, _, th, oh), (_, _, tw, ow)) in enumerate(combos):
        pixels = slice(0, int(npix[f]))
        if npix[f] == 0:
            continue
        if not (len(td) and len(th) and len(tw)):
            dx.reshape(g.N, g.C, -1)[:, :, dpix[f, pixels]] = 0
            continue
        a = np.array(od)[None, :, None, None] + before[0]
        b = np.array(oh)[None, None, :, None] + before[1]
        c = np.array(ow)[None, None, None, :] + before[2]
        off = (((k * Op + a) * Pp + b) * Qp + c).reshape(-1).astype(np.int64)
        # A[c, (k, t, r, s)] = w[k, c, t, r, s] over the phase's taps
        taps = wg[:, :, :, td.start:td.stop:td.step, th.start:th.stop:th.step, tw.start:tw.stop:tw.step]
        org = (n * (g.K * plane_dy) + spix[f, pixels]).reshape(-1)
        dst = (n * (g.C * dhw) + dpix[f, pixels]).reshape(-1)
        rows_a = taps.transpose(0, 2, 1, 3, 4, 5).reshape(g.groups, Cg, -1)
        run_product(dyp.reshape(-1), off, org, Kg * plane_dy, rows_a, dx.reshape(-1), dst, dhw, Cg * dhw, g.groups)


def _bwd_filter_cpu(dy, x, dw, g):
    xp, padded = _padded_source(x, g)
    Cg, Kg = g.C // g.groups, g.K // g.groups
    plane, opq = math.prod(padded), math.prod(g.out_size)
    n = np.arange(g.N, dtype=np.int64)[:, None]
    org = (n * (g.C * plane) + _pixel_offsets(padded, g)).reshape(-1)
    run_filter_product(xp.reshape(-1), _patch_offsets(Cg, padded, g), org, Cg * plane,
                       dy.reshape(g.N, g.groups, Kg, opq), dw.reshape(g.K, -1), g.groups)


def _threads():
    return (THREADS_N, THREADS_M)


def _cuda_args(g):
    return g.stride, g.pad_before, g.dilation, g.groups


def _fwd_cuda(x, w, y, g):
    Kg = g.K // g.groups
    opq = math.prod(g.out_size)
    grid = (blocks(g.N * opq, BN), blocks(Kg, BM), g.groups)
    conv3d_fwd_implicit_gemm_cuda[x.dtype][grid, _threads(), stream()](
        x, w.reshape(g.K, -1), y.reshape(g.N, g.K, opq), g.kernel, g.out_size, *_cuda_args(g))


def _bwd_data_cuda(dy, w, dx, g):
    Cg = g.C // g.groups
    dhw = math.prod(g.in_size)
    grid = (blocks(g.N * dhw, BN), blocks(Cg, BM), g.groups)
    conv3d_bwd_data_implicit_gemm_cuda[dy.dtype][grid, _threads(), stream()](
        dy, w.reshape(g.K, -1), dx.reshape(g.N, g.C, dhw), g.kernel, g.in_size, *_cuda_args(g))


def _bwd_filter_cuda(dy, x, dw, g):
    Kg = g.K // g.groups
    L = (g.C // g.groups) * math.prod(g.kernel)
    opq = math.prod(g.out_size)
    red = g.N * opq
    tiles_mn = blocks(L, BN) * blocks(Kg, BM) * g.groups
    kernel = conv3d_bwd_filter_implicit_gemm_cuda[dy.dtype]
    slices = wave_splits(tiles_mn, blocks(red, BK), resident_blocks(kernel, NTHREADS))
    slice_len = blocks(blocks(red, slices), BK) * BK
    slices = blocks(red, slice_len)
    ws = dw.reshape(1, g.K, L) if slices == 1 else device_empty((slices, g.K, L), dw.dtype)
    grid = (blocks(L, BN), blocks(Kg, BM), g.groups * slices)
    kernel[grid, _threads(), stream()](
        dy.reshape(g.N, g.K, opq), x, ws, g.kernel, g.out_size, *_cuda_args(g), slice_len)
    if slices > 1:
        out = dw.reshape(g.K * L)
        sum_slices_cuda[dw.dtype][blocks(out.shape[0], SUM_THREADS), SUM_THREADS, stream()](ws.reshape(slices, -1), out)


def conv3d_fwd_implicit_gemm(x, w, y, g):
    """Forward 3-D conv by implicit GEMM, ``Y_g = W_g @ B`` per group; overwrites ``y`` (N, K, O, P, Q).

    ``y[n, k, o, p, q] = sum_{c, t, r, s} x[n, gi*Cg + c, o*sd - pd + t*dd, p*sh - ph + r*dh, q*sw - pw + s*dw]
    * w[k, c, t, r, s]`` with ``gi = k // Kg``. NumPy arrays run on the CPU, CUDA device arrays on the GPU.
    """
    check_conv_arrays("implicit_gemm", g, "fwd", x, w, y)
    (_fwd_cuda if is_device_array(x) else _fwd_cpu)(x, w, y, g)


def conv3d_bwd_data_implicit_gemm(dy, w, dx, g):
    """3-D data gradient by implicit GEMM, ``dX_g = A @ B'`` per group; overwrites ``dx`` (N, C, D, H, W).

    ``dx[n, c, d, h, w] = sum over k in c's group and taps (t, r, s) with o = (d + pd - t*dd)/sd,
    p = (h + ph - r*dh)/sh and q = (w + pw - s*dw)/sw exact and inside dy of
    dy[n, k, o, p, q] * w[k, c - gi*Cg, t, r, s]``.
    """
    check_conv_arrays("implicit_gemm", g, "bwd_data", dy, w, dx)
    (_bwd_data_cuda if is_device_array(dy) else _bwd_data_cpu)(dy, w, dx, g)


def conv3d_bwd_filter_implicit_gemm(dy, x, dw, g):
    """3-D filter gradient by implicit GEMM, ``dW_g = dY_g @ B^T`` per group; overwrites ``dw``.

    ``dw[k, c, t, r, s] = sum_{n, o, p, q} dy[n, k, o, p, q] * x[n, gi*Cg + c, o*sd - pd + t*dd,
    p*sh - ph + r*dh, q*sw - pw + s*dw]``, the sum over (n, o, p, q) cut into fixed slices that
    are added in order.
    """
    check_conv_arrays("implicit_gemm", g, "bwd_filter", dy, x, dw)
    (_bwd_filter_cuda if is_device_array(dy) else _bwd_filter_cpu)(dy, x, dw, g)
