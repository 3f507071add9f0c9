"""CUDA plumbing shared by the kernel files.

- ``SIMULATOR``: True when Numba's CUDA simulator is active (``NUMBA_ENABLE_CUDASIM=1`` set
  before Numba was imported). Kernel files shrink their tile and block constants then,
  because the simulator runs one Python thread per CUDA thread.
- ``per_dtype``: build one kernel per float dtype from a factory ``make(dt)`` (shared arrays
  and accumulators need the dtype at compile time) and record both in ``REGISTRY`` with the
  block size their launcher uses, which the build check (``convkern kernels``) compiles to
  SASS and turns into an occupancy.
- ``is_device_array``: True for Numba CUDA device arrays (real or simulated).
- ``stream()``: the one non-default stream per device that every launcher launches on.
- ``device_empty``, ``device_constant``: a launcher's workspace, from the runtime's allocator,
  and its uploaded-once tables.
- ``sm_count``, ``resident_blocks`` and ``wave_splits``: grid sizes from the device, so that
  a split reduction fills whole waves of resident blocks.
- ``device_check`` and ``check_flag``: checks that kernels make on the device and that the
  runtime reads lazily, at the next host read (``convkern.cuda``).
- ``block_sum``: the shared-memory tree sum of one value per thread.
"""
import functools
from typing import Callable, NamedTuple

import numpy as np
from numba import config as _numba_config
from numba import cuda, float32, float64
from numba.types import float16

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

FLOAT_TYPES = ((np.dtype(np.float32), float32), (np.dtype(np.float64), float64))
HALF_TYPE = (np.dtype(np.float16), float16)   # storage only: see kernels/float16.py
SIM_SM_COUNT = 4        # what the simulator reports as SMs: enough to exercise split grids, few threads


class KernelEntry(NamedTuple):
    name: str            # e.g. "conv2d_fwd_direct_cuda"
    dtype: str           # "float32" | "float64" | "float16"
    kernel: object       # the numba.cuda dispatcher
    signature: tuple     # argument types for compile_ptx
    threads: int         # threads per block its launcher uses on a GPU (the largest when it varies)


REGISTRY = []
_SIGNATURES = {}         # id(dispatcher) -> signature, for resident_blocks


def per_dtype(signature: Callable, *, threads, half=False):
    """Decorator for a kernel factory ``make(dt)`` that returns a ``cuda.jit`` kernel.

    ``signature(dt)`` gives the kernel's argument types for that dtype; ``threads`` is the
    number of threads per block its launcher launches it with (a product for 2-D and 3-D
    blocks; the largest when the launcher chooses among several). Returns a dict
    ``{np.dtype('float32'): kernel, np.dtype('float64'): kernel}``, plus ``float16`` with
    ``half=True`` (float16 storage, float32 arithmetic: ``float16.accumulator(dt)``).
    """
    threads = int(threads)
    if not 1 <= threads <= 1024:
        raise ValueError(f"per_dtype: threads must be a block size in [1, 1024], got {threads}")

    def build(make):
        kernels = {}
        for np_dt, nb_dt in FLOAT_TYPES + ((HALF_TYPE,) if half else ()):
            kernel = make(nb_dt)
            kernels[np_dt] = kernel
            name = make.__name__[len("make_"):] if make.__name__.startswith("make_") else make.__name__
            sig = tuple(signature(nb_dt))
            REGISTRY.append(KernelEntry(name, str(np_dt), kernel, sig, threads))
            _SIGNATURES[id(kernel)] = sig
        return kernels
    return build


def is_device_array(a):
    """True for a Numba CUDA device array (or the simulator's stand-in)."""
    if type(a) is np.ndarray:       # the CPU's common case first: ~190 calls per LeNet-5 step
        return False
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


# ---------------------------------------------------------------------------------------------
# the device: stream, workspaces, launch sizing
# ---------------------------------------------------------------------------------------------

def device_id():
    """The current device's number (0 under the simulator)."""
    return 0 if SIMULATOR else cuda.get_current_device().id


_STREAMS = {}


def stream():
    """The stream of the current device that every convkern kernel and copy is queued on.

    A non-default stream created on first use, with the default flags: it still orders itself
    against the legacy default stream, so Numba calls made without a stream stay correct.
    """
    dev = device_id()
    s = _STREAMS.get(dev)
    if s is None:
        s = _STREAMS[dev] = cuda.stream()
    return s


def _numba_empty(shape, dtype):
    return cuda.device_array(shape, dtype, stream=stream())


_ALLOCATOR = [_numba_empty]


def set_allocator(allocate):
    """Make ``allocate(shape, dtype)`` the source of ``device_empty`` (the runtime's caching
    allocator, ``convkern.cuda``, installs itself; until then Numba's own allocator serves)."""
    _ALLOCATOR[0] = allocate


def device_empty(shape, dtype):
    """An uninitialised C-contiguous device array: a launcher's workspace."""
    return _ALLOCATOR[0](tuple(int(n) for n in np.atleast_1d(shape)), np.dtype(dtype))


_CONSTANTS = {}


def device_constant(key, make):
    """A device copy of the NumPy array ``make()``, uploaded once per device and ``key``: the
    tables and stand-in operands a launcher would otherwise upload on every call. Never written."""
    k = (device_id(), key)
    if k not in _CONSTANTS:
        host = np.ascontiguousarray(make())
        array = device_empty(host.shape, host.dtype)
        array.copy_to_device(host, stream=stream())
        _CONSTANTS[k] = array
    return _CONSTANTS[k]


_SM_COUNTS = {}


def sm_count():
    """Streaming multiprocessors of the current device; SIM_SM_COUNT under the simulator."""
    if SIMULATOR:
        return SIM_SM_COUNT
    dev = device_id()
    if dev not in _SM_COUNTS:
        _SM_COUNTS[dev] = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return _SM_COUNTS[dev]


_RESIDENT = {}


def resident_blocks(kernel, threads):
    """Blocks of ``kernel`` (one dtype's build from ``per_dtype``) of ``threads`` threads that the
    current device runs at once: SMs x blocks per SM, the driver's occupancy for the compiled
    kernel (its registers and shared memory). Under the simulator: ``sm_count()``."""
    if SIMULATOR:
        return sm_count()
    key = (id(kernel), int(threads), device_id())
    if key not in _RESIDENT:
        compiled = kernel.compile(_SIGNATURES[id(kernel)])
        _RESIDENT[key] = max(1, int(compiled.max_cooperative_grid_blocks(int(threads))))
    return _RESIDENT[key]


WAVE_TOLERANCE = 0.02


@functools.lru_cache(maxsize=4096)
def wave_splits(tiles, max_splits, slots):
    """How many pieces to cut a reduction into when its output has ``tiles`` blocks and the
    device holds ``slots`` blocks at once.

    With ``s`` pieces the grid has ``tiles*s`` blocks, each doing ``1/s`` of the work, so it
    runs in about ``ceil(tiles*s / slots) / s`` block-times: a last wave that is nearly empty
    doubles the time of a one-wave grid (270 blocks on 264 slots). Returns the ``s`` in
    ``[1, max_splits]`` that minimises this, the smallest one within WAVE_TOLERANCE of the
    best (fewer pieces mean less partial-sum traffic).
    """
    tiles, slots = max(1, int(tiles)), max(1, int(slots))
    top = max(1, int(max_splits))
    # beyond slots pieces per tile every block count is already a multiple of slots
    candidates = range(1, min(top, slots) + 1)
    cost = {s: -(-tiles * s // slots) / s for s in candidates}
    best = min(cost.values())
    return min(s for s, c in cost.items() if c <= best * (1 + WAVE_TOLERANCE))


# ---------------------------------------------------------------------------------------------
# checks made on the device, read lazily
# ---------------------------------------------------------------------------------------------

class DeviceCheckError(ValueError):
    """A check that a kernel made on the device failed. Raised by the first host read (or
    ``convkern.cuda.synchronize``) after the launch, not by the launch itself."""


MAX_CHECKS = 16             # slots of the per-device flag array
CHECKS = []                 # slot -> the op name of each registered check
_FLAGS = {}                 # device -> int64 flag per slot, nonzero once a check failed
_ARMED = {}                 # device -> {slot: message of the latest launch that used the slot}


def device_check(op):
    """Register a device-side check of ``op``; returns its slot for ``check_flag``."""
    if len(CHECKS) == MAX_CHECKS:
        raise RuntimeError(f"device_check({op!r}): all {MAX_CHECKS} check slots are taken; raise MAX_CHECKS")
    CHECKS.append(op)
    return len(CHECKS) - 1


def _flags():
    dev = device_id()
    if dev not in _FLAGS:
        flags = device_empty((MAX_CHECKS,), np.int64)
        flags.copy_to_device(np.zeros(flags.shape, np.int64), stream=stream())
        _FLAGS[dev] = (flags, [flags[i:i + 1] for i in range(flags.shape[0])])
    return _FLAGS[dev]


def check_flag(slot, message):
    """The (1,) int64 device array that a kernel sets nonzero when check ``slot`` fails, and
    arms the slot: the next host read raises ``DeviceCheckError(message)`` if it was set."""
    _ARMED.setdefault(device_id(), {})[slot] = message
    return _flags()[1][slot]


def armed_checks():
    """{slot: message} of the checks launched since the last read on the current device."""
    return dict(_ARMED.get(device_id(), {}))


def arm_checks(checks):
    """Arm again checks that ran without a launcher (a replayed CUDA graph)."""
    _ARMED.setdefault(device_id(), {}).update(checks)


def take_checks():
    """(flags array, {slot: message}) of the armed checks, disarming them; (None, {}) if none."""
    armed = _ARMED.pop(device_id(), {})
    return (_flags()[0], armed) if armed else (None, {})


# ---------------------------------------------------------------------------------------------
# device functions
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True, inline="always")
def block_sum(buf, value):
    """Sum of ``value`` over the block, for every thread; ``buf`` is a shared array of
    blockDim.x entries (a power of two) and is reusable after the call."""
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            buf[t] += buf[t + half]
        cuda.syncthreads()
        half //= 2
    total = buf[0]
    cuda.syncthreads()
    return total

