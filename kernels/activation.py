"""Pointwise activations and their gradients.

- ``activation_fwd(op, x, y)``: ``y = relu(x) | tanh(x) | sigmoid(x)``.
- ``activation_bwd(op, y, dy, dx)``: the gradient from the saved *output* ``y``:
  relu ``dx = dy if y > 0 else 0`` (0 at ``x <= 0``, as PyTorch), tanh ``dx = dy (1 - y²)``,
  sigmoid ``dx = dy y (1 - y)``.

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

from .cuda_util import SIMULATOR, array1, blocks, per_dtype, stream
from .elementwise import op_code, flat_operands
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

THREADS = 32 if SIMULATOR else 256

RELU, TANH, SIGMOID, TANH_RATIONAL = range(4)       # TANH_RATIONAL: float32 tanh on the CPU
ACTIVATIONS = {"relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}

TANH_CLAMP = np.float32(7.90531110763549805)
TANH_SMALL = np.float32(4e-4)
P1, P3, P5, P7, P9, P11, P13 = (np.float32(c) for c in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
Q0, Q2, Q4, Q6 = (np.float32(c) for c in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), array1(dt)), threads=THREADS, half=True)
def activation_fwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, x, y):
        i = cuda.grid(1)
        if i < y.shape[0]:
            v = acc(x[i])
            if op == RELU:
                r = acc(0) if v <= acc(0) else v
            elif op == TANH:
                r = math.tanh(v)
            else:
                e = math.exp(-abs(v))
                s = acc(1) / (acc(1) + e)
                r = s if v >= acc(0) else e * s
            y[i] = dt(r)
    return kernel


@njit(inline="always")
def _tanh_rational(v):
    x = min(max(v, -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    p = ((((((P13 * x2 + P11) * x2 + P9) * x2 + P7) * x2 + P5) * x2 + P3) * x2 + P1) * x
    q = ((Q6 * x2 + Q4) * x2 + Q2) * x2 + Q0
    return v if abs(v) < TANH_SMALL else p / q


@njit(parallel=True, cache=True, error_model="numpy")
def activation_fwd_cpu(op, x, y):
    zero_ = zero(x)
    one = zero_ + np.float32(1)       # float32 + float32 stays float32; a float64 zero makes it float64
    for i in prange(y.shape[0]):
        v = widen(x[i])
        if op == RELU:
            r = zero_ if v <= zero_ else v
        elif op == TANH:
            r = math.tanh(v)
        elif op == TANH_RATIONAL:
            r = _tanh_rational(v)
        else:
            e = math.exp(-abs(v))
            s = one / (one + e)
            r = s if v >= zero_ else e * s
        y[i] = narrow(r, y)


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), array1(dt), array1(dt)), threads=THREADS, half=True)
def activation_bwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, y, dy, dx):
        i = cuda.grid(1)
        if i < dx.shape[0]:
            v = acc(y[i])
            g = acc(dy[i])
            if op == RELU:
                r = acc(0) if v <= acc(0) else g
            elif op == TANH:
                r = g * (acc(1) - v * v)
            else:
                r = g * v * (acc(1) - v)
            dx[i] = dt(r)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def activation_bwd_cpu(op, y, dy, dx):
    zero_ = zero(y)
    one = zero_ + np.float32(1)       # float32 + float32 stays float32; a float64 zero makes it float64
    for i in prange(dx.shape[0]):
        v = widen(y[i])
        g = widen(dy[i])
        if op == RELU:
            r = zero_ if v <= zero_ else g
        elif op == TANH:
            r = g * (one - v * v)
        else:
            r = g * v * (one - v)
        dx[i] = narrow(r, dx)


def activation_fwd(op, x, y):
    """``y = op(x)`` for op in relu, tanh, sigmoid; ``y`` may alias ``x``."""
    code = op_code(ACTIVATIONS, op, "activation_fwd")
    (x1, y1), on_device = flat_operands(x, y)
    if on_device:
        activation_fwd_cuda[y.dtype][blocks(y.size, THREADS), THREADS, stream()](code, x1, y1)
    else:
        # float16 data is computed in float32, so it takes the float32 tanh too
        rational = code == TANH and accumulator_dtype(y.dtype) == np.float32
        activation_fwd_cpu(TANH_RATIONAL if rational else code, cpu_view(x1), cpu_view(y1))


def activation_bwd(op, y, dy, dx):
    """``dx`` = the gradient of ``op`` at the point whose forward output was ``y``, times ``dy``."""
    code = op_code(ACTIVATIONS, op, "activation_bwd")
    (y1, dy1, dx1), on_device = flat_operands(y, dy, dx)
    if on_device:
        activation_bwd_cuda[dx.dtype][blocks(dx.size, THREADS), THREADS, stream()](code, y1, dy1, dx1)
    else:
        activation_bwd_cpu(code, cpu_view(y1), cpu_view(dy1), cpu_view(dx1))
