"""Batch normalisation over an input viewed as (N, C, L): statistics per channel c over the
M = N*L values ``x[n, c, l]``.

- ``batchnorm_stats(x, mean, var)``: ``mean[c] = Σ x / M``, ``var[c] = Σ (x - mean[c])² / M``
  (biased; two passes, so no cancellation of ``E[x²] - E[x]²``).
- ``batchnorm_fwd(x, mean, var, weight, bias, eps, y)``:
  ``y = (x - mean[c]) * invstd[c] * weight[c] + bias[c]`` with ``invstd = 1/sqrt(var + eps)``.
- ``batchnorm_update_running(running_mean, running_var, mean, var, momentum, unbias)``:
  ``running = (1 - momentum) * running + momentum * stat`` in place, ``var * unbias`` for the
  variance (``unbias = M/(M-1)`` gives PyTorch's unbiased running variance).
- ``batchnorm_bwd_reduce(x, dy, mean, var, eps, sum_dy, sum_dy_xhat)``:
  ``sum_dy[c] = Σ dy`` (= dbias), ``sum_dy_xhat[c] = Σ dy * xhat`` (= dweight), with
  ``xhat = (x - mean) * invstd``.
- ``batchnorm_bwd_data(x, dy, mean, var, weight, sum_dy, sum_dy_xhat, eps, training, dx)``:
  training: ``dx = weight*invstd/M * (M*dy - sum_dy - xhat*sum_dy_xhat)``;
  eval (running statistics are constants): ``dx = dy * weight * invstd``.

Every reduction is deterministic, with no atomics. On the GPU each channel's M values are cut
into a fixed number of splits (as many as fill whole waves of the device's resident blocks,
``cuda_util.wave_splits``: 64 channels alone would leave most of a 132-SM GPU idle); a block
per (split, channel) sums its split, each thread a fixed strided subset, then a shared-memory
tree, and a second kernel adds each channel's split sums in order. The split count depends on
the device (its SM count), so results are bitwise reproducible on one device. On the CPU one
``prange`` iteration per channel sums its N contiguous planes in order.
"""
import math

import numpy as np
from numba import cuda, int64, njit, prange

from .cuda_util import (SIMULATOR, array1, block_sum, blocks, device_constant, device_empty, is_device_array,
                        per_dtype, resident_blocks, stream, wave_splits)

THREADS = 32 if SIMULATOR else 256               # elementwise block size
REDUCE_THREADS = 16 if SIMULATOR else 256        # threads per reduction block, a power of two
MIN_PER_THREAD = 4                               # values each thread of a split sums at least

# What the reduction kernels sum per channel c over its N*L values: x; (x - mean[c])^2; dy and
# dy * (x - mean[c]).
SUM, SQUARES, DOT = range(3)


def _partials3(dt):
    return dt[:, :, ::1]


# one block per (split s, channel c): thread t sums the values lo + t, lo + t + REDUCE_THREADS, ...
# below hi of channel c, [lo, hi) being split s of its N*L values; the block's sums go to partials[c, s]
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), int64, _partials3(dt), int64, int64, int64),
           threads=REDUCE_THREADS)
def batchnorm_partials_cuda(dt):
    @cuda.jit
    def kernel(x, dy, mean, mode, partials, n_images, plane, chunk):
        buf = cuda.shared.array(REDUCE_THREADS, dt)
        s = cuda.blockIdx.x
        c = cuda.blockIdx.y
        C = partials.shape[0]
        t = cuda.threadIdx.x
        lo = s * chunk
        hi = min(n_images * plane, lo + chunk)
        acc0 = dt(0)
        acc1 = dt(0)
        if mode == SUM:
            for e in range(lo + t, hi, REDUCE_THREADS):
                n = e // plane
                acc0 += x[(n * C + c) * plane + e - n * plane]
        elif mode == SQUARES:
            mu = mean[c]
            for e in range(lo + t, hi, REDUCE_THREADS):
                n = e // plane
                d = x[(n * C + c) * plane + e - n * plane] - mu
                acc0 += d * d
        else:
            mu = mean[c]
            for e in range(lo + t, hi, REDUCE_THREADS):
                n = e // plane
                i = (n * C + c) * plane + e - n * plane
                g = dy[i]
                acc0 += g
                acc1 += g * (x[i] - mu)
        acc0 = block_sum(buf, acc0)
        if mode == DOT:
            acc1 = block_sum(buf, acc1)
        if t == 0:
            partials[c, s, 0] = acc0
            partials[c, s, 1] = acc1
    return kernel


# one thread per channel c: adds its splits' sums in split order; SUM and SQUARES give sum / count
# (mean, variance) in out0, DOT gives sum dy in out0 and sum dy * xhat in out1
@per_dtype(lambda dt: (_partials3(dt), int64, dt, array1(dt), dt, array1(dt), array1(dt)), threads=THREADS)
def batchnorm_finish_cuda(dt):
    @cuda.jit
    def kernel(partials, mode, count, var, eps, out0, out1):
        c = cuda.grid(1)
        if c < partials.shape[0]:
            t0 = dt(0)
            t1 = dt(0)
            for s in range(partials.shape[1]):
                t0 += partials[c, s, 0]
                t1 += partials[c, s, 1]
            if mode == DOT:
                out0[c] = t0
                out1[c] = t1 * (dt(1) / math.sqrt(var[c] + eps))
            else:
                out0[c] = t0 / count
    return kernel


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def batchnorm_stats_cpu(x, mean, var, n_images, plane):
    C = mean.shape[0]
    m = x.dtype.type(n_images * plane)
    for c in prange(C):
        acc = x.dtype.type(0)
        for n in range(n_images):
            xs = x[(n * C + c) * plane:(n * C + c + 1) * plane]
            for j in range(plane):
                acc += xs[j]
        mu = acc / m
        acc = x.dtype.type(0)
        for n in range(n_images):
            xs = x[(n * C + c) * plane:(n * C + c + 1) * plane]
            for j in range(plane):
                d = xs[j] - mu
                acc += d * d
        mean[c] = mu
        var[c] = acc / m


# one thread per element i of y, channel c = (i // plane) % C
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), array1(dt), array1(dt), dt, array1(dt), int64), threads=THREADS)
def batchnorm_fwd_cuda(dt):
    @cuda.jit
    def kernel(x, mean, var, weight, bias, eps, y, plane):
        i = cuda.grid(1)
        if i < y.shape[0]:
            c = (i // plane) % mean.shape[0]
            invstd = dt(1) / math.sqrt(var[c] + eps)
            y[i] = (x[i] - mean[c]) * (invstd * weight[c]) + bias[c]
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def batchnorm_fwd_cpu(x, mean, var, weight, bias, eps, y, n_images, plane):
    C = mean.shape[0]
    one = x.dtype.type(1)
    if plane == 1:  # (N, C): a row runs over the channels, vectorise along it
        for n in prange(n_images):
            xs = x[n * C:(n + 1) * C]
            ys = y[n * C:(n + 1) * C]
            for c in range(C):
                ys[c] = (xs[c] - mean[c]) * (one / math.sqrt(var[c] + eps) * weight[c]) + bias[c]
        return
    for nc in prange(n_images * C):
        c = nc % C
        mu = mean[c]
        scale = one / math.sqrt(var[c] + eps) * weight[c]
        shift = bias[c]
        xs = x[nc * plane:(nc + 1) * plane]
        ys = y[nc * plane:(nc + 1) * plane]
        for j in range(plane):
            ys[j] = (xs[j] - mu) * scale + shift


# one thread per channel c
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), array1(dt), dt, dt), threads=THREADS)
def batchnorm_update_running_cuda(dt):
    @cuda.jit
    def kernel(running_mean, running_var, mean, var, momentum, unbias):
        c = cuda.grid(1)
        if c < mean.shape[0]:
            keep = dt(1) - momentum
            running_mean[c] = keep * running_mean[c] + momentum * mean[c]
            running_var[c] = keep * running_var[c] + momentum * (var[c] * unbias)
    return kernel


@njit(cache=True, error_model="numpy")
def batchnorm_update_running_cpu(running_mean, running_var, mean, var, momentum, unbias):
    keep = mean.dtype.type(1) - momentum
    for c in range(mean.shape[0]):
        running_mean[c] = keep * running_mean[c] + momentum * mean[c]
        running_var[c] = keep * running_var[c] + momentum * (var[c] * unbias)


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def batchnorm_bwd_reduce_cpu(x, dy, mean, var, eps, sum_dy, sum_dy_xhat, n_images, plane):
    C = mean.shape[0]
    for c in prange(C):
        mu = mean[c]
        acc_dy = x.dtype.type(0)
        acc_dyx = x.dtype.type(0)
        for n in range(n_images):
            xs = x[(n * C + c) * plane:(n * C + c + 1) * plane]
            gs = dy[(n * C + c) * plane:(n * C + c + 1) * plane]
            for j in range(plane):
                acc_dy += gs[j]
                acc_dyx += gs[j] * (xs[j] - mu)
        sum_dy[c] = acc_dy
        sum_dy_xhat[c] = acc_dyx * (x.dtype.type(1) / math.sqrt(var[c] + eps))


# one thread per element i of dx, channel c = (i // plane) % C
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), array1(dt), array1(dt), array1(dt), array1(dt),
                       dt, dt, array1(dt), int64), threads=THREADS)
def batchnorm_bwd_data_cuda(dt):
    @cuda.jit
    def kernel(x, dy, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx, plane):
        i = cuda.grid(1)
        if i < dx.shape[0]:
            c = (i // plane) % mean.shape[0]
            invstd = dt(1) / math.sqrt(var[c] + eps)
            xhat = (x[i] - mean[c]) * invstd
            dx[i] = (weight[c] * invstd) * (dy[i] - sum_dy[c] * inv_m - xhat * (sum_dy_xhat[c] * inv_m))
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def batchnorm_bwd_data_cpu(x, dy, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx, n_images, plane):
    C = mean.shape[0]
    one = x.dtype.type(1)
    if plane == 1:  # (N, C): a row runs over the channels, vectorise along it
        for n in prange(n_images):
            xs = x[n * C:(n + 1) * C]
            gs = dy[n * C:(n + 1) * C]
            dxs = dx[n * C:(n + 1) * C]
            for c in range(C):
                invstd = one / math.sqrt(var[c] + eps)
                dxs[c] = weight[c] * invstd * (gs[c] - sum_dy[c] * inv_m
                                               - (xs[c] - mean[c]) * (sum_dy_xhat[c] * inv_m * invstd))
        return
    for nc in prange(n_images * C):
        c = nc % C
        mu = mean[c]
        invstd = one / math.sqrt(var[c] + eps)
        scale = weight[c] * invstd
        k_dy = sum_dy[c] * inv_m
        k_x = sum_dy_xhat[c] * inv_m * invstd
        xs = x[nc * plane:(nc + 1) * plane]
        gs = dy[nc * plane:(nc + 1) * plane]
        dxs = dx[nc * plane:(nc + 1) * plane]
        for j in range(plane):
            dxs[j] = scale * (gs[j] - k_dy - (xs[j] - mu) * k_x)


def _reduce_cuda(mode, x1, dy1, mean, var, eps, out0, out1, n_images, plane):
    """The per-channel sums of ``mode`` over flat device arrays into ``out0`` (and ``out1``)."""
    C, m, dt = out0.shape[0], n_images * plane, x1.dtype.type
    kernel = batchnorm_partials_cuda[x1.dtype]
    splits = wave_splits(C, blocks(m, REDUCE_THREADS * MIN_PER_THREAD), resident_blocks(kernel, REDUCE_THREADS))
    chunk = blocks(blocks(m, splits), REDUCE_THREADS) * REDUCE_THREADS
    splits = blocks(m, chunk)
    partials = device_empty((C, splits, 2), x1.dtype)
    kernel[(splits, C), REDUCE_THREADS, stream()](x1, dy1, mean, mode, partials, n_images, plane, chunk)
    batchnorm_finish_cuda[x1.dtype][blocks(C, THREADS), THREADS, stream()](partials, mode, dt(m), var, dt(eps),
                                                                          out0, out1)


def _check(name, x, per_channel, full):
    """Check a 3-D (N, C, L) array, its (C,) per-channel arrays and its same-shape arrays.

    Returns the flat views of ``x`` and ``full``, N, L and whether they are CUDA device arrays.
    """
    if len(x.shape) != 3:
        raise ValueError(f"{name}: x must be a 3-D (N, C, L) array, got shape {x.shape}")
    if x.dtype not in batchnorm_fwd_cuda:
        raise TypeError(f"{name}: x must be float32 or float64, got {x.dtype}")
    on_device = is_device_array(x)
    N, C, L = x.shape
    for arg, a in per_channel.items():
        if a.shape != (C,):
            raise ValueError(f"{name}: {arg} must have shape (C,) = ({C},), got {a.shape}")
    for arg, a in full.items():
        if a.shape != x.shape:
            raise ValueError(f"{name}: {arg} must have x's shape {x.shape}, got {a.shape}")
    for arg, a in {**per_channel, **full}.items():
        if a.dtype != x.dtype or is_device_array(a) != on_device:
            raise TypeError(f"{name}: {arg} must have dtype {x.dtype} and be a "
                            f"{'CUDA device' if on_device else 'NumPy'} array like x")
    if not on_device and not all(a.flags.c_contiguous for a in (x, *per_channel.values(), *full.values())):
        raise ValueError(f"{name}: arrays must be C-contiguous")
    return [a.reshape(a.size) for a in (x, *full.values())], N, L, on_device


def _constant(value, C, dtype, on_device):
    """A (C,) array of ``value``: the stand-in for an absent weight, bias or gradient sum."""
    if on_device:
        return device_constant(("batchnorm", float(value), C, np.dtype(dtype).str), lambda: np.full(C, value, dtype))
    return np.full(C, value, dtype)


def batchnorm_stats(x, mean, var):
    """``mean[c]``, ``var[c]``: mean and biased variance of channel c of ``x`` (N, C, L); deterministic."""
    (x1,), N, L, on_device = _check("batchnorm_stats", x, dict(mean=mean, var=var), {})
    if on_device:
        _reduce_cuda(SUM, x1, x1, mean, mean, 0.0, mean, mean, N, L)
        _reduce_cuda(SQUARES, x1, x1, mean, mean, 0.0, var, var, N, L)
    else:
        batchnorm_stats_cpu(x1, mean, var, N, L)


def batchnorm_fwd(x, mean, var, weight, bias, eps, y):
    """``y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]`` for ``x``, ``y`` (N, C, L);
    ``weight`` None means 1, ``bias`` None means 0."""
    C = x.shape[1] if len(x.shape) == 3 else 0
    on_device = is_device_array(x)
    weight = _constant(1.0, C, x.dtype, on_device) if weight is None else weight
    bias = _constant(0.0, C, x.dtype, on_device) if bias is None else bias
    (x1, y1), N, L, on_device = _check("batchnorm_fwd", x, dict(mean=mean, var=var, weight=weight, bias=bias),
                                       dict(y=y))
    eps = x.dtype.type(eps)
    if on_device:
        batchnorm_fwd_cuda[x.dtype][blocks(y1.size, THREADS), THREADS, stream()](x1, mean, var, weight, bias, eps, y1, L)
    else:
        batchnorm_fwd_cpu(x1, mean, var, weight, bias, eps, y1, N, L)


def batchnorm_update_running(running_mean, running_var, mean, var, momentum, unbias):
    """In place: ``running_mean = (1-momentum)*running_mean + momentum*mean`` and
    ``running_var = (1-momentum)*running_var + momentum*var*unbias``; all arrays (C,)."""
    arrays = dict(running_mean=running_mean, running_var=running_var, mean=mean, var=var)
    on_device = is_device_array(mean)
    for arg, a in arrays.items():
        if a.shape != mean.shape or len(a.shape) != 1:
            raise ValueError(f"batchnorm_update_running: {arg} must have shape {mean.shape} like mean, got {a.shape}")
        if a.dtype != mean.dtype or is_device_array(a) != on_device or a.dtype not in batchnorm_fwd_cuda:
            raise TypeError(f"batchnorm_update_running: {arg} must be a float32 or float64 array with the "
                            "dtype and device of mean")
    momentum, unbias = mean.dtype.type(momentum), mean.dtype.type(unbias)
    if on_device:
        kernel = batchnorm_update_running_cuda[mean.dtype]
        kernel[blocks(mean.size, THREADS), THREADS, stream()](running_mean, running_var, mean, var, momentum, unbias)
    else:
        batchnorm_update_running_cpu(running_mean, running_var, mean, var, momentum, unbias)


def batchnorm_bwd_reduce(x, dy, mean, var, eps, sum_dy, sum_dy_xhat):
    """``sum_dy[c] = Σ dy`` and ``sum_dy_xhat[c] = Σ dy * (x - mean[c]) / sqrt(var[c] + eps)`` over
    the (N, L) values of channel c; deterministic. They are dbias and dweight."""
    (x1, dy1), N, L, on_device = _check("batchnorm_bwd_reduce", x,
                                        dict(mean=mean, var=var, sum_dy=sum_dy, sum_dy_xhat=sum_dy_xhat),
                                        dict(dy=dy))
    eps = x.dtype.type(eps)
    if on_device:
        _reduce_cuda(DOT, x1, dy1, mean, var, eps, sum_dy, sum_dy_xhat, N, L)
    else:
        batchnorm_bwd_reduce_cpu(x1, dy1, mean, var, eps, sum_dy, sum_dy_xhat, N, L)


def batchnorm_bwd_data(x, dy, mean, var, weight, sum_dy, sum_dy_xhat, eps, training, dx):
    """``dx`` for ``y = batchnorm_fwd(x, mean, var, weight, ...)``, all of ``x``, ``dy``, ``dx`` (N, C, L).

    training (``mean``, ``var`` are the batch statistics, ``sum_dy``, ``sum_dy_xhat`` from
    ``batchnorm_bwd_reduce``): ``dx = weight*invstd/M * (M*dy - sum_dy - xhat*sum_dy_xhat)``.
    Not training (running statistics; the sums are not used and may be None):
    ``dx = dy * weight * invstd``. ``weight`` None means 1.
    """
    C = x.shape[1] if len(x.shape) == 3 else 0
    on_device = is_device_array(x)
    weight = _constant(1.0, C, x.dtype, on_device) if weight is None else weight
    if not training:
        sum_dy = sum_dy_xhat = _constant(0.0, C, x.dtype, on_device)
    (x1, dy1, dx1), N, L, on_device = _check(
        "batchnorm_bwd_data", x, dict(mean=mean, var=var, weight=weight, sum_dy=sum_dy, sum_dy_xhat=sum_dy_xhat),
        dict(dy=dy, dx=dx))
    eps = x.dtype.type(eps)
    inv_m = x.dtype.type(1.0 / (N * L) if training else 0.0)
    if on_device:
        batchnorm_bwd_data_cuda[x.dtype][blocks(dx1.size, THREADS), THREADS, stream()](
            x1, dy1, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx1, L)
    else:
        batchnorm_bwd_data_cpu(x1, dy1, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx1, N, L)
