"""Where arrays live and how they move: "cpu" holds NumPy arrays, "cuda" holds Numba CUDA
device arrays (a real GPU, or Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` was set
before Numba was imported). Device memory comes from convkern's caching allocator and every
copy is queued on the device's one stream (``convkern.cuda``)."""
import ctypes

import numpy as np
from numba import cuda

from convkern import cuda as runtime
from convkern.kernels import elementwise
from convkern.kernels.cuda_util import SIMULATOR, is_device_array

DEVICES = ("cpu", "cuda")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF = np.dtype(np.float16)          # storage only; kernels compute in float32 (kernels/float16.py)
GRAD_DTYPES = FLOAT_DTYPES + (HALF,)


def cuda_available():
    """True when device="cuda" can run: a usable GPU, or the simulator."""
    if SIMULATOR:
        return True
    try:
        return cuda.is_available()
    except Exception:  # a broken driver install counts as no GPU
        return False


def cuda_kind():
    """'real', 'simulated' or 'none'."""
    if SIMULATOR:
        return "simulated"
    return "real" if cuda_available() else "none"


def check_device(device, name="device"):
    """Validate a device name and that it can run here; returns it."""
    if device not in DEVICES:
        raise ValueError(f"{name} must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not cuda_available():
        raise RuntimeError(
            f"{name}='cuda' needs an NVIDIA GPU with a working driver, or Numba's CUDA simulator "
            "(set NUMBA_ENABLE_CUDASIM=1 in the environment before convkern or numba is imported)")
    return device


def device_of(array):
    return "cuda" if is_device_array(array) else "cpu"


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    here = device_of(array)
    if here == device:
        return array
    if device == "cuda":
        check_device("cuda")
        return runtime.upload(array)
    return runtime.to_host(array)


def to_numpy(array):
    """A NumPy array of ``array``: itself on the CPU, a host copy (``convkern.cuda.to_host``) of a
    device array."""
    return runtime.to_host(array) if is_device_array(array) else array


def empty(shape, dtype, device):
    if device == "cuda":
        return runtime.empty(tuple(shape), np.dtype(dtype))
    return np.empty(tuple(shape), dtype=np.dtype(dtype))


def full(shape, value, dtype, device):
    out = empty(shape, dtype, device)
    if device == "cuda":
        if out.size:
            elementwise.fill(out.reshape(out.size), float(value))
    else:
        out.fill(value)
    return out


def zeros(shape, dtype, device):
    return full(shape, 0.0, dtype, device)


def flat(array):
    """A 1-D view of a contiguous array (NumPy or device)."""
    return array.reshape(array.size)


def has_cuda_array_interface(obj):
    """True for foreign CUDA arrays (CuPy, PyTorch CUDA tensors, ...), not NumPy or Numba arrays."""
    return not isinstance(obj, np.ndarray) and not is_device_array(obj) and hasattr(obj, "__cuda_array_interface__")


def from_cuda_array_interface(obj, name="data"):
    """A Numba device array viewing ``obj``'s memory through its ``__cuda_array_interface__``:
    no copy. Under the simulator "device" memory is host memory, so the pointer is viewed as a
    NumPy array and wrapped the way the simulator wraps its own device arrays."""
    iface = obj.__cuda_array_interface__
    dtype = np.dtype(iface["typestr"])
    if not dtype.isnative:
        raise ValueError(f"{name}: CUDA array has non-native byte order ({iface['typestr']}); "
                         "convert it on the device first")
    if not SIMULATOR:
        return cuda.as_cuda_array(obj)
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    shape = tuple(int(n) for n in iface["shape"])
    strides = tuple(int(st) for st in iface.get("strides") or runtime.c_strides(shape, dtype.itemsize))
    if any(n == 0 for n in shape):
        return FakeCUDAArray(np.empty(shape, dtype))
    if any(st < 0 or st % dtype.itemsize for st in strides):
        raise ValueError(f"{name}: CUDA arrays with negative or unaligned strides are not supported")
    count = (sum((n - 1) * st for n, st in zip(shape, strides)) + dtype.itemsize) // dtype.itemsize
    memory = (ctypes.c_char * (count * dtype.itemsize)).from_address(iface["data"][0])
    memory.owner = obj  # the views below keep ``memory`` alive, and it keeps the foreign array alive
    base = np.frombuffer(memory, dtype=dtype)
    return FakeCUDAArray(np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides))


def cuda_array_interface(array):
    """The ``__cuda_array_interface__`` (version 3) of a Numba device array, simulated or real."""
    if not SIMULATOR:
        return array.__cuda_array_interface__
    host = array._ary
    return {"shape": tuple(host.shape), "typestr": host.dtype.str, "descr": [("", host.dtype.str)],
            "data": (host.ctypes.data, False),
            "strides": None if host.flags.c_contiguous else tuple(host.strides), "version": 3, "stream": None}
