"""Fused optimizer updates, one pass over a parameter and its state, PyTorch's rules exactly.

- ``sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)``:
  ``d = g + weight_decay * p``; with momentum, ``buf = d`` on the first step, else
  ``buf = momentum * buf + (1 - dampening) * d``, then ``d = d + momentum * buf`` (Nesterov) or
  ``d = buf``; finally ``p -= lr * d``.
- ``adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)``:
  ``d = g + weight_decay * p``; ``m = beta1 m + (1 - beta1) d``; ``v = beta2 v + (1 - beta2) d²``;
  ``p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)``.

All arrays are flat, contiguous and of one float dtype; hyper-parameters are cast to it, so
float32 parameters are updated in float32 math on both devices.
"""
import math

from numba import boolean, cuda, njit, prange

from .cuda_util import SIMULATOR, array1, blocks, is_device_array, per_dtype, stream

THREADS = 32 if SIMULATOR else 256


# one thread per parameter element i
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), dt, dt, dt, dt, boolean, boolean), threads=THREADS)
def sgd_step_cuda(dt):
    @cuda.jit
    def kernel(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        i = cuda.grid(1)
        if i < p.shape[0]:
            d = g[i] + weight_decay * p[i]
            if momentum != dt(0):
                b = d if first else momentum * buf[i] + (dt(1) - dampening) * d
                buf[i] = b
                d = d + momentum * b if nesterov else b
            p[i] -= lr * d
    return kernel


@njit(parallel=True, cache=True)
def sgd_step_cpu(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    one = p.dtype.type(1)
    for i in prange(p.shape[0]):
        d = g[i] + weight_decay * p[i]
        if momentum != 0:
            b = d if first else momentum * buf[i] + (one - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d


# one thread per parameter element i
@per_dtype(lambda dt: (array1(dt), array1(dt), array1(dt), array1(dt), dt, dt, dt, dt, dt, dt), threads=THREADS)
def adam_step_cuda(dt):
    @cuda.jit
    def kernel(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2):
        i = cuda.grid(1)
        if i < p.shape[0]:
            d = g[i] + weight_decay * p[i]
            mi = beta1 * m[i] + (dt(1) - beta1) * d
            vi = beta2 * v[i] + (dt(1) - beta2) * d * d
            m[i] = mi
            v[i] = vi
            p[i] -= step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)
    return kernel


@njit(parallel=True, cache=True)
def adam_step_cpu(p, g, m, v, step_size, beta1, beta2, eps, weight_decay, sqrt_bc2):
    one = p.dtype.type(1)
    for i in prange(p.shape[0]):
        d = g[i] + weight_decay * p[i]
        mi = beta1 * m[i] + (one - beta1) * d
        vi = beta2 * v[i] + (one - beta2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)


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
    t = p.dtype.type
    args = (p, g, buf, t(lr), t(momentum), t(dampening), t(weight_decay), bool(nesterov), bool(first))
    if on_device:
        sgd_step_cuda[p.dtype][blocks(p.size, THREADS), THREADS, stream()](*args)
    else:
        sgd_step_cpu(*args)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One Adam step (``step`` counts from 1) on flat arrays, in place on ``p``, ``m``, ``v``."""
    on_device = _check("adam_step", p, g, m, v)
    t = p.dtype.type
    step_size = lr / (1.0 - beta1 ** step)
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** step)
    args = (p, g, m, v, t(step_size), t(beta1), t(beta2), t(eps), t(weight_decay), t(sqrt_bc2))
    if on_device:
        adam_step_cuda[p.dtype][blocks(p.size, THREADS), THREADS, stream()](*args)
    else:
        adam_step_cpu(*args)
