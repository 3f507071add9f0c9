"""The functional API, PyTorch-style: thin wrappers over convkern's Functions."""
from convkern.ops.conv import (atrous_conv2d, conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d,
                               conv_transpose3d, depthwise_conv2d, separable_conv2d)
from convkern.ops.layers import (cross_entropy, dropout, flatten, linear, log_softmax, relu, sigmoid, softmax,
                                 tanh)
from convkern.ops.lrn import local_response_norm, lrn
from convkern.ops.normalization import batch_norm
from convkern.ops.pool import (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d, avg_pool1d, avg_pool2d,
                               avg_pool3d, max_pool1d, max_pool2d, max_pool3d, max_pool_indices_from_tf,
                               max_pool_indices_to_tf, max_pool_with_argmax, max_unpool2d, subsample2d)
from convkern.ops.shape import bias_add

__all__ = ["atrous_conv2d", "batch_norm", "bias_add", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
           "conv_transpose2d", "conv_transpose3d", "cross_entropy", "depthwise_conv2d", "dropout", "flatten", "linear",
           "local_response_norm", "log_softmax", "lrn", "relu", "separable_conv2d", "sigmoid", "softmax", "tanh",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d", "avg_pool2d",
           "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool_indices_from_tf", "max_pool_indices_to_tf",
           "max_pool_with_argmax", "max_unpool2d", "subsample2d"]
