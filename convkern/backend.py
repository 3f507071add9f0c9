"""Where arrays live and how they move: "cpu" holds NumPy arrays, "cuda" holds Numba CUDA
device arrays (a real GPU, or Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` was set
before Numba was imported)."""
import numpy as np
from numba import cuda

from convkern.kernels import elementwise
from convkern.kernels.cuda_util import SIMULATOR, is_device_array

DEVICES = ("cpu", "cuda")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


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
        return cuda.to_device(np.ascontiguousarray(array))
    return array.copy_to_host()


def to_numpy(array):
    return array.copy_to_host() if is_device_array(array) else array


def empty(shape, dtype, device):
    if device == "cuda":
        return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))
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
