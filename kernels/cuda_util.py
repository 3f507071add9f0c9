"""CUDA plumbing shared by the kernel files.

- ``SIMULATOR``: True when Numba's CUDA simulator is active (``NUMBA_ENABLE_CUDASIM=1`` set
  before Numba was imported). Kernel files shrink their tile and block constants then,
  because the simulator runs one Python thread per CUDA thread.
- ``per_dtype``: build one kernel per float dtype from a factory ``make(dt)`` (shared arrays
  and accumulators need the dtype at compile time) and record both in ``REGISTRY``, which
  the build check (``convkern kernels``) compiles to PTX and SASS.
- ``is_device_array``: True for Numba CUDA device arrays (real or simulated).
"""
from typing import Callable, NamedTuple

import numpy as np
from numba import config as _numba_config
from numba import cuda, float32, float64

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

FLOAT_TYPES = ((np.dtype(np.float32), float32), (np.dtype(np.float64), float64))


class KernelEntry(NamedTuple):
    name: str            # e.g. "conv2d_fwd_direct_cuda"
    dtype: str           # "float32" | "float64"
    kernel: object       # the numba.cuda dispatcher
    signature: tuple     # argument types for compile_ptx


REGISTRY = []


def per_dtype(signature: Callable):
    """Decorator for a kernel factory ``make(dt)`` that returns a ``cuda.jit`` kernel.

    ``signature(dt)`` gives the kernel's argument types for that dtype. Returns a dict
    ``{np.dtype('float32'): kernel, np.dtype('float64'): kernel}``.
    """
    def build(make):
        kernels = {}
        for np_dt, nb_dt in FLOAT_TYPES:
            kernel = make(nb_dt)
            kernels[np_dt] = kernel
            name = make.__name__[len("make_"):] if make.__name__.startswith("make_") else make.__name__
            REGISTRY.append(KernelEntry(name, str(np_dt), kernel, tuple(signature(nb_dt))))
        return kernels
    return build


def is_device_array(a):
    """True for a Numba CUDA device array (or the simulator's stand-in)."""
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return isinstance(a, FakeCUDAArray)
    return cuda.is_cuda_array(a) and not isinstance(a, np.ndarray)


def blocks(n, threads):
    """Number of blocks of ``threads`` threads that cover ``n`` items (at least 1)."""
    return max(1, (n + threads - 1) // threads)


def array4(dt):
    return dt[:, :, :, ::1]


def array2(dt):
    return dt[:, ::1]


def array1(dt):
    return dt[::1]
