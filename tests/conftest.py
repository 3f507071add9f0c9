"""Test set-up: run the CUDA path under Numba's simulator unless a real NVIDIA GPU is present.

The switch must happen before Numba is imported anywhere, hence here, at collection start.
"""
import os
import shutil


def _has_real_gpu():
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _has_real_gpu():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator runs one Python thread per CUDA thread; a short switch interval makes its
    # syncthreads barriers cheap (the default 5 ms interval dominates simulated kernels).
    import sys
    sys.setswitchinterval(1e-4)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
