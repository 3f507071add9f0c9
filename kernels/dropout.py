"""Dropout with a counter-based random mask: nothing but the seed is stored.

``dropout(x, out, seed, p)``: ``out[i] = x[i] / (1 - p)`` where element ``i`` is kept, else 0.
Element ``i`` is kept when ``u_i >= p`` for the uniform ``u_i = (h_i >> 11) * 2^-53`` in
[0, 1), ``h_i = mix64(key + i)``:

- ``key = splitmix64(seed) >> 1`` (a 63-bit key, computed on the host, so ``key + i`` never
  wraps for any array size),
- ``mix64`` is splitmix64's finaliser (Stafford's variant 13):
  ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31``.

The test ``u_i >= p`` is done exactly on integers, ``(h_i >> 11) >= ceil(p * 2^53)``, so a
seed gives the same mask on the CPU, on a GPU and in the simulator, in float16, float32 and
float64 (float16 data is scaled in float32 and rounded once, kernels/float16.py).
The backward pass is the same kernel applied to the output gradient with the same seed.

The 64-bit products wrap modulo 2^64. They are assembled from 32-bit halves, so no step
overflows: compiled code does not care, but the CUDA simulator runs the kernel on NumPy
``uint64`` scalars, which warn on overflow.
"""
import numpy as np
from numba import cuda, njit, prange, uint64

from .cuda_util import SIMULATOR, array1, blocks, per_dtype, stream
from .elementwise import flat_operands
from .float16 import accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

THREADS = 32 if SIMULATOR else 256

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT11, SHIFT27, SHIFT30, SHIFT31, SHIFT32 = (np.uint64(s) for s in (11, 27, 30, 31, 32))
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def _mul64(a, b):
    """``a * b mod 2^64`` for uint64 ``a``, ``b`` from 32x32-bit products (none overflows)."""
    a_lo = a & MASK32
    a_hi = a >> SHIFT32
    b_lo = b & MASK32
    b_hi = b >> SHIFT32
    lo = a_lo * b_lo
    hi = ((lo >> SHIFT32) + ((a_hi * b_lo) & MASK32) + ((a_lo * b_hi) & MASK32)) & MASK32
    return (hi << SHIFT32) | (lo & MASK32)


def _mix64_with(mul64):
    """splitmix64's finaliser built on ``mul64`` (the device or the CPU build of ``_mul64``)."""
    def mix64(z):
        z = mul64(z ^ (z >> SHIFT30), MIX1)
        z = mul64(z ^ (z >> SHIFT27), MIX2)
        return z ^ (z >> SHIFT31)
    return mix64


_mix64_cuda = cuda.jit(device=True, inline="always")(_mix64_with(cuda.jit(device=True, inline="always")(_mul64)))
_mix64_cpu = njit(inline="always")(_mix64_with(njit(inline="always")(_mul64)))


# one thread per element i
@per_dtype(lambda dt: (array1(dt), array1(dt), uint64, uint64, accumulator(dt)), threads=THREADS, half=True)
def dropout_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, out, key, threshold, scale):
        i = cuda.grid(1)
        if i < out.shape[0]:
            keep = (_mix64_cuda(key + uint64(i)) >> SHIFT11) >= threshold
            out[i] = dt(acc(x[i]) * scale) if keep else dt(0)
    return kernel


@njit(parallel=True, cache=True)
def dropout_cpu(x, out, key, threshold, scale):
    dropped = narrow(zero(x), out)
    for i in prange(out.shape[0]):
        keep = (_mix64_cpu(key + uint64(i)) >> SHIFT11) >= threshold
        out[i] = narrow(widen(x[i]) * scale, out) if keep else dropped


def dropout_key(seed):
    """The 63-bit kernel key of a non-negative int seed: splitmix64's output for ``seed``, halved."""
    z = (int(seed) + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 1


def dropout_threshold(p):
    """``ceil(p * 2^53)``: element ``i`` is kept when ``mix64(key + i) >> 11`` reaches it."""
    return int(np.ceil(float(p) * 2.0 ** 53))


def dropout(x, out, seed, p):
    """``out = x * keep / (1 - p)`` with the mask of ``seed`` (0 <= p < 1); ``out`` may alias ``x``.

    Forward on the input, backward on the output gradient with the same seed.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"dropout: seed must be a non-negative int, got {seed!r}")
    (x1, out1), on_device = flat_operands(x, out)
    key = np.uint64(dropout_key(seed))
    threshold = np.uint64(dropout_threshold(p))
    scale = accumulator_dtype(out.dtype).type(1 / (1 - p))
    if on_device:
        dropout_cuda[out.dtype][blocks(out.size, THREADS), THREADS, stream()](x1, out1, key, threshold, scale)
    else:
        dropout_cpu(cpu_view(x1), cpu_view(out1), key, threshold, scale)
