"""Dynamic loss scaling's device work (``convkern.amp.GradScaler``): unscale a gradient and check
that it is finite, in one pass.

- ``unscale_check(g, inv_scale, found_inf)``: ``g[i] = g[i] * inv_scale`` in place for a flat
  float32 or float64 gradient, and ``found_inf[0] = 1`` when any ``g[i]`` was inf or NaN before
  (PyTorch's ``_amp_foreach_non_finite_check_and_unscale_``). ``found_inf`` is a (1,) float32
  array where ``g`` lives; it is only ever set, never cleared, so one flag collects the check of
  every gradient of a step, one launch per gradient, and the host reads it once.

CUDA: one thread per element. The threads that meet a non-finite value all store the same 1 into
``found_inf[0]`` with no atomics: whichever store lands last, the flag ends as 1, so the result
is deterministic. CPU: a ``prange`` loop counting the non-finite values (a reduction).
The check is ``isinf or isnan``, compiled without fastmath (which would assume neither happens).
"""
import math

import numpy as np
from numba import cuda, float32, njit, prange

from .cuda_util import SIMULATOR, array1, blocks, is_device_array, per_dtype, stream

THREADS = 32 if SIMULATOR else 256


# one thread per element i of g
@per_dtype(lambda dt: (array1(dt), dt, array1(float32)), threads=THREADS)
def unscale_check_cuda(dt):
    @cuda.jit
    def kernel(g, inv_scale, found_inf):
        i = cuda.grid(1)
        if i < g.shape[0]:
            v = g[i]
            if math.isinf(v) or math.isnan(v):
                found_inf[0] = float32(1)
            g[i] = v * inv_scale
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def unscale_check_cpu(g, inv_scale, found_inf):
    bad = 0
    for i in prange(g.shape[0]):
        v = g[i]
        if math.isinf(v) or math.isnan(v):
            bad += 1
        g[i] = v * inv_scale
    if bad:
        found_inf[0] = 1


def unscale_check(g, inv_scale, found_inf):
    """``g *= inv_scale`` in place (``g`` flat, C-contiguous, float32 or float64) and
    ``found_inf[0] = 1`` if any element of ``g`` was inf or NaN; ``found_inf`` is a (1,) float32
    array on g's device, left unchanged when every element is finite."""
    if len(g.shape) != 1 or g.dtype not in unscale_check_cuda:
        raise TypeError(f"unscale_check: g must be a 1-D float32 or float64 array, got {g.dtype} of shape "
                        f"{tuple(g.shape)}")
    on_device = is_device_array(g)
    if found_inf.shape != (1,) or found_inf.dtype != np.float32 or is_device_array(found_inf) != on_device:
        raise TypeError(f"unscale_check: found_inf must be a (1,) float32 {'CUDA device' if on_device else 'NumPy'} "
                        f"array like g, got {found_inf.dtype} of shape {tuple(found_inf.shape)}")
    if not on_device and not g.flags.c_contiguous:
        raise ValueError("unscale_check: g must be C-contiguous")
    if not math.isfinite(inv_scale):
        raise ValueError(f"unscale_check: inv_scale must be finite, got {inv_scale!r}")
    inv_scale = g.dtype.type(inv_scale)
    if not g.shape[0]:
        return
    if on_device:
        unscale_check_cuda[g.dtype][blocks(g.shape[0], THREADS), THREADS, stream()](g, inv_scale, found_inf)
    else:
        unscale_check_cpu(g, inv_scale, found_inf)
