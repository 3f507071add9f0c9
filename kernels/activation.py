"""Pointwise activations and their gradients.

- ``activation_fwd(op, x, y)``: ``y = relu(x) | tanh(x) | sigmoid(x)``.
- ``activation_bwd(op, y, dy, dx)``: the gradient from the saved *output* ``y``:
  relu ``dx = dy if y > 0 else 0`` (0 at ``x <= 0``, as PyTorch), tanh ``dx = dy (1 - y²)``,
  sigmoid ``dx = dy y (1 - y)``.
- ``bias_activation(op, y, b)``: the fused epilogue of a layer, in place
  ``y[n, k, ...] = op(y[n, k, ...] + b[k])`` (op None: the bias alone; b None: the activation alone).
- ``activation_bias_grad(op, y, dy, dx, db)``: its backward in one pass, ``dx = dy * op'`` from
  the output ``y`` and ``db[k] = Σ_{n, ...} dx[n, k, ...]`` (deterministic: per channel in a fixed
  order on the CPU; on CUDA fixed splits per channel whose sums are added in order).

``relu(x) = 0 if x <= 0 else x`` passes NaN through, as PyTorch does. The sigmoid is
evaluated in the form that never overflows: with ``e = exp(-|x|)``, ``1 / (1 + e)`` for
``x >= 0`` and ``e / (1 + e)`` below (a select, not a branch, so the CPU loop vectorises).
On the CPU, float32 tanh is the odd 13/6 rational minimax fit ``x P(x²) / Q(x²)`` that Eigen,
XLA and ONNX Runtime's MLAS use, clamped at ±7.905 (where float32 tanh rounds to ±1) and ``x``
itself below 4e-4: at most 6 ulp from the true value, and it vectorises, where libm's
``tanhf`` (a call per element, no SVML here) runs ~14x slower. float64 and CUDA use
``math.tanh``.

Like the ``elementwise`` families, each direction is one kernel that branches on an op code
per element; arrays are C-contiguous, of one float dtype (float16, float32 or float64), and
treated as flat, so ``y`` may alias ``x`` and ``dx`` may alias ``dy``. float16 data is computed
in float32 (the float32 CPU tanh included) and rounded once when stored (kernels/float16.py).
"""
import math

import numpy as np
from numba import cuda, int64, njit, prange

from .cpu_util import cpu_kernel
from .cuda_util import (SIMULATOR, array1, array2, block_sum, blocks, device_empty, is_device_array, per_dtype,
                        resident_blocks, stream, wave_splits)
from .elementwise import MIN_PER_THREAD, REDUCE_THREADS, flat_operands, op_code, sum_rows_cuda
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

THREADS = 32 if SIMULATOR else 256

# FMA contraction only (no other fast-math): the tanh polynomial and dy (1 - y²) in fused
# multiply-adds (F.tanh 1.1-1.5x faster on an AVX-512 Xeon); NaN and infinity keep their IEEE behaviour
CONTRACT = {"contract"}

RELU, TANH, SIGMOID, TANH_RATIONAL, IDENTITY = range(5)   # TANH_RATIONAL: float32 tanh on the CPU
ACTIVATIONS = {"relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}
EPILOGUES = {None: IDENTITY, **ACTIVATIONS}                  # what may follow a bias: nothing or an activation

TANH_CLAMP = np.float32(7.90531110763549805)
TANH_SMALL = np.float32(4e-4)
TANH_ONE = np.float32(1)
P1, P3, P5, P7, P9, P11, P13 = (np.float32(c) for c in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
Q0, Q2, Q4, Q6 = (np.float32(c) for c in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))


@cuda.jit(device=True, inline="always")
def activate_cuda(op, v, zero_, one):
    """op(v) for an activation code (IDENTITY: v); zero_ and one of v's type."""
    if op == RELU:
        return zero_ if v <= zero_ else v
    if op == TANH:
        return math.tanh(v)
    if op == SIGMOID:
        e = math.exp(-abs(v))
        s = one / (one + e)
        return s if v >= zero_ else e * s
    return v


@cuda.jit(device=True, inline="always")
def _activation_grad_cuda(op, v, g, zero_, one):
    if op == RELU:
        return zero_ if v <= zero_ else g
    if op == TANH:
        return g * (one - v * v)
    if op == SIGMOID:
        return g * v * (one - v)
    return g


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), array1(dt)), threads=THREADS, half=True)
def activation_fwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, x, y):
        i = cuda.grid(1)
        if i < y.shape[0]:
            y[i] = dt(activate_cuda(op, acc(x[i]), acc(0), acc(1)))
    return kernel


@njit(inline="always")
def _tanh_rational(v):
    x = min(max(v, -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    p = ((((((P13 * x2 + P11) * x2 + P9) * x2 + P7) * x2 + P5) * x2 + P3) * x2 + P1) * x
    q = ((Q6 * x2 + Q4) * x2 + Q2) * x2 + Q0
    # ±1 exactly past the clamp (with FMAs the fit gives 1 - 2 ulp there); NaN fails both tests
    saturated = TANH_ONE if v > 0 else -TANH_ONE
    return v if abs(v) < TANH_SMALL else (saturated if abs(v) >= TANH_CLAMP else p / q)


@njit(inline="always")
def activate_cpu(op, v, zero_, one):
    """op(v) for an activation code (IDENTITY: v); zero_ and one of v's type."""
    if op == RELU:
        return zero_ if v <= zero_ else v
    if op == TANH:
        return math.tanh(v)
    if op == TANH_RATIONAL:
        return _tanh_rational(v)
    if op == SIGMOID:
        e = math.exp(-abs(v))
        s = one / (one + e)
        return s if v >= zero_ else e * s
    return v


@njit(inline="always")
def _activation_grad_cpu(op, v, g, zero_, one):
    """The gradient g times op' at the point whose output was v."""
    if op == RELU:
        return zero_ if v <= zero_ else g
    if op == TANH or op == TANH_RATIONAL:
        return g * (one - v * v)
    if op == SIGMOID:
        return g * v * (one - v)
    return g


@njit(inline="always")
def _activation_fwd_body(op, x, y):
    zero_ = zero(x)
    one = zero_ + np.float32(1)       # float32 + float32 stays float32; a float64 zero makes it float64
    for i in prange(y.shape[0]):
        y[i] = narrow(activate_cpu(op, widen(x[i]), zero_, one), y)


@njit(parallel=True, cache=True, error_model="numpy", fastmath=CONTRACT)
def activation_fwd_cpu(op, x, y):
    _activation_fwd_body(op, x, y)


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def activation_fwd_serial_cpu(op, x, y):
    _activation_fwd_body(op, x, y)


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), array1(dt), array1(dt)), threads=THREADS, half=True)
def activation_bwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, y, dy, dx):
        i = cuda.grid(1)
        if i < dx.shape[0]:
            dx[i] = dt(_activation_grad_cuda(op, acc(y[i]), acc(dy[i]), acc(0), acc(1)))
    return kernel


@njit(inline="always")
def _activation_bwd_body(op, y, dy, dx):
    zero_ = zero(y)
    one = zero_ + np.float32(1)       # float32 + float32 stays float32; a float64 zero makes it float64
    for i in prange(dx.shape[0]):
        dx[i] = narrow(_activation_grad_cpu(op, widen(y[i]), widen(dy[i]), zero_, one), dx)


@njit(parallel=True, cache=True, error_model="numpy", fastmath=CONTRACT)
def activation_bwd_cpu(op, y, dy, dx):
    _activation_bwd_body(op, y, dy, dx)


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def activation_bwd_serial_cpu(op, y, dy, dx):
    _activation_bwd_body(op, y, dy, dx)


def activation_fwd(op, x, y):
    """``y = op(x)`` for op in relu, tanh, sigmoid; ``y`` may alias ``x``."""
    code = op_code(ACTIVATIONS, op, "activation_fwd")
    (x1, y1), on_device = flat_operands(x, y)
    if on_device:
        activation_fwd_cuda[y.dtype][blocks(y.size, THREADS), THREADS, stream()](code, x1, y1)
    else:
        # float16 data is computed in float32, so it takes the float32 tanh too
        rational = code == TANH and accumulator_dtype(y.dtype) == np.float32
        kernel = cpu_kernel(activation_fwd_cpu, activation_fwd_serial_cpu, y.size)
        kernel(TANH_RATIONAL if rational else code, cpu_view(x1), cpu_view(y1))


def activation_bwd(op, y, dy, dx):
    """``dx`` = the gradient of ``op`` at the point whose forward output was ``y``, times ``dy``."""
    code = op_code(ACTIVATIONS, op, "activation_bwd")
    (y1, dy1, dx1), on_device = flat_operands(y, dy, dx)
    if on_device:
        activation_bwd_cuda[dx.dtype][blocks(dx.size, THREADS), THREADS, stream()](code, y1, dy1, dx1)
    else:
        kernel = cpu_kernel(activation_bwd_cpu, activation_bwd_serial_cpu, dx.size)
        kernel(code, cpu_view(y1), cpu_view(dy1), cpu_view(dx1))


# --- bias + activation, fused: the epilogue of a convolution or linear layer and its gradient ---

# one thread per element i of y viewed as (N, K, plane), channel k = (i // plane) % K
@per_dtype(lambda dt: (int64, array1(dt), array1(dt), int64), threads=THREADS, half=True)
def bias_activation_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, y, b, plane):
        i = cuda.grid(1)
        if i < y.shape[0]:
            v = acc(y[i])
            if b.shape[0] > 0:
                v += acc(b[(i // plane) % b.shape[0]])
            y[i] = dt(activate_cuda(op, v, acc(0), acc(1)))
    return kernel


@njit(inline="always")
def _bias_activation_body(op, y, b, n_images, channels, plane):
    zero_ = zero(y)
    one = zero_ + np.float32(1)
    for nk in prange(n_images * channels):
        bk = widen(b[nk % channels]) if b.shape[0] > 0 else zero_
        yk = y[nk * plane:(nk + 1) * plane]
        for j in range(plane):
            yk[j] = narrow(activate_cpu(op, widen(yk[j]) + bk, zero_, one), yk)


@njit(parallel=True, cache=True, error_model="numpy", fastmath=CONTRACT)
def bias_activation_cpu(op, y, b, n_images, channels, plane):
    _bias_activation_body(op, y, b, n_images, channels, plane)


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def bias_activation_serial_cpu(op, y, b, n_images, channels, plane):
    _bias_activation_body(op, y, b, n_images, channels, plane)


# one block per (split s, channel k), as elementwise.bias_grad_partials_cuda: thread t takes the
# values lo + t, lo + t + REDUCE_THREADS, ... below hi of channel k, writes dx = op'(y) dy for
# each and sums them; the block's sum goes to partials[s, k]
@per_dtype(lambda dt: (int64, array1(dt), array1(dt), array1(dt), array2(accumulator(dt)), int64, int64),
           threads=REDUCE_THREADS, half=True)
def activation_bias_grad_partials_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, y, dy, dx, partials, plane, chunk):
        buf = cuda.shared.array(REDUCE_THREADS, acc)
        s = cuda.blockIdx.x
        k = cuda.blockIdx.y
        K = partials.shape[1]
        t = cuda.threadIdx.x
        lo = s * chunk
        hi = min(dx.shape[0] // K, lo + chunk)
        a = acc(0)
        for e in range(lo + t, hi, REDUCE_THREADS):
            n = e // plane
            i = (n * K + k) * plane + e - n * plane
            r = _activation_grad_cuda(op, acc(y[i]), acc(dy[i]), acc(0), acc(1))
            dx[i] = dt(r)
            a += r
        total = block_sum(buf, a)
        if t == 0:
            partials[s, k] = total
    return kernel


@njit(inline="always")
def _activation_bias_grad_body(op, y, dy, dx, db, n_images, plane):
    zero_ = zero(y)
    one = zero_ + np.float32(1)
    K = db.shape[0]
    for k in prange(K):
        acc = zero_
        for n in range(n_images):
            lo = (n * K + k) * plane
            # slices indexed from 0: LLVM then vectorises the loop (an index from lo does not)
            yk, dyk, dxk = y[lo:lo + plane], dy[lo:lo + plane], dx[lo:lo + plane]
            for j in range(plane):
                r = _activation_grad_cpu(op, widen(yk[j]), widen(dyk[j]), zero_, one)
                dxk[j] = narrow(r, dxk)
                acc += r
        db[k] = narrow(acc, db)


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def activation_bias_grad_cpu(op, y, dy, dx, db, n_images, plane):
    _activation_bias_grad_body(op, y, dy, dx, db, n_images, plane)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def activation_bias_grad_serial_cpu(op, y, dy, dx, db, n_images, plane):
    _activation_bias_grad_body(op, y, dy, dx, db, n_images, plane)


def epilogue_code(op, family):
    """The kernels' code of an epilogue activation: None (bias only), "relu", "tanh" or "sigmoid"."""
    if op not in EPILOGUES:
        raise ValueError(f"{family}: activation must be None or one of {sorted(ACTIVATIONS)}, got {op!r}")
    return EPILOGUES[op]


def _channels_operands(y, b, name, *others):
    """Check y (N, K, ...) C-contiguous with ``others`` like it and b None or (K,); return the flat
    views, (N, K, plane) and the device flag."""
    if len(y.shape) < 2:
        raise ValueError(f"{name}: expected an (N, K, ...) array of at least 2 dimensions, got shape {y.shape}")
    flat, on_device = flat_operands(y, *others)
    if b is not None:
        if b.shape != (y.shape[1],):
            raise ValueError(f"{name}: the bias must have shape (K,) = ({y.shape[1]},), got {b.shape}")
        if b.dtype != y.dtype or is_device_array(b) != on_device:
            raise TypeError(f"{name}: the bias must have dtype {y.dtype} and live on the array's device")
    N, K = y.shape[0], y.shape[1]
    return flat, (N, K, y.size // max(1, N * K)), on_device


def bias_activation(op, y, b):
    """In place ``y[n, k, ...] = op(y[n, k, ...] + b[k])`` for ``y`` (N, K, ...), ``b`` (K,) or None,
    ``op`` None (the bias alone), "relu", "tanh" or "sigmoid": the fused epilogue of a layer."""
    code = epilogue_code(op, "bias_activation")
    (y1,), (N, K, plane), on_device = _channels_operands(y, b, "bias_activation")
    if y.size == 0 or (b is None and code == IDENTITY):
        return
    if on_device:
        bias = b if b is not None else device_empty((0,), y.dtype)
        bias_activation_cuda[y.dtype][blocks(y.size, THREADS), THREADS, stream()](code, y1, bias, plane)
    else:
        rational = code == TANH and accumulator_dtype(y.dtype) == np.float32
        bias = b if b is not None else np.empty(0, y.dtype)
        kernel = cpu_kernel(bias_activation_cpu, bias_activation_serial_cpu, y.size)
        kernel(TANH_RATIONAL if rational else code, cpu_view(y1), cpu_view(bias), N, K, plane)


def activation_bias_grad(op, y, dy, dx, db=None):
    """The backward of ``bias_activation``: ``dx = dy * op'`` at the point whose output was ``y``
    (all (N, K, ...)) and, when ``db`` (K,) is given, ``db[k] = sum over n, ... of dx[n, k, ...]``,
    in one pass and in a fixed order (deterministic)."""
    code = epilogue_code(op, "activation_bias_grad")
    (y1, dy1, dx1), (N, K, plane), on_device = _channels_operands(y, db, "activation_bias_grad", dy, dx)
    if db is None:
        if code == IDENTITY:
            raise ValueError("activation_bias_grad: with no activation there is nothing to do without db")
        activation_bwd(op, y1, dy1, dx1)
        return
    if on_device:
        m = N * plane
        kernel = activation_bias_grad_partials_cuda[dx.dtype]
        splits = wave_splits(K, blocks(max(m, 1), REDUCE_THREADS * MIN_PER_THREAD),
                             resident_blocks(kernel, REDUCE_THREADS))
        chunk = blocks(blocks(max(m, 1), splits), REDUCE_THREADS) * REDUCE_THREADS
        splits = blocks(max(m, 1), chunk)
        partials = device_empty((splits, K), accumulator_dtype(dx.dtype))
        kernel[(splits, K), REDUCE_THREADS, stream()](code, y1, dy1, dx1, partials, plane, chunk)
        sum_rows_cuda[dx.dtype][blocks(K, THREADS), THREADS, stream()](partials, db)
    else:
        kernel = cpu_kernel(activation_bias_grad_cpu, activation_bias_grad_serial_cpu, y.size)
        kernel(code, cpu_view(y1), cpu_view(dy1), cpu_view(dx1), cpu_view(db), N, plane)
