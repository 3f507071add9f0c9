"""Direct 3-D convolution (NCDHW, weight (K, C/groups, T, R, S)): forward, backward-data and
backward-filter, CUDA and CPU.

With ``xpad`` the zero-padded input, Cg = C/groups, Kg = K/groups, gi = k // Kg, and output
position (o, p, q) reading input ``(o*sd + t*dd, p*sh + r*dh, q*sw + s*dw)`` of ``xpad``:

    forward         y[n,k,o,p,q]  = sum_{c<Cg,t,r,s} xpad[n, gi*Cg+c, o*sd + t*dd, p*sh + r*dh, q*sw + s*dw]
                                    * w[k,c,t,r,s]
    backward-data   dx[n,c,d,h,w] = sum_{k in c's group, t, r, s} dy[n,k,o,p,q] * w[k, c mod Cg, t, r, s]
                                    over o = (d+pd - t*dd)/sd, p = (h+ph - r*dh)/sh, q = (w+pw - s*dw)/sw
                                    exact and inside dy
    backward-filter dw[k,c,t,r,s] = sum_{n,o,p,q} dy[n,k,o,p,q]
                                    * xpad[n, gi*Cg+c, o*sd + t*dd, p*sh + r*dh, q*sw + s*dw]

CUDA (the 2-D kernels of conv_direct.py with a depth axis, and their constants): the forward
gives each block a tile of output pixels (p, q) of one output plane o and FWD_KT output channels.
The input a tile reads at depth tap t of channel c is one (fh x fw) slab; the block stages the
slabs of a chunk of (c, t) pairs, and the weights of their (r, s) taps, in shared memory (a block
whose slab does not fit reads global memory instead). Backward-data is a gather, one thread per
input element (n, c, d, h, w) looping over the (k, t, r, s) whose window covers it, with the taps
staged in shared memory. Backward-filter gives each block one (k, c) pair and a chunk of taps
(t, r, s); its threads split the (o, p, q) volume and the partial sums are added in thread order.

CPU (the shifted-vector scheme of conv_direct.py in three axes): the padded input is split once
into stride phases, ``xs[n, c, a, b, e, i, j, l] = xpad[n, c, i*sd + a, j*sh + b, l*sw + e]``, each
phase a ``Dq x Hq x Wq`` volume stored flat. Tap (t, r, s) then reads phase ((t*dd) % sd,
(r*dh) % sh, (s*dw) % sw) at flat position ``(o*Hq + p)*Wq + q + off(t, r, s)``, with
``off = ((t*dd // sd)*Hq + r*dh // sh)*Wq + s*dw // sw``: every tap is one contiguous vector
shifted by a constant, and a pass is a sum of shifted vectors with per-channel weights (forward,
backward-data) or a set of dot products of shifted vectors (backward-filter), run by the 2-D
file's register-blocked helpers. Outputs are computed on the rows u = o*Hq + p of the flattened
``Hq x Wq`` planes and the rows p >= P and columns q >= Q dropped, which keeps the innermost loop
long and branch-free. Backward-data runs the same sum on ``dy`` laid out on that grid with zeros
in the extra rows and columns, one input phase at a time. No atomics anywhere: every output
element is owned by one thread or loop iteration, so all three passes are bitwise reproducible.
"""
import functools
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda, int32, int64, njit, prange, types

from .conv_algorithm import check_conv_arrays
from .conv_direct import (BWD_TILE, CHUNK, FILTER_SMEM, FILTER_TAPS, FILTER_THREADS, FWD_KT,
                          FWD_SMEM_IN, FWD_TAPS, FWD_TILES, KB, SMEM_W, TB, VEC, _gather, _round_up,
                          _shift_sum1, _shift_sum4, conv2d_bwd_filter_direct_cpu, filter_chunks)
from .cuda_util import blocks, is_device_array, per_dtype, resident_blocks, stream


def array5(dt):
    return dt[:, :, :, :, ::1]


TRIPLE = types.UniTuple(int64, 3)


# ---------------------------------------------------------------------------------------------
# CPU layouts shared by the three passes
# ---------------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def pad_phases3_cpu(x, xs, pad, stride, dq, hq, wq, need):
    """xs[n, (((c*sd + a)*sh + b)*sw + e)*dq*hq*wq + (i*hq + j)*wq + l] = xpad[n, c, i*sd + a,
    j*sh + b, l*sw + e] for padded positions below ``need`` (the ones any output reads); xs
    arrives zero-filled."""
    n_, c_, d_, h_, w_ = x.shape
    pd, ph, pw = pad
    sd, sh, sw = stride
    d_need, h_need, w_need = need
    vol = dq * hq * wq
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for a in range(sd):
            for i in range(dq):
                d = i * sd + a - pd
                if d + pd >= d_need or d < 0 or d >= d_:
                    continue
                for b in range(sh):
                    for j in range(hq):
                        h = j * sh + b - ph
                        if h + ph >= h_need or h < 0 or h >= h_:
                            continue
                        for e in range(sw):
                            l0 = max(0, (pw - e + sw - 1) // sw)
                            l1 = min(wq, (min(w_ + pw, w_need) - e + sw - 1) // sw)
                            row = (((c * sd + a) * sh + b) * sw + e) * vol + (i * hq + j) * wq
                            for l in range(l0, l1):
                                xs[n, row + l] = x[n, c, d, h, l * sw + e - pw]


@njit(parallel=True, cache=True)
def flatten_volume_cpu(dy, dyz, front, ld, hq, wq):
    """dyz[n, k*ld + front + (o*hq + p)*wq + q] = dy[n, k, o, p, q]; dyz arrives zero-filled, so
    the rows p >= P and columns q >= Q of the hq x wq planes and the ``front`` lead-in read as zero."""
    n_, k_, o_, p_, q_ = dy.shape
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        for o in range(o_):
            for p in range(p_):
                row = k * ld + front + (o * hq + p) * wq
                for q in range(q_):
                    dyz[n, row + q] = dy[n, k, o, p, q]


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def _signature(dt):
    return (array5(dt), array5(dt), array5(dt), TRIPLE, TRIPLE, TRIPLE, int64)


# one thread per output pixel (n, o, p, q) of a blockDim.y x blockDim.x tile of plane o, for FWD_KT channels k
@per_dtype(_signature, threads=FWD_TILES[0][0] * FWD_TILES[0][1])
def conv3d_fwd_direct_cuda(dt):
    @cuda.jit
    def kernel(x, w, y, stride, pad, dil, groups):
        x_tile = cuda.shared.array(FWD_SMEM_IN, dt)
        w_tile = cuda.shared.array(SMEM_W, dt)
        tap_at = cuda.shared.array(FWD_TAPS, int32)
        acc = cuda.local.array(FWD_KT, dt)
        sd, sh, sw = stride
        pd, ph, pw = pad
        dd, dh, dw = dil
        d_, h_, w_ = x.shape[2], x.shape[3], x.shape[4]
        k_, cg, t_, r_, s_ = w.shape
        p_, q_ = y.shape[3], y.shape[4]
        kg = k_ // groups
        tp, tq = cuda.blockDim.y, cuda.blockDim.x
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * tq + tx
        tiles_q = (q_ + tq - 1) // tq
        tiles = (p_ + tp - 1) // tp * tiles_q
        o = cuda.blockIdx.x // tiles
        tile = cuda.blockIdx.x - o * tiles
        p0 = tile // tiles_q * tp
        q0 = tile % tiles_q * tq
        kblocks = (kg + FWD_KT - 1) // FWD_KT
        gi = cuda.blockIdx.y // kblocks
        k0 = gi * kg + cuda.blockIdx.y % kblocks * FWD_KT
        kn = min(FWD_KT, (gi + 1) * kg - k0)
        n = cuda.blockIdx.z
        p, q = p0 + ty, q0 + tx
        rs = r_ * s_
        fh = (tp - 1) * sh + (r_ - 1) * dh + 1
        fw = (tq - 1) * sw + (s_ - 1) * dw + 1
        # a slab is the tile's input footprint in one channel at one depth tap: (c, t) pairs, c-major
        slabs = cg * t_
        cb = min(slabs, min(FWD_SMEM_IN // (fh * fw), FWD_TAPS // rs))
        if cb > 0:
            for kk in range(FWD_KT):
                acc[kk] = dt(0)
            h0, w0 = p0 * sh - ph, q0 * sw - pw
            for v0 in range(0, slabs, cb):
                vn = min(cb, slabs - v0)
                cuda.syncthreads()
                for vv in range(vn):
                    c = (v0 + vv) // t_
                    d = o * sd - pd + (v0 + vv - c * t_) * dd
                    xc = x[n, gi * cg + c]
                    i = ty
                    while i < fh:
                        h = h0 + i
                        j = tx
                        while j < fw:
                            v = dt(0)
                            if 0 <= d < d_ and 0 <= h < h_ and 0 <= w0 + j < w_:
                                v = xc[d, h, w0 + j]
                            x_tile[(vv * fh + i) * fw + j] = v
                            j += tq
                        i += tp
                e = tid
                while e < vn * rs * FWD_KT:
                    kk = e % FWD_KT
                    tt = e // FWD_KT
                    vv = tt // rs
                    r = (tt - vv * rs) // s_
                    s = tt - vv * rs - r * s_
                    c = (v0 + vv) // t_
                    v = dt(0)
                    if kk < kn:
                        v = w[k0 + kk, c, v0 + vv - c * t_, r, s]
                    w_tile[e] = v
                    if kk == 0:
                        tap_at[tt] = (vv * fh + r * dh) * fw + s * dw
                    e += tp * tq
                cuda.syncthreads()
                xb = ty * sh * fw + tx * sw
                for tt in range(vn * rs):
                    xv = x_tile[xb + tap_at[tt]]
                    for kk in range(FWD_KT):
                        acc[kk] += xv * w_tile[tt * FWD_KT + kk]
            if p < p_ and q < q_:
                for kk in range(FWD_KT):
                    if kk < kn:
                        y[n, k0 + kk, o, p, q] = acc[kk]
        elif p < p_ and q < q_:
            # the slab or the taps outgrow shared memory: read global memory directly, one
            # channel at a time (accumulators for all FWD_KT would cost registers everywhere)
            for kk in range(kn):
                a = dt(0)
                for v in range(slabs):
                    c = v // t_
                    d = o * sd - pd + (v - c * t_) * dd
                    if 0 <= d < d_:
                        for r in range(r_):
                            h = p * sh - ph + r * dh
                            for s in range(s_):
                                wi = q * sw - pw + s * dw
                                if 0 <= h < h_ and 0 <= wi < w_:
                                    a += x[n, gi * cg + c, d, h, wi] * w[k0 + kk, c, v - c * t_, r, s]
                y[n, k0 + kk, o, p, q] = a
    return kernel


@njit(parallel=True, cache=True)
def conv3d_fwd_direct_cpu(xs, wt, toff, ntap, y, group_stride, hq, wq, rows):
    """y[n, gi*Kg + k, o, p, q] = sum_{t < ntap} wt[gi, k, t] * xs[n, gi*group_stride + toff[t] + (o*hq + p)*wq + q],
    t running over the ntap real taps (c, t, r, s) of group gi (wt is zero past Kg rows). Computed on the flattened rows u = o*hq + p, ``rows`` at a time, keeping p < P and
    q < Q; one iteration per (n, group, block of KB channels)."""
    n_, k_, o_, p_, q_ = y.shape
    groups = wt.shape[0]
    kg = k_ // groups
    nkb = (kg + KB - 1) // KB
    nrows = (o_ - 1) * hq + p_
    for item in prange(n_ * groups * nkb):
        n = item // (groups * nkb)
        gi = item // nkb % groups
        k0 = item % nkb * KB
        kn = min(KB, kg - k0)
        acc = np.empty((KB, rows * wq + VEC), y.dtype)
        for u0 in range(0, nrows, rows):
            u1 = min(nrows, u0 + rows)
            m = -(-(u1 - u0) * wq // VEC) * VEC
            for i in range(KB):
                for j in range(m):
                    acc[i, j] = 0
            src = xs[n, gi * group_stride + u0 * wq:]
            # three channels run faster as four with a zero weight row than one at a time
            if kn >= KB - 1:
                _shift_sum4(acc, src, toff, wt[gi], k0, ntap, m)
            else:
                for i in range(kn):
                    _shift_sum1(acc[i], src, toff, wt[gi], k0 + i, ntap, m)
            for i in range(kn):
                for u in range(u0, u1):
                    o = u // hq
                    p = u - o * hq
                    if p < p_:
                        b = (u - u0) * wq
                        for q in range(q_):
                            y[n, gi * kg + k0 + i, o, p, q] = acc[i, b + q]


# ---------------------------------------------------------------------------------------------
# Backward-data
# ---------------------------------------------------------------------------------------------

# one thread per input-gradient element (n, c, d, h, w) of a blockDim.y x blockDim.x tile of plane d
@per_dtype(_signature, threads=BWD_TILE[0] * BWD_TILE[1])
def conv3d_bwd_data_direct_cuda(dt):
    @cuda.jit
    def kernel(dy, w, dx, stride, pad, dil, groups):
        w_tile = cuda.shared.array(SMEM_W, dt)
        sd, sh, sw = stride
        pd, ph, pw = pad
        dd, dh, dw = dil
        h_, w_ = dx.shape[3], dx.shape[4]
        k_, cg, t_, r_, s_ = w.shape
        o_, p_, q_ = dy.shape[2], dy.shape[3], dy.shape[4]
        kg = k_ // groups
        th, tw = cuda.blockDim.y, cuda.blockDim.x
        tiles_w = (w_ + tw - 1) // tw
        tiles = (h_ + th - 1) // th * tiles_w
        d = cuda.blockIdx.x // tiles
        tile = cuda.blockIdx.x - d * tiles
        h = tile // tiles_w * th + cuda.threadIdx.y
        wi = tile % tiles_w * tw + cuda.threadIdx.x
        c = cuda.blockIdx.y
        n = cuda.blockIdx.z
        gi = c // cg
        cl = c - gi * cg
        rs = r_ * s_
        trs = t_ * rs
        tc = min(trs, SMEM_W)
        kc = min(kg, SMEM_W // tc)
        acc = dt(0)
        for k0 in range(gi * kg, (gi + 1) * kg, kc):
            kn = min(kc, (gi + 1) * kg - k0)
            for t0 in range(0, trs, tc):
                tn = min(tc, trs - t0)
                cuda.syncthreads()
                e = cuda.threadIdx.y * tw + cuda.threadIdx.x
                while e < kn * tn:
                    kk = e // tn
                    tap = t0 + e - kk * tn
                    t = tap // rs
                    r = (tap - t * rs) // s_
                    w_tile[e] = w[k0 + kk, cl, t, r, tap - t * rs - r * s_]
                    e += th * tw
                cuda.syncthreads()
                if h < h_ and wi < w_:
                    for tt in range(tn):
                        t = (t0 + tt) // rs
                        r = (t0 + tt - t * rs) // s_
                        dp = d + pd - t * dd
                        o = dp // sd
                        hp = h + ph - r * dh
                        p = hp // sh
                        wp = wi + pw - (t0 + tt - t * rs - r * s_) * dw
                        q = wp // sw
                        if (dp >= 0 and o * sd == dp and o < o_ and hp >= 0 and p * sh == hp and p < p_
                                and wp >= 0 and q * sw == wp and q < q_):
                            for kk in range(kn):
                                acc += dy[n, k0 + kk, o, p, q] * w_tile[kk * tn + tt]
        if h < h_ and wi < w_:
            dx[n, c, d, h, wi] = acc
    return kernel


@njit(parallel=True, cache=True)
def conv3d_bwd_data_direct_cpu(dyz, wtd, tofd, ntap, dx, group_stride, pad, stride, dq, hq, wq, rows):
    """At input phase f = (a*sh + b)*sw + e, volume position (i, j, l): dx[n, gi*Cg + c,
    i*sd + a - pd, j*sh + b - ph, l*sw + e - pw] = sum_t wtd[gi, f, c, t] * dyz[n, gi*group_stride
    + tofd[f, t] + (i*hq + j)*wq + l], t running over the (k, t, r, s) of group gi whose tap lands
    on phase f; one iteration per (n, group, phase, block of KB channels), computed on the
    flattened rows u = i*hq + j. Writes the input positions the phase volumes cover; dx arrives
    zero-filled."""
    n_, c_, d_, h_, w_ = dx.shape
    pd, ph, pw = pad
    sd, sh, sw = stride
    groups, phases = wtd.shape[0], wtd.shape[1]
    cg = c_ // groups
    ncb = (cg + KB - 1) // KB
    for item in prange(n_ * groups * phases * ncb):
        n = item // (groups * phases * ncb)
        gi = item // (phases * ncb) % groups
        f = item // ncb % phases
        c0 = item % ncb * KB
        cn = min(KB, cg - c0)
        a = f // (sh * sw)
        b = f // sw % sh
        e = f % sw
        l0 = max(0, (pw - e + sw - 1) // sw)
        l1 = min(wq, (w_ + pw - e + sw - 1) // sw)
        acc = np.empty((KB, rows * wq + VEC), dx.dtype)
        for u0 in range(0, dq * hq, rows):
            u1 = min(dq * hq, u0 + rows)
            m = -(-(u1 - u0) * wq // VEC) * VEC
            for i in range(KB):
                for j in range(m):
                    acc[i, j] = 0
            src = dyz[n, gi * group_stride + u0 * wq:]
            if cn >= KB - 1:
                _shift_sum4(acc, src, tofd[f], wtd[gi, f], c0, ntap[f], m)
            else:
                for i in range(cn):
                    _shift_sum1(acc[i], src, tofd[f], wtd[gi, f], c0 + i, ntap[f], m)
            for i in range(cn):
                for u in range(u0, u1):
                    d = u // hq * sd + a - pd
                    h = u % hq * sh + b - ph
                    if 0 <= d < d_ and 0 <= h < h_:
                        base = (u - u0) * wq
                        for l in range(l0, l1):
                            dx[n, gi * cg + c0 + i, d, h, l * sw + e - pw] = acc[i, base + l]


# ---------------------------------------------------------------------------------------------
# Backward-filter
# ---------------------------------------------------------------------------------------------

# one block per (k, c, chunk of taps (t, r, s)); each thread sums its share of the (o, p, q) volume
# over n for every tap of the chunk, then each tap's partial sums are added in thread order
@per_dtype(_signature, threads=FILTER_THREADS)
def conv3d_bwd_filter_direct_cuda(dt):
    @cuda.jit
    def kernel(dy, x, dweight, stride, pad, dil, groups):
        part = cuda.shared.array(FILTER_SMEM, dt)
        sd, sh, sw = stride
        pd, ph, pw = pad
        dd, dh, dw = dil
        n_, _, d_, h_, w_ = x.shape
        k_, cg, t_, r_, s_ = dweight.shape
        o_, p_, q_ = dy.shape[2], dy.shape[3], dy.shape[4]
        rs = r_ * s_
        trs = t_ * rs
        pq_ = p_ * q_
        chunks = cuda.gridDim.x // (k_ * cg)
        tc = (trs + chunks - 1) // chunks
        kc = cuda.blockIdx.x // chunks
        k = kc // cg
        c = kc % cg
        xc = k // (k_ // groups) * cg + c
        t0 = cuda.blockIdx.x % chunks * tc
        tn = min(tc, trs - t0)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for tt in range(tn):
            t = (t0 + tt) // rs
            r = (t0 + tt - t * rs) // s_
            s = t0 + tt - t * rs - r * s_
            acc = dt(0)
            for opq in range(tid, o_ * pq_, nt):
                o = opq // pq_
                p = (opq - o * pq_) // q_
                q = opq - o * pq_ - p * q_
                di = o * sd - pd + t * dd
                h = p * sh - ph + r * dh
                wi = q * sw - pw + s * dw
                if 0 <= di < d_ and 0 <= h < h_ and 0 <= wi < w_:
                    for n in range(n_):
                        acc += dy[n, k, o, p, q] * x[n, xc, di, h, wi]
            part[tid * FILTER_TAPS + tt] = acc
        cuda.syncthreads()
        for tt in range(tid, tn, nt):
            total = dt(0)
            for j in range(nt):
                total += part[j * FILTER_TAPS + tt]
            t = (t0 + tt) // rs
            r = (t0 + tt - t * rs) // s_
            dweight[k, c, t, r, t0 + tt - t * rs - r * s_] = total
    return kernel


# The CPU backward-filter is conv_direct.conv2d_bwd_filter_direct_cpu, which is rank-free:
# dw[k, tap] = sum_n sum_j dyz[n, k*ld + j] * xs[n, toff[tap] + j] over the flattened volumes.


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

class _CpuPlan(NamedTuple):
    """Layouts and index tables of the CPU kernels for one 3-D geometry (module docstring)."""
    need: tuple              # padded input extent (d, h, w) that any output reads
    dq: int                  # phase-volume size
    hq: int
    wq: int
    rows: int                # flattened plane rows per accumulator chunk
    x_cols: int              # per-image length of the phase-split input, slack included
    x_group: int             # offset of one group's channels from the previous group's
    toff: np.ndarray         # offsets of the taps (c, t, r, s) of a group in it, padded to TB
    fwd_index: np.ndarray    # (groups, Kg up to KB, taps): w.ravel() positions; w.size reads 0
    dy_front: int            # backward-data: zeros ahead of each dy volume
    dy_plane: int            # backward-data: stride of the dy volumes
    tofd: np.ndarray         # backward-data: (phases, taps) offsets of the taps (k, t, r, s)
    ntap: np.ndarray         # backward-data: taps per phase
    data_index: np.ndarray   # backward-data: (groups, phases, Cg up to KB, taps) into w.ravel()
    dy_row: int              # backward-filter: ((O-1)*hq + P)*wq rounded up to VEC


def _phase_taps(g, hq, wq):
    """Phase index and in-volume offset of every tap (t, r, s), both flat over (t, r, s)."""
    (sd, sh, sw), (dd, dh, dw) = g.stride, g.dilation
    t = np.arange(g.kernel[0])[:, None, None] * dd
    r = np.arange(g.kernel[1])[None, :, None] * dh
    s = np.arange(g.kernel[2])[None, None, :] * dw
    phase = ((t % sd) * sh + r % sh) * sw + s % sw
    offset = ((t // sd) * hq + r // sh) * wq + s // sw
    return phase.ravel(), offset.ravel()


def _forward_taps(g, vol, phase, offset):
    """toff and fwd_index of _CpuPlan."""
    kg, cg, taps = g.K // g.groups, g.C // g.groups, math.prod(g.kernel)
    toff = np.zeros(_round_up(cg * taps, TB), np.int64)
    toff[:cg * taps] = (np.arange(cg)[:, None] * math.prod(g.stride) * vol + phase * vol + offset).ravel()
    group = np.arange(g.groups)[:, None, None]
    k = np.arange(_round_up(kg, KB))[None, :, None]
    t = np.arange(toff.shape[0])[None, None, :]
    fwd_index = np.where((k < kg) & (t < cg * taps), (group * kg + k) * cg * taps + t, g.K * cg * taps)
    return toff, fwd_index


def _data_taps(g, plane, front, phase, offset):
    """tofd, ntap and data_index of _CpuPlan: phase f's taps are its (k, t, r, s), k-major."""
    kg, cg, taps = g.K // g.groups, g.C // g.groups, math.prod(g.kernel)
    phases = math.prod(g.stride)
    counts = np.bincount(phase, minlength=phases) * kg
    ntap = counts.astype(np.int64)     # the real taps: a zero-weight pad tap would turn an inf into NaN
    tofd = np.full((phases, max(1, ntap.max())), front, np.int64)
    data_index = np.full((g.groups, phases, _round_up(cg, KB), tofd.shape[1]), g.K * cg * taps)
    group = np.arange(g.groups)[:, None, None, None]
    c = np.arange(cg)[None, :, None, None]
    k = np.arange(kg)[None, None, :, None]
    for f in range(phases):
        mine = np.flatnonzero(phase == f)
        tofd[f, :counts[f]] = (np.arange(kg)[:, None] * plane + front - offset[mine]).ravel()
        index = ((group * kg + k) * cg + c) * taps + mine
        data_index[:, f, :cg, :counts[f]] = index.reshape(g.groups, cg, counts[f])
    return tofd, ntap, data_index


@functools.lru_cache(maxsize=256)
def _cpu_plan(g):
    need = tuple((o - 1) * s + (k - 1) * d + 1 for o, k, s, d in zip(g.out_size, g.kernel, g.stride, g.dilation))
    dq, hq, wq = (-(-n // s) for n, s in zip(need, g.stride))
    vol = dq * hq * wq
    channel = math.prod(g.stride) * vol
    phase, offset = _phase_taps(g, hq, wq)
    front = int(offset.max())
    plane = front + vol
    o_, p_ = g.out_size[0], g.out_size[1]
    return _CpuPlan(need, dq, hq, wq, max(1, CHUNK // wq), g.C * channel + wq + VEC, g.C // g.groups * channel,
                    *_forward_taps(g, vol, phase, offset), front, plane, *_data_taps(g, plane, front, phase, offset),
                    _round_up(((o_ - 1) * hq + p_) * wq, VEC))


def _phase_split(x, g, plan):
    xs = np.zeros((g.N, plan.x_cols), x.dtype)
    pad_phases3_cpu(x, xs, g.pad_before, g.stride, plan.dq, plan.hq, plan.wq, plan.need)
    return xs


def _flat_dy(dy, g, plan, front, ld, slack):
    dyz = np.zeros((g.N, g.K * ld + slack), dy.dtype)
    flatten_volume_cpu(dy, dyz, front, ld, plan.hq, plan.wq)
    return dyz


def _cuda_args(g):
    return g.stride, g.pad_before, g.dilation, g.groups


def _fwd_tile(g):
    """The first FWD_TILES entry whose slab (one channel's input footprint at one depth tap)
    fits in shared memory (else the smallest, whose blocks then read global memory)."""
    (_, r_, s_), (_, sh, sw), (_, dh, dw) = g.kernel, g.stride, g.dilation
    for tp, tq in FWD_TILES:
        if ((tp - 1) * sh + (r_ - 1) * dh + 1) * ((tq - 1) * sw + (s_ - 1) * dw + 1) <= FWD_SMEM_IN:
            return tp, tq
    return FWD_TILES[-1]


def conv3d_fwd_direct(x, w, y, g):
    """Forward 3-D convolution into ``y`` (N, K, O, P, Q), overwritten:
    ``y[n,k,o,p,q] = sum_{c,t,r,s} x[n, gi*Cg+c, o*sd-pd+t*dd, p*sh-ph+r*dh, q*sw-pw+s*dw] * w[k,c,t,r,s]``
    (gi = k // Kg, reads outside x are zero). NumPy arrays run on the CPU, CUDA device arrays
    on the GPU."""
    check_conv_arrays("direct", g, "fwd", x, w, y)
    if is_device_array(x):
        tp, tq = _fwd_tile(g)
        o_, p_, q_ = g.out_size
        grid = (o_ * blocks(p_, tp) * blocks(q_, tq), g.groups * blocks(g.K // g.groups, FWD_KT), g.N)
        conv3d_fwd_direct_cuda[x.dtype][grid, (tq, tp), stream()](x, w, y, *_cuda_args(g))
        return
    plan = _cpu_plan(g)
    xs = _phase_split(x, g, plan)
    conv3d_fwd_direct_cpu(xs, _gather(w, plan.fwd_index), plan.toff, g.C // g.groups * math.prod(g.kernel), y,
                          plan.x_group, plan.hq, plan.wq, plan.rows)


def conv3d_bwd_data_direct(dy, w, dx, g):
    """Data gradient into ``dx`` (N, C, D, H, W), overwritten: ``dx[n,c,d,h,w] = sum dy[n,k,o,p,q] *
    w[k,c',t,r,s]`` over the k of c's group and the (t, r, s, o, p, q) with ``d = o*sd-pd+t*dd``,
    ``h = p*sh-ph+r*dh``, ``w = q*sw-pw+s*dw`` (c' = c mod Cg). Gather form: each element of dx
    has one owner."""
    check_conv_arrays("direct", g, "bwd_data", dy, w, dx)
    if is_device_array(dy):
        th, tw = BWD_TILE
        d_, h_, w_ = g.in_size
        grid = (d_ * blocks(h_, th) * blocks(w_, tw), g.C, g.N)
        conv3d_bwd_data_direct_cuda[dy.dtype][grid, (tw, th), stream()](dy, w, dx, *_cuda_args(g))
        return
    plan = _cpu_plan(g)
    dyz = _flat_dy(dy, g, plan, plan.dy_front, plan.dy_plane, VEC)
    dx.fill(0)
    conv3d_bwd_data_direct_cpu(dyz, _gather(w, plan.data_index), plan.tofd, plan.ntap, dx,
                               g.K // g.groups * plan.dy_plane, g.pad_before, g.stride, plan.dq, plan.hq,
                               plan.wq, plan.rows)


def conv3d_bwd_filter_direct(dy, x, dw, g):
    """Filter gradient into ``dw`` (K, C/groups, T, R, S), overwritten:
    ``dw[k,c,t,r,s] = sum_{n,o,p,q} dy[n,k,o,p,q] * x[n, gi*Cg+c, o*sd-pd+t*dd, p*sh-ph+r*dh, q*sw-pw+s*dw]``.
    Each element of dw has one owner that sums in a fixed order."""
    check_conv_arrays("direct", g, "bwd_filter", dy, x, dw)
    if is_device_array(dy):
        pairs = g.K * (g.C // g.groups)
        kernel = conv3d_bwd_filter_direct_cuda[dy.dtype]
        chunks = filter_chunks(math.prod(g.kernel), pairs, resident_blocks(kernel, FILTER_THREADS))
        kernel[pairs * chunks, FILTER_THREADS, stream()](dy, x, dw, *_cuda_args(g))
        return
    plan = _cpu_plan(g)
    xs = _phase_split(x, g, plan)
    dyz = _flat_dy(dy, g, plan, 0, plan.dy_row, 0)
    # split the taps until every thread has a few items to balance
    items = g.groups * blocks(g.K // g.groups, KB)
    split = blocks(8 * numba.get_num_threads(), items)
    tchunk = _round_up(blocks(plan.toff.shape[0], split), TB)
    conv2d_bwd_filter_direct_cpu(dyz, xs, plan.toff, dw.reshape(g.K, -1), g.groups, plan.x_group,
                                 plan.dy_row, tchunk)
