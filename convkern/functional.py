"""The functional API, PyTorch-style: thin wrappers over convkern's Functions."""
from convkern.ops.conv2d import conv2d
from convkern.ops.layers import (cross_entropy, dropout, flatten, linear, log_softmax, relu, sigmoid, softmax,
                                 tanh)
from convkern.ops.lrn import local_response_norm, lrn
from convkern.ops.normalization import batch_norm
from convkern.ops.pool import (adaptive_avg_pool2d, avg_pool2d, max_pool2d, max_pool_indices_from_tf,
                               max_pool_indices_to_tf, max_unpool2d, subsample2d)
from convkern.ops.shape import bias_add

__all__ = ["batch_norm", "bias_add", "conv2d", "cross_entropy", "dropout", "flatten", "linear",
           "local_response_norm", "log_softmax", "lrn", "relu", "sigmoid", "softmax", "tanh",
           "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "max_pool_indices_from_tf", "max_pool_indices_to_tf",
           "max_unpool2d", "subsample2d"]
