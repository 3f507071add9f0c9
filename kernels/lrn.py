"""Cross-channel local response normalisation (LRN): forward and backward, CUDA and CPU.

On arrays viewed as (N, C, P), P the flattened spatial size, with the window of channel c
``W(c) = [c - lo, c + hi]`` clipped to [0, C):

    forward   s[n,c,p]  = k + alpha * sum_{j in W(c)} x[n,j,p]^2
              y[n,c,p]  = x[n,c,p] * s[n,c,p]^-beta
    backward  dx[n,i,p] = dy[n,i,p] * s[n,i,p]^-beta - 2*alpha*beta * x[n,i,p]
                          * sum_{c : i in W(c)} dy[n,c,p] * x[n,c,p] * s[n,c,p]^(-beta-1)

(``i in W(c)`` is ``c in [i - hi, i + lo]``, the mirrored window). PyTorch's
``local_response_norm(size, alpha, beta, k)`` is ``lo = size//2``, ``hi = (size-1)//2`` with
alpha/size; TensorFlow's ``lrn(depth_radius=r, bias, alpha, beta)`` is ``lo = hi = r`` with alpha
as given.

Both passes walk the channels once per pixel with a running window sum: add the entering
channel's term, subtract the leaving one's. Plain add/subtract would keep the rounding error of
every term that ever passed through the window: once a large term has left, the sum of the small
ones now in the window can be off by thousands of ulps. Each update is therefore a TwoSum:
the exact rounding error of every addition is carried in a second accumulator ``comp``, and
``acc + comp`` is as accurate as summing the window directly. The sums also restart from scratch
every ``max(lo + hi + 1, RESUM)`` channels. A running sum cannot take an inf or NaN term back
out (inf - inf is NaN), so a pixel whose running sum is not finite has its window summed
directly instead: an inf or NaN input, or a finite one whose square overflows, reaches exactly
the channels whose window holds it, as in PyTorch. While the sum is inf, ``comp`` is NaN (the
TwoSum error terms of inf), so the window sum is ``acc`` alone then. On the GPU each term is
rounded on its own by ``cuda.fma(a, b, 0)`` (``fma.rn``, which ptxas never fuses with the
additions around it), so a term rounds the same way when it enters and when it leaves.

When a backward will follow, the forward also writes ``sb = s^-beta`` and ``sb1 = s^(-beta-1)``,
so that the backward needs only multiplications and additions: on the CPU a square root or a
division costs 3-5 times a multiplication, and ``pow`` 40 times. ``s^-beta`` has exact-enough
fast forms (a few ulp) for the usual exponents: beta = 0.75 (AlexNet)
``1/(sqrt(s)*sqrt(sqrt(s)))``, 0.5 (TensorFlow's default) ``1/sqrt(s)``, 1 ``1/s``, each with
``s^(-beta-1)`` from multiplications; any other beta takes ``pow`` and a division. The launcher
picks the form once (``beta_mode``).

CUDA: one thread per (n, p) walks the channels; a warp reads 32 neighbouring pixels of one
channel, so every load is coalesced. CPU: one loop iteration per (n, chunk of at most CPU_CHUNK
pixels); the chunk's ``acc`` and ``comp`` live in a (2, N, P) workspace and every inner loop runs
over the chunk's contiguous pixels, so it vectorises. Everything is gather-form and deterministic.
"""
import math

import numba
import numpy as np
from numba import cuda, int64, njit, prange

from .cuda_util import SIMULATOR, blocks, is_device_array, per_dtype, stream

THREADS = 32 if SIMULATOR else 128     # CUDA threads per block, one per (n, p)
CPU_CHUNK = 4096                       # CPU pixels per loop iteration at most (a power of two)
CPU_TASKS_PER_THREAD = 4               # the launcher halves the chunk until there are this many per thread
RESUM = 16                             # running sums restart every max(window, RESUM) channels

BETA_POW, BETA_HALF, BETA_THREE_QUARTERS, BETA_ONE = range(4)


def beta_mode(beta):
    """How ``s ** -beta`` is evaluated: a fast form for 0.5, 0.75 and 1, ``pow`` otherwise."""
    return {0.5: BETA_HALF, 0.75: BETA_THREE_QUARTERS, 1.0: BETA_ONE}.get(float(beta), BETA_POW)


def _inv_pow(s, beta, mode, one):
    """``(s^-beta, s^(-beta-1))`` with one division in the fast forms (``q = s^(1/4)`` for 0.75)."""
    if mode == BETA_THREE_QUARTERS:
        r = math.sqrt(s)
        q = math.sqrt(r)
        inv = one / (r * q)
        u = inv * q
        return inv, inv * (u * u)
    if mode == BETA_HALF:
        inv = one / math.sqrt(s)
        return inv, inv * (inv * inv)
    if mode == BETA_ONE:
        inv = one / s
        return inv, inv * inv
    inv = math.pow(s, -beta)
    return inv, inv / s


def _two_sum(acc, comp, v):
    """``acc + comp + v`` as a new (acc, comp): comp collects the exact rounding error of each
    ``acc + v`` (Knuth's TwoSum)."""
    s = acc + v
    z = s - acc
    return s, comp + ((acc - (s - z)) + (v - z))


def _total(acc, comp):
    """The window sum ``acc + comp``; ``acc`` itself when it is inf or NaN (comp is NaN then)."""
    return acc + comp if acc - acc == 0 else acc


inv_pow_cuda = cuda.jit(device=True, inline="always")(_inv_pow)
inv_pow_cpu = njit(inline="always", cache=True, error_model="numpy")(_inv_pow)
two_sum_cuda = cuda.jit(device=True, inline="always")(_two_sum)
two_sum_cpu = njit(inline="always", cache=True, error_model="numpy")(_two_sum)
total_cuda = cuda.jit(device=True, inline="always")(_total)
total_cpu = njit(inline="always", cache=True, error_model="numpy")(_total)


def array3(dt):
    return dt[:, :, ::1]


# one thread per (n, p), walking the channels c
@per_dtype(lambda dt: (array3(dt), array3(dt), array3(dt), array3(dt), int64, int64, dt, dt, dt, int64, int64), threads=THREADS)
def lrn_fwd_cuda(dt):
    @cuda.jit
    def kernel(x, y, sb, sb1, lo, hi, alpha, beta, k, mode, save):
        i = cuda.grid(1)
        N, C, P = x.shape
        if i >= N * P:
            return
        n = i // P
        p = i - n * P
        period = max(lo + hi + 1, RESUM)
        since = period
        acc = dt(0)
        comp = dt(0)
        for c in range(C):
            restart = since == period
            if not restart:
                if c + hi < C:
                    v = x[n, c + hi, p]
                    acc, comp = two_sum_cuda(acc, comp, cuda.fma(v, v, dt(0)))
                if c > lo:
                    v = x[n, c - lo - 1, p]
                    acc, comp = two_sum_cuda(acc, comp, -cuda.fma(v, v, dt(0)))
                restart = not (acc - acc == dt(0))
            if restart:
                since = 0
                acc = dt(0)
                comp = dt(0)
                for j in range(max(0, c - lo), min(C, c + hi + 1)):
                    v = x[n, j, p]
                    acc, comp = two_sum_cuda(acc, comp, cuda.fma(v, v, dt(0)))
            since += 1
            inv, inv1 = inv_pow_cuda(k + alpha * total_cuda(acc, comp), beta, mode, dt(1))
            y[n, c, p] = x[n, c, p] * inv
            if save:
                sb[n, c, p] = inv
                sb1[n, c, p] = inv1
    return kernel


@njit(cache=True, error_model="numpy")
def _add_squares(acc, comp, xj, sign, m):
    """Add sign * xj^2 to the running sums; returns how many of them are no longer finite."""
    bad = 0
    for t in range(m):
        a, e = two_sum_cpu(acc[t], comp[t], sign * (xj[t] * xj[t]))
        acc[t] = a
        comp[t] = e
        bad += 0 if a - a == 0 else 1
    return bad


@njit(cache=True, error_model="numpy")
def _slide_squares(acc, comp, x_in, x_out, m):
    """Add x_in^2 and take x_out^2 from the running sums; returns how many are not finite."""
    bad = 0
    for t in range(m):
        a, e = two_sum_cpu(acc[t], comp[t], x_in[t] * x_in[t])
        a, e = two_sum_cpu(a, e, -(x_out[t] * x_out[t]))
        acc[t] = a
        comp[t] = e
        bad += 0 if a - a == 0 else 1
    return bad


@njit(cache=True, error_model="numpy")
def _resum_squares(acc, comp, x, n, j0, j1, p0, m):
    """The sums that are not finite, summed directly over channels [j0, j1) instead."""
    zero = acc.dtype.type(0)
    for t in range(m):
        if not (acc[t] - acc[t] == 0):
            a = e = zero
            for j in range(j0, j1):
                v = x[n, j, p0 + t]
                a, e = two_sum_cpu(a, e, v * v)
            acc[t] = a
            comp[t] = e


@njit(cache=True, error_model="numpy")
def _fwd_pixels(acc, comp, xc, yc, k, alpha, beta, mode, m):
    one = xc.dtype.type(1)
    for t in range(m):
        yc[t] = xc[t] * inv_pow_cpu(k + alpha * total_cpu(acc[t], comp[t]), beta, mode, one)[0]


@njit(cache=True, error_model="numpy")
def _fwd_pixels_save(acc, comp, xc, yc, bc, b1c, k, alpha, beta, mode, m):
    one = xc.dtype.type(1)
    for t in range(m):  # s goes through bc: two loops over few arrays vectorise, one over all six does not
        bc[t] = k + alpha * total_cpu(acc[t], comp[t])
    for t in range(m):
        inv, inv1 = inv_pow_cpu(bc[t], beta, mode, one)
        yc[t] = xc[t] * inv
        bc[t] = inv
        b1c[t] = inv1


@njit(parallel=True, cache=True, error_model="numpy")
def lrn_fwd_cpu(x, y, sb, sb1, work, lo, hi, alpha, beta, k, mode, save, chunk):
    N, C, P = x.shape
    one = x.dtype.type(1)
    nchunks = (P + chunk - 1) // chunk
    period = max(lo + hi + 1, RESUM)
    for task in prange(N * nchunks):
        n = task // nchunks
        p0 = task % nchunks * chunk
        m = min(P, p0 + chunk) - p0
        acc = work[0, n, p0:p0 + m]
        comp = work[1, n, p0:p0 + m]
        for c in range(C):
            bad = 0
            if c % period == 0:
                acc[:] = 0
                comp[:] = 0
                for j in range(max(0, c - lo), min(C, c + hi + 1)):
                    _add_squares(acc, comp, x[n, j, p0:], one, m)
            elif c + hi < C and c > lo:
                bad = _slide_squares(acc, comp, x[n, c + hi, p0:], x[n, c - lo - 1, p0:], m)
            elif c + hi < C:
                bad = _add_squares(acc, comp, x[n, c + hi, p0:], one, m)
            elif c > lo:
                bad = _add_squares(acc, comp, x[n, c - lo - 1, p0:], -one, m)
            if bad:
                _resum_squares(acc, comp, x, n, max(0, c - lo), min(C, c + hi + 1), p0, m)
            if save:
                _fwd_pixels_save(acc, comp, x[n, c, p0:], y[n, c, p0:], sb[n, c, p0:], sb1[n, c, p0:],
                                 k, alpha, beta, mode, m)
            else:
                _fwd_pixels(acc, comp, x[n, c, p0:], y[n, c, p0:], k, alpha, beta, mode, m)


# one thread per (n, p), walking the channels c
@per_dtype(lambda dt: (array3(dt), array3(dt), array3(dt), array3(dt), array3(dt), int64, int64, dt), threads=THREADS)
def lrn_bwd_cuda(dt):
    @cuda.jit
    def kernel(x, sb, sb1, dy, dx, lo, hi, two_alpha_beta):
        i = cuda.grid(1)
        N, C, P = x.shape
        if i >= N * P:
            return
        n = i // P
        p = i - n * P
        period = max(lo + hi + 1, RESUM)
        since = period
        acc = dt(0)
        comp = dt(0)
        for c in range(C):
            restart = since == period
            if not restart:
                if c + lo < C:
                    g = dy[n, c + lo, p] * x[n, c + lo, p]
                    acc, comp = two_sum_cuda(acc, comp, cuda.fma(g, sb1[n, c + lo, p], dt(0)))
                if c > hi:
                    g = dy[n, c - hi - 1, p] * x[n, c - hi - 1, p]
                    acc, comp = two_sum_cuda(acc, comp, -cuda.fma(g, sb1[n, c - hi - 1, p], dt(0)))
                restart = not (acc - acc == dt(0))
            if restart:
                since = 0
                acc = dt(0)
                comp = dt(0)
                for j in range(max(0, c - hi), min(C, c + lo + 1)):
                    g = dy[n, j, p] * x[n, j, p]
                    acc, comp = two_sum_cuda(acc, comp, cuda.fma(g, sb1[n, j, p], dt(0)))
            since += 1
            dx[n, c, p] = dy[n, c, p] * sb[n, c, p] - two_alpha_beta * x[n, c, p] * total_cuda(acc, comp)
    return kernel


@njit(cache=True, error_model="numpy")
def _add_terms(acc, comp, gj, xj, b1j, sign, m):
    """Add sign * gj*xj*b1j to the running sums; returns how many are no longer finite."""
    bad = 0
    for t in range(m):
        a, e = two_sum_cpu(acc[t], comp[t], sign * (gj[t] * xj[t] * b1j[t]))
        acc[t] = a
        comp[t] = e
        bad += 0 if a - a == 0 else 1
    return bad


@njit(cache=True, error_model="numpy")
def _slide_terms(acc, comp, g_in, x_in, b1_in, g_out, x_out, b1_out, m):
    """Add the entering channel's term, take the leaving one's; returns how many are not finite."""
    bad = 0
    for t in range(m):
        a, e = two_sum_cpu(acc[t], comp[t], g_in[t] * x_in[t] * b1_in[t])
        a, e = two_sum_cpu(a, e, -(g_out[t] * x_out[t] * b1_out[t]))
        acc[t] = a
        comp[t] = e
        bad += 0 if a - a == 0 else 1
    return bad


@njit(cache=True, error_model="numpy")
def _resum_terms(acc, comp, dy, x, sb1, n, j0, j1, p0, m):
    """The sums that are not finite, summed directly over channels [j0, j1) instead."""
    zero = acc.dtype.type(0)
    for t in range(m):
        if not (acc[t] - acc[t] == 0):
            a = e = zero
            for j in range(j0, j1):
                a, e = two_sum_cpu(a, e, dy[n, j, p0 + t] * x[n, j, p0 + t] * sb1[n, j, p0 + t])
            acc[t] = a
            comp[t] = e


@njit(cache=True, error_model="numpy")
def _bwd_pixels(acc, comp, xc, gc, bc, dxc, two_alpha_beta, m):
    for t in range(m):
        dxc[t] = gc[t] * bc[t] - two_alpha_beta * xc[t] * total_cpu(acc[t], comp[t])


@njit(parallel=True, cache=True, error_model="numpy")
def lrn_bwd_cpu(x, sb, sb1, dy, dx, work, lo, hi, two_alpha_beta, chunk):
    N, C, P = x.shape
    one = x.dtype.type(1)
    nchunks = (P + chunk - 1) // chunk
    period = max(lo + hi + 1, RESUM)
    for task in prange(N * nchunks):
        n = task // nchunks
        p0 = task % nchunks * chunk
        m = min(P, p0 + chunk) - p0
        acc = work[0, n, p0:p0 + m]
        comp = work[1, n, p0:p0 + m]
        for c in range(C):
            bad = 0
            if c % period == 0:
                acc[:] = 0
                comp[:] = 0
                for j in range(max(0, c - hi), min(C, c + lo + 1)):
                    _add_terms(acc, comp, dy[n, j, p0:], x[n, j, p0:], sb1[n, j, p0:], one, m)
            elif c + lo < C and c > hi:
                i, j = c + lo, c - hi - 1
                bad = _slide_terms(acc, comp, dy[n, i, p0:], x[n, i, p0:], sb1[n, i, p0:],
                                   dy[n, j, p0:], x[n, j, p0:], sb1[n, j, p0:], m)
            elif c + lo < C:
                j = c + lo
                bad = _add_terms(acc, comp, dy[n, j, p0:], x[n, j, p0:], sb1[n, j, p0:], one, m)
            elif c > hi:
                j = c - hi - 1
                bad = _add_terms(acc, comp, dy[n, j, p0:], x[n, j, p0:], sb1[n, j, p0:], -one, m)
            if bad:
                _resum_terms(acc, comp, dy, x, sb1, n, max(0, c - hi), min(C, c + lo + 1), p0, m)
            _bwd_pixels(acc, comp, x[n, c, p0:], dy[n, c, p0:], sb[n, c, p0:], dx[n, c, p0:],
                        two_alpha_beta, m)


def _check(name, lo, hi, arrays):
    """Arrays share one (N, C, ...) shape, float dtype and device and are C-contiguous; returns
    their (N, C, P) views and whether they live on the GPU."""
    first = arrays[0][1]
    if len(first.shape) < 3:
        raise ValueError(f"{name}: expected arrays of shape (N, C, ...) with at least one spatial "
                         f"dimension, got {first.shape}")
    if first.dtype not in lrn_fwd_cuda:
        raise TypeError(f"{name}: arrays must be float32 or float64, got {first.dtype}")
    if lo < 0 or hi < 0:
        raise ValueError(f"{name}: window reach lo, hi must be >= 0, got {lo}, {hi}")
    on_device = is_device_array(first)
    for arg, a in arrays:
        if a.shape != first.shape or a.dtype != first.dtype or is_device_array(a) != on_device:
            raise ValueError(f"{name}: {arg} must match {arrays[0][0]}: shape {first.shape}, dtype "
                             f"{first.dtype}, {'CUDA device' if on_device else 'NumPy'} array; got "
                             f"shape {a.shape}, dtype {a.dtype}")
        if not (a.is_c_contiguous() if on_device else a.flags.c_contiguous):
            raise ValueError(f"{name}: {arg} must be C-contiguous")
    N, C = first.shape[:2]
    P = int(np.prod(first.shape[2:], dtype=np.int64))
    return [a.reshape((N, C, P)) for _, a in arrays], on_device


def _cpu_chunk(N, P):
    """Pixels per CPU loop iteration: CPU_CHUNK (whole planes of the usual sizes, streamed
    front to back, run fastest), halved down to 64 while there are fewer than
    CPU_TASKS_PER_THREAD iterations per thread."""
    chunk = CPU_CHUNK
    while chunk > 64 and N * -(-P // chunk) < CPU_TASKS_PER_THREAD * numba.get_num_threads():
        chunk //= 2
    return chunk


def lrn_fwd(x, y, lo, hi, alpha, beta, k, sb=None, sb1=None):
    """``y = x * s^-beta`` with ``s = k + alpha * sum x^2`` over the channel window [c - lo, c + hi];
    x, y (and sb, sb1) are (N, C, ...) arrays of one dtype and device. With ``sb`` and ``sb1``
    (both or neither) it also writes ``sb = s^-beta`` and ``sb1 = s^(-beta-1)`` for ``lrn_bwd``."""
    if (sb is None) != (sb1 is None):
        raise ValueError("lrn_fwd: give both sb and sb1 or neither")
    save = sb is not None
    named = [("x", x), ("y", y)] + ([("sb", sb), ("sb1", sb1)] if save else [])
    arrays, on_device = _check("lrn_fwd", lo, hi, named)
    x3, y3 = arrays[:2]
    b3, b13 = arrays[2:] if save else (y3, y3)
    N, C, P = x3.shape
    if x3.size == 0:
        return
    dt = x3.dtype.type
    args = (int(lo), int(hi), dt(alpha), dt(beta), dt(k), beta_mode(beta), int(save))
    if on_device:
        lrn_fwd_cuda[x3.dtype][blocks(N * P, THREADS), THREADS, stream()](x3, y3, b3, b13, *args)
    else:
        lrn_fwd_cpu(x3, y3, b3, b13, np.empty((2, N, P), x3.dtype), *args, _cpu_chunk(N, P))


def lrn_bwd(x, sb, sb1, dy, dx, lo, hi, alpha, beta):
    """``dx`` of ``lrn_fwd``'s ``y`` given ``dy``, from the forward's x, sb and sb1."""
    (x3, b3, b13, dy3, dx3), on_device = _check(
        "lrn_bwd", lo, hi, [("x", x), ("sb", sb), ("sb1", sb1), ("dy", dy), ("dx", dx)])
    N, C, P = x3.shape
    if x3.size == 0:
        return
    args = (int(lo), int(hi), x3.dtype.type(2 * alpha * beta))
    if on_device:
        lrn_bwd_cuda[x3.dtype][blocks(N * P, THREADS), THREADS, stream()](x3, b3, b13, dy3, dx3, *args)
    else:
        lrn_bwd_cpu(x3, b3, b13, dy3, dx3, np.empty((2, N, P), x3.dtype), *args, _cpu_chunk(N, P))
