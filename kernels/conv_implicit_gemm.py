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

CUDA: the tiled GEMM's mainloop (``gemm.py``): one block of 16 x 16 threads per BM x BN =
128 x 128 tile of a product, groups on grid z, an 8 x 8 register tile of scalars per thread, the
reduction in BK = 8 deep tiles through two shared buffers (tile t+1 is gathered into registers
while tile t is multiplied, one barrier per tile; 128-bit shared loads of the fragments). A
thread decodes its pixel (or filter-tap) column once, and per tile its reduction indices, with
uint32 arithmetic: no 64-bit division, no negative-index wraparound, a negative coordinate wraps
to >= 2**31 and fails the one unsigned bounds check. Operands must have < 2**31 elements
(``supports`` says so). Backward filter, whose reduction N*P*Q is long and whose product is
small, cuts the reduction into fixed slices (grid z = group x slice; as many as fill whole waves
of the blocks the device holds at once, ``wave_splits``) and adds the slices' partial products
in order with a second kernel.

CPU: one register-tiled micro-kernel (``simd.tile_fma``: an MR x NR tile of vector accumulators,
an outer product per reduction step) serves all three passes and both ranks. A is packed into
MR-row micro-panels (weights, per-phase transposed taps, or dY); B is gathered into NR-column
micro-panels straight from a zero-padded copy of the source through two tables, ``org`` (each
column's window origin: image and pixel) and ``off`` (each reduction index's offset from it).
Forward and backward data are ``implicit_gemm_cpu`` (columns = pixels of all images, so small
maps still fill whole panels; backward data once per stride phase (h mod sh, w mod sw): in a phase
only the taps whose divisions are exact contribute, so no zero of B' is gathered or multiplied).
Backward filter is ``implicit_gemm_bwd_filter_cpu``: B's panels run along the taps, the
reduction over pixels, cut into fixed slices only when the product has too few tiles to share out.
A product with one or two NB-wide panels of output channels and a long reduction runs turned
round (``_turned_round``): ``implicit_gemm_pixel_rows_cpu`` and
``implicit_gemm_bwd_filter_tap_rows_cpu`` broadcast pixels or taps straight from the source as the
micro-kernel's rows (``simd.gather_fma``) against packed panels of channels, gathering nothing.
"""
import functools
import math

import numba
import numpy as np
from numba import cuda, int32, int64, njit, prange, uint32, uint64

from .conv_algorithm import ConvAlgorithm, by_rank, check_conv_arrays
from .cuda_util import (SIMULATOR, array1, array2, blocks, device_empty, is_device_array, per_dtype,
                        resident_blocks, stream, wave_splits)
from .activation import TANH, TANH_RATIONAL, activate_cpu, bias_activation, epilogue_code
from .float16 import accumulator, zero
from .simd import (MR, PR, gather_fma, gather_fma1, gather_panel_width, lanes, pack_rows, panel_gemm, panel_width,
                   round_up, vlanes, vload, vstore)
from .gemm import (A_LOADS, A_PITCH, B_PITCH, BK, BM, BN, INDEX_LIMIT, SMEM_ALIGN, THREADS, TX, element, jit_options,
                   stage, tile_origin, tile_step, unstage, zero_tile)

# The CUDA kernels share the tiled GEMM's block tile (BM x BN, BK deep), its 8 x 8 register
# tile per thread (``gemm.tile_step``) and its staging order (``gemm.element``).
OUTSIDE = np.uint32(1 << 31)    # a window row that no tap or pixel offset brings back into the source
u32 = uint32
SUM_THREADS = 32 if SIMULATOR else 256

CPU_PANEL_BYTES = 36 << 10     # a B micro-panel (reduction chunk x NR) that stays in a 48 KiB L1
CPU_TILE_PANELS = 8            # column micro-panels per work item (gathered once, reused by every row)
CPU_FILTER_PANELS = 2          # backward filter: micro-panels of taps (c, r, s) per work item
CPU_MIN_ITEMS = 8              # backward filter slices its reduction until it has this many work items
CPU_RUNS_PER_THREAD = 4
CPU_PIXEL_MICRO_TILES = 16     # turned-round products (_turned_round): PR-pixel micro-tiles per work item (fwd,
CPU_TAP_MICRO_TILES = 16       # bwd_data) and PR-tap micro-tiles per work item (bwd_filter)
CPU_TURNED_PANEL_BYTES = 16 << 10  # ... and the L1 their NB-wide reduction chunk takes
CPU_TURNED_MIN_LENGTH = 256    # ... and the shortest reduction they take
CPU_TURNED_MIN_TAPS = 256      # ... and, with NB-wide panels, the fewest taps a turned-round filter gradient takes
CPU_ONE_VECTOR_MIN_ROWS = 8    # one-vector turned-round products (gather_fma1): the fewest rows
CPU_ONE_VECTOR_MIN_LENGTH = 128  # ... and the shortest reduction


@cuda.jit(device=True, inline="always")
def _store_quad(out, ch, col, ncols, plane, kout, v0, v1, v2, v3):
    """out[(n*kout + ch)*plane + i] = v_j for the columns col + j = n*plane + i below ncols."""
    col = u32(col)
    if col < ncols:
        n = col // plane
        out[u32((n * kout + ch) * plane + col - n * plane)] = v0
    c = u32(col + u32(1))
    if c < ncols:
        n = c // plane
        out[u32((n * kout + ch) * plane + c - n * plane)] = v1
    c = u32(col + u32(2))
    if c < ncols:
        n = c // plane
        out[u32((n * kout + ch) * plane + c - n * plane)] = v2
    c = u32(col + u32(3))
    if c < ncols:
        n = c // plane
        out[u32((n * kout + ch) * plane + c - n * plane)] = v3


@cuda.jit(device=True, inline="always")
def _store_row(out, m, rows, ch0, col, ncols, plane, kout, row):
    if m < rows:
        _store_quad(out, ch0 + m, col, ncols, plane, kout, row[0], row[1], row[2], row[3])
        _store_quad(out, ch0 + m, col + u32(BN // 2), ncols, plane, kout, row[4], row[5], row[6], row[7])


@cuda.jit(device=True, inline="always")
def _store_tile(out, acc, m, rows, ch0, col, ncols, plane, kout):
    """A thread's 8 x 8 register tile into out viewed as (n, kout, plane): tile rows m + i and
    m + BM/2 + i (i < 4, below ``rows``) are channels ch0 + that, tile columns col + j and
    col + BN/2 + j (below ``ncols``) are n*plane + pixel."""
    h = m + u32(BM // 2)
    _store_row(out, m, rows, ch0, col, ncols, plane, kout, acc[0])
    _store_row(out, m + u32(1), rows, ch0, col, ncols, plane, kout, acc[1])
    _store_row(out, m + u32(2), rows, ch0, col, ncols, plane, kout, acc[2])
    _store_row(out, m + u32(3), rows, ch0, col, ncols, plane, kout, acc[3])
    _store_row(out, h, rows, ch0, col, ncols, plane, kout, acc[4])
    _store_row(out, h + u32(1), rows, ch0, col, ncols, plane, kout, acc[5])
    _store_row(out, h + u32(2), rows, ch0, col, ncols, plane, kout, acc[6])
    _store_row(out, h + u32(3), rows, ch0, col, ncols, plane, kout, acc[7])


def _fwd_signature(dt):
    return (array1(dt), array1(dt), array1(dt)) + (int64,) * 16


@cuda.jit(device=True, inline="always")
def _fwd_columns(col_n, col_h, col_w, col, npq, PQ, Q, sh, sw, ph, pw, CHW, k_major):
    """Per staged element l: its pixel column col + dr = (n, p, q) as the image offset n*C*H*W and
    the window origin (p*sh - ph, q*sw - pw), uint32 that wrap below 0 (so one unsigned compare
    checks both ends); a column past npq gets the origin row OUTSIDE, which no tap brings back."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        c = u32(col + u32(dr))
        n = c // PQ
        pq = u32(c - n * PQ)
        p = pq // Q
        col_n[l] = n * CHW
        col_h[l] = p * sh - ph if c < npq else OUTSIDE
        col_w[l] = (pq - p * Q) * sw - pw


@cuda.jit(device=True, inline="always")
def _fwd_gather(x, regs, zero, col_n, col_h, col_w, kb, L, RS, S, dh, dw, H, W, HW, cg0, k_major):
    """regs[l] = B[kb + dk, column l] = x[n, cg0 + c, ih, iw] (0 outside x or past L), with
    (c, r, s) = reduction index kb + dk, ih = p*sh - ph + r*dh, iw = q*sw - pw + s*dw."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        kidx = u32(kb + u32(dk))
        c = kidx // RS
        rs = u32(kidx - c * RS)
        r = rs // S
        ih = u32(col_h[l] + r * dh)
        iw = u32(col_w[l] + u32(rs - r * S) * dw)
        v = zero
        if kidx < L and ih < H and iw < W:
            v = x[u32(col_n[l] + (cg0 + c) * HW + ih * W + iw)]
        regs[l] = v


# one thread per 8x8 register tile of Y_g: channels m0 + 4ty + i and m0 + BM/2 + 4ty + i,
# pixels col0 + 4tx + j and col0 + BN/2 + 4tx + j (i, j < 4)
@per_dtype(_fwd_signature, threads=THREADS)
def conv2d_fwd_implicit_gemm_cuda(dt):
    @cuda.jit(**jit_options(dt))
    def kernel(x, w, y, N, C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, groups):
        # two buffers: tile t+1 is staged while tile t is multiplied, one barrier per tile
        a_s = cuda.shared.array((2, BK, A_PITCH), dt, SMEM_ALIGN)
        b_s = cuda.shared.array((2, BK, B_PITCH), dt, SMEM_ALIGN)
        ra = cuda.local.array(A_LOADS, dt)          # constant indices only: kept in registers
        rb = cuda.local.array(A_LOADS, dt)
        col_n = cuda.local.array(A_LOADS, uint32)
        col_h = cuda.local.array(A_LOADS, uint32)
        col_w = cuda.local.array(A_LOADS, uint32)
        C, H, W, K, Q, S = u32(C), u32(H), u32(W), u32(K), u32(Q), u32(S)
        Cg = C // u32(groups)
        Kg = K // u32(groups)
        RS = u32(S * u32(R))
        L = u32(Cg * RS)
        PQ = u32(u32(P) * Q)
        HW = u32(H * W)
        npq = u32(u32(N) * PQ)
        gi = u32(cuda.blockIdx.z)
        m0 = u32(cuda.blockIdx.y * u32(BM))
        col0 = u32(cuda.blockIdx.x * u32(BN))
        tx = u32(cuda.threadIdx.x)
        ty = u32(cuda.threadIdx.y)
        tid = u32(ty * u32(TX) + tx)
        # A = W_g (Kg, L) read along the reduction; B read along the pixels
        ar, akk = tile_origin(tid, False)
        bj, bkk = tile_origin(tid, True)
        a_rows_left = int32(int32(Kg - m0) - int32(ar))
        a_origin = (gi * Kg + m0 + ar) * L + akk
        _fwd_columns(col_n, col_h, col_w, col0 + bj, npq, PQ, Q, u32(sh), u32(sw), u32(ph), u32(pw), C * HW, True)
        dh, dw, cg0 = u32(dh), u32(dw), gi * Cg
        tiles = u32(L + u32(BK - 1)) // u32(BK)
        zero = dt(0)
        stage(w, ra, zero, a_origin, L, u32(1), a_rows_left, int32(int32(L) - int32(akk)), False)
        _fwd_gather(x, rb, zero, col_n, col_h, col_w, bkk, L, RS, S, dh, dw, H, W, HW, cg0, True)
        unstage(ra, a_s, 0, ar, akk, False)
        unstage(rb, b_s, 0, bj, bkk, True)
        cuda.syncthreads()
        acc = zero_tile(zero)
        for t in range(tiles):
            buf = u32(t) % u32(2)
            more = u32(t) + u32(1) < tiles
            if more:
                kt = (u32(t) + u32(1)) * u32(BK)
                stage(w, ra, zero, a_origin + kt, L, u32(1), a_rows_left, int32(int32(L) - int32(akk + kt)), False)
                _fwd_gather(x, rb, zero, col_n, col_h, col_w, bkk + kt, L, RS, S, dh, dw, H, W, HW, cg0, True)
            acc = tile_step(a_s, b_s, buf, ty, tx, acc)
            if more:
                unstage(ra, a_s, buf ^ u32(1), ar, akk, False)
                unstage(rb, b_s, buf ^ u32(1), bj, bkk, True)
            cuda.syncthreads()
        _store_tile(y, acc, m0 + u32(4) * ty, Kg, gi * Kg, col0 + u32(4) * tx, npq, PQ, K)
    return kernel


def _bwd_data_signature(dt):
    return (array1(dt), array1(dt), array1(dt)) + (int64,) * 16


@cuda.jit(device=True, inline="always")
def _bwd_data_columns(col_n, col_hq, col_wq, col_m, col, nhw, HW, Wd, sh, sw, ph, pw, KPQ, k_major):
    """Per staged element l: its pixel column col + dr = (n, h, w) as the dy image offset n*K*P*Q,
    the quotients (h + ph)//sh, (w + pw)//sw and the remainders packed as hm*2^16 + wm. A column
    past nhw gets the quotient row OUTSIDE, which no tap brings back into dy."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        c = u32(col + u32(dr))
        n = c // HW
        hw = u32(c - n * HW)
        h = hw // Wd
        th = u32(h + ph)
        tw = u32(hw - h * Wd + pw)
        col_n[l] = n * KPQ
        col_hq[l] = th // sh if c < nhw else OUTSIDE
        col_wq[l] = tw // sw
        col_m[l] = u32(th % sh) * u32(65536) + tw % sw


@cuda.jit(device=True, inline="always")
def _bwd_data_gather(dy, regs, zero, col_n, col_hq, col_wq, col_m, kb, L, RS, S, sh, sw, dh, dw, P, Q, PQ, k0g,
                     k_major):
    """regs[l] = B'[kb + dk, column l] = dy[n, k0g + k, p, q] with (k, r, s) = reduction index kb + dk,
    p = (h + ph - r*dh)/sh and q = (w + pw - s*dw)/sw when both divisions are exact (equal
    remainders of h + ph and r*dh by sh, and likewise for w) and land inside dy; else 0."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        kidx = u32(kb + u32(dk))
        k = kidx // RS
        rs = u32(kidx - k * RS)
        r = rs // S
        rd = u32(r * dh)
        sd = u32(u32(rs - r * S) * dw)
        rq = rd // sh
        sq = sd // sw
        p = u32(col_hq[l] - rq)
        q = u32(col_wq[l] - sq)
        v = zero
        if kidx < L and p < P and q < Q and col_m[l] == (rd - rq * sh) * u32(65536) + sd - sq * sw:
            v = dy[u32(col_n[l] + (k0g + k) * PQ + p * Q + q)]
        regs[l] = v


@cuda.jit(device=True, inline="always")
def _bwd_data_weights(w, regs, zero, c_first, rows_left, kb, L, RS, Cg, k0g):
    """regs[l] = A[c_first + dr, kb + dk] = w[k0g + k, c_first + dr, r, s] with (k, (r, s)) =
    divmod(kb + dk, RS); 0 past Cg (``rows_left``) or L. Read along the reduction."""
    for l in range(A_LOADS):
        dr, dk = element(l, False)
        kidx = u32(kb + u32(dk))
        k = kidx // RS
        v = zero
        if dr < rows_left and kidx < L:
            v = w[u32(((k0g + k) * Cg + c_first + u32(dr)) * RS + kidx - k * RS)]
        regs[l] = v


# one thread per 8x8 register tile of dX_g: channels m0 + 4ty + i and m0 + BM/2 + 4ty + i,
# pixels col0 + 4tx + j and col0 + BN/2 + 4tx + j (i, j < 4)
@per_dtype(_bwd_data_signature, threads=THREADS)
def conv2d_bwd_data_implicit_gemm_cuda(dt):
    @cuda.jit(**jit_options(dt))
    def kernel(dy, w, dx, N, C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, groups):
        a_s = cuda.shared.array((2, BK, A_PITCH), dt, SMEM_ALIGN)
        b_s = cuda.shared.array((2, BK, B_PITCH), dt, SMEM_ALIGN)
        ra = cuda.local.array(A_LOADS, dt)          # constant indices only: kept in registers
        rb = cuda.local.array(A_LOADS, dt)
        col_n = cuda.local.array(A_LOADS, uint32)
        col_hq = cuda.local.array(A_LOADS, uint32)
        col_wq = cuda.local.array(A_LOADS, uint32)
        col_m = cuda.local.array(A_LOADS, uint32)
        C, K, P, Q, S, sh, sw = u32(C), u32(K), u32(P), u32(Q), u32(S), u32(sh), u32(sw)
        Cg = C // u32(groups)
        Kg = K // u32(groups)
        RS = u32(S * u32(R))
        L = u32(Kg * RS)
        PQ = u32(P * Q)
        HW = u32(u32(H) * u32(W))
        nhw = u32(u32(N) * HW)
        gi = u32(cuda.blockIdx.z)
        m0 = u32(cuda.blockIdx.y * u32(BM))
        col0 = u32(cuda.blockIdx.x * u32(BN))
        tx = u32(cuda.threadIdx.x)
        ty = u32(cuda.threadIdx.y)
        tid = u32(ty * u32(TX) + tx)
        ar, akk = tile_origin(tid, False)
        bj, bkk = tile_origin(tid, True)
        a_rows_left = int32(int32(Cg - m0) - int32(ar))
        _bwd_data_columns(col_n, col_hq, col_wq, col_m, col0 + bj, nhw, HW, u32(W), sh, sw, u32(ph), u32(pw),
                          K * PQ, True)
        dh, dw, k0g = u32(dh), u32(dw), gi * Kg
        tiles = u32(L + u32(BK - 1)) // u32(BK)
        zero = dt(0)
        _bwd_data_weights(w, ra, zero, m0 + ar, a_rows_left, akk, L, RS, Cg, k0g)
        _bwd_data_gather(dy, rb, zero, col_n, col_hq, col_wq, col_m, bkk, L, RS, S, sh, sw, dh, dw, P, Q, PQ, k0g,
                         True)
        unstage(ra, a_s, 0, ar, akk, False)
        unstage(rb, b_s, 0, bj, bkk, True)
        cuda.syncthreads()
        acc = zero_tile(zero)
        for t in range(tiles):
            buf = u32(t) % u32(2)
            more = u32(t) + u32(1) < tiles
            if more:
                kt = (u32(t) + u32(1)) * u32(BK)
                _bwd_data_weights(w, ra, zero, m0 + ar, a_rows_left, akk + kt, L, RS, Cg, k0g)
                _bwd_data_gather(dy, rb, zero, col_n, col_hq, col_wq, col_m, bkk + kt, L, RS, S, sh, sw, dh, dw,
                                 P, Q, PQ, k0g, True)
            acc = tile_step(a_s, b_s, buf, ty, tx, acc)
            if more:
                unstage(ra, a_s, buf ^ u32(1), ar, akk, False)
                unstage(rb, b_s, buf ^ u32(1), bj, bkk, True)
            cuda.syncthreads()
        _store_tile(dx, acc, m0 + u32(4) * ty, Cg, gi * Cg, col0 + u32(4) * tx, nhw, HW, C)
    return kernel


def _bwd_filter_signature(dt):
    return (array1(dt), array1(dt), array1(dt)) + (int64,) * 17


@cuda.jit(device=True, inline="always")
def _bwd_filter_taps(tap_c, tap_h, tap_w, col, L, RS, S, dh, dw, ph, pw, HW, cg0, k_major):
    """Per staged element l: its tap column col + dr = (c, r, s) as the channel offset
    (cg0 + c)*H*W and the tap's shift (r*dh - ph, s*dw - pw), uint32 that wrap below 0; a tap past
    L gets the row shift OUTSIDE, which no pixel brings back into x."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        j = u32(col + u32(dr))
        c = j // RS
        rs = u32(j - c * RS)
        r = rs // S
        tap_c[l] = (cg0 + c) * HW
        tap_h[l] = r * dh - ph if j < L else OUTSIDE
        tap_w[l] = (rs - r * S) * dw - pw


@cuda.jit(device=True, inline="always")
def _bwd_filter_gather(x, regs, zero, tap_c, tap_h, tap_w, rb, red1, PQ, Q, sh, sw, H, W, CHW, k_major):
    """regs[l] = B^T[rb + dk, tap l] = x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] with
    (n, p, q) = reduction index rb + dk (0 outside x or from red1 on)."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        red = u32(rb + u32(dk))
        n = red // PQ
        pq = u32(red - n * PQ)
        p = pq // Q
        ih = u32(p * sh + tap_h[l])
        iw = u32(u32(pq - p * Q) * sw + tap_w[l])
        v = zero
        if red < red1 and ih < H and iw < W:
            v = x[u32(n * CHW + tap_c[l] + ih * W + iw)]
        regs[l] = v


@cuda.jit(device=True, inline="always")
def _bwd_filter_dy(dy, regs, zero, k_first, rows_left, rb, red1, PQ, K):
    """regs[l] = dY_g[k_first + dr, rb + dk] = dy[n, k_first + dr, pq] with (n, pq) =
    divmod(rb + dk, PQ); 0 past Kg (``rows_left``) or from red1 on. Read along the pixels."""
    for l in range(A_LOADS):
        dr, dk = element(l, False)
        red = u32(rb + u32(dk))
        n = red // PQ
        v = zero
        if dr < rows_left and red < red1:
            v = dy[u32((n * K + k_first + u32(dr)) * PQ + red - n * PQ)]
        regs[l] = v


# one thread per 8x8 register tile of one reduction slice of dW_g: channels m0 + 4ty + i and
# m0 + BM/2 + 4ty + i, taps (c, r, s) col0 + 4tx + j and col0 + BN/2 + 4tx + j (i, j < 4);
# grid z = slice * groups + group
@per_dtype(_bwd_filter_signature, threads=THREADS)
def conv2d_bwd_filter_implicit_gemm_cuda(dt):
    @cuda.jit(**jit_options(dt))
    def kernel(dy, x, ws, N, C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, groups, slice_len):
        a_s = cuda.shared.array((2, BK, A_PITCH), dt, SMEM_ALIGN)
        b_s = cuda.shared.array((2, BK, B_PITCH), dt, SMEM_ALIGN)
        ra = cuda.local.array(A_LOADS, dt)          # constant indices only: kept in registers
        rb = cuda.local.array(A_LOADS, dt)
        tap_c = cuda.local.array(A_LOADS, uint32)
        tap_h = cuda.local.array(A_LOADS, uint32)
        tap_w = cuda.local.array(A_LOADS, uint32)
        C, H, W, K, Q, S = u32(C), u32(H), u32(W), u32(K), u32(Q), u32(S)
        groups = u32(groups)
        Cg = C // groups
        Kg = K // groups
        RS = u32(S * u32(R))
        L = u32(Cg * RS)
        PQ = u32(u32(P) * Q)
        HW = u32(H * W)
        gi = u32(cuda.blockIdx.z) % groups
        sl = u32(cuda.blockIdx.z) // groups
        red0 = u32(sl * u32(slice_len))
        red1 = u32(min(u32(u32(N) * PQ), u32(red0 + u32(slice_len))))
        m0 = u32(cuda.blockIdx.y * u32(BM))
        col0 = u32(cuda.blockIdx.x * u32(BN))
        tx = u32(cuda.threadIdx.x)
        ty = u32(cuda.threadIdx.y)
        tid = u32(ty * u32(TX) + tx)
        # both operands are read along the reduction (pixels), which is contiguous in dy and x
        ar, akk = tile_origin(tid, False)
        bj, bkk = tile_origin(tid, False)
        a_rows_left = int32(int32(Kg - m0) - int32(ar))
        _bwd_filter_taps(tap_c, tap_h, tap_w, col0 + bj, L, RS, S, u32(dh), u32(dw), u32(ph), u32(pw), HW, gi * Cg,
                         False)
        sh, sw, k_first, CHW = u32(sh), u32(sw), gi * Kg + m0 + ar, C * HW
        tiles = u32(red1 - red0 + u32(BK - 1)) // u32(BK)
        zero = dt(0)
        _bwd_filter_dy(dy, ra, zero, k_first, a_rows_left, red0 + akk, red1, PQ, K)
        _bwd_filter_gather(x, rb, zero, tap_c, tap_h, tap_w, red0 + bkk, red1, PQ, Q, sh, sw, H, W, CHW, False)
        unstage(ra, a_s, 0, ar, akk, False)
        unstage(rb, b_s, 0, bj, bkk, False)
        cuda.syncthreads()
        acc = zero_tile(zero)
        for t in range(tiles):
            buf = u32(t) % u32(2)
            more = u32(t) + u32(1) < tiles
            if more:
                kt = red0 + (u32(t) + u32(1)) * u32(BK)
                _bwd_filter_dy(dy, ra, zero, k_first, a_rows_left, kt + akk, red1, PQ, K)
                _bwd_filter_gather(x, rb, zero, tap_c, tap_h, tap_w, kt + bkk, red1, PQ, Q, sh, sw, H, W, CHW, False)
            acc = tile_step(a_s, b_s, buf, ty, tx, acc)
            if more:
                unstage(ra, a_s, buf ^ u32(1), ar, akk, False)
                unstage(rb, b_s, buf ^ u32(1), bj, bkk, False)
            cuda.syncthreads()
        # plane sl of ws (slices, K, L) holds columns [sl*L, (sl+1)*L) of ws viewed as (K, slices*L)
        _store_tile(ws, acc, m0 + u32(4) * ty, Kg, gi * Kg, sl * L + col0 + u32(4) * tx, (sl + u32(1)) * L, L, K)
    return kernel


@njit(fastmath=True, cache=True)
def _gather_panels(src, cols, panels, off, l0, kc, bp):
    """B micro-panels for a tile's columns: bp[(jb*kc + l)*NR + j] = src[cols[jb*NR + j] + off[l0 + l]],
    ``cols`` the tile's window origins (``_tile_columns``).

    The origins increase strictly, so a panel whose last origin is its first + NR - 1 reads NR
    consecutive elements per step (a stride-1 layer whose rows are at least NR wide): 3 vector
    loads and stores instead of NR scalar gathers."""
    w = vlanes(bp)
    nr = 3 * w
    for jb in range(panels):
        first = cols[jb * nr]
        if cols[jb * nr + nr - 1] == first + nr - 1:
            for l in range(kc):
                s = first + off[l0 + l]
                d = (jb * kc + l) * nr
                vstore(bp, d, vload(src, s))
                vstore(bp, d + w, vload(src, s + w))
                vstore(bp, d + 2 * w, vload(src, s + 2 * w))
            continue
        c = cols[jb * nr:(jb + 1) * nr]
        for l in range(kc):
            o = off[l0 + l]
            d = (jb * kc + l) * nr
            for j in range(nr):
                bp[uint64(d + j)] = src[uint64(c[j] + o)]


@njit(cache=True)
def _tile_columns(org, t0, nt, count, cols):
    """cols[j] = org[t0 + min(j, nt - 1)] for j < count: a column past ``nt`` repeats the last one,
    so the padding is finite and every load stays inside the source."""
    for j in range(count):
        cols[j] = org[t0 + min(j, nt - 1)]


@njit(parallel=True, fastmath=True, cache=True)
def gather_all_cpu(src, off, org, src_group, groups, tile, chunk, gathered):
    """Every (group, tile, reduction chunk)'s B micro-panels, as ``implicit_gemm_cpu`` gathers
    them, into ``gathered`` at ``((gi*tiles + tile index)*L + l0)*tile``."""
    cols = org.shape[0]
    L = off.shape[0]
    nr = 3 * vlanes(src)
    tiles = (cols + tile - 1) // tile
    chunks = (L + chunk - 1) // chunk
    for it in prange(groups * tiles * chunks):
        gi = it // (tiles * chunks)
        ti = it // chunks % tiles
        l0 = (it % chunks) * chunk
        nt = min(tile, cols - ti * tile)
        block = gathered[uint64(((gi * tiles + ti) * L + l0) * tile):]
        panels = (nt + nr - 1) // nr
        origins = np.empty(panels * nr, np.int64)
        _tile_columns(org, ti * tile, nt, panels * nr, origins)
        _gather_panels(src[uint64(gi * src_group):], origins, panels, off, l0, min(chunk, L - l0), block)


@njit(parallel=True, fastmath=True, cache=True)
def implicit_gemm_cpu(src, off, org, src_group, ap, rows, out, dst, out_row, out_group, groups, tile, chunk,
                      row_block, runs, gathered, bias, act):
    """out[dst[t] + gi*out_group + i*out_row] = sum_l A_gi[i, l] * src[org[t] + gi*src_group + off[l]]
    for every group gi, row i < ``rows`` and column t < len(org): the forward product (A = W_g,
    columns = output pixels) and, per stride phase, the backward-data product (A = the phase's
    transposed taps, columns = the phase's input pixels).

    ``ap`` holds A_gi packed as MR-row micro-panels (``simd.pack_rows``, rows padded to
    ``Rp = round_up(rows, MR)``), group after group. One work item = (group, tile of ``tile``
    columns, block of ``row_block`` rows); it gathers its columns ``chunk`` reduction indices at a
    time into B micro-panels and runs the register-tiled micro-kernel over them. Items are split
    into ``runs`` contiguous runs, one set of buffers each. A non-empty ``gathered`` holds every
    tile's panels already (``gather_all_cpu``): when rows are split into several blocks, each
    block's items read them instead of gathering the same columns again.

    The epilogue stores ``act(sum + bias[gi*rows + i])`` (``activation.activate_cpu``; an empty
    ``bias`` adds nothing, ``act`` IDENTITY stores the sum): the forward's fused bias and
    activation, while the tile is still in registers and L1.
    """
    cols = org.shape[0]
    L = off.shape[0]
    rp = (rows + MR - 1) // MR * MR
    nr = 3 * vlanes(src)
    tiles = (cols + tile - 1) // tile
    rblocks = (rp + row_block - 1) // row_block
    items = groups * tiles * rblocks
    zero_ = zero(src)
    one = zero_ + np.float32(1)
    for run in prange(runs):
        bp = np.empty(tile * chunk, src.dtype)
        ct = np.empty((row_block, tile), src.dtype)
        origins = np.empty(tile, np.int64)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (tiles * rblocks)
            t0 = (it // rblocks % tiles) * tile
            r0 = (it % rblocks) * row_block
            nt = min(tile, cols - t0)
            panels = (nt + nr - 1) // nr
            nrow = min(row_block, rp - r0)
            c = ct[:nrow]
            c[:, :] = 0
            grp = src[uint64(gi * src_group):]
            if gathered.shape[0] == 0:
                _tile_columns(org, t0, nt, panels * nr, origins)
            for l0 in range(0, L, chunk):
                kc = min(chunk, L - l0)
                if gathered.shape[0] > 0:
                    b = gathered[uint64(((gi * tiles + t0 // tile) * L + l0) * tile):]
                else:
                    _gather_panels(grp, origins, panels, off, l0, kc, bp)
                    b = bp
                panel_gemm(kc, ap, (gi * rp + r0) * L + l0 * MR, L * MR, b, panels, c)
            for i in range(min(nrow, rows - r0)):
                base = gi * out_group + (r0 + i) * out_row
                row = c[i]
                bk = bias[gi * rows + r0 + i] if bias.shape[0] > 0 else zero_
                for j in range(nt):
                    out[uint64(dst[t0 + j] + base)] = activate_cpu(act, row[j] + bk, zero_, one)


@njit(parallel=True, fastmath=True, cache=True)
def implicit_gemm_pixel_rows_cpu(src, off, org, src_group, bp, nb, rows, out, dst, out_row, out_group, groups,
                                 tile, block, runs, chunk, bias, act):
    """The product of ``implicit_gemm_cpu`` (same arguments and result) turned round: the micro-
    kernel's rows are the columns t (pixels), each broadcast straight from the source at
    ``org[t] + off[l]``, and its vector columns are A's rows (output channels), so no operand is
    gathered or packed per tile.

    ``bp`` holds A_gi^T packed as ``nb``-column panels (``simd.pack_rows(a, nb)``: rows padded to
    ``Kp = round_up(rows, nb)``), group after group; ``nb`` is NB (``gather_fma``) or one vector
    (``gather_fma1``). One work item = (group, tile of ``tile``
    columns (a multiple of PR), block of ``block`` rows (a multiple of NB)); it accumulates a
    (tile x block) product ``chunk`` reduction steps at a time, each NB-wide panel of A (in L1)
    against every PR-column micro-tile of the tile in turn.
    """
    cols = org.shape[0]
    L = off.shape[0]
    one_vector = nb == vlanes(src)
    kp = (rows + nb - 1) // nb * nb
    tiles = (cols + tile - 1) // tile
    kblocks = (kp + block - 1) // block
    items = groups * tiles * kblocks
    zero_ = zero(src)
    one = zero_ + np.float32(1)
    for run in prange(runs):
        ct = np.empty(tile * block, src.dtype)
        origins = np.empty(tile, np.int64)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (tiles * kblocks)
            t0 = (it // kblocks % tiles) * tile
            k0 = (it % kblocks) * block
            kw = min(block, kp - k0)
            nt = min(tile, cols - t0)
            micro = (nt + PR - 1) // PR
            _tile_columns(org, t0, nt, micro * PR, origins)
            ct[:] = 0
            grp = src[uint64(gi * src_group):]
            for l0 in range(0, L, chunk):
                kc = min(chunk, L - l0)
                for kb in range(0, kw, nb):
                    b0 = (gi * kp + k0 + kb) * L + l0 * nb
                    for m in range(micro):
                        if one_vector:
                            gather_fma1(kc, grp, origins, m * PR, off, l0, bp, b0, ct, m * PR * kw + kb, kw)
                        else:
                            gather_fma(kc, grp, origins, m * PR, off, l0, bp, b0, ct, m * PR * kw + kb, kw)
            for k in range(min(kw, rows - k0)):
                base = gi * out_group + (k0 + k) * out_row
                bk = bias[gi * rows + k0 + k] if bias.shape[0] > 0 else zero_
                for j in range(nt):
                    out[uint64(dst[t0 + j] + base)] = activate_cpu(act, ct[j * kw + k] + bk, zero_, one)


@njit(parallel=True, fastmath=True, cache=True)
def implicit_gemm_bwd_filter_cpu(src, off, org, src_group, dyp, rows, ws, groups, cols, seg, runs):
    """ws[sl, gi*rows + k, l] = sum_{t in slice sl} dY_gi[k, t] * src[org[t] + gi*src_group + off[l]]:
    the backward-filter product, its reduction over the columns t (images x output pixels).

    ``dyp`` is dY packed as MR-row micro-panels over all columns (``simd.pack_rows`` of the
    (groups*Rp, T) matrix). One work item = (group, block of ``cols`` taps, slice of the columns);
    it gathers B micro-panels along the taps, ``seg`` columns at a time. Slice ``sl`` of
    ``ws.shape[0]`` covers columns [sl*T/slices, (sl+1)*T/slices).
    """
    T = org.shape[0]
    L = off.shape[0]
    slices = ws.shape[0]
    rp = (rows + MR - 1) // MR * MR
    nr = 3 * vlanes(src)
    cblocks = (L + cols - 1) // cols
    items = groups * cblocks * slices
    for run in prange(runs):
        bp = np.empty(cols * seg, src.dtype)
        ct = np.empty((rp, cols), src.dtype)
        taps = np.empty(cols, np.int64)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (cblocks * slices)
            l0 = (it // slices % cblocks) * cols
            sl = it % slices
            nc = min(cols, L - l0)
            panels = (nc + nr - 1) // nr
            _tile_columns(off, l0, nc, panels * nr, taps)
            ct[:, :] = 0
            grp = src[uint64(gi * src_group):]
            for s0 in range(sl * T // slices, (sl + 1) * T // slices, seg):
                ns = min(seg, (sl + 1) * T // slices - s0)
                for jb in range(panels):
                    c = taps[jb * nr:(jb + 1) * nr]
                    for u in range(ns):
                        o = org[uint64(s0 + u)]
                        d = (jb * ns + u) * nr
                        for j in range(nr):
                            bp[uint64(d + j)] = grp[uint64(o + c[j])]
                panel_gemm(ns, dyp, gi * rp * T + s0 * MR, T * MR, bp, panels, ct)
            for k in range(rows):
                ws[sl, gi * rows + k, l0:l0 + nc] = ct[k, :nc]


@njit(parallel=True, fastmath=True, cache=True)
def implicit_gemm_bwd_filter_tap_rows_cpu(src, off, org, src_group, dyp, nb, rows, ws, groups, tile, runs, chunk):
    """The product of ``implicit_gemm_bwd_filter_cpu`` (same result) turned round.

    The micro-kernel's rows are taps l, broadcast from the source at ``off[l] + org[t]`` for
    reduction step t; its vector columns are output channels: ``dyp`` is dY^T packed as ``nb``-column
    panels over all columns (``simd.pack_rows(dY, nb)`` of the (groups, rows, T) matrix, rows
    padded to ``Kp``; ``nb`` NB or one vector, as in ``implicit_gemm_pixel_rows_cpu``). One work item = (group, tile of ``tile`` taps, slice of the columns); it
    accumulates its (tile x Kp) block ``chunk`` columns at a time, each chunk's NB-wide panel of
    dY^T (in L1) against every PR-tap micro-tile in turn. Slice ``sl`` of ``ws.shape[0]`` covers
    columns [sl*T/slices, (sl+1)*T/slices).
    """
    T = org.shape[0]
    L = off.shape[0]
    slices = ws.shape[0]
    one_vector = nb == vlanes(src)
    kp = (rows + nb - 1) // nb * nb
    tiles = (L + tile - 1) // tile
    items = groups * tiles * slices
    for run in prange(runs):
        ct = np.empty(tile * kp, src.dtype)
        taps = np.empty(tile, np.int64)
        for it in range(run * items // runs, (run + 1) * items // runs):
            gi = it // (tiles * slices)
            l0 = (it // slices % tiles) * tile
            sl = it % slices
            nl = min(tile, L - l0)
            micro = (nl + PR - 1) // PR
            _tile_columns(off, l0, nl, micro * PR, taps)
            ct[:] = 0
            grp = src[uint64(gi * src_group):]
            t1 = (sl + 1) * T // slices
            for s0 in range(sl * T // slices, t1, chunk):
                kc = min(chunk, t1 - s0)
                for kb in range(0, kp, nb):
                    b0 = (gi * kp + kb) * T + s0 * nb
                    for m in range(micro):
                        if one_vector:
                            gather_fma1(kc, grp, taps, m * PR, org, s0, dyp, b0, ct, m * PR * kp + kb, kp)
                        else:
                            gather_fma(kc, grp, taps, m * PR, org, s0, dyp, b0, ct, m * PR * kp + kb, kp)
            for k in range(rows):
                wrow = ws[sl, gi * rows + k]
                for i in range(nl):
                    wrow[l0 + i] = ct[i * kp + k]


def _sum_slices_signature(dt):
    return (array2(accumulator(dt)), array1(dt))


# one thread per output element e, grid-stride: the slices' partial sums (in the accumulator
# dtype: float32 for float16 output) added in order, rounded once to out's dtype
@per_dtype(_sum_slices_signature, threads=SUM_THREADS, half=True)
def sum_slices_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(ws, out):
        for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            acc = at(0)
            for sl in range(ws.shape[0]):
                acc += ws[sl, e]
            out[e] = dt(acc)
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


@functools.lru_cache(maxsize=256)
def _patch_offsets(Cg, Hp, Wp, g):
    """off[(c*R + r)*S + s] = (c*Hp + r*dh)*Wp + s*dw: where tap (c, r, s) sits from a window's
    origin (cached per shape, like ``_columns``)."""
    c = np.arange(Cg)[:, None, None]
    r = np.arange(g.R)[None, :, None]
    s = np.arange(g.S)[None, None, :]
    return ((c * Hp + r * g.dil_h) * Wp + s * g.dil_w).reshape(-1).astype(np.int64)


def _runs(items):
    return max(1, min(items, CPU_RUNS_PER_THREAD * numba.get_num_threads()))


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


def _cpu_chunk(length, dtype, width=None):
    """Reduction steps per micro-panel: a panel (chunk x ``width``) fills at most about
    CPU_PANEL_BYTES of L1 (``width`` None: NR, the gathered kernels), or CPU_TURNED_PANEL_BYTES
    (a turned-round panel width), and ``length`` is cut into chunks as even as possible (no
    short last chunk)."""
    budget = CPU_PANEL_BYTES if width is None else CPU_TURNED_PANEL_BYTES
    width = panel_width(dtype) if width is None else width
    most = max(MR, budget // (width * np.dtype(dtype).itemsize))
    length = max(1, length)
    return -(-length // -(-length // most))


def _turned_round(rows, length, dtype):
    """The panel width with which a product of ``rows`` output rows (channels) and a reduction of
    ``length`` runs turned round (``implicit_gemm_pixel_rows_cpu``,
    ``implicit_gemm_bwd_filter_tap_rows_cpu``), or 0 to run it gathered: NB when the rows fill one
    or two NB-wide panels and the reduction is long, one vector (``gather_fma1``) for
    CPU_ONE_VECTOR_MIN_ROWS up to a vector's worth of rows. With more rows the gathered B panels of
    ``implicit_gemm_cpu`` serve enough rows to pay for their gather; between one vector and NB,
    the padding to NB wastes the FMAs; with a short reduction, the accumulators' loads and stores
    per micro-tile cost more than the packing they save (bench: docs/benchmarks.md)."""
    nb = gather_panel_width(dtype)
    if nb <= rows <= 2 * nb and length >= CPU_TURNED_MIN_LENGTH:
        return nb
    one = lanes(dtype)
    if CPU_ONE_VECTOR_MIN_ROWS <= rows <= one and length >= CPU_ONE_VECTOR_MIN_LENGTH:
        return one
    return 0


def _product_plan(rows, cols, groups, dtype):
    """(tile, row_block, items) for ``implicit_gemm_cpu``: the columns cut evenly into tiles of at
    most CPU_TILE_PANELS micro-panels (each row block of A is read once per tile); the rows split
    into the fewest blocks (multiples of MR) that share the items evenly among the threads, or
    give each thread at least CPU_RUNS_PER_THREAD of them: 3 items on 2 threads take as long as 4
    (measured: vgg16.conv5_2 at batch 4, 17.2 ms with 3 items)."""
    nr = panel_width(dtype)
    threads = numba.get_num_threads()
    panels = -(-cols // nr)
    tile = nr * -(-panels // -(-panels // CPU_TILE_PANELS))
    tiles = -(-cols // tile)
    rp = round_up(rows, MR)
    rblocks = 1
    while (rblocks < rp // MR and (groups * tiles * rblocks) % threads
           and groups * tiles * rblocks < CPU_RUNS_PER_THREAD * threads):
        rblocks += 1
    row_block = round_up(-(-rp // rblocks), MR)
    return tile, row_block, groups * tiles * -(-rp // row_block)


def _pixel_rows_plan(rows, cols, groups, nb):
    """(tile, block, items) for ``implicit_gemm_pixel_rows_cpu``: tiles of CPU_PIXEL_MICRO_TILES
    micro-tiles; the rows split into the fewest NB-wide blocks that share the items evenly among
    the threads or give each at least CPU_RUNS_PER_THREAD (a 2 x 2 map of 512 channels at batch
    32 has 128 columns: 2 tiles)."""
    threads = numba.get_num_threads()
    tile = PR * CPU_PIXEL_MICRO_TILES
    tiles = -(-cols // tile)
    kp = round_up(rows, nb)
    kblocks = 1
    while (kblocks < kp // nb and (groups * tiles * kblocks) % threads
           and groups * tiles * kblocks < CPU_RUNS_PER_THREAD * threads):
        kblocks += 1
    block = round_up(-(-kp // kblocks), nb)
    return tile, block, groups * tiles * -(-kp // block)


def run_product(src, off, org, src_group, a, out, dst, out_row, out_group, groups, bias=None, act=None):
    """``implicit_gemm_cpu`` with A = a (groups, rows, L) packed here, tiles planned here (the
    columns gathered once up front when the rows are split), ``bias`` ((groups*rows,) or None)
    and activation ``act`` (None, "relu", "tanh", "sigmoid") fused into its epilogue; shared
    with conv3d."""
    rows = a.shape[1]
    code = epilogue_code(act, "implicit_gemm")
    if code == TANH and src.dtype == np.float32:
        code = TANH_RATIONAL
    bias = np.empty(0, src.dtype) if bias is None else bias
    nb = _turned_round(rows, off.shape[0], src.dtype)
    if nb:
        tile, block, items = _pixel_rows_plan(rows, org.shape[0], groups, nb)
        implicit_gemm_pixel_rows_cpu(src, off, org, src_group, pack_rows(a, nb), nb, rows, out, dst, out_row,
                                     out_group, groups, tile, block, _runs(items),
                                     _cpu_chunk(off.shape[0], src.dtype, nb), bias, code)
        return
    tile, row_block, items = _product_plan(rows, org.shape[0], groups, src.dtype)
    chunk = _cpu_chunk(off.shape[0], src.dtype)
    if row_block < round_up(rows, MR):
        gathered = np.empty(groups * -(-org.shape[0] // tile) * off.shape[0] * tile, src.dtype)
        gather_all_cpu(src, off, org, src_group, groups, tile, chunk, gathered)
    else:
        gathered = np.empty(0, src.dtype)
    implicit_gemm_cpu(src, off, org, src_group, pack_rows(a), rows, out, dst, out_row, out_group, groups, tile,
                      chunk, row_block, _runs(items), gathered, bias, code)


@functools.lru_cache(maxsize=64)     # a model's shapes and phases; each entry is 2 * N*P*Q int64
def _columns(N, src_image, P, src_row, Q, src_col, dst_image, dst_row, dst_col, dst_base):
    """(org, dst): the product's columns, pixel (n, p, q) of every image at ``org = n*src_image +
    p*src_row + q*src_col`` in the source and ``dst = n*dst_image + p*dst_row + q*dst_col +
    dst_base`` in the output, image-major. Cached per shape (0.16 ms of a LeNet-5 step), so the
    arrays are shared: the kernels only read them."""
    n = np.arange(N, dtype=np.int64)[:, None, None]
    p = np.arange(P, dtype=np.int64)[None, :, None]
    q = np.arange(Q, dtype=np.int64)[None, None, :]
    return ((n * src_image + p * src_row + q * src_col).reshape(-1),
            (n * dst_image + p * dst_row + q * dst_col + dst_base).reshape(-1))


def _fwd_cpu(x, w, y, g, bias=None, act=None):
    xp, Hp, Wp = _padded_source(x, g)
    Cg, Kg = g.C // g.groups, g.K // g.groups
    PQ = g.P * g.Q
    org, dst = _columns(g.N, g.C * Hp * Wp, g.P, g.stride_h * Wp, g.Q, g.stride_w, g.K * PQ, g.Q, 1, 0)
    run_product(xp.reshape(-1), _patch_offsets(Cg, Hp, Wp, g), org, Cg * Hp * Wp,
                w.reshape(g.groups, Kg, -1), y.reshape(-1), dst, PQ, Kg * PQ, g.groups, bias, act)


def _bwd_data_cpu(dy, w, dx, g):
    Cg, Kg = g.C // g.groups, g.K // g.groups
    rows, ptop, Pp = _stride_phases(g.H, g.P, g.R, g.stride_h, g.pad_h, g.dil_h)
    cols, qleft, Qp = _stride_phases(g.W, g.Q, g.S, g.stride_w, g.pad_w, g.dil_w)
    dyp = np.zeros((g.N, g.K, Pp, Qp), dy.dtype)
    dyp[:, :, ptop:ptop + g.P, qleft:qleft + g.Q] = dy
    wg = w.reshape(g.groups, Kg, Cg, g.R, g.S)
    k = np.arange(Kg)[:, None, None]
    for (h0, nh, rt, ro), (w0, nw, st, so) in ((a, b) for a in rows for b in cols):
        if nh == 0 or nw == 0:
            continue
        if not (len(rt) and len(st)):
            dx[:, :, h0::g.stride_h, w0::g.stride_w] = 0
            continue
        oh = np.array(ro)[None, :, None] + ptop
        ow = np.array(so)[None, None, :] + qleft
        off = ((k * Pp + oh) * Qp + ow).reshape(-1).astype(np.int64)
        # A[c, (k, r, s)] = w[k, c, r, s] over the phase's taps
        taps = wg[:, :, :, rt.start:rt.stop:rt.step, st.start:st.stop:st.step].transpose(0, 2, 1, 3, 4)
        org, dst = _columns(g.N, g.K * Pp * Qp, nh, Qp, nw, 1, g.C * g.H * g.W, g.stride_h * g.W, g.stride_w,
                            h0 * g.W + w0)
        run_product(dyp.reshape(-1), off, org, Kg * Pp * Qp, taps.reshape(g.groups, Cg, -1),
                    dx.reshape(-1), dst, g.H * g.W, Cg * g.H * g.W, g.groups)


def _bwd_filter_cpu(dy, x, dw, g):
    xp, Hp, Wp = _padded_source(x, g)
    Cg, Kg = g.C // g.groups, g.K // g.groups
    PQ = g.P * g.Q
    org, _ = _columns(g.N, g.C * Hp * Wp, g.P, g.stride_h * Wp, g.Q, g.stride_w, 0, 0, 0, 0)
    run_filter_product(xp.reshape(-1), _patch_offsets(Cg, Hp, Wp, g), org, Cg * Hp * Wp,
                       dy.reshape(g.N, g.groups, Kg, PQ), dw.reshape(g.K, -1), g.groups)


def run_filter_product(src, off, org, src_group, dy4, dw2, groups):
    """dW (K, L) = the backward-filter product of ``implicit_gemm_bwd_filter_cpu`` (or, for
    ``_turned_round`` shapes, ``implicit_gemm_bwd_filter_tap_rows_cpu``), dY given as (N, groups,
    Kg, pixels), its columns in ``org``'s order (image-major); shared with conv3d."""
    N, _, Kg, pix = dy4.shape
    T = N * pix
    L = off.shape[0]
    dy3 = dy4.transpose(1, 2, 0, 3).reshape(groups, Kg, T)
    nb = _turned_round(Kg, T, src.dtype)
    if nb == gather_panel_width(src.dtype) and L < CPU_TURNED_MIN_TAPS:
        nb = 0
    if nb:
        # tap tiles of even size: a short last tile would leave its thread's slices idle
        # (cifar10.conv1's 75 taps: 64 + 11)
        tiles = -(-L // (PR * CPU_TAP_MICRO_TILES))
        tile, chunk = round_up(-(-L // tiles), PR), _cpu_chunk(T, src.dtype, nb)
    else:
        tile, chunk = panel_width(src.dtype) * CPU_FILTER_PANELS, _cpu_chunk(T, src.dtype)
    tiles = -(-L // tile)
    # a fixed number of slices (never the thread count), so the sums' order and result are fixed
    slices = max(1, min(-(-T // chunk), -(-CPU_MIN_ITEMS // (groups * tiles))))
    ws = dw2.reshape(1, *dw2.shape) if slices == 1 else np.empty((slices,) + dw2.shape, dw2.dtype)
    runs = _runs(groups * tiles * slices)
    if nb:
        implicit_gemm_bwd_filter_tap_rows_cpu(src, off, org, src_group, pack_rows(dy3, nb), nb, Kg, ws, groups, tile,
                                              runs, chunk)
    else:
        implicit_gemm_bwd_filter_cpu(src, off, org, src_group, pack_rows(dy3), Kg, ws, groups, tile, chunk, runs)
    if slices > 1:
        sum_slices_cpu(ws.reshape(slices, -1), dw2.reshape(-1))


def _threads():
    return (TX, THREADS // TX)


def _sizes(g):
    return (g.N, g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w,
            g.groups)


def _fwd_cuda(x, w, y, g):
    Kg = g.K // g.groups
    grid = (blocks(g.N * g.P * g.Q, BN), blocks(Kg, BM), g.groups)
    conv2d_fwd_implicit_gemm_cuda[x.dtype][grid, _threads(), stream()](
        x.reshape(-1), w.reshape(-1), y.reshape(-1), *_sizes(g))


def _bwd_data_cuda(dy, w, dx, g):
    Cg = g.C // g.groups
    grid = (blocks(g.N * g.H * g.W, BN), blocks(Cg, BM), g.groups)
    conv2d_bwd_data_implicit_gemm_cuda[dy.dtype][grid, _threads(), stream()](
        dy.reshape(-1), w.reshape(-1), dx.reshape(-1), *_sizes(g))


def _bwd_filter_cuda(dy, x, dw, g):
    Kg = g.K // g.groups
    L = (g.C // g.groups) * g.R * g.S
    red = g.N * g.P * g.Q
    tiles_mn = blocks(L, BN) * blocks(Kg, BM) * g.groups
    kernel = conv2d_bwd_filter_implicit_gemm_cuda[dy.dtype]
    slices = wave_splits(tiles_mn, blocks(red, BK), resident_blocks(kernel, THREADS))
    slice_len = blocks(blocks(red, slices), BK) * BK
    slices = blocks(red, slice_len)
    ws = dw.reshape(1, g.K, L) if slices == 1 else device_empty((slices, g.K, L), dw.dtype)
    grid = (blocks(L, BN), blocks(Kg, BM), g.groups * slices)
    kernel[grid, _threads(), stream()](dy.reshape(-1), x.reshape(-1), ws.reshape(-1), *_sizes(g), slice_len)
    if slices > 1:
        out = dw.reshape(g.K * L)
        sum_slices_cuda[dw.dtype][blocks(out.shape[0], SUM_THREADS), SUM_THREADS, stream()](ws.reshape(slices, -1), out)


def _limits(g, device, pass_):
    """On CUDA the 2-D kernels index with 32-bit offsets: every operand (and backward filter's
    slices of dw, at most one per reduction tile) must have fewer than 2**31 elements."""
    if device != "cuda" or g.rank != 2:
        return True, ""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in g.operand_shapes(pass_)]
    sizes.append(g.K * (g.C // g.groups) * g.R * g.S * blocks(g.N * g.P * g.Q, BK))
    if max(sizes[:3]) >= INDEX_LIMIT or (pass_ == "bwd_filter" and sizes[3] >= INDEX_LIMIT):
        return False, (f"implicit_gemm on CUDA indexes with 32-bit offsets; this convolution has an operand of "
                       f"{max(sizes[:3])} elements (the limit is 2**31 - 1)")
    return True, ""


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


def conv_fwd_implicit_gemm_fused(x, w, y, g, bias, act):
    """The forward pass with ``y = act(conv(x, w) + bias)`` (``activation.bias_activation``;
    bias None or (K,), act None, "relu", "tanh" or "sigmoid"), 2-D or 3-D: on the CPU the
    bias and activation are the micro-kernel's epilogue (no second pass over y); on CUDA a
    fused bias-activation pass follows the product."""
    check_conv_arrays("implicit_gemm", g, "fwd", x, w, y)
    if is_device_array(x):
        (_3D._fwd_cuda if g.rank == 3 else _fwd_cuda)(x, w, y, g)
        bias_activation(act, y, bias)
    else:
        epilogue_code(act, "implicit_gemm")
        (_3D._fwd_cpu if g.rank == 3 else _fwd_cpu)(x, w, y, g, bias, act)


ALGORITHM = ConvAlgorithm("implicit_gemm", by_rank(conv2d_fwd_implicit_gemm, _3D.conv3d_fwd_implicit_gemm),
                          by_rank(conv2d_bwd_data_implicit_gemm, _3D.conv3d_bwd_data_implicit_gemm),
                          by_rank(conv2d_bwd_filter_implicit_gemm, _3D.conv3d_bwd_filter_implicit_gemm),
                          ranks=(2, 3), limits=_limits, preference=lambda g, device, pass_: 2,
                          fused_fwd=conv_fwd_implicit_gemm_fused,
                          summary="GEMM tiles gathered straight from the input; no column matrix")
