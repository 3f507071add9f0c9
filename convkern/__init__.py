"""convkern: hand-written Numba convolution kernels (CUDA and CPU side by side) with a thin
autograd graph on top.

    import convkern as ck
    import convkern.functional as F
    x = ck.tensor(array, requires_grad=True, device="cpu")
    y = F.conv2d(x, w, stride=2, padding="same")
"""
import os

# Numba's OpenMP workers and OpenBLAS's threads both spin-wait by default; when parallel
# kernels and BLAS calls alternate (im2col + GEMM) they starve each other on small machines.
# Passive waiting must be chosen before the OpenMP runtime starts, i.e. before the first
# parallel kernel runs. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's own workers spin for about 2**28 cycles after each call (THREAD_TIMEOUT 28) and take
# the cores from the next Numba kernel: measured on 2 cores, an implicit-GEMM pass timed between
# BLAS calls ran at half speed, and the autotuner picked the wrong winners. 2**4 cycles makes them
# sleep at once. OpenBLAS reads this when it loads, so it only acts when convkern is imported
# before NumPy (the CLI, the bench workers); docs/architecture.md ("CPU threads") says what to do
# otherwise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _keep_freed_memory():
    """glibc serves each array of more than 128 KiB-32 MiB from fresh mmap'd pages and returns
    freed heap tops to the kernel, so a training step, which frees and reallocates the same
    activations every time, pays a page fault per 4 KiB written (a LeNet-5 step at batch 64: 13 %
    of its time). Serve up to 32 MiB from the heap and keep up to 256 MiB of freed heap instead
    (docs/architecture.md, "CPU memory"); CONVKERN_MALLOC_TUNING=0 leaves malloc alone."""
    if os.environ.get("CONVKERN_MALLOC_TUNING", "1") == "0":
        return
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):     # not glibc (macOS, musl, Windows): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


_keep_freed_memory()

from convkern.autograd import Function, Tensor, from_dlpack, is_grad_enabled, no_grad, tensor  # noqa: E402
from convkern.backend import cuda_available  # noqa: E402
from convkern.ops.conv import allow_tf32, conv_algorithms, conv_geometry, conv_transpose_geometry  # noqa: E402
from convkern import functional  # noqa: E402
from convkern.gradcheck import GradcheckError, gradcheck  # noqa: E402
from convkern.ops.shape import cat  # noqa: E402
from convkern.random import manual_seed  # noqa: E402
from convkern.serialization import load, save  # noqa: E402
from convkern import amp, cuda, distributed, nn, optim  # noqa: E402
from convkern.layer_summary import summary  # noqa: E402

# Submodules imported on first use (``ck.models``, ``ck.data``, ``ck.train``, ...): ``import convkern``
# stays fast and never imports PyTorch; ``ck.torch`` does, when it is asked for.
LAZY_SUBMODULES = ("bench", "buildcheck", "cli", "cli_args", "data", "models", "reference", "suites", "torch",
                   "train")


def __getattr__(name):
    if name in LAZY_SUBMODULES:
        import importlib
        return importlib.import_module(f"convkern.{name}")
    raise AttributeError(f"module 'convkern' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(LAZY_SUBMODULES))


__version__ = "0.1.0"
__all__ = ["Function", "GradcheckError", "Tensor", "allow_tf32", "amp", "cat", "conv_algorithms", "conv_geometry", "conv_transpose_geometry",
           "cuda", "cuda_available", "distributed", "from_dlpack",
           "functional", "gradcheck", "is_grad_enabled", "load", "manual_seed", "nn", "no_grad", "optim", "save",
           "summary", "tensor", "__version__"]
