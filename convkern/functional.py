"""The functional API, PyTorch-style: thin wrappers over convkern's Functions."""
from convkern.ops.conv2d import conv2d

__all__ = ["conv2d"]
