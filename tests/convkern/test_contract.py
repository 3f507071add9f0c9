"""The bad-input contract, walked for every public op and module (issue 4).

Wrong rank or shape, channel/feature mismatch, dtype mismatch, integer input to a float op,
device mismatch, a non-array argument, NaN / float / out-of-range labels: each raises
ValueError or TypeError whose message names the op and the argument. Non-contiguous and
byte-swapped NumPy arrays are accepted (made contiguous and native) and give the contiguous
result; non-contiguous CUDA arrays are refused clearly. backward() on a non-scalar without a
gradient and a second backward() through freed buffers raise RuntimeError.

The CUDA rows run on Numba's simulator without a GPU (see tests/conftest.py); every shape is tiny.
"""
from collections import OrderedDict

import numpy as np
import pytest
from numba import cuda

import convkern as ck
import convkern.functional as F
from convkern import nn


def f32(*shape):
    return np.zeros(shape, np.float32)


def f64(*shape):
    return np.zeros(shape, np.float64)


def i64(*shape):
    return np.zeros(shape, np.int64)


def on_cuda(array):
    return ck.tensor(array, device="cuda")


def X():
    """The standard small NCHW input: N=2, C=3, H=W=5."""
    return f32(2, 3, 5, 5)


NOT_ARRAY = "must be a convkern Tensor, a NumPy array or a CUDA array"
NOT_FLOAT = "must be float32 or float64, got int64"
NOT_FLOAT_OR_HALF = "must be float16, float32 or float64, got int64"   # the ops that take float16

# (id, callable, exception type, regex the message must match; it always names the argument)
ROWS = [
    # ---- conv2d
    ("conv2d-rank", lambda: F.conv2d(f32(3, 5, 5), f32(4, 3, 3, 3)), ValueError,
     r"conv2d: input must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)"),
    ("conv2d-weight-rank", lambda: F.conv2d(X(), f32(4, 3, 3)), ValueError, r"conv2d: weight must be 4-D"),
    ("conv2d-channels", lambda: F.conv2d(f32(2, 4, 5, 5), f32(4, 3, 3, 3)), ValueError,
     r"conv2d: channel mismatch: input has C=4 channels but weight of shape \(4, 3, 3, 3\)"),
    ("conv2d-dtype", lambda: F.conv2d(X(), f64(4, 3, 3, 3)), TypeError,
     r"conv2d: weight has dtype float64 but input has dtype float32"),
    ("conv2d-int", lambda: F.conv2d(i64(2, 3, 5, 5), i64(4, 3, 3, 3)), TypeError, rf"conv2d: input {NOT_FLOAT_OR_HALF}"),
    ("conv2d-device", lambda: F.conv2d(X(), on_cuda(f32(4, 3, 3, 3))), ValueError,
     r"conv2d: weight is on device 'cuda' but input is on 'cpu'"),
    ("conv2d-bias-device", lambda: F.conv2d(X(), f32(4, 3, 3, 3), on_cuda(f32(4))), ValueError,
     r"conv2d: bias is on device 'cuda' but input is on 'cpu'"),
    ("conv2d-bias-shape", lambda: F.conv2d(X(), f32(4, 3, 3, 3), f32(3)), ValueError,
     r"conv2d: bias must have shape \(K,\) = \(4,\), got \(3,\)"),
    ("conv2d-input-type", lambda: F.conv2d(X().tolist(), f32(4, 3, 3, 3)), TypeError,
     rf"conv2d: input {NOT_ARRAY}.*got list"),
    ("conv2d-weight-type", lambda: F.conv2d(X(), None), TypeError, rf"conv2d: weight {NOT_ARRAY}.*got NoneType"),
    ("conv2d-float16", lambda: F.conv2d(X().astype(np.float16), f32(4, 3, 3, 3)), TypeError,
     r"conv2d: weight has dtype float32 but input has dtype float16"),
    # ---- the rest of the convolution family (more in tests/convkern/test_conv.py)
    ("conv1d-rank", lambda: F.conv1d(X(), f32(4, 3, 3)), ValueError, r"conv1d: input must be 3-D \(N, C, L\)"),
    ("conv1d-dtype", lambda: F.conv1d(f32(2, 3, 5), f64(4, 3, 3)), TypeError, r"conv1d: weight has dtype float64"),
    ("conv1d-int", lambda: F.conv1d(i64(2, 3, 5), i64(4, 3, 3)), TypeError, rf"conv1d: input {NOT_FLOAT_OR_HALF}"),
    ("conv3d-rank", lambda: F.conv3d(X(), f32(4, 3, 3, 3, 3)), ValueError, r"conv3d: input must be 5-D"),
    ("conv3d-device", lambda: F.conv3d(f32(1, 3, 4, 4, 4), on_cuda(f32(4, 3, 3, 3, 3))), ValueError,
     r"conv3d: weight is on device 'cuda' but input is on 'cpu'"),
    ("conv3d-groups", lambda: F.conv3d(f32(1, 3, 4, 4, 4), f32(4, 3, 3, 3, 3), groups=2), ValueError,
     r"conv3d: groups=2 must divide the input channels C=3"),
    ("conv_transpose1d-rank", lambda: F.conv_transpose1d(X(), f32(3, 4, 3)), ValueError,
     r"conv_transpose1d: input must be 3-D \(N, C_in, L\)"),
    ("conv_transpose2d-channels", lambda: F.conv_transpose2d(X(), f32(4, 2, 3, 3)), ValueError,
     r"conv_transpose2d: channel mismatch: input has C_in=3 channels"),
    ("conv_transpose2d-output_padding", lambda: F.conv_transpose2d(X(), f32(3, 2, 3, 3), stride=2, output_padding=2),
     ValueError, r"conv_transpose2d: output_padding \(2, 2\) must be smaller than max\(stride, dilation\)"),
    ("conv_transpose2d-type", lambda: F.conv_transpose2d(X(), "w"), TypeError, rf"conv_transpose2d: weight {NOT_ARRAY}"),
    ("conv_transpose3d-dtype", lambda: F.conv_transpose3d(f32(1, 3, 2, 2, 2), f64(3, 2, 3, 3, 3)), TypeError,
     r"conv_transpose3d: weight has dtype float64"),
    ("depthwise_conv2d-weight", lambda: F.depthwise_conv2d(X(), f32(4, 1, 3, 3)), ValueError,
     r"depthwise_conv2d: weight must have shape \(C\*M, 1, R, S\) with C=3 input channels"),
    ("depthwise_conv2d-rank", lambda: F.depthwise_conv2d(f32(3, 5, 5), f32(3, 1, 3, 3)), ValueError,
     r"depthwise_conv2d: input must be 4-D"),
    ("separable_conv2d-pointwise", lambda: F.separable_conv2d(X(), f32(3, 1, 3, 3), f32(2, 4, 1, 1)), ValueError,
     r"separable_conv2d: pointwise_weight must have shape \(K, C\*M, 1, 1\) = \(K, 3, 1, 1\)"),
    ("separable_conv2d-device", lambda: F.separable_conv2d(X(), f32(3, 1, 3, 3), on_cuda(f32(2, 3, 1, 1))),
     ValueError, r"separable_conv2d: weight is on device 'cuda' but input is on 'cpu'"),
    ("atrous_conv2d-rate", lambda: F.atrous_conv2d(X(), f32(4, 3, 3, 3), rate=1.5, padding="same"), ValueError,
     r"atrous_conv2d: rate must be a positive int, got 1.5"),
    ("atrous_conv2d-padding", lambda: F.atrous_conv2d(X(), f32(4, 3, 3, 3), rate=2, padding="full"), ValueError,
     r"atrous_conv2d: padding must be 'same' or 'valid'"),
    # ---- pooling
    ("max_pool2d-rank", lambda: F.max_pool2d(f32(3, 5, 5), 2), ValueError, r"max_pool2d: input must be 4-D"),
    ("max_pool2d-int", lambda: F.max_pool2d(i64(2, 3, 5, 5), 2), TypeError, rf"max_pool2d: input {NOT_FLOAT_OR_HALF}"),
    ("max_pool2d-type", lambda: F.max_pool2d(3.0, 2), TypeError, rf"max_pool2d: input {NOT_ARRAY}"),
    ("max_pool2d-kernel_size", lambda: F.max_pool2d(X(), None), TypeError,
     r"max_pool2d: kernel_size must be an int or a pair of ints, got None"),
    ("max_pool2d-int-cuda", lambda: F.max_pool2d(on_cuda(i64(1, 1, 2, 2)), 2), TypeError,
     rf"max_pool2d: input {NOT_FLOAT_OR_HALF}"),
    ("avg_pool2d-rank", lambda: F.avg_pool2d(f32(5, 5), 2), ValueError, r"avg_pool2d: input must be 4-D"),
    ("avg_pool2d-int", lambda: F.avg_pool2d(i64(2, 3, 5, 5), 2), TypeError, rf"avg_pool2d: input {NOT_FLOAT_OR_HALF}"),
    ("avg_pool2d-type", lambda: F.avg_pool2d("x", 2), TypeError, rf"avg_pool2d: input {NOT_ARRAY}"),
    ("adaptive_avg_pool2d-rank", lambda: F.adaptive_avg_pool2d(f32(5, 5), 1), ValueError,
     r"adaptive_avg_pool2d: input must be 4-D"),
    ("adaptive_avg_pool2d-int", lambda: F.adaptive_avg_pool2d(i64(2, 3, 5, 5), 1), TypeError,
     rf"adaptive_avg_pool2d: input {NOT_FLOAT_OR_HALF}"),
    ("adaptive_avg_pool2d-output_size", lambda: F.adaptive_avg_pool2d(X(), (1, 2, 3)), TypeError,
     r"adaptive_avg_pool2d: output_size must be an int or a pair of ints"),
    ("max_pool2d-padding", lambda: F.max_pool2d(X(), 3, padding=((0, 3), (1, 1))), ValueError,
     r"max_pool2d: explicit padding along H must be at most kernel_size - 1 = 2"),
    ("max_pool2d-padding-pairs", lambda: F.max_pool2d(X(), 3, padding=((0, 1), (1,))), TypeError,
     r"max_pool2d: explicit padding must be 2 \(before, after\) pairs of ints"),
    ("max_pool2d-padding-string", lambda: F.max_pool2d(X(), 3, padding="SAME"), ValueError,
     r"max_pool2d: padding must be an int, a pair of ints, 'same', 'valid' or"),
    ("max_pool2d-ceil_mode-same", lambda: F.max_pool2d(X(), 3, 2, "same", ceil_mode=True), ValueError,
     r"max_pool2d: ceil_mode=True cannot be combined with padding='same'"),
    ("avg_pool2d-padding-negative", lambda: F.avg_pool2d(X(), 3, padding=((0, -1), (1, 1))), ValueError,
     r"avg_pool2d: padding must be >= 0"),
    ("avg_pool2d-ceil_mode-pairs", lambda: F.avg_pool2d(X(), 3, padding=((0, 1), (1, 1)), ceil_mode=True),
     ValueError, r"avg_pool2d: ceil_mode=True cannot be combined with explicit \(before, after\) padding pairs"),
    ("max_pool1d-rank", lambda: F.max_pool1d(X(), 2), ValueError, r"max_pool1d: input must be 3-D \(N, C, L\)"),
    ("max_pool1d-int", lambda: F.max_pool1d(i64(2, 3, 5), 2), TypeError, rf"max_pool1d: input {NOT_FLOAT_OR_HALF}"),
    ("max_pool1d-padding", lambda: F.max_pool1d(f32(2, 3, 5), 2, padding=((0, 2),)), ValueError,
     r"max_pool1d: explicit padding along L must be at most kernel_size - 1 = 1"),
    ("max_pool3d-rank", lambda: F.max_pool3d(X(), 2), ValueError, r"max_pool3d: input must be 5-D \(N, C, D, H, W\)"),
    ("max_pool3d-kernel_size", lambda: F.max_pool3d(f32(1, 2, 4, 4, 4), (2, 2)), TypeError,
     r"max_pool3d: kernel_size must be an int or a tuple of 3 ints"),
    ("max_pool3d-type", lambda: F.max_pool3d(None, 2), TypeError, rf"max_pool3d: input {NOT_ARRAY}"),
    ("avg_pool1d-rank", lambda: F.avg_pool1d(f32(3, 5), 2), ValueError, r"avg_pool1d: input must be 3-D"),
    ("avg_pool1d-padding", lambda: F.avg_pool1d(f32(2, 3, 5), 2, padding=(1, 1)), TypeError,
     r"avg_pool1d: padding must be an int, a tuple of 1 int, 'same', 'valid' or"),
    ("avg_pool3d-rank", lambda: F.avg_pool3d(X(), 2), ValueError, r"avg_pool3d: input must be 5-D"),
    ("avg_pool3d-int", lambda: F.avg_pool3d(i64(1, 2, 4, 4, 4), 2), TypeError, rf"avg_pool3d: input {NOT_FLOAT_OR_HALF}"),
    ("adaptive_avg_pool1d-rank", lambda: F.adaptive_avg_pool1d(X(), 2), ValueError,
     r"adaptive_avg_pool1d: input must be 3-D"),
    ("adaptive_avg_pool1d-output_size", lambda: F.adaptive_avg_pool1d(f32(2, 3, 5), 0), ValueError,
     r"adaptive_avg_pool1d: output_size must be >= 1"),
    ("adaptive_avg_pool3d-rank", lambda: F.adaptive_avg_pool3d(X(), 1), ValueError,
     r"adaptive_avg_pool3d: input must be 5-D"),
    ("adaptive_avg_pool3d-output_size", lambda: F.adaptive_avg_pool3d(f32(1, 2, 4, 4, 4), (2, 2)), TypeError,
     r"adaptive_avg_pool3d: output_size must be an int or a tuple of 3 ints"),
    ("max_pool_with_argmax-rank", lambda: F.max_pool_with_argmax(f32(2, 5, 5), 2, 2, "SAME"), ValueError,
     r"max_pool_with_argmax: input must be 4-D \(N, H, W, C\), got shape \(2, 5, 5\)"),
    ("max_pool_with_argmax-int", lambda: F.max_pool_with_argmax(i64(2, 5, 5, 3), 2, 2, "SAME"), TypeError,
     rf"max_pool_with_argmax: input {NOT_FLOAT_OR_HALF}"),
    ("max_pool_with_argmax-padding", lambda: F.max_pool_with_argmax(X(), 2, 2, "FULL"), ValueError,
     r"max_pool_with_argmax: padding must be 'VALID' or 'SAME', got 'FULL'"),
    ("max_pool_with_argmax-ksize", lambda: F.max_pool_with_argmax(X(), [2, 2, 2, 1], 2, "SAME"), ValueError,
     r"max_pool_with_argmax: ksize pools over H and W only"),
    ("max_pool_with_argmax-strides", lambda: F.max_pool_with_argmax(X(), 2, None, "SAME"), TypeError,
     r"max_pool_with_argmax: strides must be an int or a list of 1, 2 or 4 ints"),
    ("max_pool_with_argmax-include_batch_in_index",
     lambda: F.max_pool_with_argmax(X(), 2, 2, "SAME", include_batch_in_index="yes"), TypeError,
     r"max_pool_with_argmax: include_batch_in_index must be True or False"),
    ("max_pool_with_argmax-type", lambda: F.max_pool_with_argmax([1.0], 2, 2, "SAME"), TypeError,
     rf"max_pool_with_argmax: input {NOT_ARRAY}"),
    ("max_unpool2d-rank", lambda: F.max_unpool2d(f32(3, 2, 2), i64(3, 2, 2), 2), ValueError,
     r"max_unpool2d: input must be 4-D"),
    ("max_unpool2d-int", lambda: F.max_unpool2d(i64(2, 3, 2, 2), i64(2, 3, 2, 2), 2), TypeError,
     rf"max_unpool2d: input {NOT_FLOAT_OR_HALF}"),
    ("max_unpool2d-indices-dtype", lambda: F.max_unpool2d(f32(2, 3, 2, 2), f32(2, 3, 2, 2), 2), TypeError,
     r"max_unpool2d: indices must be int64"),
    ("max_unpool2d-indices-shape", lambda: F.max_unpool2d(f32(2, 3, 2, 2), i64(2, 3, 2, 1), 2), ValueError,
     r"max_unpool2d: indices must have the input's shape \(2, 3, 2, 2\), got \(2, 3, 2, 1\)"),
    ("max_unpool2d-indices-device", lambda: F.max_unpool2d(f32(1, 1, 2, 2), on_cuda(i64(1, 1, 2, 2)), 2),
     ValueError, r"max_unpool2d: indices is on device 'cuda' but input is on 'cpu'"),
    ("max_unpool2d-indices-type", lambda: F.max_unpool2d(f32(2, 3, 2, 2), [0], 2), TypeError,
     rf"max_unpool2d: indices {NOT_ARRAY}"),
    ("max_unpool2d-indices-range", lambda: F.max_unpool2d(f32(1, 1, 2, 2), np.full((1, 1, 2, 2), 16), 2),
     ValueError, r"indices must lie in \[0, 16\)"),
    ("subsample2d-rank", lambda: F.subsample2d(f32(3, 4, 4), f32(3), None), ValueError,
     r"subsample2d: input must be 4-D"),
    ("subsample2d-channels", lambda: F.subsample2d(X(), f32(4), None), ValueError,
     r"subsample2d: weight must have shape \(C,\) = \(3,\), got \(4,\)"),
    ("subsample2d-dtype", lambda: F.subsample2d(X(), f64(3), None), TypeError,
     r"subsample2d: weight has dtype float64 but input has dtype float32"),
    ("subsample2d-device", lambda: F.subsample2d(X(), on_cuda(f32(3)), None), ValueError,
     r"subsample2d: weight is on device 'cuda' but input is on 'cpu'"),
    ("subsample2d-bias", lambda: F.subsample2d(X(), f32(3), f32(2)), ValueError,
     r"subsample2d: bias must have shape \(C,\) = \(3,\)"),
    ("subsample2d-int", lambda: F.subsample2d(i64(2, 3, 4, 4), i64(3), None), TypeError,
     rf"subsample2d: input {NOT_FLOAT_OR_HALF}"),
    ("subsample2d-weight-type", lambda: F.subsample2d(X(), None, None), TypeError,
     rf"subsample2d: weight {NOT_ARRAY}"),
    # ---- TensorFlow index converters
    ("max_pool_indices_to_tf-dtype", lambda: F.max_pool_indices_to_tf(f32(2, 3, 2, 2), (2, 3, 4, 4)), TypeError,
     r"max_pool_indices_to_tf: indices must be int64, got float32"),
    ("max_pool_indices_to_tf-rank", lambda: F.max_pool_indices_to_tf(i64(2, 3, 2), (2, 3, 4, 4)), ValueError,
     r"max_pool_indices_to_tf: indices must be 4-D \(N, C, P, Q\)"),
    ("max_pool_indices_to_tf-channels", lambda: F.max_pool_indices_to_tf(i64(2, 3, 2, 2), (2, 4, 4, 4)),
     ValueError, r"max_pool_indices_to_tf: indices \(N, C, P, Q\) = \(2, 3, 2, 2\) do not match input_shape"),
    ("max_pool_indices_to_tf-input_shape", lambda: F.max_pool_indices_to_tf(i64(2, 3, 2, 2), (2, 3, 4)),
     ValueError, r"max_pool_indices_to_tf: input_shape must be the \(N, C, H, W\) shape"),
    ("max_pool_indices_to_tf-range", lambda: F.max_pool_indices_to_tf(np.full((1, 1, 2, 2), 16), (1, 1, 4, 4)),
     ValueError, r"max_pool_indices_to_tf: indices must lie in \[0, H\*W\)"),
    ("max_pool_indices_to_tf-type", lambda: F.max_pool_indices_to_tf(None, (2, 3, 4, 4)), TypeError,
     rf"max_pool_indices_to_tf: indices {NOT_ARRAY}"),
    ("max_pool_indices_from_tf-dtype", lambda: F.max_pool_indices_from_tf(f32(2, 2, 2, 3), (2, 3, 4, 4)),
     TypeError, r"max_pool_indices_from_tf: indices must be int64"),
    ("max_pool_indices_from_tf-channels", lambda: F.max_pool_indices_from_tf(i64(2, 2, 2, 4), (2, 3, 4, 4)),
     ValueError, r"max_pool_indices_from_tf: indices \(N, P, Q, C\) = \(2, 2, 2, 4\) do not match input_shape"),
    ("max_pool_indices_from_tf-values", lambda: F.max_pool_indices_from_tf(np.full((1, 2, 2, 3), 1), (1, 3, 4, 4)),
     ValueError, r"max_pool_indices_from_tf: indices are not TensorFlow argmax positions"),
    # ---- local response normalisation
    ("local_response_norm-rank", lambda: F.local_response_norm(f32(2, 3), 2), ValueError,
     r"local_response_norm: input must be 3-D \(N, C, L\), 4-D"),
    ("local_response_norm-int", lambda: F.local_response_norm(i64(2, 3, 4), 2), TypeError,
     rf"local_response_norm: input {NOT_FLOAT}"),
    ("local_response_norm-type", lambda: F.local_response_norm([1.0], 2), TypeError,
     rf"local_response_norm: input {NOT_ARRAY}"),
    ("local_response_norm-size", lambda: F.local_response_norm(X(), 0), ValueError,
     r"local_response_norm: size must be >= 1"),
    ("lrn-rank", lambda: F.lrn(f32(3), 2), ValueError, r"lrn: input must be 3-D"),
    ("lrn-int", lambda: F.lrn(i64(2, 3, 4), 2), TypeError, rf"lrn: input {NOT_FLOAT}"),
    ("lrn-depth_radius", lambda: F.lrn(X(), -1), ValueError, r"lrn: depth_radius must be >= 0, got -1"),
    ("lrn-int-cuda", lambda: F.lrn(on_cuda(i64(1, 2, 2)), 1), TypeError, rf"lrn: input {NOT_FLOAT}"),
    # ---- linear and activations
    ("linear-weight-rank", lambda: F.linear(f32(2, 3), f32(3)), ValueError,
     r"linear: weight must be 2-D \(out_features, in_features\), got shape \(3,\)"),
    ("linear-0d", lambda: F.linear(ck.tensor(np.float32(1)), f32(4, 1)), ValueError,
     r"linear: input must have at least 1 dimension"),
    ("linear-features", lambda: F.linear(f32(2, 3), f32(4, 5)), ValueError,
     r"linear: in_features mismatch: input of shape \(2, 3\) has 3 features .* weight of shape \(4, 5\)"),
    ("linear-dtype", lambda: F.linear(f32(2, 3), f64(4, 3)), TypeError,
     r"linear: weight has dtype float64 but input has dtype float32"),
    ("linear-int", lambda: F.linear(i64(2, 3), i64(4, 3)), TypeError, rf"linear: input {NOT_FLOAT_OR_HALF}"),
    ("linear-device", lambda: F.linear(f32(2, 3), on_cuda(f32(4, 3))), ValueError,
     r"linear: weight is on device 'cuda' but input is on 'cpu'"),
    ("linear-device-reverse", lambda: F.linear(on_cuda(f32(2, 3)), f32(4, 3)), ValueError,
     r"linear: weight is on device 'cpu' but input is on 'cuda'"),
    ("linear-bias-shape", lambda: F.linear(f32(2, 3), f32(4, 3), f32(3)), ValueError,
     r"linear: bias must have shape \(out_features,\) = \(4,\), got \(3,\)"),
    ("linear-bias-dtype", lambda: F.linear(f32(2, 3), f32(4, 3), f64(4)), TypeError,
     r"linear: bias has dtype float64 but input has dtype float32"),
    ("linear-weight-type", lambda: F.linear(f32(2, 3), [[1.0, 2.0, 3.0]]), TypeError,
     rf"linear: weight {NOT_ARRAY}.*got list"),
    ("relu-int", lambda: F.relu(i64(3)), TypeError, rf"relu: input {NOT_FLOAT_OR_HALF}"),
    ("relu-type", lambda: F.relu(3.0), TypeError, rf"relu: input {NOT_ARRAY}.*got float"),
    ("relu-int-cuda", lambda: F.relu(on_cuda(i64(3))), TypeError, rf"relu: input {NOT_FLOAT_OR_HALF}"),
    ("tanh-int", lambda: F.tanh(i64(3)), TypeError, rf"tanh: input {NOT_FLOAT_OR_HALF}"),
    ("tanh-bool", lambda: F.tanh(np.zeros(3, bool)), TypeError, r"tanh: input must be float16, float32 or float64, got bool"),
    ("tanh-type", lambda: F.tanh(None), TypeError, rf"tanh: input {NOT_ARRAY}"),
    ("sigmoid-int", lambda: F.sigmoid(i64(3)), TypeError, rf"sigmoid: input {NOT_FLOAT_OR_HALF}"),
    ("sigmoid-type", lambda: F.sigmoid("x"), TypeError, rf"sigmoid: input {NOT_ARRAY}.*got str"),
    ("sigmoid-complex", lambda: F.sigmoid(np.zeros(3, complex)), TypeError,
     r"sigmoid: input: expected a float16, float32, float64 or integer array, got dtype complex128"),
    ("dropout-int", lambda: F.dropout(i64(3)), TypeError, rf"dropout: input {NOT_FLOAT_OR_HALF}"),
    ("dropout-type", lambda: F.dropout([1.0]), TypeError, rf"dropout: input {NOT_ARRAY}"),
    ("dropout-p", lambda: F.dropout(f32(3), p=1.0), ValueError, r"dropout: p must be in \[0, 1\), got 1.0"),
    ("dropout-p-type", lambda: F.dropout(f32(3), p="0.5"), TypeError, r"dropout: p must be a number"),
    ("softmax-int", lambda: F.softmax(i64(2, 3), 1), TypeError, rf"softmax: input {NOT_FLOAT_OR_HALF}"),
    ("softmax-dim", lambda: F.softmax(f32(2, 3), 2), ValueError,
     r"softmax: dim out of range: expected one of \[-2, 1\] for a 2-D input, got 2"),
    ("softmax-dim-type", lambda: F.softmax(f32(2, 3), None), TypeError, r"softmax: dim must be an int, got None"),
    ("softmax-type", lambda: F.softmax((1.0, 2.0), 0), TypeError, rf"softmax: input {NOT_ARRAY}"),
    ("log_softmax-int", lambda: F.log_softmax(i64(2, 3), 1), TypeError, rf"log_softmax: input {NOT_FLOAT_OR_HALF}"),
    ("log_softmax-dim", lambda: F.log_softmax(f32(2, 3), -3), ValueError, r"log_softmax: dim out of range"),
    ("flatten-start_dim", lambda: F.flatten(X(), 5), ValueError,
     r"flatten: start_dim out of range: expected one of \[-4, 3\] for a 4-D input, got 5"),
    ("flatten-order", lambda: F.flatten(X(), 3, 1), ValueError,
     r"flatten: start_dim \(3\) must not come after end_dim \(1\)"),
    ("flatten-type", lambda: F.flatten({}, 1), TypeError, rf"flatten: input {NOT_ARRAY}.*got dict"),
    # ---- cross_entropy
    ("cross_entropy-rank", lambda: F.cross_entropy(f32(2, 3, 4), i64(2)), ValueError,
     r"cross_entropy: input must be 2-D logits \(N, C\)"),
    ("cross_entropy-int", lambda: F.cross_entropy(i64(2, 3), i64(2)), TypeError, rf"cross_entropy: input {NOT_FLOAT_OR_HALF}"),
    ("cross_entropy-nan-target", lambda: F.cross_entropy(f32(2, 3), np.array([0, np.nan])), TypeError,
     r"cross_entropy: target must hold integer class indices .* got dtype float64"),
    ("cross_entropy-float-target", lambda: F.cross_entropy(f32(2, 3), np.array([0.0, 1.0], np.float32)), TypeError,
     r"cross_entropy: target must hold integer class indices .* got dtype float32"),
    ("cross_entropy-target-range", lambda: F.cross_entropy(f32(2, 3), np.array([0, 3])), ValueError,
     r"cross_entropy: target values must be class indices in \[0, 2\] \(C = 3\) .* got target\[1\] = 3"),
    ("cross_entropy-target-negative", lambda: F.cross_entropy(f32(2, 3), np.array([-1, 0])), ValueError,
     r"cross_entropy: target values must be class indices .* got target\[0\] = -1"),
    # checked on the device: raised at the next host read (convkern.cuda), not by the launch
    ("cross_entropy-target-range-cuda", lambda: F.cross_entropy(on_cuda(f32(2, 3)), on_cuda(np.array([0, 7]))).numpy(),
     ValueError, r"cross_entropy: target values must be class indices in \[0, 2\] \(C = 3\).* the CUDA kernel found one outside"),
    ("cross_entropy-target-shape", lambda: F.cross_entropy(f32(2, 3), i64(3)), ValueError,
     r"cross_entropy: target must have shape \(N,\) = \(2,\) for input of shape \(2, 3\), got \(3,\)"),
    ("cross_entropy-target-device", lambda: F.cross_entropy(f32(2, 3), on_cuda(i64(2))), ValueError,
     r"cross_entropy: target is on device 'cuda' but input is on 'cpu'"),
    ("cross_entropy-target-type", lambda: F.cross_entropy(f32(2, 3), [0, 1]), TypeError,
     rf"cross_entropy: target {NOT_ARRAY}.*got list"),
    ("cross_entropy-reduction", lambda: F.cross_entropy(f32(2, 3), i64(2), reduction="avg"), ValueError,
     r"cross_entropy: reduction must be one of"),
    # ---- batch_norm and bias_add
    ("batch_norm-rank", lambda: F.batch_norm(f32(3), f32(3), f32(3)), ValueError,
     r"batch_norm: input must be at least 2-D"),
    ("batch_norm-int", lambda: F.batch_norm(i64(2, 3), None, None, training=True), TypeError,
     rf"batch_norm: input {NOT_FLOAT_OR_HALF}"),
    ("batch_norm-channels", lambda: F.batch_norm(X(), f32(4), f32(4)), ValueError,
     r"batch_norm: running_mean must have shape \(C,\) = \(3,\), got \(4,\)"),
    ("batch_norm-weight-channels", lambda: F.batch_norm(X(), None, None, f32(4), training=True), ValueError,
     r"batch_norm: weight must have shape \(C,\) = \(3,\), got \(4,\)"),
    ("batch_norm-dtype", lambda: F.batch_norm(X(), f64(3), f64(3)), TypeError,
     r"batch_norm: running_mean has dtype float64 but input has dtype float32"),
    ("batch_norm-weight-dtype", lambda: F.batch_norm(X(), None, None, f64(3), training=True), TypeError,
     r"batch_norm: weight has dtype float64 but input has dtype float32"),
    ("batch_norm-device", lambda: F.batch_norm(X(), on_cuda(f32(3)), on_cuda(f32(3))), ValueError,
     r"batch_norm: running_mean is on device 'cuda' but input is on 'cpu'"),
    ("batch_norm-bias-device", lambda: F.batch_norm(X(), None, None, None, on_cuda(f32(3)), training=True),
     ValueError, r"batch_norm: bias is on device 'cuda' but input is on 'cpu'"),
    ("batch_norm-type", lambda: F.batch_norm(X(), [0.0] * 3, [1.0] * 3), TypeError,
     rf"batch_norm: running_mean {NOT_ARRAY}.*got list"),
    ("batch_norm-running-strided", lambda: F.batch_norm(X(), f32(6)[::2], f32(3)), ValueError,
     r"batch_norm: running_mean must be a writeable C-contiguous array"),
    ("batch_norm-running-byteorder", lambda: F.batch_norm(X(), f32(3), f32(3).astype(">f4")), ValueError,
     r"batch_norm: running_var must be a writeable C-contiguous array"),
    ("bias_add-rank", lambda: F.bias_add(f32(3), f32(3)), ValueError,
     r"bias_add: input must be 2-D \(N, C\), 3-D \(N, C, L\) or 4-D"),
    ("bias_add-bias-rank", lambda: F.bias_add(X(), f32(3, 1)), ValueError, r"bias_add: bias must be 1-D \(C,\)"),
    ("bias_add-channels", lambda: F.bias_add(X(), f32(4)), ValueError,
     r"bias_add: bias must have shape \(C,\) = \(3,\), got \(4,\)"),
    ("bias_add-dtype", lambda: F.bias_add(X(), f64(3)), TypeError,
     r"bias_add: bias has dtype float64 but input has dtype float32"),
    ("bias_add-int", lambda: F.bias_add(i64(2, 3), i64(3)), TypeError, rf"bias_add: input {NOT_FLOAT_OR_HALF}"),
    ("bias_add-device", lambda: F.bias_add(X(), on_cuda(f32(3))), ValueError,
     r"bias_add: bias is on device 'cuda' but input is on 'cpu'"),
    ("bias_add-type", lambda: F.bias_add(X(), 1.0), TypeError, rf"bias_add: bias {NOT_ARRAY}.*got float"),
    # ---- cat
    ("cat-type", lambda: ck.cat(f32(2, 3)), TypeError, r"cat: tensors must be a list or tuple of tensors, got ndarray"),
    ("cat-empty", lambda: ck.cat([]), ValueError, r"cat: expected a non-empty list of tensors"),
    ("cat-rank", lambda: ck.cat([f32(2, 3), f32(2)]), ValueError,
     r"cat: tensors\[1\] has 1 dimensions \(shape \(2,\)\) but tensors\[0\] has 2"),
    ("cat-shape", lambda: ck.cat([f32(2, 3), f32(3, 4)], dim=1), ValueError,
     r"cat: sizes must match except in dimension 1: tensors\[1\] has shape \(3, 4\)"),
    ("cat-dtype", lambda: ck.cat([f32(2, 3), f64(2, 3)]), TypeError,
     r"cat: tensors\[1\] has dtype float64 but tensors\[0\] has dtype float32"),
    ("cat-int", lambda: ck.cat([i64(2, 3), i64(2, 3)]), TypeError, rf"cat: tensors\[0\] {NOT_FLOAT_OR_HALF}"),
    ("cat-device", lambda: ck.cat([f32(2, 3), on_cuda(f32(2, 3))]), ValueError,
     r"cat: tensors\[1\] is on device 'cuda' but tensors\[0\] is on 'cpu'"),
    ("cat-element-type", lambda: ck.cat([f32(2, 3), 3]), TypeError, rf"cat: tensors\[1\] {NOT_ARRAY}.*got int"),
    ("cat-dim", lambda: ck.cat([f32(2, 3)], dim=2), ValueError, r"cat: dim must be in \[-2, 1\] for 2-D tensors"),
    ("cat-dim-type", lambda: ck.cat([f32(2, 3)], dim=0.0), TypeError, r"cat: dim must be an int"),
    # ---- tensor
    ("tensor-str", lambda: ck.tensor("abc"), TypeError, r"data: expected a float16, float32, float64 or integer array"),
    ("tensor-object", lambda: ck.tensor(object()), TypeError, r"data: expected .* got dtype object"),
    ("tensor-complex", lambda: ck.tensor(np.zeros(3, np.complex64)), TypeError, r"data: expected .* got dtype complex64"),
    ("tensor-ragged", lambda: ck.tensor([[1.0, 2.0], [3.0]]), ValueError, r"data: cannot make a numeric array"),
    ("tensor-dtype", lambda: ck.tensor(f32(3), dtype="foo"), TypeError, r"dtype: expected a NumPy dtype"),
    ("tensor-device", lambda: ck.tensor(f32(3), device="tpu"), ValueError,
     r"device must be 'cpu' or 'cuda', got 'tpu'"),
    ("tensor-requires_grad-int", lambda: ck.tensor(i64(3), requires_grad=True), TypeError,
     r"requires_grad=True needs a float16, float32 or float64 tensor, got int64"),
    ("tensor-cuda-dtype", lambda: ck.tensor(on_cuda(f32(3)), dtype=np.float64), TypeError,
     r"dtype: cannot convert CUDA data of dtype float32 to float64"),
    ("tensor-cuda-strided", lambda: ck.tensor(cuda.to_device(f32(2, 4))[:, ::2]), ValueError,
     r"data: CUDA arrays must be C-contiguous"),
    ("relu-cuda-strided", lambda: F.relu(cuda.to_device(f32(2, 4))[:, ::2]), ValueError,
     r"relu: input: CUDA arrays must be C-contiguous"),
    # ---- modules
    ("nn.Conv2d-rank", lambda: nn.Conv2d(3, 4, 3)(f32(3, 5, 5)), ValueError, r"conv2d: input must be 4-D"),
    ("nn.Conv2d-channels", lambda: nn.Conv2d(3, 4, 3)(f32(2, 4, 5, 5)), ValueError,
     r"conv2d: channel mismatch: input has C=4 channels but weight"),
    ("nn.Conv2d-dtype", lambda: nn.Conv2d(3, 4, 3, dtype=np.float64)(X()), TypeError,
     r"conv2d: weight has dtype float64 but input has dtype float32"),
    ("nn.Conv2d-int", lambda: nn.Conv2d(3, 4, 3)(i64(2, 3, 5, 5)), TypeError, rf"conv2d: input {NOT_FLOAT_OR_HALF}"),
    ("nn.Conv2d-device", lambda: nn.Conv2d(3, 4, 3, device="cuda")(X()), ValueError,
     r"conv2d: weight is on device 'cuda' but input is on 'cpu'"),
    ("nn.Conv2d-type", lambda: nn.Conv2d(3, 4, 3)("x"), TypeError, rf"conv2d: input {NOT_ARRAY}"),
    ("nn.Conv2d-kernel_size", lambda: nn.Conv2d(3, 4, (1, 2, 3)), TypeError,
     r"Conv2d: kernel_size must be an int or a pair of ints"),
    ("nn.Conv2d-kernel_size-float", lambda: nn.Conv2d(3, 4, 2.5), TypeError,
     r"Conv2d: kernel_size must be an int or a pair of ints, got 2.5"),
    ("nn.Conv2d-kernel_size-zero", lambda: nn.Conv2d(3, 4, 0), ValueError, r"Conv2d: kernel_size must be >= 1"),
    ("nn.Conv2d-groups", lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, r"Conv2d: groups=2 must divide in_channels"),
    ("nn.Conv2d-dtype-arg", lambda: nn.Conv2d(3, 4, 3, dtype=np.int32), TypeError,
     r"Conv2d: dtype must be float32 or float64, got int32"),
    ("nn.Conv2d-device-arg", lambda: nn.Conv2d(3, 4, 3, device="tpu"), ValueError, r"device must be 'cpu' or 'cuda'"),
    ("nn.Conv1d-rank", lambda: nn.Conv1d(3, 4, 3)(X()), ValueError, r"conv1d: input must be 3-D"),
    ("nn.Conv1d-kernel_size", lambda: nn.Conv1d(3, 4, (3, 3)), TypeError,
     r"Conv1d: kernel_size must be an int or a tuple of 1 int"),
    ("nn.Conv3d-channels", lambda: nn.Conv3d(3, 4, 3)(f32(1, 2, 4, 4, 4)), ValueError, r"conv3d: channel mismatch"),
    ("nn.Conv3d-kernel_size", lambda: nn.Conv3d(3, 4, (3, 3)), TypeError,
     r"Conv3d: kernel_size must be an int or a tuple of 3 ints"),
    ("nn.ConvTranspose1d-groups", lambda: nn.ConvTranspose1d(3, 4, 3, groups=2), ValueError,
     r"ConvTranspose1d: groups=2 must divide in_channels=3"),
    ("nn.ConvTranspose2d-channels", lambda: nn.ConvTranspose2d(4, 2, 3)(X()), ValueError,
     r"conv_transpose2d: channel mismatch: input has C_in=3"),
    ("nn.ConvTranspose3d-output_padding", lambda: nn.ConvTranspose3d(3, 2, 3, output_padding=1)(f32(1, 3, 2, 2, 2)),
     ValueError, r"conv_transpose3d: output_padding \(1, 1, 1\) must be smaller"),
    ("nn.SeparableConv2d-depth_multiplier", lambda: nn.SeparableConv2d(3, 4, 3, depth_multiplier=0), ValueError,
     r"SeparableConv2d: depth_multiplier must be a positive int"),
    ("nn.SeparableConv2d-channels", lambda: nn.SeparableConv2d(3, 4, 3)(f32(2, 2, 5, 5)), ValueError,
     r"separable_conv2d: depthwise_weight must have shape \(C\*M, 1, R, S\) with C=2"),
    ("nn.Linear-features", lambda: nn.Linear(3, 4)(f32(2, 5)), ValueError,
     r"linear: in_features mismatch: input of shape \(2, 5\)"),
    ("nn.Linear-dtype", lambda: nn.Linear(3, 4, dtype=np.float64)(f32(2, 3)), TypeError,
     r"linear: weight has dtype float64 but input has dtype float32"),
    ("nn.Linear-int", lambda: nn.Linear(3, 4)(i64(2, 3)), TypeError, rf"linear: input {NOT_FLOAT_OR_HALF}"),
    ("nn.Linear-device", lambda: nn.Linear(3, 4, device="cuda")(f32(2, 3)), ValueError,
     r"linear: weight is on device 'cuda' but input is on 'cpu'"),
    ("nn.Linear-in_features", lambda: nn.Linear(0, 4), ValueError, r"Linear: in_features must be a positive int"),
    ("nn.MaxPool2d-rank", lambda: nn.MaxPool2d(2)(f32(3, 5, 5)), ValueError, r"max_pool2d: input must be 4-D"),
    ("nn.MaxPool2d-int", lambda: nn.MaxPool2d(2)(i64(2, 3, 4, 4)), TypeError, rf"max_pool2d: input {NOT_FLOAT_OR_HALF}"),
    ("nn.MaxPool2d-argument", lambda: nn.MaxPool2d(2, foo=1), TypeError,
     r"MaxPool2d: unexpected or repeated argument 'foo'"),
    ("nn.AvgPool2d-rank", lambda: nn.AvgPool2d(2)(f32(5, 5)), ValueError, r"avg_pool2d: input must be 4-D"),
    ("nn.AvgPool2d-int", lambda: nn.AvgPool2d(2)(i64(2, 3, 4, 4)), TypeError, rf"avg_pool2d: input {NOT_FLOAT_OR_HALF}"),
    ("nn.AdaptiveAvgPool2d-rank", lambda: nn.AdaptiveAvgPool2d(1)(f32(3, 4)), ValueError,
     r"adaptive_avg_pool2d: input must be 4-D"),
    ("nn.MaxPool2d-padding", lambda: nn.MaxPool2d(3, padding=((3, 0), (0, 0)))(X()), ValueError,
     r"max_pool2d: explicit padding along H must be at most kernel_size - 1 = 2"),
    ("nn.MaxPool1d-rank", lambda: nn.MaxPool1d(2)(X()), ValueError, r"max_pool1d: input must be 3-D"),
    ("nn.MaxPool1d-argument", lambda: nn.MaxPool1d(2, count_include_pad=True), TypeError,
     r"MaxPool1d: unexpected or repeated argument 'count_include_pad'"),
    ("nn.MaxPool3d-rank", lambda: nn.MaxPool3d(2)(X()), ValueError, r"max_pool3d: input must be 5-D"),
    ("nn.MaxPool3d-ceil_mode", lambda: nn.MaxPool3d(2, padding="same", ceil_mode=True)(f32(1, 1, 4, 4, 4)),
     ValueError, r"max_pool3d: ceil_mode=True cannot be combined with padding='same'"),
    ("nn.AvgPool1d-int", lambda: nn.AvgPool1d(2)(i64(2, 3, 4)), TypeError, rf"avg_pool1d: input {NOT_FLOAT_OR_HALF}"),
    ("nn.AvgPool3d-rank", lambda: nn.AvgPool3d(2)(X()), ValueError, r"avg_pool3d: input must be 5-D"),
    ("nn.AdaptiveAvgPool1d-rank", lambda: nn.AdaptiveAvgPool1d(1)(X()), ValueError,
     r"adaptive_avg_pool1d: input must be 3-D"),
    ("nn.AdaptiveAvgPool3d-rank", lambda: nn.AdaptiveAvgPool3d(1)(X()), ValueError,
     r"adaptive_avg_pool3d: input must be 5-D"),
    ("nn.LocalResponseNorm-rank", lambda: nn.LocalResponseNorm(2)(f32(2, 3)), ValueError,
     r"local_response_norm: input must be 3-D"),
    ("nn.LocalResponseNorm-int", lambda: nn.LocalResponseNorm(2)(i64(2, 3, 4)), TypeError,
     rf"local_response_norm: input {NOT_FLOAT}"),
    ("nn.LRN-rank", lambda: nn.LRN(2)(f32(2, 3)), ValueError, r"lrn: input must be 3-D"),
    ("nn.LRN-int", lambda: nn.LRN(2)(i64(2, 3, 4)), TypeError, rf"lrn: input {NOT_FLOAT}"),
    ("nn.BatchNorm2d-rank", lambda: nn.BatchNorm2d(3)(f32(2, 3)), ValueError,
     r"BatchNorm2d: input must be 4-D \(N, C, H, W\), got shape \(2, 3\)"),
    ("nn.BatchNorm2d-channels", lambda: nn.BatchNorm2d(3)(f32(2, 4, 5, 5)), ValueError,
     r"BatchNorm2d: input must have num_features=3 channels in dimension 1, got shape \(2, 4, 5, 5\)"),
    ("nn.BatchNorm2d-dtype", lambda: nn.BatchNorm2d(3, dtype=np.float64)(X()), TypeError,
     r"batch_norm: running_mean has dtype float64 but input has dtype float32"),
    ("nn.BatchNorm2d-int", lambda: nn.BatchNorm2d(3)(i64(2, 3, 4, 4)), TypeError, rf"batch_norm: input {NOT_FLOAT_OR_HALF}"),
    ("nn.BatchNorm2d-device", lambda: nn.BatchNorm2d(3, device="cuda")(X()), ValueError,
     r"batch_norm: running_mean is on device 'cuda' but input is on 'cpu'"),
    ("nn.BatchNorm2d-type", lambda: nn.BatchNorm2d(3)(None), TypeError, rf"BatchNorm2d: input {NOT_ARRAY}"),
    ("nn.BatchNorm1d-rank", lambda: nn.BatchNorm1d(3)(X()), ValueError,
     r"BatchNorm1d: input must be 2-D \(N, C\) or 3-D \(N, C, L\), got shape \(2, 3, 5, 5\)"),
    ("nn.BatchNorm1d-features", lambda: nn.BatchNorm1d(3)(f32(4, 5)), ValueError,
     r"BatchNorm1d: input must have num_features=3 channels in dimension 1"),
    ("nn.BatchNorm2d-num_features", lambda: nn.BatchNorm2d(0), ValueError,
     r"BatchNorm2d: num_features must be a positive int"),
    ("nn.SyncBatchNorm-channels", lambda: nn.SyncBatchNorm(3)(f32(2, 4, 5)), ValueError,
     r"SyncBatchNorm: input must have num_features=3 channels in dimension 1, got shape \(2, 4, 5\)"),
    ("nn.SyncBatchNorm-int", lambda: nn.SyncBatchNorm(3)(i64(2, 3, 4)), TypeError, rf"batch_norm: input {NOT_FLOAT_OR_HALF}"),
    ("nn.Dropout-p", lambda: nn.Dropout(1.5), ValueError, r"Dropout: p must be a number in \[0, 1\)"),
    ("nn.Dropout-int", lambda: nn.Dropout()(i64(3)), TypeError, rf"dropout: input {NOT_FLOAT_OR_HALF}"),
    ("nn.Flatten-type", lambda: nn.Flatten()(3), TypeError, rf"flatten: input {NOT_ARRAY}"),
    ("nn.Flatten-dim", lambda: nn.Flatten(5)(X()), ValueError, r"flatten: start_dim out of range"),
    ("nn.ReLU-int", lambda: nn.ReLU()(i64(3)), TypeError, rf"relu: input {NOT_FLOAT_OR_HALF}"),
    ("nn.Tanh-type", lambda: nn.Tanh()([1.0]), TypeError, rf"tanh: input {NOT_ARRAY}"),
    ("nn.Sigmoid-int", lambda: nn.Sigmoid()(i64(3)), TypeError, rf"sigmoid: input {NOT_FLOAT_OR_HALF}"),
    ("nn.Subsample2d-channels", lambda: nn.Subsample2d(4)(X()), ValueError,
     r"subsample2d: weight must have shape \(C,\) = \(3,\), got \(4,\)"),
    ("nn.Subsample2d-device", lambda: nn.Subsample2d(3, device="cuda")(X()), ValueError,
     r"subsample2d: weight is on device 'cuda' but input is on 'cpu'"),
    ("nn.Sequential-element", lambda: nn.Sequential(nn.ReLU(), 3), TypeError,
     r"Sequential: element 1 must be a Module, got int"),
    ("nn.Sequential-odict-element", lambda: nn.Sequential(OrderedDict(act=nn.ReLU(), fc="x")), TypeError,
     r"Sequential: element fc must be a Module, got str"),
    ("nn.Sequential-features", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2))(X()),
     ValueError, r"linear: in_features mismatch: input of shape \(2, 36\)"),
    ("nn.ModuleList-element", lambda: nn.ModuleList([nn.ReLU(), 1.0]), TypeError,
     r"ModuleList: expected a Module, got float"),
    ("nn.Module-to-dtype", lambda: nn.Linear(2, 2).to(np.int32), TypeError,
     r"to: dtype must be float16, float32 or float64, got int32"),
    ("nn.Module-load_state_dict-type", lambda: nn.Linear(2, 2).load_state_dict([1]), TypeError,
     r"load_state_dict: state_dict must be a dict"),
]


@pytest.mark.parametrize("fn,exc,pattern", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_raises_clear_error(fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


def test_rows_are_unique_and_cover_every_public_op():
    ids = [r[0] for r in ROWS]
    assert len(ids) == len(set(ids))
    covered = {i.split("-")[0] for i in ids}
    missing = [name for name in F.__all__ if name not in covered]
    assert not missing, f"public ops without a bad-input row: {missing}"
    for name in ("cat", "tensor", "nn.Conv1d", "nn.Conv2d", "nn.Conv3d", "nn.ConvTranspose1d", "nn.ConvTranspose2d",
                 "nn.ConvTranspose3d", "nn.SeparableConv2d", "nn.Linear", "nn.MaxPool1d", "nn.MaxPool2d",
                 "nn.MaxPool3d", "nn.AvgPool1d", "nn.AvgPool2d", "nn.AvgPool3d", "nn.AdaptiveAvgPool1d",
                 "nn.AdaptiveAvgPool2d", "nn.AdaptiveAvgPool3d",
                 "nn.LocalResponseNorm", "nn.LRN", "nn.BatchNorm2d", "nn.BatchNorm1d", "nn.Dropout", "nn.Flatten",
                 "nn.ReLU", "nn.Tanh", "nn.Sigmoid", "nn.Subsample2d", "nn.Sequential"):
        assert name in covered, name


def test_rejected_batch_is_not_counted_by_batchnorm():
    bn = nn.BatchNorm2d(3, momentum=None)
    with pytest.raises(TypeError, match="input must be float16, float32 or float64"):
        bn(i64(2, 3, 4, 4))
    with pytest.raises(ValueError, match="num_features=3"):
        bn(f32(2, 4, 4, 4))
    assert int(bn.num_batches_tracked.item()) == 0
    np.testing.assert_array_equal(bn.running_mean.numpy(), 0.0)
    bn(np.ones((2, 3, 2, 2), np.float32))  # momentum None: cumulative average, first batch has weight 1
    assert int(bn.num_batches_tracked.item()) == 1
    np.testing.assert_allclose(bn.running_mean.numpy(), 1.0)


# ---- layout: non-contiguous and byte-swapped NumPy arrays are accepted and change nothing

def _layouts(a):
    """The same values as a strided view and as a big-endian copy."""
    wide = np.repeat(a, 2, axis=-1)
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous and np.array_equal(strided, a)
    swapped = a.astype(a.dtype.newbyteorder(">"))
    assert not swapped.dtype.isnative and np.array_equal(swapped, a)
    return strided, swapped


LAYOUT_OPS = [
    ("conv2d", lambda x, w: F.conv2d(x, w, padding=1, algorithm="direct"), (2, 3, 5, 5), (4, 3, 3, 3)),
    ("conv2d-im2col", lambda x, w: F.conv2d(x, w, stride=2, algorithm="im2col"), (2, 3, 5, 5), (4, 3, 3, 3)),
    ("max_pool2d", lambda x, w: F.max_pool2d(x, 2, ceil_mode=True), (2, 3, 5, 5), None),
    ("avg_pool2d", lambda x, w: F.avg_pool2d(x, 3, 2, 1), (2, 3, 5, 5), None),
    ("local_response_norm", lambda x, w: F.local_response_norm(x, 3), (2, 4, 3, 3), None),
    ("linear", lambda x, w: F.linear(x, w), (3, 6), (4, 6)),
    ("softmax", lambda x, w: F.softmax(x, 1), (3, 6), None),
    ("sigmoid", lambda x, w: F.sigmoid(x), (3, 6), None),
    ("batch_norm", lambda x, w: F.batch_norm(x, None, None, w, training=True), (4, 3, 2, 4), (3,)),
    ("bias_add", lambda x, w: F.bias_add(x, w), (2, 3, 4), (3,)),
    ("cross_entropy", lambda x, w: F.cross_entropy(x, np.array([0, 5, 2]), reduction="none"), (3, 6), None),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,fn,x_shape,w_shape", LAYOUT_OPS, ids=[o[0] for o in LAYOUT_OPS])
def test_strided_and_byteswapped_numpy_inputs_give_the_same_result(name, fn, x_shape, w_shape, dtype, rng):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = None if w_shape is None else rng.standard_normal(w_shape).astype(dtype)
    expected = fn(x, w).numpy()
    xs, xb = _layouts(x)
    for xv in (xs, xb):
        np.testing.assert_allclose(fn(xv, w).numpy(), expected, rtol=1e-6, atol=1e-6)
    if w is not None:
        for wv in _layouts(w):
            np.testing.assert_allclose(fn(x, wv).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_strided_and_byteswapped_inputs_on_cuda(rng):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    expected = F.conv2d(x, w, padding=1, algorithm="direct").numpy()
    for xv in _layouts(x):
        got = F.conv2d(ck.tensor(xv, device="cuda"), ck.tensor(w, device="cuda"), padding=1, algorithm="direct")
        assert got.device == "cuda"
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_strided_and_byteswapped_labels_and_indices(rng):
    x = rng.standard_normal((3, 4))
    target = np.array([3, 0, 1])
    expected = F.cross_entropy(x, target).item()
    for tv in _layouts(target):
        assert F.cross_entropy(x, tv).item() == expected
    pooled, idx = F.max_pool2d(rng.standard_normal((1, 2, 4, 4)), 2, return_indices=True)
    expected = F.max_unpool2d(pooled, idx, 2).numpy()
    for iv in _layouts(idx.numpy()):
        np.testing.assert_array_equal(F.max_unpool2d(pooled, iv, 2).numpy(), expected)
    tf = F.max_pool_indices_to_tf(idx, (1, 2, 4, 4)).numpy()
    for tv in _layouts(tf):
        np.testing.assert_array_equal(F.max_pool_indices_from_tf(tv, (1, 2, 4, 4)).numpy(), idx.numpy())


def test_tensor_makes_arrays_contiguous_and_native():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    for view in (a[:, ::2], a.T, a.astype(">f8")):
        t = ck.tensor(view)
        assert t.data.flags.c_contiguous and t.dtype.isnative
        np.testing.assert_array_equal(t.numpy(), view)


# ---- backward misuse

def test_backward_on_non_scalar_needs_grad():
    x = ck.tensor(np.ones((2, 3)), requires_grad=True)
    y = F.relu(x)
    non_scalar = r"backward\(\): grad must be given for a non-scalar tensor of shape \(2, 3\)"
    with pytest.raises(RuntimeError, match=non_scalar):
        y.backward()
    with pytest.raises(ValueError, match=r"backward\(\): grad must have the tensor's shape \(2, 3\), got \(3,\)"):
        y.backward(np.ones(3))
    with pytest.raises(TypeError, match=r"grad has dtype float32 but the tensor has dtype float64"):
        y.backward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad is on device 'cuda' but the tensor is on 'cpu'"):
        y.backward(on_cuda(np.ones((2, 3))))
    y.backward(np.ones((2, 3)))  # the graph is intact after the refused calls
    np.testing.assert_array_equal(x.grad.numpy(), 1.0)


def test_backward_without_grad_fn():
    with pytest.raises(RuntimeError, match="does not require grad"):
        ck.tensor(np.ones(1)).sum().backward()


SECOND_BACKWARD = [
    ("conv2d", lambda x: F.conv2d(x, np.ones((2, 3, 3, 3)), padding=1)),
    ("max_pool2d", lambda x: F.max_pool2d(x, 2)),
    ("local_response_norm", lambda x: F.local_response_norm(x, 3)),
    ("batch_norm", lambda x: F.batch_norm(x, None, None, training=True)),
    ("linear", lambda x: F.linear(F.flatten(x), np.ones((2, 48)))),
    ("tanh", lambda x: F.tanh(x)),
    ("log_softmax", lambda x: F.log_softmax(x, 1)),
    ("cross_entropy", lambda x: F.cross_entropy(F.flatten(x), np.array([0, 40]))),
]


@pytest.mark.parametrize("name,fn", SECOND_BACKWARD, ids=[s[0] for s in SECOND_BACKWARD])
def test_second_backward_through_freed_buffers(name, fn, rng):
    x = ck.tensor(rng.standard_normal((2, 3, 4, 4)), requires_grad=True)
    loss = fn(x).sum()
    loss.backward(retain_graph=True)
    loss.backward()  # kept by retain_graph: accumulates
    first = x.grad.numpy().copy()
    with pytest.raises(RuntimeError, match=r"a second time.*retain_graph=True"):
        loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), first)


# ---- NaN / inf propagation (issue 15): one NaN, +inf or -inf in the input gives PyTorch's
# pattern of NaN, +inf and -inf in the output, on both backends. Winograd and FFT transform the
# input and so spread a non-finite value over a tile or the whole plane (docs/ops.md); they have
# no rows. Every row's non-finite value meets each output at most once, so no inf - inf depends
# on a summation order.

def _weights(*shape):
    """Deterministic weights of both signs and no zeros (a zero weight would make 0 * inf)."""
    w = np.linspace(-1.0, 1.0, int(np.prod(shape)) + 1, dtype=np.float32)
    return np.where(w >= 0, w + 0.25, w - 0.25)[:int(np.prod(shape))].reshape(shape)


def _conv_row(name, k, stride, padding, algorithm):
    w = _weights(3, 2, k, k)
    return (f"conv2d-{algorithm}-k{k}-s{stride}-p{padding}", (1, 2, 6, 6),
            lambda x, d: F.conv2d(x, _on(w, d), stride=stride, padding=padding, algorithm=algorithm),
            lambda t, torch: torch.nn.functional.conv2d(t, torch.tensor(w), stride=stride, padding=padding))


def _on(array, device):
    return ck.tensor(array, device=device)


NONFINITE_OPS = [
    *[_conv_row("conv2d", k, s, p, a) for a in ("direct", "im2col", "implicit_gemm")
      for k, s, p in ((1, 1, 0), (2, 1, 0), (3, 1, 1), (3, 2, 1))],
    ("conv1d-direct", (1, 2, 7), lambda x, d: F.conv1d(x, _on(_weights(3, 2, 2), d), padding=1, algorithm="direct"),
     lambda t, torch: torch.nn.functional.conv1d(t, torch.tensor(_weights(3, 2, 2)), padding=1)),
    ("conv_transpose2d-direct", (1, 2, 4, 4),
     lambda x, d: F.conv_transpose2d(x, _on(_weights(2, 3, 2, 2), d), stride=2, algorithm="direct"),
     lambda t, torch: torch.nn.functional.conv_transpose2d(t, torch.tensor(_weights(2, 3, 2, 2)), stride=2)),
    ("max_pool2d", (1, 2, 5, 5), lambda x, d: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
     lambda t, torch: torch.nn.functional.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
    ("max_pool1d", (1, 2, 7), lambda x, d: F.max_pool1d(x, 2), lambda t, torch: torch.nn.functional.max_pool1d(t, 2)),
    ("avg_pool2d", (1, 2, 5, 5), lambda x, d: F.avg_pool2d(x, 3, 2, 1),
     lambda t, torch: torch.nn.functional.avg_pool2d(t, 3, 2, 1)),
    ("avg_pool2d-exclude-pad", (1, 2, 5, 5), lambda x, d: F.avg_pool2d(x, 2, 1, 1, count_include_pad=False),
     lambda t, torch: torch.nn.functional.avg_pool2d(t, 2, 1, 1, count_include_pad=False)),
    ("adaptive_avg_pool2d", (1, 2, 5, 5), lambda x, d: F.adaptive_avg_pool2d(x, 3),
     lambda t, torch: torch.nn.functional.adaptive_avg_pool2d(t, 3)),
    *[(f"local_response_norm-size{n}", (1, 20, 2, 3), lambda x, d, n=n: F.local_response_norm(x, n, beta=beta),
       lambda t, torch, n=n: torch.nn.functional.local_response_norm(t, n, beta=beta))
      for n, beta in ((2, 0.75), (3, 0.5), (5, 0.6))],
    ("lrn", (1, 20, 2, 3), lambda x, d: F.lrn(x, 2, 2.0, 1e-4, 0.75),
     lambda t, torch: torch.nn.functional.local_response_norm(t, 5, alpha=5e-4, beta=0.75, k=2.0)),
    ("linear", (3, 5), lambda x, d: F.linear(x, _on(_weights(4, 5), d), _on(_weights(4), d)),
     lambda t, torch: torch.nn.functional.linear(t, torch.tensor(_weights(4, 5)), torch.tensor(_weights(4)))),
    ("relu", (3, 5), lambda x, d: F.relu(x), lambda t, torch: torch.relu(t)),
    ("tanh", (3, 5), lambda x, d: F.tanh(x), lambda t, torch: torch.tanh(t)),
    ("sigmoid", (3, 5), lambda x, d: F.sigmoid(x), lambda t, torch: torch.sigmoid(t)),
    ("softmax", (3, 5), lambda x, d: F.softmax(x, 1), lambda t, torch: torch.softmax(t, 1)),
    ("log_softmax", (3, 5), lambda x, d: F.log_softmax(x, 1), lambda t, torch: torch.log_softmax(t, 1)),
    ("cross_entropy", (3, 5), lambda x, d: F.cross_entropy(x, _on(np.array([1, 4, 0]), d), reduction="none"),
     lambda t, torch: torch.nn.functional.cross_entropy(t, torch.tensor([1, 4, 0]), reduction="none")),
    ("batch_norm", (2, 3, 2, 2), lambda x, d: F.batch_norm(x, None, None, training=True),
     lambda t, torch: torch.nn.functional.batch_norm(t, None, None, training=True)),
    ("batch_norm-eval", (2, 3, 2, 2),
     lambda x, d: F.batch_norm(x, _on(_weights(3), d), _on(np.ones(3, np.float32), d)),
     lambda t, torch: torch.nn.functional.batch_norm(t, torch.tensor(_weights(3)), torch.ones(3))),
    ("bias_add", (2, 3, 4), lambda x, d: F.bias_add(x, _on(_weights(3), d)),
     lambda t, torch: t + torch.tensor(_weights(3))[None, :, None]),
    ("dropout-eval", (3, 5), lambda x, d: F.dropout(x, training=False), lambda t, torch: t),
    ("add", (3, 5), lambda x, d: x + x * 2.0, lambda t, torch: t + t * 2.0),
    ("sum", (3, 5), lambda x, d: x.sum(), lambda t, torch: t.sum()),
    ("mean", (3, 5), lambda x, d: x.mean(), lambda t, torch: t.mean()),
]


def _pattern(a):
    return np.isnan(a), np.isposinf(a), np.isneginf(a)


def _position(shape, where):
    """A flat index: the middle of the first row or (n, c) plane, or of the whole input. Both
    matter: a kernel that pads its loops with zero-weight reads of the first channel would turn
    an inf there into NaN."""
    size = int(np.prod(shape))
    return int(np.prod(shape[2:] if len(shape) > 2 else shape[1:])) // 2 if where == "first" else size // 2 + 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars warn on inf - inf
@pytest.mark.parametrize("where", ["first", "middle"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("name,shape,fn,torch_fn", NONFINITE_OPS, ids=[o[0] for o in NONFINITE_OPS])
def test_nonfinite_input_gives_pytorchs_pattern(name, shape, fn, torch_fn, value, where, device):
    torch = pytest.importorskip("torch")
    x = np.linspace(-2.0, 2.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    x.flat[_position(shape, where)] = value
    got = np.asarray(fn(ck.tensor(x, device=device), device).numpy())
    want = torch_fn(torch.tensor(x), torch).numpy()
    assert got.shape == want.shape
    for mask, expected, kind in zip(_pattern(got), _pattern(want), ("NaN", "+inf", "-inf")):
        np.testing.assert_array_equal(mask, expected, err_msg=f"{name}: where the output is {kind}")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_square_overflow_stays_in_its_window(dtype, device):
    """A finite input whose square overflows makes the sums of the windows holding it inf: the
    outputs of those 5 channels are x / inf = 0 (the value itself too), the others untouched."""
    torch = pytest.importorskip("torch")
    x = np.linspace(-1.0, 1.0, 40 * 3, dtype=dtype).reshape(1, 40, 3)
    x[0, 20, 1] = np.finfo(dtype).max / 4
    got = F.local_response_norm(ck.tensor(x, device=device), 5).numpy()
    want = torch.nn.functional.local_response_norm(torch.tensor(x), 5).numpy()
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.flatnonzero(got[0, :, 1] == 0).tolist() == [18, 19, 20, 21, 22]


# ---- huge strides (issue 15): a stride past the padded input gives the one-window output that
# PyTorch gives (as with stride 10**6, which PyTorch's pools also accept), forward and backward,
# never a crash or a huge allocation; beyond int64 too.

HUGE = [10**6, 2**40, 2**70]

STRIDE_OPS = [
    ("conv2d", (1, 2, 5, 5), lambda x, s, d: F.conv2d(x, _on(_weights(3, 2, 2, 2), d), stride=s, padding=1),
     lambda t, torch: torch.nn.functional.conv2d(t, torch.tensor(_weights(3, 2, 2, 2)), stride=10**6, padding=1)),
    ("conv2d-one-axis", (1, 2, 5, 5),
     lambda x, s, d: F.conv2d(x, _on(_weights(3, 2, 2, 2), d), stride=(1, s), algorithm="direct"),
     lambda t, torch: torch.nn.functional.conv2d(t, torch.tensor(_weights(3, 2, 2, 2)), stride=(1, 10**6))),
    ("conv1d", (1, 2, 5), lambda x, s, d: F.conv1d(x, _on(_weights(3, 2, 2), d), stride=s),
     lambda t, torch: torch.nn.functional.conv1d(t, torch.tensor(_weights(3, 2, 2)), stride=10**6)),
    ("conv3d", (1, 1, 3, 3, 3), lambda x, s, d: F.conv3d(x, _on(_weights(2, 1, 2, 2, 2), d), stride=s),
     lambda t, torch: torch.nn.functional.conv3d(t, torch.tensor(_weights(2, 1, 2, 2, 2)), stride=10**6)),
    ("conv_transpose2d", (1, 2, 1, 1), lambda x, s, d: F.conv_transpose2d(x, _on(_weights(2, 3, 3, 3), d), stride=s),
     lambda t, torch: torch.nn.functional.conv_transpose2d(t, torch.tensor(_weights(2, 3, 3, 3)), stride=10**6)),
    ("max_pool2d", (1, 2, 5, 5), lambda x, s, d: F.max_pool2d(x, 2, stride=s, padding=1),
     lambda t, torch: torch.nn.functional.max_pool2d(t, 2, stride=10**6, padding=1)),
    ("max_pool2d-ceil", (1, 2, 5, 5), lambda x, s, d: F.max_pool2d(x, 3, stride=s, ceil_mode=True),
     lambda t, torch: torch.nn.functional.max_pool2d(t, 3, stride=10**6, ceil_mode=True)),
    ("max_pool1d", (1, 2, 5), lambda x, s, d: F.max_pool1d(x, 2, stride=s),
     lambda t, torch: torch.nn.functional.max_pool1d(t, 2, stride=10**6)),
    ("max_pool3d", (1, 1, 3, 3, 3), lambda x, s, d: F.max_pool3d(x, 2, stride=s),
     lambda t, torch: torch.nn.functional.max_pool3d(t, 2, stride=10**6)),
    ("avg_pool2d", (1, 2, 5, 5), lambda x, s, d: F.avg_pool2d(x, 3, stride=s, padding=1),
     lambda t, torch: torch.nn.functional.avg_pool2d(t, 3, stride=10**6, padding=1)),
    ("avg_pool2d-ceil", (1, 2, 5, 5), lambda x, s, d: F.avg_pool2d(x, 2, stride=s, padding=1, ceil_mode=True,
                                                                  count_include_pad=False),
     lambda t, torch: torch.nn.functional.avg_pool2d(t, 2, stride=10**6, padding=1, ceil_mode=True,
                                                     count_include_pad=False)),
]


@pytest.mark.parametrize("stride", HUGE, ids=["1e6", "2**40", "2**70"])
@pytest.mark.parametrize("name,shape,fn,torch_fn", STRIDE_OPS, ids=[o[0] for o in STRIDE_OPS])
def test_huge_stride_gives_one_window(name, shape, fn, torch_fn, stride, device):
    torch = pytest.importorskip("torch")
    x = np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    xt = ck.tensor(x, device=device, requires_grad=True)
    y = fn(xt, stride, device)
    g = _weights(*y.shape)
    y.backward(ck.tensor(g, device=device))
    t = torch.tensor(x, requires_grad=True)
    want = torch_fn(t, torch)
    want.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_huge_stride_keeps_the_geometry_small():
    g = ck.conv_geometry((1, 2, 5, 5), (3, 2, 2, 2), stride=(2**70, 2), padding=1)
    assert g.out_size == (1, 3) and g.stride == (7, 2)
    g = ck.conv_geometry((1, 2, 5, 5), (3, 2, 1, 1), dilation=2**70)
    assert g.dilation == (1, 1) and g.out_size == (5, 5)


# ---- zero-size tensors (issue 15): an empty batch (and, where PyTorch takes them, empty
# channels or features) gives PyTorch's empty result, forward and backward, with zero gradients
# for the weights; nothing is launched.

def _zero_size_rows():
    w2, w3, wt = _weights(2, 3, 3, 3), _weights(2, 3, 2, 2, 2), _weights(3, 2, 2, 2)
    nnf = "torch.nn.functional"
    return [
        ("conv2d-N0", (0, 3, 5, 5), (w2,), lambda x, w: F.conv2d(x, w, padding=1), f"{nnf}.conv2d(x, w, padding=1)"),
        ("conv2d-direct-N0", (0, 3, 5, 5), (w2,), lambda x, w: F.conv2d(x, w, stride=2, algorithm="direct"),
         f"{nnf}.conv2d(x, w, stride=2)"),
        ("conv2d-im2col-bias-N0", (0, 3, 5, 5), (w2, _weights(2)),
         lambda x, w, b: F.conv2d(x, w, b, algorithm="im2col"), f"{nnf}.conv2d(x, w, b)"),
        ("conv1d-N0", (0, 3, 6), (_weights(2, 3, 3),), lambda x, w: F.conv1d(x, w), f"{nnf}.conv1d(x, w)"),
        ("conv3d-N0", (0, 3, 3, 3, 3), (w3,), lambda x, w: F.conv3d(x, w), f"{nnf}.conv3d(x, w)"),
        ("conv_transpose2d-N0", (0, 3, 3, 3), (wt,), lambda x, w: F.conv_transpose2d(x, w, stride=2),
         f"{nnf}.conv_transpose2d(x, w, stride=2)"),
        ("max_pool2d-N0", (0, 3, 5, 5), (), lambda x: F.max_pool2d(x, 2), f"{nnf}.max_pool2d(x, 2)"),
        ("max_pool1d-N0", (0, 3, 5), (), lambda x: F.max_pool1d(x, 2, 1, 1), f"{nnf}.max_pool1d(x, 2, 1, 1)"),
        ("max_pool3d-N0", (0, 2, 4, 4, 4), (), lambda x: F.max_pool3d(x, 2), f"{nnf}.max_pool3d(x, 2)"),
        ("avg_pool2d-N0", (0, 3, 5, 5), (), lambda x: F.avg_pool2d(x, 3, 2, 1), f"{nnf}.avg_pool2d(x, 3, 2, 1)"),
        ("adaptive_avg_pool2d-N0", (0, 3, 5, 5), (), lambda x: F.adaptive_avg_pool2d(x, 2),
         f"{nnf}.adaptive_avg_pool2d(x, 2)"),
        ("batch_norm-N0", (0, 3, 5, 5), (_weights(3), _weights(3)),
         lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
         f"{nnf}.batch_norm(x, None, None, w, b, training=True)"),
        ("batch_norm-C0", (2, 0, 5), (), lambda x: F.batch_norm(x, None, None, training=True),
         f"{nnf}.batch_norm(x, None, None, training=True)"),
        ("batch_norm-L0", (2, 3, 0), (_weights(3),), lambda x, w: F.batch_norm(x, None, None, w, training=True),
         f"{nnf}.batch_norm(x, None, None, w, training=True)"),
        ("local_response_norm-N0", (0, 4, 2, 2), (), lambda x: F.local_response_norm(x, 3),
         f"{nnf}.local_response_norm(x, 3)"),
        ("local_response_norm-C0", (2, 0, 2, 2), (), lambda x: F.local_response_norm(x, 3),
         f"{nnf}.local_response_norm(x, 3)"),
        ("lrn-N0", (0, 4, 3), (), lambda x: F.lrn(x, 1), f"{nnf}.local_response_norm(x, 3, alpha=3.0, beta=0.5)"),
        ("linear-N0", (0, 3), (_weights(4, 3), _weights(4)), lambda x, w, b: F.linear(x, w, b),
         f"{nnf}.linear(x, w, b)"),
        ("relu-N0", (0, 3), (), lambda x: F.relu(x), "torch.relu(x)"),
        ("tanh-N0", (0, 3), (), lambda x: F.tanh(x), "torch.tanh(x)"),
        ("sigmoid-N0", (0, 3), (), lambda x: F.sigmoid(x), "torch.sigmoid(x)"),
        ("softmax-N0", (0, 3), (), lambda x: F.softmax(x, 1), "torch.softmax(x, 1)"),
        ("log_softmax-N0", (0, 3), (), lambda x: F.log_softmax(x, 1), "torch.log_softmax(x, 1)"),
        ("cross_entropy-N0", (0, 3), (), lambda x: F.cross_entropy(x, _on(np.zeros(0, np.int64), x.device)),
         f"{nnf}.cross_entropy(x, torch.zeros(0, dtype=torch.long))"),
        ("cross_entropy-sum-N0", (0, 3), (),
         lambda x: F.cross_entropy(x, _on(np.zeros(0, np.int64), x.device), reduction="sum"),
         f"{nnf}.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction='sum')"),
        ("bias_add-N0", (0, 3, 2), (_weights(3),), lambda x, w: F.bias_add(x, w), "x + w[None, :, None]"),
        ("dropout-N0", (0, 3), (), lambda x: F.dropout(x), f"{nnf}.dropout(x)"),
        ("flatten-N0", (0, 3, 2), (), lambda x: F.flatten(x), "torch.flatten(x, 1)"),
        ("mean-empty", (0, 3), (), lambda x: x.mean(), "x.mean()"),
        ("sum-empty", (0, 3), (), lambda x: x.sum(), "x.sum()"),
    ]


ZERO_SIZE = _zero_size_rows()


@pytest.mark.parametrize("name,shape,params,fn,torch_expr", ZERO_SIZE, ids=[r[0] for r in ZERO_SIZE])
def test_zero_size_input_gives_pytorchs_result(name, shape, params, fn, torch_expr, device):
    torch = pytest.importorskip("torch")
    """``torch_expr`` names the input x and the parameters w, b (in that order)."""
    on_device = [ck.tensor(p, device=device, requires_grad=True) for p in params]
    x = ck.tensor(np.zeros(shape, np.float32), device=device, requires_grad=True)
    y = fn(x, *on_device)
    y.backward(ck.tensor(np.ones(y.shape, np.float32), device=device) if y.ndim else None)
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    tx = torch.zeros(shape, requires_grad=True)
    want = eval(torch_expr, dict(zip(("w", "b"), tp), x=tx, torch=torch))
    want.backward(torch.ones(want.shape))
    assert y.shape == tuple(want.shape) and y.device == device
    np.testing.assert_array_equal(y.numpy(), want.detach().numpy())
    assert x.grad.shape == tuple(tx.grad.shape)
    for p, t in zip(on_device, tp):
        np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())


def test_zero_size_where_pytorch_refuses_gives_the_empty_result(device):
    """PyTorch's max/avg pools refuse C = 0 (and its adaptive pool's backward does); convkern's
    pools take an empty batch or channel dimension alike and give the empty output of the
    output-size rule, and an empty input gradient."""
    x = ck.tensor(np.zeros((2, 0, 5, 5), np.float32), device=device, requires_grad=True)
    pools = [(lambda: F.max_pool2d(x, 2), (2, 0, 2, 2)), (lambda: F.avg_pool2d(x, 3, 2, 1), (2, 0, 3, 3)),
             (lambda: F.max_pool2d(x, 2, return_indices=True)[1], (2, 0, 2, 2)),
             (lambda: F.adaptive_avg_pool2d(x, 3), (2, 0, 3, 3))]
    for pool, shape in pools:
        y = pool()
        assert y.shape == shape
        if y.requires_grad:
            x.grad = None
            y.sum().backward()
            assert x.grad.shape == (2, 0, 5, 5)


def test_empty_batch_leaves_the_running_statistics(device):
    rm = ck.tensor(np.full(3, 0.5, np.float32), device=device)
    rv = ck.tensor(np.full(3, 2.0, np.float32), device=device)
    y = F.batch_norm(ck.tensor(np.zeros((0, 3, 2, 2), np.float32), device=device), rm, rv, training=True)
    assert y.shape == (0, 3, 2, 2)
    np.testing.assert_array_equal(rm.numpy(), 0.5)
    np.testing.assert_array_equal(rv.numpy(), 2.0)


ZERO_SIZE_ERRORS = [
    ("conv2d-C0", lambda: F.conv2d(f32(1, 0, 5, 5), f32(2, 0, 3, 3)), ValueError,
     r"conv2d: input \(1, 0, 5, 5\) and weight \(2, 0, 3, 3\) must have no zero-size dimension other than the batch"),
    ("conv2d-H0", lambda: F.conv2d(f32(1, 3, 0, 5), f32(2, 3, 1, 1)), ValueError,
     r"conv2d: input .* must have no zero-size dimension other than the batch"),
    ("conv2d-K0", lambda: F.conv2d(X(), f32(0, 3, 3, 3)), ValueError, r"conv2d: input .* and weight \(0, 3, 3, 3\)"),
    ("max_pool2d-H0", lambda: F.max_pool2d(f32(1, 1, 0, 5), 2), ValueError,
     r"max_pool2d: input must have no zero-size dimension other than the batch and channel dimension"),
    ("max_pool_with_argmax-C0", lambda: F.max_pool_with_argmax(f32(1, 4, 4, 0), 2, 2, "SAME"), ValueError,
     r"max_pool_with_argmax: input must have no zero-size dimension other than the batch dimension"),
    ("subsample2d-C0", lambda: F.subsample2d(f32(1, 0, 4, 4), f32(0), None), ValueError,
     r"subsample2d: input must have no zero-size dimension other than the batch dimension"),
]


@pytest.mark.parametrize("fn,exc,pattern", [r[1:] for r in ZERO_SIZE_ERRORS], ids=[r[0] for r in ZERO_SIZE_ERRORS])
def test_zero_size_that_has_no_result_raises_clearly(fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()
