"""Fused optimizer updates, one pass over a parameter and its state, PyTorch's rules exactly.

- ``sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)``:
  ``d = g + weight_decay * p``; with momentum, ``buf = d`` on the first step, else
  ``buf = momentum * buf + (1 - dampening) * d``, then ``d = d + momentum * buf`` (Nesterov) or
  ``d = buf``; finally ``p -= lr * d``.
- ``adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)``:
  ``d = g + weight_decay * p``; ``m = beta1 m + (1 - beta1) d``; ``v = beta2 v + (1 - beta2) d²``;
  ``p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)``.

All arrays are flat, contiguous and of one float dtype (float16, float32 or float64; the state
has the parameter's dtype, as in PyTorch); hyper-parameters are cast to the accumulator dtype,
so float32 parameters are updated in float32 math on both devices, and float16 parameters too:
each element is read into float32, updated, and rounded once per stored array
(kernels/float16.py). (In float16 an ``eps`` of 1e-8 would round to 0; in float32 it does not.)
"""
import math

import numpy as np
from numba import boolean, cuda, njit, prange

from .cpu_util import cpu_kernel
from .cuda_util import SIMULATOR, array1, blocks, is_device_array, per_dtype, stream
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

THREADS = 32 if SIMULATOR else 256


# one thread per parameter element i
@per_dtype(lambda dt: (array1(dt),) * 3 + (accumulator(dt),) * 4 + (boolean, boolean), threads=THREADS, half=True)
def sgd_step_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        i = cuda.grid(1)
        if i < p.shape[0]:
            pi = acc(p[i])
            d = acc(g[i]) + weight_decay * pi
            if momentum != acc(0):
                b = d if first else momentum * acc(buf[i]) + (acc(1) - dampening) * d
                buf[i] = dt(b)
                d = d + momentum * b if nesterov else b
            p[i] = dt(pi - lr * d)
    return kernel


@njit(inline="always")
def _sgd_step_body(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    one = zero(p) + np.float32(1)        # the accumulator's 1 (float32 + float32 stays float32)
    for i in prange(p.shape[0]):
        pi = widen(p[i])
        d = widen(g[i]) + weight_decay * pi
        if momentum != 0:
            b = d if first else momentum * widen(buf[i]) + (one - dampening) * d
            buf[i] = narrow(b, buf)
            d = d + momentum * b if nesterov else b
        p[i] = narrow(pi - lr * d, p)


@njit(parallel=True, cache=True)
def sgd_step_cpu(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    _sgd_step_body(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)


@njit(cache=True)
def sgd_step_serial_cpu(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    _sgd_step_body(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)


# one thread per parameter element i
@per_dtype(lambda dt: (array1(dt),) * 4 + (accumulator(dt),) * 6, threads=THREADS, half=True)
def adam_step_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2):
        i = cuda.grid(1)
        if i < p.shape[0]:
            pi = acc(p[i])
            d = acc(g[i]) + weight_decay * pi
            mi = beta1 * acc(m[i]) + (acc(1) - beta1) * d
            vi = beta2 * acc(v[i]) + (acc(1) - beta2) * d * d
            m[i] = dt(mi)
            v[i] = dt(vi)
            p[i] = dt(pi - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps))
    return kernel


@njit(inline="always")
def _adam_step_body(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2):
    one = zero(p) + np.float32(1)        # the accumulator's 1 (float32 + float32 stays float32)
    for i in prange(p.shape[0]):
        pi = widen(p[i])
        d = widen(g[i]) + weight_decay * pi
        mi = beta1 * widen(m[i]) + (one - beta1) * d
        vi = beta2 * widen(v[i]) + (one - beta2) * d * d
        m[i] = narrow(mi, m)
        v[i] = narrow(vi, v)
        p[i] = narrow(pi - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps), p)


@njit(parallel=True, cache=True)
def adam_step_cpu(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2):
    _adam_step_body(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2)


@njit(cache=True)
def adam_step_serial_cpu(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2):
    _adam_step_body(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2)


def _check(name, p, *others):
    on_device = is_device_array(p)
    for x in others:
        if x.shape != p.shape or x.dtype != p.dtype or is_device_array(x) != on_device:
            raise ValueError(f"{name}: every state array must match the parameter's shape {p.shape}, dtype "
                             f"{p.dtype} and device; got {x.shape} {x.dtype}")
    return on_device


def sgd_step(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, first=False):
    """One SGD step on flat arrays, in place on ``p`` and ``buf`` (see the module docstring)."""
    on_device = _check("sgd_step", p, g, buf)
    t = accumulator_dtype(p.dtype).type
    scalars = (t(lr), t(momentum), t(dampening), t(weight_decay), bool(nesterov), bool(first))
    if on_device:
        sgd_step_cuda[p.dtype][blocks(p.size, THREADS), THREADS, stream()](p, g, buf, *scalars)
    else:
        cpu_kernel(sgd_step_cpu, sgd_step_serial_cpu, p.size)(cpu_view(p), cpu_view(g), cpu_view(buf), *scalars)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One Adam step (``step`` counts from 1) on flat arrays, in place on ``p``, ``m``, ``v``."""
    on_device = _check("adam_step", p, g, m, v)
    t = accumulator_dtype(p.dtype).type
    step_size = lr / (1.0 - beta1 ** step)
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** step)
    scalars = (t(step_size), t(beta1), t(beta2), t(eps), t(weight_decay), t(sqrt_bc2))
    if on_device:
        adam_step_cuda[p.dtype][blocks(p.size, THREADS), THREADS, stream()](p, g, m, v, *scalars)
    else:
        kernel = cpu_kernel(adam_step_cpu, adam_step_serial_cpu, p.size)
        kernel(cpu_view(p), cpu_view(g), cpu_view(m), cpu_view(v), *scalars)
