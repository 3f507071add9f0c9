"""convkern: hand-written Numba convolution kernels (CUDA and CPU side by side) with a thin
autograd graph on top.

    import convkern as ck
    import convkern.functional as F
    x = ck.tensor(array, requires_grad=True, device="cpu")
    y = F.conv2d(x, w, stride=2, padding="same")
"""
from convkern.autograd import Function, Tensor, is_grad_enabled, no_grad, tensor
from convkern.backend import cuda_available
from convkern.ops.conv2d import conv_algorithms
from convkern import functional

__version__ = "0.1.0"
__all__ = ["Function", "Tensor", "conv_algorithms", "cuda_available", "functional",
           "is_grad_enabled", "no_grad", "tensor", "__version__"]
