"""What bench/gpu_check.sh puts at the top of its report: the GPU, its compute capability and SM
count, the CUDA driver and runtime versions, and the versions of the Python stack (PyTorch and
cuDNN, the benchmark's peers, when installed). Needs a real GPU; one line per fact."""
import platform
from importlib.metadata import version

import numba
from numba import cuda
from numba.cuda.cudadrv.driver import driver


def main():
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    major, minor = dev.compute_capability
    print(f"device: {name} (cc {major}.{minor}, {dev.MULTIPROCESSOR_COUNT} SMs)")
    print("CUDA driver API: {}.{}".format(*driver.get_version()))
    print("CUDA runtime: {}.{}".format(*cuda.runtime.get_version()))
    print(f"python {platform.python_version()}, numba {numba.__version__}, numba-cuda {version('numba-cuda')}")
    try:
        import torch
    except ImportError:
        print("torch: not installed (no cuDNN peer in the benchmark)")
        return
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


if __name__ == "__main__":
    main()
