"""Direct 2-D convolution: forward, backward-data and backward-filter, CUDA and CPU.

With ``xpad`` the zero-padded input and Cg = C/groups, Kg = K/groups, gi = k // Kg:

    forward         y[n,k,p,q]  = sum_{c<Cg,r,s} xpad[n, gi*Cg+c, p*sh + r*dh, q*sw + s*dw] * w[k,c,r,s]
    backward-data   dx[n,c,h,w] = sum_{k in c's group, r, s, p, q : h+ph = p*sh + r*dh, w+pw = q*sw + s*dw}
                                  dy[n,k,p,q] * w[k, c mod Cg, r, s]
    backward-filter dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xpad[n, gi*Cg+c, p*sh + r*dh, q*sw + s*dw]

CUDA: the forward gives each block a tile of output pixels and FWD_KT output channels and
stages the tile's input footprint and the filter taps in shared memory, a chunk of input
channels at a time (a block whose footprint does not fit reads global memory instead).
Backward-data is a gather, one thread per input element looping over the (k, r, s) whose
window covers it, with the taps staged in shared memory. Backward-filter gives each block one
(k, c) pair and a chunk of taps; its threads split the (p, q) plane and the partial sums are
added in thread order.

CPU: the padded input is split once into stride phases, ``xs[n, c, a, b, i, j] = xpad[n, c,
i*sh + a, j*sw + b]``, each phase an ``Hq x Wq`` plane stored flat. Tap (r, s) of output row p then
reads phase ((r*dh) % sh, (s*dw) % sw) at flat position ``p*Wq + q + off(r, s)``, with
``off(r, s) = (r*dh // sh)*Wq + s*dw // sw``: every tap is the same contiguous vector shifted by a
constant, so a pass is a sum of shifted vectors with per-channel weights (forward,
backward-data) or a set of dot products of shifted vectors (backward-filter). Outputs are
computed on the ``P x Wq`` grid and the ``Wq - Q`` extra columns dropped, which keeps the
innermost loop long and branch-free. Backward-data is the same sum run on ``dy`` laid out on
that grid with zeros in the extra columns, one input phase at a time. No atomics anywhere:
every output element is owned by one thread or loop iteration, so all three passes are bitwise
reproducible.

float16 (1-D and 2-D; ``float16.py``): every pass reads float16 into float32, sums in float32
and rounds once when it stores. The CUDA kernels stage their shared tiles in float32; the CPU
kernels run on float32 copies (the phase split, the gathered weights and the flattened ``dy``
are copies already, and float16 widens to float32 exactly) and round into the float16 output.
"""
import functools
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda, int32, int64, njit, prange, uint64

from .conv_algorithm import WITH_HALF, ConvAlgorithm, by_rank, check_conv_arrays
from .cpu_util import cpu_kernel
from .cuda_util import SIMULATOR, array4, blocks, is_device_array, per_dtype, resident_blocks, stream, wave_splits
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen

# CUDA forward: output channels per thread, and (rows, cols) output tiles in order of preference;
# the launcher takes the first whose input footprint fits in FWD_SMEM_IN elements.
FWD_KT = 2 if SIMULATOR else 8
FWD_TILES = ((4, 8), (4, 4), (2, 2)) if SIMULATOR else ((8, 16), (8, 8), (4, 8), (4, 4))
FWD_SMEM_IN = 256 if SIMULATOR else 2048
# CUDA: filter weights staged in shared memory per block (forward and backward-data); the forward
# stages FWD_KT weights per tap.
SMEM_W = 128 if SIMULATOR else 1024
FWD_TAPS = SMEM_W // FWD_KT
# CUDA backward-data: (rows, cols) of input elements per block.
BWD_TILE = (4, 8) if SIMULATOR else (8, 32)
# CUDA backward-filter: threads per block, and most filter taps per block; the launcher splits
# the taps further while that fills the device's resident blocks better (filter_chunks).
FILTER_THREADS = 4 if SIMULATOR else 128
FILTER_TAPS = 16 if SIMULATOR else 32
FILTER_SMEM = FILTER_THREADS * FILTER_TAPS

# CPU: output channels per register block and taps per inner-loop pass (both written out in the
# _shift_* helpers), loop lengths rounded to VEC (the float32 lanes of AVX2) so that no scalar
# tail runs, and output elements per accumulator chunk.
KB = 4
TB = 3
VEC = 8
CHUNK = 1024
# Vectorised reductions need reassociation; NaN and Inf keep their IEEE meaning.
FASTMATH = {"contract", "reassoc"}


# ---------------------------------------------------------------------------------------------
# CPU building blocks shared by the three passes
# ---------------------------------------------------------------------------------------------

@njit(cache=True)
def pad_phases_cpu(x, xs, pad_h, pad_w, sh, sw, hq, wq, h_need, w_need):
    """xs[n, ((c*sh + a)*sw + b)*hq*wq + i*wq + j] = xpad[n, c, i*sh + a, j*sw + b] for padded
    rows < h_need and columns < w_need (the ones any output reads); xs arrives zero-filled."""
    n_, c_, h_, w_ = x.shape
    plane = hq * wq
    for nc in range(n_ * c_):
        n = nc // c_
        c = nc % c_
        for a in range(sh):
            for i in range(hq):
                hp = i * sh + a
                h = hp - pad_h
                if hp >= h_need or h < 0 or h >= h_:
                    continue
                for b in range(sw):
                    j0 = max(0, (pad_w - b + sw - 1) // sw)
                    j1 = min(wq, (min(w_ + pad_w, w_need) - b + sw - 1) // sw)
                    row = ((c * sh + a) * sw + b) * plane + i * wq
                    for j in range(j0, j1):
                        xs[n, row + j] = widen(x[n, c, h, j * sw + b - pad_w])


@njit(inline="always")
def _flatten_rows_body(dy, dyz, front, ld, wq):
    n_, k_, p_, q_ = dy.shape
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk - n * k_
        src = dy[n, k]
        dst = dyz[n]
        for p in range(p_):
            row = k * ld + front + p * wq
            for q in range(q_):
                dst[uint64(row + q)] = widen(src[p, q])


@njit(parallel=True, cache=True)
def flatten_rows_cpu(dy, dyz, front, ld, wq):
    """dyz[n, k*ld + front + p*wq + q] = dy[n, k, p, q]; dyz arrives zero-filled, so the
    columns q >= Q of the wq-wide rows and the ``front`` lead-in read as zero."""
    _flatten_rows_body(dy, dyz, front, ld, wq)


@njit(cache=True)
def flatten_rows_serial_cpu(dy, dyz, front, ld, wq):
    _flatten_rows_body(dy, dyz, front, ld, wq)


@njit(fastmath=FASTMATH, cache=True)
def _shift_sum4(acc, src, toff, wt, row, ntap, m):
    """acc[i, j] += sum_{t < ntap} wt[row + i, t] * src[toff[t] + j] for i < 4, j < m."""
    a0 = acc[0]
    a1 = acc[1]
    a2 = acc[2]
    a3 = acc[3]
    full = ntap - ntap % TB
    # shifted slices, not src[toff[t] + j]: LLVM vectorises only loops whose indices it can
    # prove non-negative
    for t in range(0, full, TB):
        w00 = wt[row, t]
        w01 = wt[row, t + 1]
        w02 = wt[row, t + 2]
        w10 = wt[row + 1, t]
        w11 = wt[row + 1, t + 1]
        w12 = wt[row + 1, t + 2]
        w20 = wt[row + 2, t]
        w21 = wt[row + 2, t + 1]
        w22 = wt[row + 2, t + 2]
        w30 = wt[row + 3, t]
        w31 = wt[row + 3, t + 1]
        w32 = wt[row + 3, t + 2]
        s0 = src[toff[t]:]
        s1 = src[toff[t + 1]:]
        s2 = src[toff[t + 2]:]
        for j in range(m):
            x0 = s0[j]
            x1 = s1[j]
            x2 = s2[j]
            a0[j] += w00 * x0 + w01 * x1 + w02 * x2
            a1[j] += w10 * x0 + w11 * x1 + w12 * x2
            a2[j] += w20 * x0 + w21 * x1 + w22 * x2
            a3[j] += w30 * x0 + w31 * x1 + w32 * x2
    # the last taps one at a time: a zero-weight tap padding the triple would turn an inf
    # input into NaN (0 * inf)
    for t in range(full, ntap):
        w0 = wt[row, t]
        w1 = wt[row + 1, t]
        w2 = wt[row + 2, t]
        w3 = wt[row + 3, t]
        s0 = src[toff[t]:]
        for j in range(m):
            x0 = s0[j]
            a0[j] += w0 * x0
            a1[j] += w1 * x0
            a2[j] += w2 * x0
            a3[j] += w3 * x0


@njit(fastmath=FASTMATH, cache=True)
def _shift_sum1(a0, src, toff, wt, row, ntap, m):
    """a0[j] += sum_{t < ntap} wt[row, t] * src[toff[t] + j] for j < m."""
    full = ntap - ntap % TB
    for t in range(0, full, TB):
        w0 = wt[row, t]
        w1 = wt[row, t + 1]
        w2 = wt[row, t + 2]
        s0 = src[toff[t]:]
        s1 = src[toff[t + 1]:]
        s2 = src[toff[t + 2]:]
        for j in range(m):
            a0[j] += w0 * s0[j] + w1 * s1[j] + w2 * s2[j]
    for t in range(full, ntap):  # one at a time, as in _shift_sum4
        w0 = wt[row, t]
        s0 = src[toff[t]:]
        for j in range(m):
            a0[j] += w0 * s0[j]


@njit(fastmath=FASTMATH, cache=True)
def _shift_dot4(acc, g, ld, src, toff, t0, t1, m):
    """acc[i, t - t0] += sum_{j < m} g[i*ld + j] * src[toff[t] + j] for i < 4, t0 <= t < t1."""
    g0 = g[:m]
    g1 = g[ld:ld + m]
    g2 = g[2 * ld:2 * ld + m]
    g3 = g[3 * ld:3 * ld + m]
    zero = acc.dtype.type(0)
    for t in range(t0, t1, TB):
        s0 = src[toff[t]:]
        s1 = src[toff[t + 1]:]
        s2 = src[toff[t + 2]:]
        c00 = c01 = c02 = c10 = c11 = c12 = zero
        c20 = c21 = c22 = c30 = c31 = c32 = zero
        for j in range(m):
            x0 = s0[j]
            x1 = s1[j]
            x2 = s2[j]
            d0 = g0[j]
            d1 = g1[j]
            d2 = g2[j]
            d3 = g3[j]
            c00 += d0 * x0
            c01 += d0 * x1
            c02 += d0 * x2
            c10 += d1 * x0
            c11 += d1 * x1
            c12 += d1 * x2
            c20 += d2 * x0
            c21 += d2 * x1
            c22 += d2 * x2
            c30 += d3 * x0
            c31 += d3 * x1
            c32 += d3 * x2
        u = t - t0
        acc[0, u] += c00
        acc[0, u + 1] += c01
        acc[0, u + 2] += c02
        acc[1, u] += c10
        acc[1, u + 1] += c11
        acc[1, u + 2] += c12
        acc[2, u] += c20
        acc[2, u + 1] += c21
        acc[2, u + 2] += c22
        acc[3, u] += c30
        acc[3, u + 1] += c31
        acc[3, u + 2] += c32


@njit(fastmath=FASTMATH, cache=True)
def _shift_dot1(a0, g, src, toff, t0, t1, m):
    """a0[t - t0] += sum_{j < m} g[j] * src[toff[t] + j] for t0 <= t < t1."""
    g0 = g[:m]
    zero = a0.dtype.type(0)
    for t in range(t0, t1, TB):
        s0 = src[toff[t]:]
        s1 = src[toff[t + 1]:]
        s2 = src[toff[t + 2]:]
        c0 = c1 = c2 = zero
        for j in range(m):
            d0 = g0[j]
            c0 += d0 * s0[j]
            c1 += d0 * s1[j]
            c2 += d0 * s2[j]
        u = t - t0
        a0[u] += c0
        a0[u + 1] += c1
        a0[u + 2] += c2


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def _signature(dt):
    return (array4(dt), array4(dt), array4(dt)) + (int64,) * 7


# one thread per output pixel (n, p, q) of a blockDim.y x blockDim.x tile, for FWD_KT channels k
@per_dtype(_signature, threads=FWD_TILES[0][0] * FWD_TILES[0][1], half=True)
def conv2d_fwd_direct_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(x, w, y, sh, sw, ph, pw, dh, dw, groups):
        x_tile = cuda.shared.array(FWD_SMEM_IN, at)
        w_tile = cuda.shared.array(SMEM_W, at)
        tap_at = cuda.shared.array(FWD_TAPS, int32)
        acc = cuda.local.array(FWD_KT, at)
        h_, w_ = x.shape[2], x.shape[3]
        k_, cg, r_, s_ = w.shape
        p_, q_ = y.shape[2], y.shape[3]
        kg = k_ // groups
        tp, tq = cuda.blockDim.y, cuda.blockDim.x
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * tq + tx
        tiles_q = (q_ + tq - 1) // tq
        p0 = cuda.blockIdx.x // tiles_q * tp
        q0 = cuda.blockIdx.x % tiles_q * tq
        kblocks = (kg + FWD_KT - 1) // FWD_KT
        gi = cuda.blockIdx.y // kblocks
        k0 = gi * kg + cuda.blockIdx.y % kblocks * FWD_KT
        kn = min(FWD_KT, (gi + 1) * kg - k0)
        n = cuda.blockIdx.z
        p, q = p0 + ty, q0 + tx
        rs = r_ * s_
        fh = (tp - 1) * sh + (r_ - 1) * dh + 1
        fw = (tq - 1) * sw + (s_ - 1) * dw + 1
        cb = min(cg, min(FWD_SMEM_IN // (fh * fw), FWD_TAPS // rs))
        for kk in range(FWD_KT):
            acc[kk] = at(0)
        if cb > 0:
            h0, w0 = p0 * sh - ph, q0 * sw - pw
            for c0 in range(0, cg, cb):
                cn = min(cb, cg - c0)
                cuda.syncthreads()
                for cc in range(cn):
                    xc = x[n, gi * cg + c0 + cc]
                    i = ty
                    while i < fh:
                        h = h0 + i
                        j = tx
                        while j < fw:
                            v = at(0)
                            if 0 <= h < h_ and 0 <= w0 + j < w_:
                                v = at(xc[h, w0 + j])
                            x_tile[(cc * fh + i) * fw + j] = v
                            j += tq
                        i += tp
                e = tid
                while e < cn * rs * FWD_KT:
                    kk = e % FWD_KT
                    t = e // FWD_KT
                    cc = t // rs
                    r = (t - cc * rs) // s_
                    v = at(0)
                    if kk < kn:
                        v = at(w[k0 + kk, c0 + cc, r, t - cc * rs - r * s_])
                    w_tile[e] = v
                    if kk == 0:
                        tap_at[t] = (cc * fh + r * dh) * fw + (t - cc * rs - r * s_) * dw
                    e += tp * tq
                cuda.syncthreads()
                xb = ty * sh * fw + tx * sw
                for t in range(cn * rs):
                    xv = x_tile[xb + tap_at[t]]
                    for kk in range(FWD_KT):
                        acc[kk] += xv * w_tile[t * FWD_KT + kk]
        elif p < p_ and q < q_:
            # the input footprint or the taps outgrow shared memory: read global memory directly
            for c in range(cg):
                xc = x[n, gi * cg + c]
                for r in range(r_):
                    h = p * sh - ph + r * dh
                    for s in range(s_):
                        wi = q * sw - pw + s * dw
                        if 0 <= h < h_ and 0 <= wi < w_:
                            xv = at(xc[h, wi])
                            for kk in range(FWD_KT):
                                if kk < kn:
                                    acc[kk] += xv * at(w[k0 + kk, c, r, s])
        if p < p_ and q < q_:
            for kk in range(FWD_KT):
                if kk < kn:
                    y[n, k0 + kk, p, q] = dt(acc[kk])
    return kernel


@njit(parallel=True, cache=True)
def conv2d_fwd_direct_cpu(xs, wt, toff, ntap, y, group_stride, wq, rows):
    """y[n, gi*Kg + k, p, q] = sum_{t < ntap} wt[gi, k, t] * xs[n, gi*group_stride + toff[t] + p*wq + q],
    t running over the taps (c, r, s) of group gi (wt is zero past Kg rows); one iteration per
    (n, group, block of KB channels)."""
    n_, k_, p_, q_ = y.shape
    groups = wt.shape[0]
    kg = k_ // groups
    nkb = (kg + KB - 1) // KB
    for item in prange(n_ * groups * nkb):
        n = item // (groups * nkb)
        gi = item // nkb % groups
        k0 = item % nkb * KB
        kn = min(KB, kg - k0)
        acc = np.empty((KB, rows * wq + VEC), xs.dtype)
        for p0 in range(0, p_, rows):
            p1 = min(p_, p0 + rows)
            m = -(-(p1 - p0) * wq // VEC) * VEC
            for i in range(KB):
                for j in range(m):
                    acc[i, j] = 0
            src = xs[n, gi * group_stride + p0 * wq:]
            # three channels run faster as four with a zero weight row than one at a time
            if kn >= KB - 1:
                _shift_sum4(acc, src, toff, wt[gi], k0, ntap, m)
            else:
                for i in range(kn):
                    _shift_sum1(acc[i], src, toff, wt[gi], k0 + i, ntap, m)
            for i in range(kn):
                for p in range(p0, p1):
                    u = (p - p0) * wq
                    for q in range(q_):
                        y[n, gi * kg + k0 + i, p, q] = narrow(acc[i, u + q], y)


# ---------------------------------------------------------------------------------------------
# Backward-data
# ---------------------------------------------------------------------------------------------

# one thread per input element (n, c, h, w) of a blockDim.y x blockDim.x tile
@per_dtype(_signature, threads=BWD_TILE[0] * BWD_TILE[1], half=True)
def conv2d_bwd_data_direct_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(dy, w, dx, sh, sw, ph, pw, dh, dw, groups):
        w_tile = cuda.shared.array(SMEM_W, at)
        k_, cg, r_, s_ = w.shape
        p_, q_ = dy.shape[2], dy.shape[3]
        h_, w_ = dx.shape[2], dx.shape[3]
        kg = k_ // groups
        th, tw = cuda.blockDim.y, cuda.blockDim.x
        tiles_w = (w_ + tw - 1) // tw
        h = cuda.blockIdx.x // tiles_w * th + cuda.threadIdx.y
        wi = cuda.blockIdx.x % tiles_w * tw + cuda.threadIdx.x
        c = cuda.blockIdx.y
        n = cuda.blockIdx.z
        gi = c // cg
        cl = c - gi * cg
        rs = r_ * s_
        tc = min(rs, SMEM_W)
        kc = min(kg, SMEM_W // tc)
        acc = at(0)
        for k0 in range(gi * kg, (gi + 1) * kg, kc):
            kn = min(kc, (gi + 1) * kg - k0)
            for t0 in range(0, rs, tc):
                tn = min(tc, rs - t0)
                cuda.syncthreads()
                e = cuda.threadIdx.y * tw + cuda.threadIdx.x
                while e < kn * tn:
                    kk = e // tn
                    t = t0 + e - kk * tn
                    r = t // s_
                    w_tile[e] = at(w[k0 + kk, cl, r, t - r * s_])
                    e += th * tw
                cuda.syncthreads()
                if h < h_ and wi < w_:
                    for t in range(tn):
                        r = (t0 + t) // s_
                        hp = h + ph - r * dh
                        p = hp // sh
                        wp = wi + pw - (t0 + t - r * s_) * dw
                        q = wp // sw
                        if hp >= 0 and p * sh == hp and p < p_ and wp >= 0 and q * sw == wp and q < q_:
                            for kk in range(kn):
                                acc += at(dy[n, k0 + kk, p, q]) * w_tile[kk * tn + t]
        if h < h_ and wi < w_:
            dx[n, c, h, wi] = dt(acc)
    return kernel


@njit(parallel=True, cache=True)
def conv2d_bwd_data_direct_cpu(dyz, wtd, tofd, ntap, dx, group_stride, pad_h, pad_w, sh, sw, hq, wq, rows):
    """At input phase (a, b), plane position (i, j): dx[n, gi*Cg + c, i*sh + a - pad_h, j*sw + b -
    pad_w] = sum_t wtd[gi, ab, c, t] * dyz[n, gi*group_stride + tofd[ab, t] + i*wq + j], t running
    over the (k, r, s) of group gi whose tap lands on phase ab = a*sw + b; one iteration per (n,
    group, phase, block of KB channels). Writes the input positions the phase planes cover; dx
    arrives zero-filled."""
    n_, c_, h_, w_ = dx.shape
    groups, planes = wtd.shape[0], wtd.shape[1]
    cg = c_ // groups
    ncb = (cg + KB - 1) // KB
    for item in prange(n_ * groups * planes * ncb):
        n = item // (groups * planes * ncb)
        gi = item // (planes * ncb) % groups
        ab = item // ncb % planes
        c0 = item % ncb * KB
        cn = min(KB, cg - c0)
        a = ab // sw
        b = ab % sw
        j0 = max(0, (pad_w - b + sw - 1) // sw)
        j1 = min(wq, (w_ + pad_w - b + sw - 1) // sw)
        acc = np.empty((KB, rows * wq + VEC), dyz.dtype)
        for i0 in range(0, hq, rows):
            i1 = min(hq, i0 + rows)
            m = -(-(i1 - i0) * wq // VEC) * VEC
            for i in range(KB):
                for j in range(m):
                    acc[i, j] = 0
            src = dyz[n, gi * group_stride + i0 * wq:]
            if cn >= KB - 1:
                _shift_sum4(acc, src, tofd[ab], wtd[gi, ab], c0, ntap[ab], m)
            else:
                for i in range(cn):
                    _shift_sum1(acc[i], src, tofd[ab], wtd[gi, ab], c0 + i, ntap[ab], m)
            for i in range(cn):
                for ii in range(i0, i1):
                    h = ii * sh + a - pad_h
                    if 0 <= h < h_:
                        u = (ii - i0) * wq
                        for j in range(j0, j1):
                            dx[n, gi * cg + c0 + i, h, j * sw + b - pad_w] = narrow(acc[i, u + j], dx)


# ---------------------------------------------------------------------------------------------
# Backward-filter
# ---------------------------------------------------------------------------------------------

# one block per (k, c, chunk of taps (r, s)); each thread sums its share of the (p, q) plane over n
# for every tap of the chunk, then each tap's partial sums are added in thread order
@per_dtype(_signature, threads=FILTER_THREADS, half=True)
def conv2d_bwd_filter_direct_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(dy, x, dweight, sh, sw, ph, pw, dh, dw, groups):
        part = cuda.shared.array(FILTER_SMEM, at)
        n_, _, h_, w_ = x.shape
        k_, cg, r_, s_ = dweight.shape
        p_, q_ = dy.shape[2], dy.shape[3]
        rs = r_ * s_
        chunks = cuda.gridDim.x // (k_ * cg)
        tc = (rs + chunks - 1) // chunks
        kc = cuda.blockIdx.x // chunks
        k = kc // cg
        c = kc % cg
        xc = k // (k_ // groups) * cg + c
        t0 = cuda.blockIdx.x % chunks * tc
        tn = min(tc, rs - t0)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for t in range(tn):
            r = (t0 + t) // s_
            s = (t0 + t) % s_
            acc = at(0)
            for pq in range(tid, p_ * q_, nt):
                p = pq // q_
                q = pq % q_
                h = p * sh - ph + r * dh
                wi = q * sw - pw + s * dw
                if 0 <= h < h_ and 0 <= wi < w_:
                    for n in range(n_):
                        acc += at(dy[n, k, p, q]) * at(x[n, xc, h, wi])
            part[tid * FILTER_TAPS + t] = acc
        cuda.syncthreads()
        for t in range(tid, tn, nt):
            total = at(0)
            for j in range(nt):
                total += part[j * FILTER_TAPS + t]
            dweight[k, c, (t0 + t) // s_, (t0 + t) % s_] = dt(total)
    return kernel


@njit(parallel=True, cache=True)
def conv2d_bwd_filter_direct_cpu(dyz, xs, toff, dw2, groups, group_stride, ld, tchunk):
    """dw2[k, t] = sum_n sum_{j < ld} dyz[n, k*ld + j] * xs[n, gi*group_stride + toff[t] + j], t
    running over the taps (c, r, s) (dyz is zero where j is no output pixel); one iteration per
    (group, block of KB channels, chunk of tchunk taps), summing n in order."""
    k_, t_ = dw2.shape
    n_ = dyz.shape[0]
    kg = k_ // groups
    nkb = (kg + KB - 1) // KB
    ntap = toff.shape[0]
    ntc = (ntap + tchunk - 1) // tchunk
    for item in prange(groups * nkb * ntc):
        gi = item // (nkb * ntc)
        k0 = gi * kg + item // ntc % nkb * KB
        kn = min(KB, (gi + 1) * kg - k0)
        t0 = item % ntc * tchunk
        t1 = min(ntap, t0 + tchunk)
        acc = np.zeros((KB, tchunk), xs.dtype)
        for n in range(n_):
            src = xs[n, gi * group_stride:]
            g = dyz[n, k0 * ld:]
            if kn == KB:
                _shift_dot4(acc, g, ld, src, toff, t0, t1, ld)
            else:
                for i in range(kn):
                    _shift_dot1(acc[i], g[i * ld:], src, toff, t0, t1, ld)
        for i in range(kn):
            for t in range(t0, min(t1, t_)):
                dw2[k0 + i, t] = narrow(acc[i, t - t0], dw2)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

class _CpuPlan(NamedTuple):
    """Layouts and index tables of the CPU kernels for one geometry (module docstring)."""
    h_need: int              # padded input rows / columns that any output reads
    w_need: int
    hq: int                  # phase-plane size
    wq: int
    rows: int                # plane rows per accumulator chunk
    x_cols: int              # per-image length of the phase-split input, slack included
    x_group: int             # offset of one group's channels from the previous group's
    toff: np.ndarray         # offsets of the taps (c, r, s) of a group in it, padded to TB
    fwd_index: np.ndarray    # (groups, Kg up to KB, taps): w.ravel() positions; w.size reads 0
    dy_front: int            # backward-data: zeros ahead of each dy plane
    dy_plane: int            # backward-data: stride of the dy planes
    tofd: np.ndarray         # backward-data: (phases, taps) offsets of the taps (k, r, s)
    ntap: np.ndarray         # backward-data: taps per phase
    data_index: np.ndarray   # backward-data: (groups, phases, Cg up to KB, taps) into w.ravel()
    dy_row: int              # backward-filter: P*wq rounded up to VEC


def _round_up(n, m):
    return -(-n // m) * m


def _phase_taps(g, wq):
    """Phase index and in-plane offset of every tap (r, s), both flat over (r, s)."""
    r = np.arange(g.R)[:, None] * g.dil_h
    s = np.arange(g.S)[None, :] * g.dil_w
    phase = (r % g.stride_h) * g.stride_w + s % g.stride_w
    offset = (r // g.stride_h) * wq + s // g.stride_w
    return phase.ravel(), offset.ravel()


def _forward_taps(g, hq, wq, phase, offset):
    """toff and fwd_index of _CpuPlan."""
    kg, cg, rs = g.K // g.groups, g.C // g.groups, g.R * g.S
    toff = np.zeros(_round_up(cg * rs, TB), np.int64)
    toff[:cg * rs] = (np.arange(cg)[:, None] * g.stride_h * g.stride_w * hq * wq + phase * hq * wq
                      + offset).ravel()
    group = np.arange(g.groups)[:, None, None]
    k = np.arange(_round_up(kg, KB))[None, :, None]
    t = np.arange(toff.shape[0])[None, None, :]
    fwd_index = np.where((k < kg) & (t < cg * rs), (group * kg + k) * cg * rs + t, g.K * cg * rs)
    return toff, fwd_index


def _data_taps(g, plane, front, phase, offset):
    """tofd, ntap and data_index of _CpuPlan: phase ab's taps are its (k, r, s), k-major."""
    kg, cg, rs = g.K // g.groups, g.C // g.groups, g.R * g.S
    phases = g.stride_h * g.stride_w
    ntap = np.bincount(phase, minlength=phases).astype(np.int64) * kg
    tofd = np.full((phases, max(1, ntap.max())), front, np.int64)
    data_index = np.full((g.groups, phases, _round_up(cg, KB), tofd.shape[1]), g.K * cg * rs)
    group = np.arange(g.groups)[:, None, None, None]
    c = np.arange(cg)[None, :, None, None]
    k = np.arange(kg)[None, None, :, None]
    for ab in range(phases):
        taps = np.flatnonzero(phase == ab)
        tofd[ab, :ntap[ab]] = (np.arange(kg)[:, None] * plane + front - offset[taps]).ravel()
        index = ((group * kg + k) * cg + c) * rs + taps
        data_index[:, ab, :cg, :ntap[ab]] = index.reshape(g.groups, cg, ntap[ab])
    return tofd, ntap, data_index


@functools.lru_cache(maxsize=256)
def _cpu_plan(g):
    h_need = (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1
    w_need = (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1
    hq, wq = -(-h_need // g.stride_h), -(-w_need // g.stride_w)
    channel = g.stride_h * g.stride_w * hq * wq
    phase, offset = _phase_taps(g, wq)
    front = int(offset.max())
    plane = front + hq * wq
    return _CpuPlan(h_need, w_need, hq, wq, max(1, CHUNK // wq), g.C * channel + wq + VEC,
                    g.C // g.groups * channel, *_forward_taps(g, hq, wq, phase, offset), front, plane,
                    *_data_taps(g, plane, front, phase, offset), _round_up(g.P * wq, VEC))


def _gather(w, index):
    """w.ravel()[index] in the accumulator dtype (float16 widened, exactly), with index == w.size
    reading zero."""
    flat = np.zeros(w.size + 1, accumulator_dtype(w.dtype))
    flat[:-1] = w.ravel()
    return flat[index]


def _phase_split(x, g, plan):
    xs = np.zeros((g.N, plan.x_cols), accumulator_dtype(x.dtype))
    pad_phases_cpu(cpu_view(x), xs, g.pad_h, g.pad_w, g.stride_h, g.stride_w, plan.hq, plan.wq,
                   plan.h_need, plan.w_need)
    return xs


def _flat_dy(dy, g, front, ld, wq, slack):
    dyz = np.zeros((g.N, g.K * ld + slack), accumulator_dtype(dy.dtype))
    cpu_kernel(flatten_rows_cpu, flatten_rows_serial_cpu, dy.size)(cpu_view(dy), dyz, front, ld, wq)
    return dyz


def _cuda_args(g):
    return g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups


def _fwd_tile(g):
    """The first FWD_TILES entry whose input footprint fits in shared memory (else the smallest,
    whose blocks then read global memory)."""
    for tp, tq in FWD_TILES:
        fh = (tp - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1
        fw = (tq - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1
        if fh * fw <= FWD_SMEM_IN:
            return tp, tq
    return FWD_TILES[-1]


def filter_chunks(taps, pairs, slots):
    """Chunks of the ``taps`` filter taps per (k, c) pair for the backward-filter grid of
    ``pairs * chunks`` blocks: at most FILTER_TAPS taps a block, more chunks while that fills
    the device's ``slots`` resident blocks better (``wave_splits``), none left empty."""
    chunks = max(blocks(taps, FILTER_TAPS), wave_splits(pairs, taps, slots))
    return blocks(taps, blocks(taps, chunks))


def conv2d_fwd_direct(x, w, y, g):
    """Forward convolution into ``y`` (overwritten):
    ``y[n,k,p,q] = sum_{c,r,s} x[n, gi*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw] * w[k,c,r,s]``
    (gi = k // Kg, reads outside x are zero). NumPy arrays run on the CPU, CUDA device arrays
    on the GPU."""
    check_conv_arrays("direct", g, "fwd", x, w, y, WITH_HALF)
    if is_device_array(x):
        tp, tq = _fwd_tile(g)
        grid = (blocks(g.P, tp) * blocks(g.Q, tq), g.groups * blocks(g.K // g.groups, FWD_KT), g.N)
        conv2d_fwd_direct_cuda[x.dtype][grid, (tq, tp), stream()](x, w, y, *_cuda_args(g))
        return
    plan = _cpu_plan(g)
    xs = _phase_split(x, g, plan)
    conv2d_fwd_direct_cpu(xs, _gather(w, plan.fwd_index), plan.toff, g.C // g.groups * g.R * g.S, cpu_view(y),
                          plan.x_group, plan.wq, plan.rows)


def conv2d_bwd_data_direct(dy, w, dx, g):
    """Data gradient into ``dx`` (overwritten): ``dx[n,c,h,w] = sum dy[n,k,p,q] * w[k,c',r,s]``
    over the k of c's group and the (r, s, p, q) with ``h = p*sh-ph+r*dh``, ``w = q*sw-pw+s*dw``
    (c' = c mod Cg). Gather form: each element of dx has one owner."""
    check_conv_arrays("direct", g, "bwd_data", dy, w, dx, WITH_HALF)
    if is_device_array(dy):
        th, tw = BWD_TILE
        grid = (blocks(g.H, th) * blocks(g.W, tw), g.C, g.N)
        conv2d_bwd_data_direct_cuda[dy.dtype][grid, (tw, th), stream()](dy, w, dx, *_cuda_args(g))
        return
    plan = _cpu_plan(g)
    dyz = _flat_dy(dy, g, plan.dy_front, plan.dy_plane, plan.wq, VEC)
    dx.fill(0)
    conv2d_bwd_data_direct_cpu(dyz, _gather(w, plan.data_index), plan.tofd, plan.ntap, cpu_view(dx),
                               g.K // g.groups * plan.dy_plane, g.pad_h, g.pad_w, g.stride_h,
                               g.stride_w, plan.hq, plan.wq, plan.rows)


def conv2d_bwd_filter_direct(dy, x, dw, g):
    """Filter gradient into ``dw`` (overwritten):
    ``dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, gi*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw]``.
    Each element of dw has one owner that sums in a fixed order."""
    check_conv_arrays("direct", g, "bwd_filter", dy, x, dw, WITH_HALF)
    if is_device_array(dy):
        kernel = conv2d_bwd_filter_direct_cuda[dy.dtype]
        chunks = filter_chunks(g.R * g.S, g.K * (g.C // g.groups), resident_blocks(kernel, FILTER_THREADS))
        kernel[g.K * (g.C // g.groups) * chunks, FILTER_THREADS, stream()](dy, x, dw, *_cuda_args(g))
        return
    plan = _cpu_plan(g)
    xs = _phase_split(x, g, plan)
    dyz = _flat_dy(dy, g, 0, plan.dy_row, plan.wq, 0)
    # split the taps until every thread has a few items to balance
    items = g.groups * blocks(g.K // g.groups, KB)
    split = blocks(8 * numba.get_num_threads(), items)
    tchunk = _round_up(blocks(plan.toff.shape[0], split), TB)
    conv2d_bwd_filter_direct_cpu(dyz, xs, plan.toff, cpu_view(dw).reshape(g.K, -1), g.groups, plan.x_group,
                                 plan.dy_row, tchunk)


# the 3-D kernels build on this file's helpers, so they are imported after them
from . import conv3d_direct  # noqa: E402


def _preference(g, device, pass_):
    """Depthwise layers first; on the CPU, short reductions (few input channels, as LeNet C1 and
    CIFAR conv1: C/groups * taps <= 75) next, in 3-D any layer with C/groups <= 8 (measured
    ahead of implicit_gemm there for 3x3x3 to 7x7x7 filters, level at 12-16 channels)."""
    if g.depthwise:
        return 0
    if device == "cpu" and g.rank == 3 and g.C // g.groups <= 8:
        return 1
    if device == "cpu" and g.rank < 3 and g.C // g.groups * math.prod(g.kernel) <= 75:
        return 1
    return 5


ALGORITHM = ConvAlgorithm("direct", by_rank(conv2d_fwd_direct, conv3d_direct.conv3d_fwd_direct),
                          by_rank(conv2d_bwd_data_direct, conv3d_direct.conv3d_bwd_data_direct),
                          by_rank(conv2d_bwd_filter_direct, conv3d_direct.conv3d_bwd_filter_direct),
                          ranks=(2, 3), preference=_preference,
                          dtypes={np.float16: (2,), np.float32: (2, 3), np.float64: (2, 3)},
                          summary="one output (or input-gradient) element per thread, taps staged in shared memory")
