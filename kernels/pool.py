"""2-D pooling, CUDA and CPU: max pooling with argmax, average pooling, adaptive average
pooling and max unpooling, forward and backward.

With ``g`` a ``PoolGeometry``, output (p, q) covers rows ``h = p*sh - ph + r*dh`` and columns
``w = q*sw - pw + s*dw`` (r < R, s < S); only positions inside the input are read:

    max       y[n,c,p,q] = x[n,c,h*,w*], idx[n,c,p,q] = h*·W + w*, (h*, w*) the first position in
              row-major window order holding the window's maximum; a NaN beats everything and
              the last NaN wins, as in PyTorch; a window without an input position gives -inf, -1
    max bwd   dx[n,c,h,w] = sum_{p,q : idx[n,c,p,q] = h·W + w} dy[n,c,p,q]
    avg       y[n,c,p,q] = sum_window x / (nh(p)·nw(q)); nh counts the window rows inside
              [-ph, H + ph) (count_include_pad) or inside [0, H) (not)
    avg bwd   dx[n,c,h,w] = sum_{p,q covering (h, w)} dy[n,c,p,q] / (nh(p)·nw(q))
    adaptive  rows floor(p·H/P) .. ceil((p+1)·H/P) - 1, columns alike, y = mean over the window
    unpool    out[n,c,:] = 0, out[n,c,idx[n,c,p,q]] = x[n,c,p,q]; backward dx = dy[n,c,idx]

CUDA: one thread per output element (forward passes) or per input element (backward passes,
gather form: the thread loops over the outputs whose window can cover it), no atomics.

CPU: ``prange`` over groups of the N·C planes. Max and average pooling split each padded plane
once into its stride phases (``xs[(a*sw + b)*hq*wq + i*wq + j] = xpad[i*sh + a, j*sw + b]``,
padding filled with -inf or 0), as in conv_direct.py: window tap (r, s) of every output then
reads one contiguous vector at a fixed offset, and the outputs are computed on a ``P x wq``
grid whose ``wq - Q`` extra columns are dropped. The max forward folds three taps per pass
into registers and keeps the winning input position as int32 (window origin from a per-call
table plus the tap's offset); -inf padding never wins, because a tap is taken only when
strictly greater or NaN (windows whose input values are all -inf get a scalar fix-up). The max
backward is a per-plane scatter ``dx[idx[p, q]] += dy[p, q]`` in row-major (p, q) order: the
CUDA gather's additions in the same order, so both give bitwise-identical results, and no two
loop iterations touch one plane. The average backward adds dy/divisor at every tap's offset of
a phase-split gradient plane, then copies the phases back. Indices into shared arrays are cast
to unsigned so that Numba drops its negative-index wraparound.
"""
import math

import numba
import numpy as np
from numba import cuda, int64, njit, prange, uint64

from .cuda_util import SIMULATOR, array1, array4, blocks, is_device_array, per_dtype
from .elementwise import fill

THREADS = 32 if SIMULATOR else 256
# CPU: planes per prange iteration are grouped so that each group allocates its scratch once
CHUNKS_PER_THREAD = 4


# ---------------------------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------------------------

# one thread per output element (n, c, p, q)
@per_dtype(lambda dt: (array4(dt), array4(dt), array4(int64)) + (int64,) * 8)
def maxpool2d_fwd_cuda(dt):
    @cuda.jit
    def kernel(x, y, idx, R, S, sh, sw, ph, pw, dh, dw):
        i = cuda.grid(1)
        N, C, P, Q = y.shape
        H = x.shape[2]
        W = x.shape[3]
        if i >= N * C * P * Q:
            return
        q = i % Q
        p = (i // Q) % P
        nc = i // (P * Q)
        n = nc // C
        c = nc % C
        h0 = p * sh - ph
        w0 = q * sw - pw
        m = dt(-math.inf)
        mi = int64(-1)
        for r in range(R):
            h = h0 + r * dh
            if h >= 0 and h < H:
                for s in range(S):
                    w = w0 + s * dw
                    if w >= 0 and w < W:
                        v = x[n, c, h, w]
                        if v > m or v != v or mi < 0:
                            m = v
                            mi = h * W + w
        y[n, c, p, q] = m
        idx[n, c, p, q] = mi
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
def _split_phases_cpu(x1, xo, H, W, xs, sh, sw, ph, pw, hq, wq, pad_value):
    """xs[(a*sw + b)*hq*wq + i*wq + j] = xpad[i*sh + a, j*sw + b] of the plane at x1[xo:],
    ``pad_value`` outside the input."""
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
                    xs[uint64(ro + j0 + j)] = x1[uint64(base + j * sw)]
                for j in range(j1, wq):
                    xs[uint64(ro + j)] = pad_value
    for j in range(sh * sw * plane, xs.shape[0]):
        xs[j] = pad_value


@njit(cache=True, error_model="numpy")
def _maxpool2d_plane_cpu(x1, y1, i1, nc, xs, yb, ib, H, W, P, Q, sh, sw, ph, pw, hq, wq, toff, pos, tpos,
                         tdh, tdw):
    """Max pooling of plane ``nc``; xs, yb, ib are scratch."""
    n_out = P * wq
    T = toff.shape[0]
    T3 = T - T % 3
    neg = x1.dtype.type(-np.inf)
    xo = nc * H * W
    yo = nc * P * Q
    _split_phases_cpu(x1, xo, H, W, xs, sh, sw, ph, pw, hq, wq, neg)
    for k in range(n_out):
        yb[k] = neg
        ib[k] = -1
    for t in range(0, T3, 3):
        _max3_cpu(xs[toff[t]:], xs[toff[t + 1]:], xs[toff[t + 2]:], pos, yb, ib,
                  tpos[t], tpos[t + 1], tpos[t + 2], n_out)
    for t in range(T3, T):
        _max1_cpu(xs[toff[t]:], pos, yb, ib, tpos[t], n_out)
    for p in range(P):
        o = yo + p * Q
        for q in range(Q):
            y1[uint64(o + q)] = yb[p * wq + q]
            i1[uint64(o + q)] = ib[p * wq + q]
        for q in range(Q):
            if ib[p * wq + q] < 0:
                # every input value in the window is -inf (or there is none): the first one wins
                mi = -1
                for u in range(T):
                    h = p * sh - ph + tdh[u]
                    w = q * sw - pw + tdw[u]
                    if mi < 0 and h >= 0 and h < H and w >= 0 and w < W:
                        mi = h * W + w
                i1[uint64(o + q)] = mi


@njit(parallel=True, cache=True, error_model="numpy")
def maxpool2d_fwd_cpu(x1, y1, i1, planes, n_chunks, H, W, P, Q, sh, sw, ph, pw, hq, wq, toff, pos, tpos,
                      tdh, tdw):
    for chunk in prange(n_chunks):
        xs = np.empty(sh * sw * hq * wq + wq, x1.dtype)
        yb = np.empty(P * wq, x1.dtype)
        ib = np.empty(P * wq, np.int32)
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            _maxpool2d_plane_cpu(x1, y1, i1, nc, xs, yb, ib, H, W, P, Q, sh, sw, ph, pw, hq, wq, toff, pos,
                                 tpos, tdh, tdw)


# one thread per input element (n, c, h, w)
@per_dtype(lambda dt: (array4(dt), array4(int64), array4(dt)) + (int64,) * 8)
def maxpool2d_bwd_cuda(dt):
    @cuda.jit
    def kernel(dy, idx, dx, R, S, sh, sw, ph, pw, dh, dw):
        i = cuda.grid(1)
        N, C, H, W = dx.shape
        P = dy.shape[2]
        Q = dy.shape[3]
        if i >= N * C * H * W:
            return
        w = i % W
        h = (i // W) % H
        nc = i // (H * W)
        n = nc // C
        c = nc % C
        a = h + ph - (R - 1) * dh
        p_lo = 0 if a <= 0 else (a + sh - 1) // sh
        p_hi = min(P - 1, (h + ph) // sh)
        b = w + pw - (S - 1) * dw
        q_lo = 0 if b <= 0 else (b + sw - 1) // sw
        q_hi = min(Q - 1, (w + pw) // sw)
        me = h * W + w
        acc = dt(0)
        for p in range(p_lo, p_hi + 1):
            for q in range(q_lo, q_hi + 1):
                if idx[n, c, p, q] == me:
                    acc += dy[n, c, p, q]
        dx[n, c, h, w] = acc
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def maxpool2d_bwd_cpu(dy1, i1, dx1, planes, HW, PQ):
    for nc in prange(planes):
        xo = nc * HW
        yo = nc * PQ
        for k in range(HW):
            dx1[uint64(xo + k)] = 0
        for k in range(PQ):
            j = i1[uint64(yo + k)]
            if j >= 0 and j < HW:
                dx1[uint64(xo + j)] += dy1[uint64(yo + k)]


# ---------------------------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------------------------

# one thread per output element (n, c, p, q)
@per_dtype(lambda dt: (array4(dt), array4(dt)) + (int64,) * 7)
def avgpool2d_fwd_cuda(dt):
    @cuda.jit
    def kernel(x, y, R, S, sh, sw, ph, pw, count_include_pad):
        i = cuda.grid(1)
        N, C, P, Q = y.shape
        H = x.shape[2]
        W = x.shape[3]
        if i >= N * C * P * Q:
            return
        q = i % Q
        p = (i // Q) % P
        nc = i // (P * Q)
        n = nc // C
        c = nc % C
        h0 = p * sh - ph
        w0 = q * sw - pw
        h1 = min(h0 + R, H + ph)
        w1 = min(w0 + S, W + pw)
        count = (h1 - h0) * (w1 - w0)
        h0 = max(h0, 0)
        w0 = max(w0, 0)
        h1 = min(h1, H)
        w1 = min(w1, W)
        if count_include_pad == 0:
            count = (h1 - h0) * (w1 - w0)
        acc = dt(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, p, q] = acc / dt(count)
    return kernel


@njit(cache=True, error_model="numpy")
def _sum3_cpu(s0, s1, s2, acc, n):
    for k in range(n):
        acc[k] = acc[k] + s0[k] + s1[k] + s2[k]


@njit(cache=True, error_model="numpy")
def _sum1_cpu(s0, acc, n):
    for k in range(n):
        acc[k] += s0[k]


@njit(parallel=True, cache=True, error_model="numpy")
def avgpool2d_fwd_cpu(x1, y1, planes, n_chunks, H, W, P, Q, sh, sw, ph, pw, hq, wq, toff, div):
    n_out = P * wq
    T = toff.shape[0]
    T3 = T - T % 3
    zero = x1.dtype.type(0)
    for chunk in prange(n_chunks):
        xs = np.empty(sh * sw * hq * wq + wq, x1.dtype)
        acc = np.empty(n_out, x1.dtype)
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            _split_phases_cpu(x1, nc * H * W, H, W, xs, sh, sw, ph, pw, hq, wq, zero)
            for k in range(n_out):
                acc[k] = zero
            for t in range(0, T3, 3):
                _sum3_cpu(xs[toff[t]:], xs[toff[t + 1]:], xs[toff[t + 2]:], acc, n_out)
            for t in range(T3, T):
                _sum1_cpu(xs[toff[t]:], acc, n_out)
            for p in range(P):
                o = nc * P * Q + p * Q
                for q in range(Q):
                    y1[uint64(o + q)] = acc[p * wq + q] / div[p * Q + q]


# one thread per input element (n, c, h, w)
@per_dtype(lambda dt: (array4(dt), array4(dt)) + (int64,) * 7)
def avgpool2d_bwd_cuda(dt):
    @cuda.jit
    def kernel(dy, dx, R, S, sh, sw, ph, pw, count_include_pad):
        i = cuda.grid(1)
        N, C, H, W = dx.shape
        P = dy.shape[2]
        Q = dy.shape[3]
        if i >= N * C * H * W:
            return
        w = i % W
        h = (i // W) % H
        nc = i // (H * W)
        n = nc // C
        c = nc % C
        a = h + ph - R + 1
        p_lo = 0 if a <= 0 else (a + sh - 1) // sh
        p_hi = min(P - 1, (h + ph) // sh)
        b = w + pw - S + 1
        q_lo = 0 if b <= 0 else (b + sw - 1) // sw
        q_hi = min(Q - 1, (w + pw) // sw)
        acc = dt(0)
        for p in range(p_lo, p_hi + 1):
            h0 = p * sh - ph
            h1 = min(h0 + R, H + ph)
            if count_include_pad == 0:
                h1 = min(h1, H)
                h0 = max(h0, 0)
            for q in range(q_lo, q_hi + 1):
                w0 = q * sw - pw
                w1 = min(w0 + S, W + pw)
                if count_include_pad == 0:
                    w1 = min(w1, W)
                    w0 = max(w0, 0)
                acc += dy[n, c, p, q] / dt((h1 - h0) * (w1 - w0))
        dx[n, c, h, w] = acc
    return kernel


@njit(cache=True, error_model="numpy")
def _add1_cpu(dst, src, n):
    for k in range(n):
        dst[k] += src[k]


@njit(parallel=True, cache=True, error_model="numpy")
def avgpool2d_bwd_cpu(dy1, dx1, planes, n_chunks, H, W, P, Q, sh, sw, ph, pw, hq, wq, toff, div):
    """Scatter form per plane: dy/div added at every tap's offset of the phase-split padded
    gradient, then the phases copied back into dx (padding dropped, uncovered positions 0)."""
    n_out = P * wq
    plane = hq * wq
    zero = dy1.dtype.type(0)
    for chunk in prange(n_chunks):
        g = np.zeros(n_out, dy1.dtype)
        dxs = np.empty(sh * sw * plane + wq, dy1.dtype)
        for nc in range(chunk * planes // n_chunks, (chunk + 1) * planes // n_chunks):
            xo = nc * H * W
            for p in range(P):
                o = nc * P * Q + p * Q
                for q in range(Q):
                    g[p * wq + q] = dy1[uint64(o + q)] / div[p * Q + q]
            for k in range(dxs.shape[0]):
                dxs[k] = zero
            for t in range(toff.shape[0]):
                _add1_cpu(dxs[toff[t]:], g, n_out)
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
                            dx1[uint64(ro + j * sw + b - pw)] = dxs[src + j]
                for w in range(w_end, W):
                    dx1[uint64(ro + w)] = zero


# ---------------------------------------------------------------------------------------------
# adaptive average pooling
# ---------------------------------------------------------------------------------------------

# one thread per output element (n, c, p, q)
@per_dtype(lambda dt: (array4(dt), array4(dt)))
def adaptive_avgpool2d_fwd_cuda(dt):
    @cuda.jit
    def kernel(x, y):
        i = cuda.grid(1)
        N, C, P, Q = y.shape
        H = x.shape[2]
        W = x.shape[3]
        if i >= N * C * P * Q:
            return
        q = i % Q
        p = (i // Q) % P
        nc = i // (P * Q)
        n = nc // C
        c = nc % C
        h0 = (p * H) // P
        h1 = ((p + 1) * H + P - 1) // P
        w0 = (q * W) // Q
        w1 = ((q + 1) * W + Q - 1) // Q
        acc = dt(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, p, q] = acc / dt((h1 - h0) * (w1 - w0))
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def adaptive_avgpool2d_fwd_cpu(x1, y1, planes, H, W, P, Q, hs, he, ws, we):
    for nc in prange(planes):
        xo = nc * H * W
        yo = nc * P * Q
        for p in range(P):
            for q in range(Q):
                acc = x1.dtype.type(0)
                for h in range(hs[p], he[p]):
                    base = xo + h * W
                    for w in range(ws[q], we[q]):
                        acc += x1[uint64(base + w)]
                y1[uint64(yo + p * Q + q)] = acc / x1.dtype.type((he[p] - hs[p]) * (we[q] - ws[q]))


# one thread per input element (n, c, h, w)
@per_dtype(lambda dt: (array4(dt), array4(dt)))
def adaptive_avgpool2d_bwd_cuda(dt):
    @cuda.jit
    def kernel(dy, dx):
        i = cuda.grid(1)
        N, C, H, W = dx.shape
        P = dy.shape[2]
        Q = dy.shape[3]
        if i >= N * C * H * W:
            return
        w = i % W
        h = (i // W) % H
        nc = i // (H * W)
        n = nc // C
        c = nc % C
        acc = dt(0)
        for p in range((h * P) // H, min(P, ((h + 1) * P + H - 1) // H)):
            nh = ((p + 1) * H + P - 1) // P - (p * H) // P
            for q in range((w * Q) // W, min(Q, ((w + 1) * Q + W - 1) // W)):
                nw = ((q + 1) * W + Q - 1) // Q - (q * W) // Q
                acc += dy[n, c, p, q] / dt(nh * nw)
        dx[n, c, h, w] = acc
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def adaptive_avgpool2d_bwd_cpu(dy1, dx1, planes, H, W, P, Q, hs, he, ws, we):
    """Per-plane scatter in row-major (p, q) order: the CUDA gather's additions, in its order."""
    for nc in prange(planes):
        xo = nc * H * W
        yo = nc * P * Q
        for k in range(H * W):
            dx1[uint64(xo + k)] = 0
        for p in range(P):
            for q in range(Q):
                g = dy1[uint64(yo + p * Q + q)] / dy1.dtype.type((he[p] - hs[p]) * (we[q] - ws[q]))
                for h in range(hs[p], he[p]):
                    base = xo + h * W
                    for w in range(ws[q], we[q]):
                        dx1[uint64(base + w)] += g


# ---------------------------------------------------------------------------------------------
# max unpooling
# ---------------------------------------------------------------------------------------------

# one thread per input element (n, c, p, q); out arrives zero-filled
@per_dtype(lambda dt: (array4(dt), array4(int64), array4(dt), array1(int64)))
def maxunpool2d_fwd_cuda(dt):
    @cuda.jit
    def kernel(x, idx, out, bad):
        i = cuda.grid(1)
        N, C, P, Q = x.shape
        Ho = out.shape[2]
        Wo = out.shape[3]
        if i >= N * C * P * Q:
            return
        q = i % Q
        p = (i // Q) % P
        nc = i // (P * Q)
        n = nc // C
        c = nc % C
        k = idx[n, c, p, q]
        if k >= 0 and k < Ho * Wo:
            out[n, c, k // Wo, k % Wo] = x[n, c, p, q]
        else:
            bad[0] = 1
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
@per_dtype(lambda dt: (array4(dt), array4(int64), array4(dt), array1(int64)))
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
    if first.dtype not in maxpool2d_fwd_cuda:
        raise TypeError(f"{name}: expected float32 or float64 arrays, got {first.dtype}")
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


def _chunks(g):
    """Groups of planes for the CPU kernels' prange (each group allocates its scratch once)."""
    return max(1, min(g.N * g.C, CHUNKS_PER_THREAD * numba.get_num_threads()))


def _phase_plan(g):
    """(hq, wq, toff, r*dh, s*dw) of the CPU phase split: tap t = r*S + s reads
    xs[toff[t] + p*wq + q] for output (p, q)."""
    hq = g.P + (g.R - 1) * g.dil_h // g.stride_h
    wq = g.Q + (g.S - 1) * g.dil_w // g.stride_w
    r, s = np.divmod(np.arange(g.R * g.S, dtype=np.int64), g.S)
    rh, sw_ = r * g.dil_h, s * g.dil_w
    phase = (rh % g.stride_h) * g.stride_w + sw_ % g.stride_w
    toff = phase * hq * wq + (rh // g.stride_h) * wq + sw_ // g.stride_w
    return hq, wq, toff, rh, sw_


def _avg_divisors(g, count_include_pad, dtype):
    """div[p*Q + q] = nh(p) * nw(q): the window clipped to the padded input, or to the input."""
    def counts(size, out, k, s, pad):
        start = np.arange(out, dtype=np.int64) * s - pad
        end = np.minimum(start + k, size + pad)
        if count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)
    ch = counts(g.H, g.P, g.R, g.stride_h, g.pad_h)
    cw = counts(g.W, g.Q, g.S, g.stride_w, g.pad_w)
    return np.outer(ch, cw).astype(dtype).ravel()


def _geometry_args(g):
    return g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w


def maxpool2d_fwd(x, y, indices, g):
    """y = max over each window of x, indices = flat argmax ``h*W + w`` within the (n, c) plane."""
    out = (g.N, g.C, g.P, g.Q)
    if _check("maxpool2d_fwd", (x, y), ((g.N, g.C, g.H, g.W), out, out), indices):
        maxpool2d_fwd_cuda[x.dtype][blocks(y.size, THREADS), THREADS](x, y, indices, *_geometry_args(g))
    else:
        if g.H * g.W >= 2**31:
            raise ValueError(f"maxpool2d_fwd: planes of {g.H}x{g.W} are too large for the CPU kernel "
                             "(H*W must be < 2**31)")
        hq, wq, toff, tdh, tdw = _phase_plan(g)
        # input position of window origin (p, q) on the P x wq grid, and of each tap relative to it
        pos = (np.arange(g.P)[:, None] * g.stride_h - g.pad_h) * g.W + np.arange(wq) * g.stride_w - g.pad_w
        maxpool2d_fwd_cpu(_flat(x), _flat(y), _flat(indices), g.N * g.C, _chunks(g), g.H, g.W, g.P, g.Q, g.stride_h,
                          g.stride_w, g.pad_h, g.pad_w, hq, wq, toff, pos.astype(np.int32).ravel(),
                          (tdh * g.W + tdw).astype(np.int32), tdh, tdw)


def maxpool2d_bwd(dy, indices, dx, g):
    """dx = the gradient dy routed to each output's saved argmax (summed where windows share one)."""
    out = (g.N, g.C, g.P, g.Q)
    if _check("maxpool2d_bwd", (dy, dx), (out, (g.N, g.C, g.H, g.W), out), indices):
        maxpool2d_bwd_cuda[dy.dtype][blocks(dx.size, THREADS), THREADS](dy, indices, dx, *_geometry_args(g))
    else:
        maxpool2d_bwd_cpu(_flat(dy), _flat(indices), _flat(dx), g.N * g.C, g.H * g.W, g.P * g.Q)


def avgpool2d_fwd(x, y, g, count_include_pad=True):
    """y = mean over each window (divisor per ``count_include_pad``); ``g`` has no dilation."""
    if _check("avgpool2d_fwd", (x, y), ((g.N, g.C, g.H, g.W), (g.N, g.C, g.P, g.Q))):
        avgpool2d_fwd_cuda[x.dtype][blocks(y.size, THREADS), THREADS](
            x, y, *_geometry_args(g)[:6], int(bool(count_include_pad)))
    else:
        hq, wq, toff = _phase_plan(g)[:3]
        avgpool2d_fwd_cpu(_flat(x), _flat(y), g.N * g.C, _chunks(g), g.H, g.W, g.P, g.Q, g.stride_h, g.stride_w,
                          g.pad_h, g.pad_w, hq, wq, toff, _avg_divisors(g, count_include_pad, x.dtype))


def avgpool2d_bwd(dy, dx, g, count_include_pad=True):
    """dx[h, w] = sum over the windows covering (h, w) of dy / divisor."""
    if _check("avgpool2d_bwd", (dy, dx), ((g.N, g.C, g.P, g.Q), (g.N, g.C, g.H, g.W))):
        avgpool2d_bwd_cuda[dy.dtype][blocks(dx.size, THREADS), THREADS](
            dy, dx, *_geometry_args(g)[:6], int(bool(count_include_pad)))
    else:
        hq, wq, toff = _phase_plan(g)[:3]
        avgpool2d_bwd_cpu(_flat(dy), _flat(dx), g.N * g.C, _chunks(g), g.H, g.W, g.P, g.Q, g.stride_h, g.stride_w,
                          g.pad_h, g.pad_w, hq, wq, toff, _avg_divisors(g, count_include_pad, dy.dtype))


def adaptive_windows(size, out):
    """(start, end) arrays of PyTorch's adaptive windows: floor(i*size/out) .. ceil((i+1)*size/out)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, ((i + 1) * size + out - 1) // out


def _adaptive(name, src, dst, src_is_input, cuda_kernel, cpu_kernel):
    x, y = (src, dst) if src_is_input else (dst, src)
    if len(x.shape) != 4 or len(y.shape) != 4 or tuple(x.shape[:2]) != tuple(y.shape[:2]):
        raise ValueError(f"{name}: expected (N, C, H, W) and (N, C, P, Q) arrays, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if _check(name, (src, dst), (src.shape, dst.shape)):
        cuda_kernel[src.dtype][blocks(dst.size, THREADS), THREADS](src, dst)
    else:
        N, C, H, W = x.shape
        P, Q = y.shape[2:]
        cpu_kernel(_flat(src), _flat(dst), N * C, H, W, P, Q, *adaptive_windows(H, P), *adaptive_windows(W, Q))


def adaptive_avgpool2d_fwd(x, y):
    """y (N, C, P, Q) = mean of x (N, C, H, W) over PyTorch's adaptive windows."""
    _adaptive("adaptive_avgpool2d_fwd", x, y, True, adaptive_avgpool2d_fwd_cuda, adaptive_avgpool2d_fwd_cpu)


def adaptive_avgpool2d_bwd(dy, dx):
    """dx (N, C, H, W) from dy (N, C, P, Q) of adaptive_avgpool2d_fwd."""
    _adaptive("adaptive_avgpool2d_bwd", dy, dx, False, adaptive_avgpool2d_bwd_cuda, adaptive_avgpool2d_bwd_cpu)


def _unpool(name, small, indices, big, cuda_kernel, cpu_kernel, zero_big):
    if len(small.shape) != 4 or len(big.shape) != 4 or tuple(small.shape[:2]) != tuple(big.shape[:2]):
        raise ValueError(f"{name}: expected (N, C, P, Q) and (N, C, Ho, Wo) arrays, got {tuple(small.shape)} "
                         f"and {tuple(big.shape)}")
    N, C, P, Q = small.shape
    Ho, Wo = big.shape[2:]
    if _check(name, (small, big), (small.shape, big.shape, small.shape), indices):
        bad = cuda.to_device(np.zeros(1, np.int64))
        if zero_big:
            fill(big.reshape(big.size), 0.0)
        args = (small, indices, big) if zero_big else (big, indices, small)
        cuda_kernel[small.dtype][blocks(small.size, THREADS), THREADS](*args, bad)
        n_bad = int(bad.copy_to_host()[0])
    else:
        args = (small, indices, big) if zero_big else (big, indices, small)
        n_bad = cpu_kernel(*(_flat(a) for a in args), N * C, P * Q, Ho * Wo)
    if n_bad:
        raise ValueError(f"{name}: indices must lie in [0, {Ho * Wo}) (flat positions in the {Ho}x{Wo} "
                         "output plane)")


def maxunpool2d_fwd(x, indices, out):
    """out (N, C, Ho, Wo) = 0 except out[n, c].flat[indices[n, c, p, q]] = x[n, c, p, q]."""
    _unpool("maxunpool2d_fwd", x, indices, out, maxunpool2d_fwd_cuda, maxunpool2d_fwd_cpu, True)


def maxunpool2d_bwd(dy, indices, dx):
    """dx[n, c, p, q] = dy[n, c].flat[indices[n, c, p, q]]."""
    _unpool("maxunpool2d_bwd", dx, indices, dy, maxunpool2d_bwd_cuda, maxunpool2d_bwd_cpu, False)
