"""Test set-up: run the CUDA path under Numba's simulator unless a real NVIDIA GPU is present.

The switch must happen before Numba is imported anywhere, hence here, at collection start.
"""
import os
import shutil


def _has_real_gpu():
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _has_real_gpu():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _make_simulated_shared_arrays_thread_safe():
    """Numba's simulator creates a block's ``cuda.shared.array`` with an unlocked check-then-set
    keyed by the caller's file and line; two threads of one block can each create their own
    copy, and the loser then never sees the others' writes (seen as garbage results in block 0,
    far more often with a short switch interval). Same keying, creation under a lock."""
    import sys
    import threading

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                np_dtype = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                res = np.empty(shape, np_dtype)
                self._allocations[key] = res
        return res

    kernelapi.FakeCUDAShared.array = array


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator runs one Python thread per CUDA thread; a short switch interval makes its
    # syncthreads barriers cheap (the default 5 ms interval dominates simulated kernels).
    import sys
    sys.setswitchinterval(1e-4)
    _make_simulated_shared_arrays_thread_safe()

DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="session")
def _convkern_cache_dir(tmp_path_factory):
    """conv2d(algorithm="auto") autotunes and remembers its choices in the user cache directory;
    point it at a temporary one so the test suite never writes to ~/.cache."""
    old = os.environ.get("CONVKERN_CACHE_DIR")
    os.environ["CONVKERN_CACHE_DIR"] = str(tmp_path_factory.mktemp("convkern-cache"))
    yield
    if old is None:
        os.environ.pop("CONVKERN_CACHE_DIR", None)
    else:
        os.environ["CONVKERN_CACHE_DIR"] = old
