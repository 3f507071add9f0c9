"""Pooling of spatial rank 1-3, CUDA and CPU: max pooling with argmax, average pooling and
adaptive average pooling, forward and backward; 2-D max unpooling.

The pooling kernels work on (N, C, D, H, W) arrays; the launchers view 1-D and 2-D pooling as
3-D pooling with leading unit axes (``PoolGeometry.as_3d``). With ``g`` that geometry and
(pd, ph, pw) its pads before, output (o, p, q) covers depths ``z = o*sd - pd + t*dd``, rows
``h = p*sh - ph + r*dh`` and columns ``w = q*sw - pw + s*dw`` (t < T, r < R, s < S); only
positions inside the input are read, so padding, even or uneven, is never selected or summed:

    max       y[n,c,o,p,q] = x[n,c,z*,h*,w*], idx[n,c,o,p,q] = (z*·H + h*)·W + w*, (z*, h*, w*) the
              first position in row-major (t, r, s) window order holding the window's maximum;
              a NaN beats everything and the last NaN wins, as in PyTorch; a window without an
              input position gives -inf, -1. With ``global_index`` idx counts from the start of
              the input instead: + (n·C + c)·D·H·W
    max bwd   dx[n,c,z,h,w] = sum_{o,p,q : idx[n,c,o,p,q] = index of (z, h, w)} dy[n,c,o,p,q]
    avg       y[n,c,o,p,q] = sum_window x / (nd(o)·nh(p)·nw(q)); nh counts the window rows inside
              [-ph, H + ph_after) (count_include_pad) or inside [0, H) (not); nd, nw alike
    avg bwd   dx[n,c,z,h,w] = sum_{o,p,q covering (z, h, w)} dy[n,c,o,p,q] / (nd(o)·nh(p)·nw(q))
    adaptive  depths floor(o·D/O) .. ceil((o+1)·D/O) - 1, rows and columns alike, y = mean over
              the window
    unpool    (2-D) out[n,c,:] = 0, out[n,c,idx[n,c,p,q]] = x[n,c,p,q] in row-major (p, q) order (the
              last of duplicate indices wins, on both devices); backward dx = dy[n,c,idx]

CUDA: one thread per output element (forward passes) or per input element (backward passes,
gather form: the thread loops over the outputs whose window can cover it), no floating-point
atomics (unpooling resolves duplicate indices with an integer atomic max, which is order-free). The
kernels take the arrays flat and the geometry as (D, H, W)-style tuples: flat indexing costs one
multiply-add per window row, where 5-D indexing cost 15-30 registers more per kernel.

CPU: ``prange`` over groups of the N·C volumes. Max and average pooling split each padded H x W
slice z of a volume once into its stride phases (``xs[z*slab + (a*sw + b)*hq*wq + i*wq + j] =
xpad[z, i*sh + a, j*sw + b]``, padding filled with -inf or 0), as in conv_direct.py: window tap
(r, s) of every output of a slice then reads one contiguous vector at a fixed offset, and the
outputs are computed on a ``P x wq`` grid whose ``wq - Q`` extra columns are dropped. Output
depth o folds the slices of its in-input depth taps in order t. The max forward folds three
taps per pass into registers and keeps the winning position as int32 (window origin from a
per-call table plus the tap's and the slice's offsets); -inf padding never wins, because a tap
is taken only when strictly greater or NaN (windows whose input values are all -inf get a scalar
fix-up). The max backward is a per-volume scatter ``dx[idx[o, p, q]] += dy[o, p, q]`` in
row-major (o, p, q) order: the CUDA gather's additions in the same order, so both give
bitwise-identical results, and no two loop iterations touch one volume. The average backward
adds dy/divisor at every tap's offset of the phase-split gradient slices, then copies the
phases back. 2-D average pooling with unpadded 2 x 2 windows at stride 2 inside the input (LeNet-5's
subsampling, the commonest case) skips the phase split: ``avgpool2x2_fwd_cpu`` reads the four
taps in place and ``avgpool2x2_bwd_cpu`` writes dy/4 to them, 2-3x faster on 10 x 10 planes. The
CPU kernels' indices into flat arrays are cast to unsigned so that Numba drops its
negative-index wraparound.

float16 (kernels/float16.py): every kernel reads float16 data into float32, accumulates and
compares in float32 and rounds once when it stores. On the CPU the phase-split slices and
running maxima/sums are float32 scratch, and the two scatter backwards (max, adaptive) add into a
float32 workspace that is rounded into dx at the end.
"""
import math

import numba
import numpy as np
from numba import cuda, int64, njit, prange, types, uint64

from .cpu_util import cpu_kernel
from .cuda_util import (SIMULATOR, array1, array4, blocks, check_flag, device_check, device_empty, is_device_array,
                        per_dtype, stream)
from .elementwise import cast
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen
from .float16 import zero as zero_of

THREADS = 32 if SIMULATOR else 256
# CPU: volumes per prange iteration are grouped so that each group allocates its scratch once
CHUNKS_PER_THREAD = 4
UNPOOL_CHECKS = {True: device_check("maxunpool2d_fwd"), False: device_check("maxunpool2d_bwd")}
TRIPLE = types.UniTuple(int64, 3)


# ---------------------------------------------------------------------------------------------
# CUDA helpers: the window extent along one axis
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True, inline="always")
def _covering_cuda(pos, pad, window, stride, dil, out):
    """(first, last) output along one axis whose window span can cover input position ``pos``."""
    a = pos + pad - (window - 1) * dil
    lo = 0 if a <= 0 else (a + stride - 1) // stride
    return lo, min(out - 1, (pos + pad) // stride)


@cuda.jit(device=True, inline="always")
def _avg_extent_cuda(o, size, window, stride, pad, pad_after, count_include_pad):
    """(start, end, count) of output o's window along one axis: the input positions
    [start, end) it sums, and its divisor factor (the window clipped to the padded extent
    [-pad, size + pad_after), or to the input)."""
    start = o * stride - pad
    end = min(start + window, size + pad_after)
    count = end - start
    start = max(start, 0)
    end = min(end, size)
    if count_include_pad == 0:
        count = end - start
    return start, end, count


# ---------------------------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------------------------

# one thread per output element (n, c, o, p, q)
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(int64)) + (TRIPLE,) * 6 + (int64,), threads=THREADS, half=True)
def maxpool_fwd_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(x, y, idx, size, out, window, stride, pad, dil, global_index):
        i = cuda.grid(1)
        D, H, W = size
        O, P, Q = out
        if i >= y.shape[0]:
            return
        q = i % Q
        p = (i // Q) % P
        o = (i // (P * Q)) % O
        nc = i // (O * P * Q)
        xo = nc * D * H * W
        z0 = o * stride[0] - pad[0]
        h0 = p * stride[1] - pad[1]
        w0 = q * stride[2] - pad[2]
        m = at(-math.inf)
        mi = int64(-1)
        for t in range(window[0]):
            z = z0 + t * dil[0]
            if z >= 0 and z < D:
                for r in range(window[1]):
                    h = h0 + r * dil[1]
                    if h >= 0 and h < H:
                        for s in range(window[2]):
                            w = w0 + s * dil[2]
                            if w >= 0 and w < W:
                                v = at(x[xo + (z * H + h) * W + w])
                                if v > m or v != v or mi < 0:
                                    m = v
                                    mi = (z * H + h) * W + w
        if global_index != 0 and mi >= 0:
            mi += xo
        y[i] = dt(m)
        idx[i] = mi
    return kernel


@njit(cache=True, error_model="numpy")
def _max3_cpu(s0, s1, s2, pos, yb, ib, c0, c1, c2, n):
    """Fold taps 0, 1, 2 (values s0, s1, s2, input positions pos + c0, c1, c2) into the running
    max yb and its position ib."""
    for k in range(n):
        m = yb[k]
        i = ib[k]
        o = pos[k]
        v = s0[k]
        take = (v > m) | (v != v)
        m = v if take else m
        i = o + c0 if take else i
        v = s1[k]
        take = (v > m) | (v != v)
        m = v if take else m
        i = o + c1 if take else i
        v = s2[k]
        take = (v > m) | (v != v)
        m = v if take else m
        i = o + c2 if take else i
        yb[k] = m
        ib[k] = i


@njit(cache=True, error_model="numpy")
def _max1_cpu(s0, pos, yb, ib, c0, n):
    for k in range(n):
        m = yb[k]
        v = s0[k]
        take = (v > m) | (v != v)
        yb[k] = v if take else m
        ib[k] = pos[k] + c0 if take else ib[k]


@njit(cache=True, error_model="numpy")
def _max_taps_cpu(xs, toff, pos, tpos, zoff, yb, ib, n):
    """Fold the (r, s) taps of one phase-split slice (tap u reads xs[toff[u]:], its input
    positions are pos + tpos[u] + zoff) into the running max yb and its position ib."""
    T = toff.shape[0]
    T3 = T - T % 3
    # int32 offsets keep the position arithmetic of the vector loops in 32 bits
    for u in range(0, T3, 3):
        _max3_cpu(xs[toff[u]:], xs[toff[u + 1]:], xs[toff[u + 2]:], pos, yb, ib,
                  np.int32(tpos[u] + zoff), np.int32(tpos[u + 1] + zoff), np.int32(tpos[u + 2] + zoff), n)
    for u in range(T3, T):
        _max1_cpu(xs[toff[u]:], pos, yb, ib, np.int32(tpos[u] + zoff), n)


@njit(cache=True, error_model="numpy")
def _split_phases_cpu(x1, xo, H, W, xs, sh, sw, ph, pw, hq, wq, pad_value):
    """xs[(a*sw + b)*hq*wq + i*wq + j] = xpad[i*sh + a, j*sw + b] of the H x W slice at x1[xo:],
    ``pad_value`` outside the input and in the tail of xs."""
    plane = hq * wq
    for a in range(sh):
        for b in range(sw):
            j0 = min(wq, max(0, (pw - b + sw - 1) // sw))
            j1 = max(j0, min(wq, (W + pw - b + sw - 1) // sw))
            for i in range(hq):
                ro = (a * sw + b) * plane + i * wq
                h = i * sh + a - ph
                if h < 0 or h >= H:
                    for j in range(wq):
                        xs[uint64(ro + j)] = pad_value
                    continue
                for j in range(j0):
                    xs[uint64(ro + j)] = pad_value
                base = xo + h * W + j0 * sw + b - pw
                for j in range(j1 - j0):
                    xs[uint64(ro + j0 + j)] = widen(x1[uint64(base + j * sw)])
                for j in range(j1, wq):
                    xs[uint64(ro + j)] = pad_value
    for j in range(sh * sw * plane, xs.shape[0]):
        xs[j] = pad_value


@njit(cache=True, error_model="numpy")
def _first_position_cpu(o, p, q, size, stride, pad, dd, T, tdh, tdw):
    """The first in-input position of window (o, p, q) in row-major (t, r, s) order, or -1."""
    D, H, W = size
    for t in range(T):
        z = o * stride[0] - pad[0] + t * dd
        if z < 0 or z >= D:
            continue
        for u in range(tdh.shape[0]):
            h = p * stride[1] - pad[1] + tdh[u]
            w = q * stride[2] - pad[2] + tdw[u]
            if h >= 0 and h < H and w >= 0 and w < W:
                return (z * H + h) * W + w
    return -1


@njit(cache=True, error_model="numpy")
def _maxpool_volume_cpu(x1, y1, i1, nc, xs, yb, ib, size, out, stride, pad, dd, T, hq, wq, toff, pos, tpos,
                        tdh, tdw, global_index):
    """Max pooling of volume ``nc``; xs, yb, ib are scratch."""
    D, H, W = size
    O, P, Q = out
    HW = H * W
    slab = stride[1] * stride[2] * hq * wq + wq
    n_out = P * wq
    neg = xs.dtype.type(-np.inf)
    base = nc * D * HW if global_index else 0
    for z in range(D):
        _split_phases_cpu(x1, (nc * D + z) * HW, H, W, xs[z * slab:(z + 1) * slab], stride[1], stride[2], pad[1],
                          pad[2], hq, wq, neg)
    for o in range(O):
        for k in range(n_out):
            yb[k] = neg
            ib[k] = -1
        for t in range(T):
            z = o * stride[0] - pad[0] + t * dd
            if z >= 0 and z < D:
                _max_taps_cpu(xs[z * slab:(z + 1) * slab], toff, pos, tpos, z * HW, yb, ib, n_out)
        for p in range(P):
            row = ((nc * O + o) * P + p) * Q
            for q in range(Q):
                y1[uint64(row + q)] = narrow(yb[p * wq + q], y1)
                i1[uint64(row + q)] = ib[p * wq + q] + base
            for q in range(Q):
                if ib[p * wq + q] < 0:
                    # every input value in the window is -inf (or there is none): the first one wins
                    mi = _first_position_cpu(o, p, q, size, stride, pad, dd, T, tdh, tdw)
                    i1[uint64(row + q)] = mi + base if mi >= 0 else mi


@njit(parallel=True, cache=True, error_model="numpy")
def maxpool_fwd_cpu(x1, y1, i1, planes, n_chunks, size, out, stride, pad, dd, T, hq, wq, toff, pos, tpos, tdh,
                    tdw, global_index, acc):
    for chunk in prange(n_chunks):
        xs = np.empty(size[0] * (stride[1] * stride[2] * hq * wq + wq), acc)
        yb = np.empty(out[1] * wq, acc)
        ib = np.empty(out[1] * wq, np.int32)
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            _maxpool_volume_cpu(x1, y1, i1, nc, xs, yb, ib, size, out, stride, pad, dd, T, hq, wq, toff, pos, tpos,
                                tdh, tdw, global_index)


# one thread per input element (n, c, z, h, w)
@per_dtype(lambda dt: (array1(dt), array1(int64), array1(dt)) + (TRIPLE,) * 6 + (int64,), threads=THREADS, half=True)
def maxpool_bwd_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(dy, idx, dx, size, out, window, stride, pad, dil, global_index):
        i = cuda.grid(1)
        D, H, W = size
        O, P, Q = out
        if i >= dx.shape[0]:
            return
        w = i % W
        h = (i // W) % H
        z = (i // (H * W)) % D
        nc = i // (D * H * W)
        o_lo, o_hi = _covering_cuda(z, pad[0], window[0], stride[0], dil[0], O)
        p_lo, p_hi = _covering_cuda(h, pad[1], window[1], stride[1], dil[1], P)
        q_lo, q_hi = _covering_cuda(w, pad[2], window[2], stride[2], dil[2], Q)
        me = (z * H + h) * W + w
        if global_index != 0:
            me += nc * D * H * W
        acc = at(0)
        for o in range(o_lo, o_hi + 1):
            for p in range(p_lo, p_hi + 1):
                row = ((nc * O + o) * P + p) * Q
                for q in range(q_lo, q_hi + 1):
                    if idx[row + q] == me:
                        acc += at(dy[row + q])
        dx[i] = dt(acc)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def maxpool_bwd_cpu(dy1, i1, dx1, planes, vol_in, vol_out, global_index):
    for nc in prange(planes):
        xo = nc * vol_in
        yo = nc * vol_out
        base = xo if global_index else 0
        for k in range(vol_in):
            dx1[uint64(xo + k)] = 0
        for k in range(vol_out):
            j = i1[uint64(yo + k)] - base
            if j >= 0 and j < vol_in:
                dx1[uint64(xo + j)] += widen(dy1[uint64(yo + k)])


# ---------------------------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------------------------

# one thread per output element (n, c, o, p, q)
@per_dtype(lambda dt: (array1(dt), array1(dt)) + (TRIPLE,) * 6 + (int64,), threads=THREADS, half=True)
def avgpool_fwd_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(x, y, size, out, window, stride, pad, pad_after, count_include_pad):
        i = cuda.grid(1)
        D, H, W = size
        O, P, Q = out
        if i >= y.shape[0]:
            return
        q = i % Q
        p = (i // Q) % P
        o = (i // (P * Q)) % O
        nc = i // (O * P * Q)
        z0, z1, nd = _avg_extent_cuda(o, D, window[0], stride[0], pad[0], pad_after[0], count_include_pad)
        h0, h1, nh = _avg_extent_cuda(p, H, window[1], stride[1], pad[1], pad_after[1], count_include_pad)
        w0, w1, nw = _avg_extent_cuda(q, W, window[2], stride[2], pad[2], pad_after[2], count_include_pad)
        acc = at(0)
        for z in range(z0, z1):
            for h in range(h0, h1):
                row = ((nc * D + z) * H + h) * W
                for w in range(w0, w1):
                    acc += at(x[row + w])
        y[i] = dt(acc / at(nd * nh * nw))
    return kernel


@njit(cache=True, error_model="numpy")
def _sum3_cpu(s0, s1, s2, acc, n):
    for k in range(n):
        acc[k] = acc[k] + s0[k] + s1[k] + s2[k]


@njit(cache=True, error_model="numpy")
def _sum1_cpu(s0, acc, n):
    for k in range(n):
        acc[k] += s0[k]


@njit(cache=True, error_model="numpy")
def _sum_taps_cpu(xs, toff, acc, n):
    """acc += the (r, s) taps of one phase-split slice (tap u reads xs[toff[u]:])."""
    T = toff.shape[0]
    T3 = T - T % 3
    for u in range(0, T3, 3):
        _sum3_cpu(xs[toff[u]:], xs[toff[u + 1]:], xs[toff[u + 2]:], acc, n)
    for u in range(T3, T):
        _sum1_cpu(xs[toff[u]:], acc, n)


@njit(parallel=True, cache=True, error_model="numpy")
def avgpool_fwd_cpu(x1, y1, planes, n_chunks, size, out, stride, pad, T, hq, wq, toff, div):
    D, H, W = size
    O, P, Q = out
    HW = H * W
    slab = stride[1] * stride[2] * hq * wq + wq
    n_out = P * wq
    zero = div.dtype.type(0)
    for chunk in prange(n_chunks):
        xs = np.empty(D * slab, div.dtype)
        acc = np.empty(n_out, div.dtype)
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            for z in range(D):
                _split_phases_cpu(x1, (nc * D + z) * HW, H, W, xs[z * slab:(z + 1) * slab], stride[1], stride[2],
                                  pad[1], pad[2], hq, wq, zero)
            for o in range(O):
                for k in range(n_out):
                    acc[k] = zero
                for t in range(T):
                    z = o * stride[0] - pad[0] + t
                    if z >= 0 and z < D:
                        _sum_taps_cpu(xs[z * slab:(z + 1) * slab], toff, acc, n_out)
                for p in range(P):
                    row = ((nc * O + o) * P + p) * Q
                    for q in range(Q):
                        y1[uint64(row + q)] = narrow(acc[p * wq + q] / div[(o * P + p) * Q + q], y1)


# one thread per input element (n, c, z, h, w)
@per_dtype(lambda dt: (array1(dt), array1(dt)) + (TRIPLE,) * 6 + (int64,), threads=THREADS, half=True)
def avgpool_bwd_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(dy, dx, size, out, window, stride, pad, pad_after, count_include_pad):
        i = cuda.grid(1)
        D, H, W = size
        O, P, Q = out
        if i >= dx.shape[0]:
            return
        w = i % W
        h = (i // W) % H
        z = (i // (H * W)) % D
        nc = i // (D * H * W)
        o_lo, o_hi = _covering_cuda(z, pad[0], window[0], stride[0], 1, O)
        p_lo, p_hi = _covering_cuda(h, pad[1], window[1], stride[1], 1, P)
        q_lo, q_hi = _covering_cuda(w, pad[2], window[2], stride[2], 1, Q)
        acc = at(0)
        for o in range(o_lo, o_hi + 1):
            nd = _avg_extent_cuda(o, D, window[0], stride[0], pad[0], pad_after[0], count_include_pad)[2]
            for p in range(p_lo, p_hi + 1):
                nh = _avg_extent_cuda(p, H, window[1], stride[1], pad[1], pad_after[1], count_include_pad)[2]
                row = ((nc * O + o) * P + p) * Q
                for q in range(q_lo, q_hi + 1):
                    nw = _avg_extent_cuda(q, W, window[2], stride[2], pad[2], pad_after[2], count_include_pad)[2]
                    acc += at(dy[row + q]) / at(nd * nh * nw)
        dx[i] = dt(acc)
    return kernel


@njit(cache=True, error_model="numpy")
def _add1_cpu(dst, src, n):
    for k in range(n):
        dst[k] += src[k]


@njit(cache=True, error_model="numpy")
def _merge_phases_cpu(dxs, dx1, xo, H, W, sh, sw, ph, pw, hq, wq):
    """dx1[xo + h*W + w] = the phase-split padded slice dxs at (h + ph, w + pw) (inverse of
    _split_phases_cpu; positions no phase holds get 0)."""
    plane = hq * wq
    zero = narrow(zero_of(dxs), dx1)
    for h in range(H):
        ro = xo + h * W
        i = (h + ph) // sh
        w_end = 0
        if i < hq:
            w_end = max(0, min(W, wq * sw - pw))
            a = (h + ph) % sh
            for b in range(sw):
                src = (a * sw + b) * plane + i * wq
                for j in range(max(0, (pw - b + sw - 1) // sw), min(wq, (W + pw - b + sw - 1) // sw)):
                    dx1[uint64(ro + j * sw + b - pw)] = narrow(dxs[src + j], dx1)
        for w in range(w_end, W):
            dx1[uint64(ro + w)] = zero


@njit(parallel=True, cache=True, error_model="numpy")
def avgpool_bwd_cpu(dy1, dx1, planes, n_chunks, size, out, stride, pad, T, hq, wq, toff, div):
    """Scatter form per volume: dy/div added at every tap's offset of the phase-split padded
    gradient slices, then the phases copied back into dx (padding dropped, uncovered positions 0)."""
    D, H, W = size
    O, P, Q = out
    HW = H * W
    slab = stride[1] * stride[2] * hq * wq + wq
    n_out = P * wq
    zero = div.dtype.type(0)
    for chunk in prange(n_chunks):
        g = np.zeros(n_out, div.dtype)
        dxs = np.empty(D * slab, div.dtype)
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            for k in range(dxs.shape[0]):
                dxs[k] = zero
            for o in range(O):
                for p in range(P):
                    row = ((nc * O + o) * P + p) * Q
                    for q in range(Q):
                        g[p * wq + q] = widen(dy1[uint64(row + q)]) / div[(o * P + p) * Q + q]
                for t in range(T):
                    z = o * stride[0] - pad[0] + t
                    if z >= 0 and z < D:
                        for u in range(toff.shape[0]):
                            _add1_cpu(dxs[z * slab + toff[u]:], g, n_out)
            for z in range(D):
                _merge_phases_cpu(dxs[z * slab:(z + 1) * slab], dx1, (nc * D + z) * HW, H, W, stride[1], stride[2],
                                  pad[1], pad[2], hq, wq)


@njit(inline="always")
def _rows_2x2(nc, p, H, W, P, Q):
    """Flat starts of input rows 2p and 2p + 1 and of output row p in plane nc."""
    a = (nc * H + 2 * p) * W
    return a, a + W, (nc * P + p) * Q


@njit(inline="always")
def _avgpool2x2_fwd_body(x1, y1, planes, n_chunks, H, W, P, Q):
    four = zero_of(y1) + np.float32(4)
    for chunk in prange(n_chunks):
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            for p in range(P):
                a, b, o = _rows_2x2(nc, p, H, W, P, Q)
                for q in range(Q):
                    s = widen(x1[a + 2 * q]) + widen(x1[a + 2 * q + 1]) + widen(x1[b + 2 * q])
                    y1[o + q] = narrow((s + widen(x1[b + 2 * q + 1])) / four, y1)


@njit(parallel=True, cache=True, error_model="numpy")
def avgpool2x2_fwd_cpu(x1, y1, planes, n_chunks, H, W, P, Q):
    """2 x 2 windows at stride 2 without padding, all inside the input (2P <= H, 2Q <= W):
    y[p, q] = (x[2p, 2q] + x[2p, 2q+1] + x[2p+1, 2q] + x[2p+1, 2q+1]) / 4, summed in the general
    kernel's tap order. Small planes (LeNet-5's 10 x 10) leave the phase split little to share."""
    _avgpool2x2_fwd_body(x1, y1, planes, n_chunks, H, W, P, Q)


@njit(cache=True, error_model="numpy")
def avgpool2x2_fwd_serial_cpu(x1, y1, planes, n_chunks, H, W, P, Q):
    _avgpool2x2_fwd_body(x1, y1, planes, n_chunks, H, W, P, Q)


@njit(inline="always")
def _avgpool2x2_bwd_body(dy1, dx1, planes, n_chunks, H, W, P, Q):
    four = zero_of(dx1) + np.float32(4)
    for chunk in prange(n_chunks):
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            for p in range(P):
                a, b, o = _rows_2x2(nc, p, H, W, P, Q)
                for q in range(Q):
                    v = narrow(widen(dy1[o + q]) / four, dx1)
                    dx1[a + 2 * q] = v
                    dx1[a + 2 * q + 1] = v
                    dx1[b + 2 * q] = v
                    dx1[b + 2 * q + 1] = v
                for w in range(2 * Q, W):
                    dx1[a + w] = narrow(zero_of(dx1), dx1)
                    dx1[b + w] = narrow(zero_of(dx1), dx1)
            for k in range((nc * H + 2 * P) * W, (nc + 1) * H * W):
                dx1[k] = narrow(zero_of(dx1), dx1)


@njit(parallel=True, cache=True, error_model="numpy")
def avgpool2x2_bwd_cpu(dy1, dx1, planes, n_chunks, H, W, P, Q):
    """The backward of ``avgpool2x2_fwd_cpu``: dx = dy[p, q] / 4 on its window, 0 on the rows and
    columns past 2P and 2Q that no window covers."""
    _avgpool2x2_bwd_body(dy1, dx1, planes, n_chunks, H, W, P, Q)


@njit(cache=True, error_model="numpy")
def avgpool2x2_bwd_serial_cpu(dy1, dx1, planes, n_chunks, H, W, P, Q):
    _avgpool2x2_bwd_body(dy1, dx1, planes, n_chunks, H, W, P, Q)


# ---------------------------------------------------------------------------------------------
# adaptive average pooling
# ---------------------------------------------------------------------------------------------

# one thread per output element (n, c, o, p, q)
@per_dtype(lambda dt: (array1(dt), array1(dt), TRIPLE, TRIPLE), threads=THREADS, half=True)
def adaptive_avgpool_fwd_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(x, y, size, out):
        i = cuda.grid(1)
        D, H, W = size
        O, P, Q = out
        if i >= y.shape[0]:
            return
        q = i % Q
        p = (i // Q) % P
        o = (i // (P * Q)) % O
        nc = i // (O * P * Q)
        z0 = (o * D) // O
        z1 = ((o + 1) * D + O - 1) // O
        h0 = (p * H) // P
        h1 = ((p + 1) * H + P - 1) // P
        w0 = (q * W) // Q
        w1 = ((q + 1) * W + Q - 1) // Q
        acc = at(0)
        for z in range(z0, z1):
            for h in range(h0, h1):
                row = ((nc * D + z) * H + h) * W
                for w in range(w0, w1):
                    acc += at(x[row + w])
        y[i] = dt(acc / at((z1 - z0) * (h1 - h0) * (w1 - w0)))
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def adaptive_avgpool_fwd_cpu(x1, y1, planes, size, out, zs, ze, hs, he, ws, we):
    D, H, W = size
    O, P, Q = out
    for nc in prange(planes):
        xo = nc * D * H * W
        yo = nc * O * P * Q
        for o in range(O):
            for p in range(P):
                for q in range(Q):
                    acc = zero_of(x1)
                    for z in range(zs[o], ze[o]):
                        for h in range(hs[p], he[p]):
                            base = xo + (z * H + h) * W
                            for w in range(ws[q], we[q]):
                                acc += widen(x1[uint64(base + w)])
                    count = (ze[o] - zs[o]) * (he[p] - hs[p]) * (we[q] - ws[q])
                    # a count is exact in float32, and float32 / float32 stays float32 (float64 / float32: float64)
                    y1[uint64(yo + (o * P + p) * Q + q)] = narrow(acc / np.float32(count), y1)


# one thread per input element (n, c, z, h, w)
@per_dtype(lambda dt: (array1(dt), array1(dt), TRIPLE, TRIPLE), threads=THREADS, half=True)
def adaptive_avgpool_bwd_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(dy, dx, size, out):
        i = cuda.grid(1)
        D, H, W = size
        O, P, Q = out
        if i >= dx.shape[0]:
            return
        w = i % W
        h = (i // W) % H
        z = (i // (H * W)) % D
        nc = i // (D * H * W)
        acc = at(0)
        for o in range((z * O) // D, min(O, ((z + 1) * O + D - 1) // D)):
            nd = ((o + 1) * D + O - 1) // O - (o * D) // O
            for p in range((h * P) // H, min(P, ((h + 1) * P + H - 1) // H)):
                nh = ((p + 1) * H + P - 1) // P - (p * H) // P
                row = ((nc * O + o) * P + p) * Q
                for q in range((w * Q) // W, min(Q, ((w + 1) * Q + W - 1) // W)):
                    nw = ((q + 1) * W + Q - 1) // Q - (q * W) // Q
                    acc += at(dy[row + q]) / at(nd * nh * nw)
        dx[i] = dt(acc)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def adaptive_avgpool_bwd_cpu(dy1, dx1, planes, size, out, zs, ze, hs, he, ws, we):
    """Per-volume scatter in row-major (o, p, q) order: the CUDA gather's additions, in its order."""
    D, H, W = size
    O, P, Q = out
    for nc in prange(planes):
        xo = nc * D * H * W
        yo = nc * O * P * Q
        for k in range(D * H * W):
            dx1[uint64(xo + k)] = 0
        for o in range(O):
            for p in range(P):
                for q in range(Q):
                    count = (ze[o] - zs[o]) * (he[p] - hs[p]) * (we[q] - ws[q])
                    g = widen(dy1[uint64(yo + (o * P + p) * Q + q)]) / np.float32(count)
                    for z in range(zs[o], ze[o]):
                        for h in range(hs[p], he[p]):
                            base = xo + (z * H + h) * W
                            for w in range(ws[q], we[q]):
                                dx1[uint64(base + w)] += g


# ---------------------------------------------------------------------------------------------
# max unpooling
# ---------------------------------------------------------------------------------------------

# one thread per output element: owner = -1 (no input element lands there yet)
@per_dtype(lambda dt: (array1(int64),), threads=THREADS, half=True)
def maxunpool2d_clear_cuda(dt):
    @cuda.jit
    def kernel(owner):
        i = cuda.grid(1)
        if i < owner.shape[0]:
            owner[i] = -1
    return kernel


# one thread per input element (n, c, p, q): owner[n, c, k] = the largest p*Q + q whose index is k.
# An integer atomic max does not depend on the order the threads run in, so duplicate indices
# resolve as the sequential CPU loop does (the last one wins) and the result is deterministic.
@per_dtype(lambda dt: (array4(int64), array1(int64), array1(int64)), threads=THREADS, half=True)
def maxunpool2d_owner_cuda(dt):
    @cuda.jit
    def kernel(idx, owner, bad):
        i = cuda.grid(1)
        N, C, P, Q = idx.shape
        HW = owner.shape[0] // (N * C)
        if i >= N * C * P * Q:
            return
        nc = i // (P * Q)
        k = idx[nc // C, nc % C, (i // Q) % P, i % Q]
        if k >= 0 and k < HW:
            cuda.atomic.max(owner, nc * HW + k, i - nc * P * Q)
        else:
            bad[0] = 1
    return kernel


# one thread per output element (n, c, k): gathers the input element that owns it, else 0
@per_dtype(lambda dt: (array1(dt), array1(int64), array1(dt), int64), threads=THREADS, half=True)
def maxunpool2d_fwd_cuda(dt):
    @cuda.jit
    def kernel(x1, owner, out1, PQ):
        i = cuda.grid(1)
        if i >= out1.shape[0]:
            return
        HW = out1.shape[0] * PQ // x1.shape[0]
        j = owner[i]
        out1[i] = x1[i // HW * PQ + j] if j >= 0 else dt(0)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def maxunpool2d_fwd_cpu(x1, i1, out1, planes, PQ, HW):
    """Returns the number of indices outside [0, HW); those are skipped."""
    bad = 0
    for nc in prange(planes):
        oo = nc * HW
        xo = nc * PQ
        for k in range(HW):
            out1[uint64(oo + k)] = 0
        for k in range(PQ):
            j = i1[uint64(xo + k)]
            if j >= 0 and j < HW:
                out1[uint64(oo + j)] = x1[uint64(xo + k)]
            else:
                bad += 1
    return bad


# one thread per input element (n, c, p, q)
@per_dtype(lambda dt: (array4(dt), array4(int64), array4(dt), array1(int64)), threads=THREADS, half=True)
def maxunpool2d_bwd_cuda(dt):
    @cuda.jit
    def kernel(dy, idx, dx, bad):
        i = cuda.grid(1)
        N, C, P, Q = dx.shape
        Ho = dy.shape[2]
        Wo = dy.shape[3]
        if i >= N * C * P * Q:
            return
        q = i % Q
        p = (i // Q) % P
        nc = i // (P * Q)
        n = nc // C
        c = nc % C
        k = idx[n, c, p, q]
        if k >= 0 and k < Ho * Wo:
            dx[n, c, p, q] = dy[n, c, k // Wo, k % Wo]
        else:
            dx[n, c, p, q] = dt(0)
            bad[0] = 1
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def maxunpool2d_bwd_cpu(dy1, i1, dx1, planes, PQ, HW):
    """Returns the number of indices outside [0, HW); their gradient is 0."""
    bad = 0
    for nc in prange(planes):
        oo = nc * HW
        xo = nc * PQ
        for k in range(PQ):
            j = i1[uint64(xo + k)]
            if j >= 0 and j < HW:
                dx1[uint64(xo + k)] = dy1[uint64(oo + j)]
            else:
                dx1[uint64(xo + k)] = 0
                bad += 1
    return bad


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------

def _check(name, arrays, shapes, index=None):
    """Check the float arrays' shapes and shared dtype/device (and the int64 index array);
    returns True for CUDA device arrays."""
    first = arrays[0]
    if first.dtype not in maxpool_fwd_cuda:
        raise TypeError(f"{name}: expected float16, float32 or float64 arrays, got {first.dtype}")
    on_device = is_device_array(first)
    for a, shape in zip(arrays + ((index,) if index is not None else ()), shapes):
        is_index = a is index
        want = np.dtype(np.int64) if is_index else first.dtype
        if is_device_array(a) != on_device:
            raise TypeError(f"{name}: operands must all be {'CUDA device' if on_device else 'NumPy'} arrays")
        if a.dtype != want:
            raise TypeError(f"{name}: {'indices' if is_index else 'every operand'} must have dtype {want}, "
                            f"got {a.dtype}")
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name}: expected an operand of shape {tuple(shape)}, got {tuple(a.shape)}")
        if not on_device and not a.flags.c_contiguous:
            raise ValueError(f"{name}: operands must be C-contiguous")
    return on_device


def _flat(a):
    return a.reshape(a.size)


def _cpu(a):
    """The flat array a CPU kernel takes (float16 as its uint16 bits, kernels/float16.py)."""
    return cpu_view(_flat(a))


class _scatter_target:
    """The flat array a CPU scatter kernel adds into for ``dx``: ``dx`` itself, or for float16 a
    float32 workspace rounded into ``dx`` at the end, so that every sum is accumulated in float32
    (as the CUDA gather does) and rounded once."""

    def __init__(self, dx):
        self.dx = _flat(dx)
        self.work = np.empty(dx.size, np.float32) if dx.dtype == np.float16 else self.dx

    def __enter__(self):
        return self.work

    def __exit__(self, *exc):
        if self.work is not self.dx and exc[0] is None:
            cast(self.work, self.dx)


def _chunks(g):
    """Groups of volumes for the CPU kernels' prange (each group allocates its scratch once)."""
    return max(1, min(g.N * g.C, CHUNKS_PER_THREAD * numba.get_num_threads()))


def _phase_plan(g3):
    """(hq, wq, toff, r*dh, s*dw) of the CPU phase split of the H x W slices: tap u = r*S + s
    reads xs[toff[u] + p*wq + q] for output (p, q)."""
    (_, R, S), (_, sh, sw), (_, dh, dw), (_, P, Q) = g3.kernel, g3.stride, g3.dilation, g3.out_size
    hq = P + (R - 1) * dh // sh
    wq = Q + (S - 1) * dw // sw
    r, s = np.divmod(np.arange(R * S, dtype=np.int64), S)
    rh, sw_ = r * dh, s * dw
    phase = (rh % sh) * sw + sw_ % sw
    toff = phase * hq * wq + (rh // sh) * wq + sw_ // sw
    return hq, wq, toff, rh, sw_


def _avg_divisors(g3, count_include_pad, dtype):
    """div[(o*P + p)*Q + q] = nd(o) * nh(p) * nw(q): the window clipped to the padded extent
    [-pad_before, size + pad_after), or to the input."""
    counts = []
    for size, out, k, s, before, after in zip(g3.in_size, g3.out_size, g3.kernel, g3.stride, g3.pad_before,
                                              g3.pad_after):
        start = np.arange(out, dtype=np.int64) * s - before
        end = np.minimum(start + k, size + after)
        counts.append(end - start if count_include_pad else np.minimum(end, size) - np.maximum(start, 0))
    return np.multiply.outer(np.multiply.outer(*counts[:2]), counts[2]).astype(dtype).ravel()


def _cuda_geometry(g3):
    return g3.in_size, g3.out_size, g3.kernel, g3.stride, g3.pad_before, g3.dilation


def maxpool_fwd(x, y, indices, g, global_index=False):
    """y = max over each window of x; indices = the flat argmax within each (n, c) plane or
    volume (``w`` in 1-D, ``h*W + w`` in 2-D, ``(z*H + h)*W + w`` in 3-D), or, with
    ``global_index``, counted from the start of the input (plus ``(n*C + c)*volume``).
    x (N, C, *g.in_size), y and indices (N, C, *g.out_size), for ``g`` of any rank."""
    on_device = _check("maxpool_fwd", (x, y), (g.x_shape, g.y_shape, g.y_shape), indices)
    g3 = g.as_3d()
    if on_device:
        maxpool_fwd_cuda[x.dtype][blocks(y.size, THREADS), THREADS, stream()](
            _flat(x), _flat(y), _flat(indices), *_cuda_geometry(g3), int(bool(global_index)))
        return
    D, H, W = g3.in_size
    if D * H * W >= 2**31:
        raise ValueError(f"maxpool_fwd: volumes of {D}x{H}x{W} are too large for the CPU kernel "
                         "(their size must be < 2**31)")
    hq, wq, toff, tdh, tdw = _phase_plan(g3)
    _, sh, sw = g3.stride
    _, ph, pw = g3.pad_before
    # input position of window origin (p, q) on the P x wq grid, and of each tap relative to it
    pos = (np.arange(g3.out_size[1])[:, None] * sh - ph) * W + np.arange(wq) * sw - pw
    maxpool_fwd_cpu(_cpu(x), _cpu(y), _flat(indices), g.N * g.C, _chunks(g), g3.in_size, g3.out_size, g3.stride,
                    g3.pad_before, g3.dilation[0], g3.kernel[0], hq, wq, toff, pos.astype(np.int32).ravel(),
                    (tdh * W + tdw).astype(np.int32), tdh, tdw, bool(global_index), accumulator_dtype(x.dtype))


def maxpool_bwd(dy, indices, dx, g, global_index=False):
    """dx = the gradient dy routed to each output's saved argmax (summed where windows share
    one); ``indices`` and ``global_index`` as maxpool_fwd gave them."""
    if _check("maxpool_bwd", (dy, dx), (g.y_shape, g.x_shape, g.y_shape), indices):
        maxpool_bwd_cuda[dy.dtype][blocks(dx.size, THREADS), THREADS, stream()](
            _flat(dy), _flat(indices), _flat(dx), *_cuda_geometry(g.as_3d()), int(bool(global_index)))
    else:
        with _scatter_target(dx) as target:
            maxpool_bwd_cpu(_cpu(dy), _flat(indices), target, g.N * g.C, math.prod(g.in_size), math.prod(g.out_size),
                            bool(global_index))


def _avg_args(name, g, count_include_pad):
    if any(d != 1 for d in g.dilation):
        raise ValueError(f"{name}: average pooling has no dilation, got {g.dilation}")
    g3 = g.as_3d()
    return g3, (g3.in_size, g3.out_size, g3.kernel, g3.stride, g3.pad_before, g3.pad_after,
                int(bool(count_include_pad)))


def _is_2x2(g3):
    """Whether 2-D pooling ``g3`` has 2 x 2 windows at stride 2, no padding, all inside the input
    (the CPU's avgpool2x2 kernels; the divisor is then 4 whatever count_include_pad says)."""
    return (g3.in_size[0] == 1 and tuple(g3.kernel) == (1, 2, 2) and tuple(g3.stride) == (1, 2, 2)
            and not any(g3.pad_before) and 2 * g3.out_size[1] <= g3.in_size[1] and 2 * g3.out_size[2] <= g3.in_size[2])


def avgpool_fwd(x, y, g, count_include_pad=True):
    """y = mean over each window (divisor per ``count_include_pad``); x (N, C, *g.in_size),
    y (N, C, *g.out_size), ``g`` of any rank without dilation."""
    on_device = _check("avgpool_fwd", (x, y), (g.x_shape, g.y_shape))
    g3, args = _avg_args("avgpool_fwd", g, count_include_pad)
    if on_device:
        avgpool_fwd_cuda[x.dtype][blocks(y.size, THREADS), THREADS, stream()](_flat(x), _flat(y), *args)
    elif _is_2x2(g3):
        kernel = cpu_kernel(avgpool2x2_fwd_cpu, avgpool2x2_fwd_serial_cpu, y.size)
        kernel(_cpu(x), _cpu(y), g.N * g.C, _chunks(g), *g3.in_size[1:], *g3.out_size[1:])
    else:
        hq, wq, toff = _phase_plan(g3)[:3]
        avgpool_fwd_cpu(_cpu(x), _cpu(y), g.N * g.C, _chunks(g), g3.in_size, g3.out_size, g3.stride, g3.pad_before,
                        g3.kernel[0], hq, wq, toff, _avg_divisors(g3, count_include_pad, accumulator_dtype(x.dtype)))


def avgpool_bwd(dy, dx, g, count_include_pad=True):
    """dx = sum over the windows covering each input position of dy / divisor."""
    on_device = _check("avgpool_bwd", (dy, dx), (g.y_shape, g.x_shape))
    g3, args = _avg_args("avgpool_bwd", g, count_include_pad)
    if on_device:
        avgpool_bwd_cuda[dy.dtype][blocks(dx.size, THREADS), THREADS, stream()](_flat(dy), _flat(dx), *args)
    elif _is_2x2(g3):
        kernel = cpu_kernel(avgpool2x2_bwd_cpu, avgpool2x2_bwd_serial_cpu, dy.size)
        kernel(_cpu(dy), _cpu(dx), g.N * g.C, _chunks(g), *g3.in_size[1:], *g3.out_size[1:])
    else:
        hq, wq, toff = _phase_plan(g3)[:3]
        avgpool_bwd_cpu(_cpu(dy), _cpu(dx), g.N * g.C, _chunks(g), g3.in_size, g3.out_size, g3.stride, g3.pad_before,
                        g3.kernel[0], hq, wq, toff, _avg_divisors(g3, count_include_pad, accumulator_dtype(dy.dtype)))


def adaptive_windows(size, out):
    """(start, end) arrays of PyTorch's adaptive windows: floor(i*size/out) .. ceil((i+1)*size/out)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, ((i + 1) * size + out - 1) // out


def _adaptive(name, src, dst, src_is_input, cuda_kernel, cpu_kernel):
    x, y = (src, dst) if src_is_input else (dst, src)
    if len(x.shape) not in (3, 4, 5) or len(y.shape) != len(x.shape) or tuple(x.shape[:2]) != tuple(y.shape[:2]):
        raise ValueError(f"{name}: expected (N, C, *in_size) and (N, C, *out_size) arrays of one spatial rank 1-3, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    pad = (1,) * (5 - len(x.shape))
    size, out = pad + tuple(x.shape[2:]), pad + tuple(y.shape[2:])
    if _check(name, (src, dst), (src.shape, dst.shape)):
        cuda_kernel[src.dtype][blocks(dst.size, THREADS), THREADS, stream()](_flat(src), _flat(dst), size, out)
    else:
        windows = [w for i, o in zip(size, out) for w in adaptive_windows(i, o)]
        if src_is_input:
            cpu_kernel(_cpu(src), _cpu(dst), x.shape[0] * x.shape[1], size, out, *windows)
        else:
            with _scatter_target(dst) as target:
                cpu_kernel(_cpu(src), target, x.shape[0] * x.shape[1], size, out, *windows)


def adaptive_avgpool_fwd(x, y):
    """y (N, C, *out_size) = mean of x (N, C, *in_size) over PyTorch's adaptive windows (rank 1-3)."""
    _adaptive("adaptive_avgpool_fwd", x, y, True, adaptive_avgpool_fwd_cuda, adaptive_avgpool_fwd_cpu)


def adaptive_avgpool_bwd(dy, dx):
    """dx (N, C, *in_size) from dy (N, C, *out_size) of adaptive_avgpool_fwd."""
    _adaptive("adaptive_avgpool_bwd", dy, dx, False, adaptive_avgpool_bwd_cuda, adaptive_avgpool_bwd_cpu)


def _unpool(name, small, indices, big, cuda_kernel, cpu_kernel, zero_big):
    if len(small.shape) != 4 or len(big.shape) != 4 or tuple(small.shape[:2]) != tuple(big.shape[:2]):
        raise ValueError(f"{name}: expected (N, C, P, Q) and (N, C, Ho, Wo) arrays, got {tuple(small.shape)} "
                         f"and {tuple(big.shape)}")
    N, C, P, Q = small.shape
    Ho, Wo = big.shape[2:]
    message = f"{name}: indices must lie in [0, {Ho * Wo}) (flat positions in the {Ho}x{Wo} output plane)"
    if _check(name, (small, big), (small.shape, big.shape, small.shape), indices):
        # no host round-trip: the kernels flag a bad index and the next host read reports it
        bad = check_flag(UNPOOL_CHECKS[zero_big], message)
        if zero_big:
            owner = device_empty(big.size, np.int64)
            maxunpool2d_clear_cuda[small.dtype][blocks(big.size, THREADS), THREADS, stream()](owner)
            maxunpool2d_owner_cuda[small.dtype][blocks(small.size, THREADS), THREADS, stream()](indices, owner, bad)
            cuda_kernel[small.dtype][blocks(big.size, THREADS), THREADS, stream()](_flat(small), owner, _flat(big), P * Q)
        else:
            cuda_kernel[small.dtype][blocks(small.size, THREADS), THREADS, stream()](big, indices, small, bad)
        return
    args = (small, indices, big) if zero_big else (big, indices, small)
    if cpu_kernel(*(_cpu(a) for a in args), N * C, P * Q, Ho * Wo):
        raise ValueError(message)


def maxunpool2d_fwd(x, indices, out):
    """out (N, C, Ho, Wo) = 0 except out[n, c].flat[indices[n, c, p, q]] = x[n, c, p, q].

    An index outside [0, Ho*Wo) raises ValueError: at once on the CPU; on CUDA the kernel flags
    it and the next host read raises ``DeviceCheckError`` (a ValueError)."""
    _unpool("maxunpool2d_fwd", x, indices, out, maxunpool2d_fwd_cuda, maxunpool2d_fwd_cpu, True)


def maxunpool2d_bwd(dy, indices, dx):
    """dx[n, c, p, q] = dy[n, c].flat[indices[n, c, p, q]]; bad indices as in ``maxunpool2d_fwd``."""
    _unpool("maxunpool2d_bwd", dx, indices, dy, maxunpool2d_bwd_cuda, maxunpool2d_bwd_cpu, False)
