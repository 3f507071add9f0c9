"""Batch normalisation over an input viewed as (N, C, L): statistics per channel c over the
M = N*L values ``x[n, c, l]``.

- ``batchnorm_stats(x, mean, var)``: ``mean[c] = Σ x / M``, ``var[c] = Σ (x - mean[c])² / M``
  (biased; two passes, so no cancellation of ``E[x²] - E[x]²``).
- ``batchnorm_fwd(x, mean, var, weight, bias, eps, y, relu=False)``:
  ``y = (x - mean[c]) * invstd[c] * weight[c] + bias[c]`` with ``invstd = 1/sqrt(var + eps)``;
  with ``relu``, ``max(that, 0)`` (BN + ReLU fused: the backward kernels then take the output y
  as ``relu_output`` and zero ``dy`` where ``y <= 0`` as they read it, so no ReLU gradient is
  ever stored).
- ``batchnorm_update_running(running_mean, running_var, mean, var, momentum, unbias)``:
  ``running = (1 - momentum) * running + momentum * stat`` in place, ``var * unbias`` for the
  variance (``unbias = M/(M-1)`` gives PyTorch's unbiased running variance).
- ``batchnorm_bwd_reduce(x, dy, mean, var, eps, sum_dy, sum_dy_xhat)``:
  ``sum_dy[c] = Σ dy`` (= dbias), ``sum_dy_xhat[c] = Σ dy * xhat`` (= dweight), with
  ``xhat = (x - mean) * invstd``.
- ``batchnorm_bwd_data(x, dy, mean, var, weight, sum_dy, sum_dy_xhat, eps, training, dx)``:
  training: ``dx = weight*invstd/M * (M*dy - sum_dy - xhat*sum_dy_xhat)``;
  eval (running statistics are constants): ``dx = dy * weight * invstd``.

float16 data (x, y, dy, dx) is storage only (kernels/float16.py): every per-channel array
(mean, var, weight, bias, the gradient sums) is then float32, the statistics are summed in
float32 and each output element is rounded to float16 once, as PyTorch's half batch norm does
with float32 parameters. Only the running statistics may be float16 too (a model made
``.half()``): ``batchnorm_update_running`` blends float32 batch statistics into them.

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
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

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
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), int64, array1(accumulator(dt)), int64,
                       _partials3(accumulator(dt)), int64, int64, int64), threads=REDUCE_THREADS, half=True)
def batchnorm_partials_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, dy, y, relu, mean, mode, partials, n_images, plane, chunk):
        buf = cuda.shared.array(REDUCE_THREADS, acc)
        s = cuda.blockIdx.x
        c = cuda.blockIdx.y
        C = partials.shape[0]
        t = cuda.threadIdx.x
        lo = s * chunk
        hi = min(n_images * plane, lo + chunk)
        acc0 = acc(0)
        acc1 = acc(0)
        if mode == SUM:
            for e in range(lo + t, hi, REDUCE_THREADS):
                n = e // plane
                acc0 += acc(x[(n * C + c) * plane + e - n * plane])
        elif mode == SQUARES:
            mu = mean[c]
            for e in range(lo + t, hi, REDUCE_THREADS):
                n = e // plane
                d = acc(x[(n * C + c) * plane + e - n * plane]) - mu
                acc0 += d * d
        else:
            mu = mean[c]
            for e in range(lo + t, hi, REDUCE_THREADS):
                n = e // plane
                i = (n * C + c) * plane + e - n * plane
                g = acc(0) if relu and acc(y[i]) <= acc(0) else acc(dy[i])
                acc0 += g
                acc1 += g * (acc(x[i]) - mu)
        acc0 = block_sum(buf, acc0)
        if mode == DOT:
            acc1 = block_sum(buf, acc1)
        if t == 0:
            partials[c, s, 0] = acc0
            partials[c, s, 1] = acc1
    return kernel


# one thread per channel c: adds its splits' sums in split order; SUM and SQUARES give sum / count
# (mean, variance) in out0, DOT gives sum dy in out0 and sum dy * xhat in out1. Per-channel arrays
# only: float16 data uses the float32 build.
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
    m = mean.dtype.type(n_images * plane)
    for c in prange(C):
        acc = zero(x)
        for n in range(n_images):
            xs = x[(n * C + c) * plane:(n * C + c + 1) * plane]
            for j in range(plane):
                acc += widen(xs[j])
        mu = acc / m
        acc = zero(x)
        for n in range(n_images):
            xs = x[(n * C + c) * plane:(n * C + c + 1) * plane]
            for j in range(plane):
                d = widen(xs[j]) - mu
                acc += d * d
        mean[c] = mu
        var[c] = acc / m


# one thread per element i of y, channel c = (i // plane) % C
@per_dtype(lambda dt: (array1(dt), *(array1(accumulator(dt)),) * 4, accumulator(dt), array1(dt), int64, int64),
           threads=THREADS, half=True)
def batchnorm_fwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, mean, var, weight, bias, eps, y, plane, relu):
        i = cuda.grid(1)
        if i < y.shape[0]:
            c = (i // plane) % mean.shape[0]
            invstd = acc(1) / math.sqrt(var[c] + eps)
            v = (acc(x[i]) - mean[c]) * (invstd * weight[c]) + bias[c]
            y[i] = dt(acc(0) if relu and v <= acc(0) else v)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def batchnorm_fwd_cpu(x, mean, var, weight, bias, eps, y, n_images, plane, relu):
    C = mean.shape[0]
    one = mean.dtype.type(1)
    # relu: 0 for v <= 0 (NaN passes); the lower bound of a max that NaN fails is the same select
    low = mean.dtype.type(0) if relu else -mean.dtype.type(np.inf)
    if plane == 1:  # (N, C): a row runs over the channels, vectorise along it
        for n in prange(n_images):
            xs = x[n * C:(n + 1) * C]
            ys = y[n * C:(n + 1) * C]
            for c in range(C):
                v = (widen(xs[c]) - mean[c]) * (one / math.sqrt(var[c] + eps) * weight[c]) + bias[c]
                ys[c] = narrow(low if v <= low else v, ys)
        return
    for nc in prange(n_images * C):
        c = nc % C
        mu = mean[c]
        scale = one / math.sqrt(var[c] + eps) * weight[c]
        shift = bias[c]
        xs = x[nc * plane:(nc + 1) * plane]
        ys = y[nc * plane:(nc + 1) * plane]
        for j in range(plane):
            v = (widen(xs[j]) - mu) * scale + shift
            ys[j] = narrow(low if v <= low else v, ys)


# one thread per channel c; the running statistics are float16 in the float16 build, the batch's float32
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(accumulator(dt)), array1(accumulator(dt)), accumulator(dt),
                       accumulator(dt)), threads=THREADS, half=True)
def batchnorm_update_running_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(running_mean, running_var, mean, var, momentum, unbias):
        c = cuda.grid(1)
        if c < mean.shape[0]:
            keep = acc(1) - momentum
            running_mean[c] = dt(keep * acc(running_mean[c]) + momentum * mean[c])
            running_var[c] = dt(keep * acc(running_var[c]) + momentum * (var[c] * unbias))
    return kernel


@njit(cache=True, error_model="numpy")
def batchnorm_update_running_cpu(running_mean, running_var, mean, var, momentum, unbias):
    keep = mean.dtype.type(1) - momentum
    for c in range(mean.shape[0]):
        running_mean[c] = narrow(keep * widen(running_mean[c]) + momentum * mean[c], running_mean)
        running_var[c] = narrow(keep * widen(running_var[c]) + momentum * (var[c] * unbias), running_var)


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def batchnorm_bwd_reduce_cpu(x, dy, y, relu, mean, var, eps, sum_dy, sum_dy_xhat, n_images, plane):
    C = mean.shape[0]
    for c in prange(C):
        mu = mean[c]
        acc_dy = zero(x)
        acc_dyx = zero(x)
        for n in range(n_images):
            xs = x[(n * C + c) * plane:(n * C + c + 1) * plane]
            gs = dy[(n * C + c) * plane:(n * C + c + 1) * plane]
            ys = y[(n * C + c) * plane:(n * C + c + 1) * plane]
            for j in range(plane):
                g = zero(x) if relu and widen(ys[j]) <= zero(x) else widen(gs[j])
                acc_dy += g
                acc_dyx += g * (widen(xs[j]) - mu)
        sum_dy[c] = acc_dy
        sum_dy_xhat[c] = acc_dyx * (mean.dtype.type(1) / math.sqrt(var[c] + eps))


# one thread per element i of dx, channel c = (i // plane) % C
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), int64, *(array1(accumulator(dt)),) * 5, accumulator(dt),
                       accumulator(dt), array1(dt), int64), threads=THREADS, half=True)
def batchnorm_bwd_data_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, dy, y, relu, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx, plane):
        i = cuda.grid(1)
        if i < dx.shape[0]:
            c = (i // plane) % mean.shape[0]
            invstd = acc(1) / math.sqrt(var[c] + eps)
            xhat = (acc(x[i]) - mean[c]) * invstd
            g = acc(0) if relu and acc(y[i]) <= acc(0) else acc(dy[i])
            dx[i] = dt((weight[c] * invstd) * (g - sum_dy[c] * inv_m - xhat * (sum_dy_xhat[c] * inv_m)))
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def batchnorm_bwd_data_cpu(x, dy, y, relu, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx, n_images, plane):
    C = mean.shape[0]
    one = mean.dtype.type(1)
    nil = zero(x)
    if plane == 1:  # (N, C): a row runs over the channels, vectorise along it
        for n in prange(n_images):
            xs = x[n * C:(n + 1) * C]
            gs = dy[n * C:(n + 1) * C]
            ys = y[n * C:(n + 1) * C]
            dxs = dx[n * C:(n + 1) * C]
            for c in range(C):
                invstd = one / math.sqrt(var[c] + eps)
                g = nil if relu and widen(ys[c]) <= nil else widen(gs[c])
                dxs[c] = narrow(weight[c] * invstd * (g - sum_dy[c] * inv_m
                                                      - (widen(xs[c]) - mean[c]) * (sum_dy_xhat[c] * inv_m * invstd)),
                                dxs)
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
        ys = y[nc * plane:(nc + 1) * plane]
        dxs = dx[nc * plane:(nc + 1) * plane]
        for j in range(plane):
            g = nil if relu and widen(ys[j]) <= nil else widen(gs[j])
            dxs[j] = narrow(scale * (g - k_dy - (widen(xs[j]) - mu) * k_x), dxs)


def _reduce_cuda(mode, x1, dy1, mean, var, eps, out0, out1, n_images, plane, y1=None):
    """The per-channel sums of ``mode`` over flat device arrays into ``out0`` (and ``out1``)."""
    C, m = out0.shape[0], n_images * plane
    dt = out0.dtype.type
    kernel = batchnorm_partials_cuda[x1.dtype]
    splits = wave_splits(C, blocks(m, REDUCE_THREADS * MIN_PER_THREAD), resident_blocks(kernel, REDUCE_THREADS))
    chunk = blocks(blocks(m, splits), REDUCE_THREADS) * REDUCE_THREADS
    splits = blocks(m, chunk)
    partials = device_empty((C, splits, 2), out0.dtype)
    kernel[(splits, C), REDUCE_THREADS, stream()](x1, dy1, x1 if y1 is None else y1, int(y1 is not None), mean, mode,
                                                  partials, n_images, plane, chunk)
    batchnorm_finish_cuda[out0.dtype][blocks(C, THREADS), THREADS, stream()](partials, mode, dt(m), var, dt(eps),
                                                                             out0, out1)


def _check(name, x, per_channel, full):
    """Check a 3-D (N, C, L) array, its (C,) per-channel arrays (float32 for float16 ``x``, else
    x's dtype) and its same-shape arrays (x's dtype).

    Returns the flat views of ``x`` and ``full`` (float16 ones as the uint16 bits CPU kernels
    read), N, L and whether they are CUDA device arrays.
    """
    if len(x.shape) != 3:
        raise ValueError(f"{name}: x must be a 3-D (N, C, L) array, got shape {x.shape}")
    if x.dtype not in batchnorm_fwd_cuda:
        raise TypeError(f"{name}: x must be float16, float32 or float64, got {x.dtype}")
    on_device = is_device_array(x)
    N, C, L = x.shape
    stat_dtype = accumulator_dtype(x.dtype)
    for arg, a in per_channel.items():
        if a.shape != (C,):
            raise ValueError(f"{name}: {arg} must have shape (C,) = ({C},), got {a.shape}")
    for arg, a in full.items():
        if a.shape != x.shape:
            raise ValueError(f"{name}: {arg} must have x's shape {x.shape}, got {a.shape}")
    for arg, a in {**per_channel, **full}.items():
        want = stat_dtype if arg in per_channel else x.dtype
        if a.dtype != want or is_device_array(a) != on_device:
            per_what = f" (per-channel arrays of {x.dtype} data are {stat_dtype})" if want != x.dtype else ""
            raise TypeError(f"{name}: {arg} must have dtype {want}{per_what} and be a "
                            f"{'CUDA device' if on_device else 'NumPy'} array like x")
    if not on_device and not all(a.flags.c_contiguous for a in (x, *per_channel.values(), *full.values())):
        raise ValueError(f"{name}: arrays must be C-contiguous")
    flats = [a.reshape(a.size) for a in (x, *full.values())]
    return (flats if on_device else [cpu_view(a) for a in flats]), N, L, on_device


def _constant(value, C, dtype, on_device):
    """A (C,) array of ``value`` in the per-channel dtype of ``dtype`` data: the stand-in for an
    absent weight, bias or gradient sum."""
    dtype = accumulator_dtype(dtype)
    if on_device:
        return device_constant(("batchnorm", float(value), C, dtype.str), lambda: np.full(C, value, dtype))
    return np.full(C, value, dtype)


def batchnorm_stats(x, mean, var):
    """``mean[c]``, ``var[c]``: mean and biased variance of channel c of ``x`` (N, C, L); deterministic."""
    (x1,), N, L, on_device = _check("batchnorm_stats", x, dict(mean=mean, var=var), {})
    if on_device:
        _reduce_cuda(SUM, x1, x1, mean, mean, 0.0, mean, mean, N, L)
        _reduce_cuda(SQUARES, x1, x1, mean, mean, 0.0, var, var, N, L)
    else:
        batchnorm_stats_cpu(x1, mean, var, N, L)


def batchnorm_fwd(x, mean, var, weight, bias, eps, y, relu=False):
    """``y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]`` for ``x``, ``y`` (N, C, L);
    ``weight`` None means 1, ``bias`` None means 0; with ``relu`` the ReLU of that, fused."""
    C = x.shape[1] if len(x.shape) == 3 else 0
    on_device = is_device_array(x)
    weight = _constant(1.0, C, x.dtype, on_device) if weight is None else weight
    bias = _constant(0.0, C, x.dtype, on_device) if bias is None else bias
    (x1, y1), N, L, on_device = _check("batchnorm_fwd", x, dict(mean=mean, var=var, weight=weight, bias=bias),
                                       dict(y=y))
    eps = accumulator_dtype(x.dtype).type(eps)
    if on_device:
        batchnorm_fwd_cuda[x.dtype][blocks(y1.size, THREADS), THREADS, stream()](x1, mean, var, weight, bias, eps, y1, L,
                                                                                 int(relu))
    else:
        batchnorm_fwd_cpu(x1, mean, var, weight, bias, eps, y1, N, L, bool(relu))


def batchnorm_update_running(running_mean, running_var, mean, var, momentum, unbias):
    """In place: ``running_mean = (1-momentum)*running_mean + momentum*mean`` and
    ``running_var = (1-momentum)*running_var + momentum*var*unbias``; all arrays (C,). The
    running statistics are float16, float32 or float64, the batch's ``mean`` and ``var`` in
    their accumulator dtype (float32 for float16 running statistics)."""
    on_device = is_device_array(running_mean)
    dtype = running_mean.dtype
    for arg, a in dict(running_mean=running_mean, running_var=running_var, mean=mean, var=var).items():
        if a.shape != running_mean.shape or len(a.shape) != 1:
            raise ValueError(f"batchnorm_update_running: {arg} must have shape {running_mean.shape} like "
                             f"running_mean, got {a.shape}")
        want = dtype if arg.startswith("running") else accumulator_dtype(dtype)
        if a.dtype != want or is_device_array(a) != on_device or dtype not in batchnorm_update_running_cuda:
            raise TypeError(f"batchnorm_update_running: {arg} must be a {want} array on running_mean's device "
                            "(running statistics float16, float32 or float64, the batch statistics float32 "
                            "for float16 ones, else of their dtype)")
    momentum, unbias = mean.dtype.type(momentum), mean.dtype.type(unbias)
    if on_device:
        kernel = batchnorm_update_running_cuda[dtype]
        kernel[blocks(mean.size, THREADS), THREADS, stream()](running_mean, running_var, mean, var, momentum, unbias)
    else:
        batchnorm_update_running_cpu(cpu_view(running_mean), cpu_view(running_var), mean, var, momentum, unbias)


def batchnorm_bwd_reduce(x, dy, mean, var, eps, sum_dy, sum_dy_xhat, relu_output=None):
    """``sum_dy[c] = Σ dy`` and ``sum_dy_xhat[c] = Σ dy * (x - mean[c]) / sqrt(var[c] + eps)`` over
    the (N, L) values of channel c; deterministic. They are dbias and dweight. Given
    ``relu_output``, the output y of a fused BN + ReLU, ``dy`` is first zeroed where ``y <= 0``."""
    full = dict(dy=dy) if relu_output is None else dict(dy=dy, relu_output=relu_output)
    (x1, dy1, *y1), N, L, on_device = _check("batchnorm_bwd_reduce", x,
                                             dict(mean=mean, var=var, sum_dy=sum_dy, sum_dy_xhat=sum_dy_xhat), full)
    eps = accumulator_dtype(x.dtype).type(eps)
    if on_device:
        _reduce_cuda(DOT, x1, dy1, mean, var, eps, sum_dy, sum_dy_xhat, N, L, y1[0] if y1 else None)
    else:
        batchnorm_bwd_reduce_cpu(x1, dy1, y1[0] if y1 else x1, bool(y1), mean, var, eps, sum_dy, sum_dy_xhat, N, L)


def batchnorm_bwd_data(x, dy, mean, var, weight, sum_dy, sum_dy_xhat, eps, training, dx, relu_output=None):
    """``dx`` for ``y = batchnorm_fwd(x, mean, var, weight, ...)``, all of ``x``, ``dy``, ``dx`` (N, C, L).

    training (``mean``, ``var`` are the batch statistics, ``sum_dy``, ``sum_dy_xhat`` from
    ``batchnorm_bwd_reduce``): ``dx = weight*invstd/M * (M*dy - sum_dy - xhat*sum_dy_xhat)``.
    Not training (running statistics; the sums are not used and may be None):
    ``dx = dy * weight * invstd``. ``weight`` None means 1. Given ``relu_output`` (the output of a
    fused BN + ReLU), ``dy`` is zeroed where it is <= 0 first, as ``batchnorm_bwd_reduce`` does.
    """
    C = x.shape[1] if len(x.shape) == 3 else 0
    on_device = is_device_array(x)
    weight = _constant(1.0, C, x.dtype, on_device) if weight is None else weight
    if not training:
        sum_dy = sum_dy_xhat = _constant(0.0, C, x.dtype, on_device)
    full = dict(dy=dy, dx=dx) if relu_output is None else dict(dy=dy, dx=dx, relu_output=relu_output)
    (x1, dy1, dx1, *y1), N, L, on_device = _check(
        "batchnorm_bwd_data", x, dict(mean=mean, var=var, weight=weight, sum_dy=sum_dy, sum_dy_xhat=sum_dy_xhat), full)
    relu = bool(y1)
    y1 = y1[0] if y1 else x1
    stat = accumulator_dtype(x.dtype).type
    eps, inv_m = stat(eps), stat(1.0 / (N * L) if training else 0.0)
    if on_device:
        batchnorm_bwd_data_cuda[x.dtype][blocks(dx1.size, THREADS), THREADS, stream()](
            x1, dy1, y1, int(relu), mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx1, L)
    else:
        batchnorm_bwd_data_cpu(x1, dy1, y1, relu, mean, var, weight, sum_dy, sum_dy_xhat, eps, inv_m, dx1, N, L)
