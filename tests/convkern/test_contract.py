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
    ("conv2d-int", lambda: F.conv2d(i64(2, 3, 5, 5), i64(4, 3, 3, 3)), TypeError, rf"conv2d: input {NOT_FLOAT}"),
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
     r"conv2d: input: expected a float32, float64 or integer array, got dtype float16"),
    # ---- the rest of the convolution family (more in tests/convkern/test_conv.py)
    ("conv1d-rank", lambda: F.conv1d(X(), f32(4, 3, 3)), ValueError, r"conv1d: input must be 3-D \(N, C, L\)"),
    ("conv1d-dtype", lambda: F.conv1d(f32(2, 3, 5), f64(4, 3, 3)), TypeError, r"conv1d: weight has dtype float64"),
    ("conv1d-int", lambda: F.conv1d(i64(2, 3, 5), i64(4, 3, 3)), TypeError, rf"conv1d: input {NOT_FLOAT}"),
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
    ("max_pool2d-int", lambda: F.max_pool2d(i64(2, 3, 5, 5), 2), TypeError, rf"max_pool2d: input {NOT_FLOAT}"),
    ("max_pool2d-type", lambda: F.max_pool2d(3.0, 2), TypeError, rf"max_pool2d: input {NOT_ARRAY}"),
    ("max_pool2d-kernel_size", lambda: F.max_pool2d(X(), None), TypeError,
     r"max_pool2d: kernel_size must be an int or a pair of ints, got None"),
    ("max_pool2d-int-cuda", lambda: F.max_pool2d(on_cuda(i64(1, 1, 2, 2)), 2), TypeError,
     rf"max_pool2d: input {NOT_FLOAT}"),
    ("avg_pool2d-rank", lambda: F.avg_pool2d(f32(5, 5), 2), ValueError, r"avg_pool2d: input must be 4-D"),
    ("avg_pool2d-int", lambda: F.avg_pool2d(i64(2, 3, 5, 5), 2), TypeError, rf"avg_pool2d: input {NOT_FLOAT}"),
    ("avg_pool2d-type", lambda: F.avg_pool2d("x", 2), TypeError, rf"avg_pool2d: input {NOT_ARRAY}"),
    ("adaptive_avg_pool2d-rank", lambda: F.adaptive_avg_pool2d(f32(5, 5), 1), ValueError,
     r"adaptive_avg_pool2d: input must be 4-D"),
    ("adaptive_avg_pool2d-int", lambda: F.adaptive_avg_pool2d(i64(2, 3, 5, 5), 1), TypeError,
     rf"adaptive_avg_pool2d: input {NOT_FLOAT}"),
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
    ("max_pool1d-int", lambda: F.max_pool1d(i64(2, 3, 5), 2), TypeError, rf"max_pool1d: input {NOT_FLOAT}"),
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
    ("avg_pool3d-int", lambda: F.avg_pool3d(i64(1, 2, 4, 4, 4), 2), TypeError, rf"avg_pool3d: input {NOT_FLOAT}"),
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
     rf"max_pool_with_argmax: input {NOT_FLOAT}"),
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
     rf"max_unpool2d: input {NOT_FLOAT}"),
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
     rf"subsample2d: input {NOT_FLOAT}"),
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
    ("linear-int", lambda: F.linear(i64(2, 3), i64(4, 3)), TypeError, rf"linear: input {NOT_FLOAT}"),
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
    ("relu-int", lambda: F.relu(i64(3)), TypeError, rf"relu: input {NOT_FLOAT}"),
    ("relu-type", lambda: F.relu(3.0), TypeError, rf"relu: input {NOT_ARRAY}.*got float"),
    ("relu-int-cuda", lambda: F.relu(on_cuda(i64(3))), TypeError, rf"relu: input {NOT_FLOAT}"),
    ("tanh-int", lambda: F.tanh(i64(3)), TypeError, rf"tanh: input {NOT_FLOAT}"),
    ("tanh-bool", lambda: F.tanh(np.zeros(3, bool)), TypeError, r"tanh: input must be float32 or float64, got bool"),
    ("tanh-type", lambda: F.tanh(None), TypeError, rf"tanh: input {NOT_ARRAY}"),
    ("sigmoid-int", lambda: F.sigmoid(i64(3)), TypeError, rf"sigmoid: input {NOT_FLOAT}"),
    ("sigmoid-type", lambda: F.sigmoid("x"), TypeError, rf"sigmoid: input {NOT_ARRAY}.*got str"),
    ("sigmoid-complex", lambda: F.sigmoid(np.zeros(3, complex)), TypeError,
     r"sigmoid: input: expected a float32, float64 or integer array, got dtype complex128"),
    ("dropout-int", lambda: F.dropout(i64(3)), TypeError, rf"dropout: input {NOT_FLOAT}"),
    ("dropout-type", lambda: F.dropout([1.0]), TypeError, rf"dropout: input {NOT_ARRAY}"),
    ("dropout-p", lambda: F.dropout(f32(3), p=1.0), ValueError, r"dropout: p must be in \[0, 1\), got 1.0"),
    ("dropout-p-type", lambda: F.dropout(f32(3), p="0.5"), TypeError, r"dropout: p must be a number"),
    ("softmax-int", lambda: F.softmax(i64(2, 3), 1), TypeError, rf"softmax: input {NOT_FLOAT}"),
    ("softmax-dim", lambda: F.softmax(f32(2, 3), 2), ValueError,
     r"softmax: dim out of range: expected one of \[-2, 1\] for a 2-D input, got 2"),
    ("softmax-dim-type", lambda: F.softmax(f32(2, 3), None), TypeError, r"softmax: dim must be an int, got None"),
    ("softmax-type", lambda: F.softmax((1.0, 2.0), 0), TypeError, rf"softmax: input {NOT_ARRAY}"),
    ("log_softmax-int", lambda: F.log_softmax(i64(2, 3), 1), TypeError, rf"log_softmax: input {NOT_FLOAT}"),
    ("log_softmax-dim", lambda: F.log_softmax(f32(2, 3), -3), ValueError, r"log_softmax: dim out of range"),
    ("flatten-start_dim", lambda: F.flatten(X(), 5), ValueError,
     r"flatten: start_dim out of range: expected one of \[-4, 3\] for a 4-D input, got 5"),
    ("flatten-order", lambda: F.flatten(X(), 3, 1), ValueError,
     r"flatten: start_dim \(3\) must not come after end_dim \(1\)"),
    ("flatten-type", lambda: F.flatten({}, 1), TypeError, rf"flatten: input {NOT_ARRAY}.*got dict"),
    # ---- cross_entropy
    ("cross_entropy-rank", lambda: F.cross_entropy(f32(2, 3, 4), i64(2)), ValueError,
     r"cross_entropy: input must be 2-D logits \(N, C\)"),
    ("cross_entropy-int", lambda: F.cross_entropy(i64(2, 3), i64(2)), TypeError, rf"cross_entropy: input {NOT_FLOAT}"),
    ("cross_entropy-nan-target", lambda: F.cross_entropy(f32(2, 3), np.array([0, np.nan])), TypeError,
     r"cross_entropy: target must hold integer class indices .* got dtype float64"),
    ("cross_entropy-float-target", lambda: F.cross_entropy(f32(2, 3), np.array([0.0, 1.0], np.float32)), TypeError,
     r"cross_entropy: target must hold integer class indices .* got dtype float32"),
    ("cross_entropy-target-range", lambda: F.cross_entropy(f32(2, 3), np.array([0, 3])), ValueError,
     r"cross_entropy: target values must be class indices in \[0, 2\] \(C = 3\) .* got target\[1\] = 3"),
    ("cross_entropy-target-negative", lambda: F.cross_entropy(f32(2, 3), np.array([-1, 0])), ValueError,
     r"cross_entropy: target values must be class indices .* got target\[0\] = -1"),
    ("cross_entropy-target-range-cuda", lambda: F.cross_entropy(on_cuda(f32(2, 3)), on_cuda(np.array([0, 7]))),
     ValueError, r"cross_entropy: target values must be class indices .* got target\[1\] = 7"),
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
     rf"batch_norm: input {NOT_FLOAT}"),
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
    ("bias_add-int", lambda: F.bias_add(i64(2, 3), i64(3)), TypeError, rf"bias_add: input {NOT_FLOAT}"),
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
    ("cat-int", lambda: ck.cat([i64(2, 3), i64(2, 3)]), TypeError, rf"cat: tensors\[0\] {NOT_FLOAT}"),
    ("cat-device", lambda: ck.cat([f32(2, 3), on_cuda(f32(2, 3))]), ValueError,
     r"cat: tensors\[1\] is on device 'cuda' but tensors\[0\] is on 'cpu'"),
    ("cat-element-type", lambda: ck.cat([f32(2, 3), 3]), TypeError, rf"cat: tensors\[1\] {NOT_ARRAY}.*got int"),
    ("cat-dim", lambda: ck.cat([f32(2, 3)], dim=2), ValueError, r"cat: dim must be in \[-2, 1\] for 2-D tensors"),
    ("cat-dim-type", lambda: ck.cat([f32(2, 3)], dim=0.0), TypeError, r"cat: dim must be an int"),
    # ---- tensor
    ("tensor-str", lambda: ck.tensor("abc"), TypeError, r"data: expected a float32, float64 or integer array"),
    ("tensor-object", lambda: ck.tensor(object()), TypeError, r"data: expected .* got dtype object"),
    ("tensor-float16", lambda: ck.tensor(np.zeros(3, np.float16)), TypeError, r"data: expected .* got dtype float16"),
    ("tensor-ragged", lambda: ck.tensor([[1.0, 2.0], [3.0]]), ValueError, r"data: cannot make a numeric array"),
    ("tensor-dtype", lambda: ck.tensor(f32(3), dtype="foo"), TypeError, r"dtype: expected a NumPy dtype"),
    ("tensor-device", lambda: ck.tensor(f32(3), device="tpu"), ValueError,
     r"device must be 'cpu' or 'cuda', got 'tpu'"),
    ("tensor-requires_grad-int", lambda: ck.tensor(i64(3), requires_grad=True), TypeError,
     r"requires_grad=True needs a float32 or float64 tensor, got int64"),
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
    ("nn.Conv2d-int", lambda: nn.Conv2d(3, 4, 3)(i64(2, 3, 5, 5)), TypeError, rf"conv2d: input {NOT_FLOAT}"),
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
    ("nn.Linear-int", lambda: nn.Linear(3, 4)(i64(2, 3)), TypeError, rf"linear: input {NOT_FLOAT}"),
    ("nn.Linear-device", lambda: nn.Linear(3, 4, device="cuda")(f32(2, 3)), ValueError,
     r"linear: weight is on device 'cuda' but input is on 'cpu'"),
    ("nn.Linear-in_features", lambda: nn.Linear(0, 4), ValueError, r"Linear: in_features must be a positive int"),
    ("nn.MaxPool2d-rank", lambda: nn.MaxPool2d(2)(f32(3, 5, 5)), ValueError, r"max_pool2d: input must be 4-D"),
    ("nn.MaxPool2d-int", lambda: nn.MaxPool2d(2)(i64(2, 3, 4, 4)), TypeError, rf"max_pool2d: input {NOT_FLOAT}"),
    ("nn.MaxPool2d-argument", lambda: nn.MaxPool2d(2, foo=1), TypeError,
     r"MaxPool2d: unexpected or repeated argument 'foo'"),
    ("nn.AvgPool2d-rank", lambda: nn.AvgPool2d(2)(f32(5, 5)), ValueError, r"avg_pool2d: input must be 4-D"),
    ("nn.AvgPool2d-int", lambda: nn.AvgPool2d(2)(i64(2, 3, 4, 4)), TypeError, rf"avg_pool2d: input {NOT_FLOAT}"),
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
    ("nn.AvgPool1d-int", lambda: nn.AvgPool1d(2)(i64(2, 3, 4)), TypeError, rf"avg_pool1d: input {NOT_FLOAT}"),
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
    ("nn.BatchNorm2d-int", lambda: nn.BatchNorm2d(3)(i64(2, 3, 4, 4)), TypeError, rf"batch_norm: input {NOT_FLOAT}"),
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
    ("nn.SyncBatchNorm-int", lambda: nn.SyncBatchNorm(3)(i64(2, 3, 4)), TypeError, rf"batch_norm: input {NOT_FLOAT}"),
    ("nn.Dropout-p", lambda: nn.Dropout(1.5), ValueError, r"Dropout: p must be a number in \[0, 1\)"),
    ("nn.Dropout-int", lambda: nn.Dropout()(i64(3)), TypeError, rf"dropout: input {NOT_FLOAT}"),
    ("nn.Flatten-type", lambda: nn.Flatten()(3), TypeError, rf"flatten: input {NOT_ARRAY}"),
    ("nn.Flatten-dim", lambda: nn.Flatten(5)(X()), ValueError, r"flatten: start_dim out of range"),
    ("nn.ReLU-int", lambda: nn.ReLU()(i64(3)), TypeError, rf"relu: input {NOT_FLOAT}"),
    ("nn.Tanh-type", lambda: nn.Tanh()([1.0]), TypeError, rf"tanh: input {NOT_ARRAY}"),
    ("nn.Sigmoid-int", lambda: nn.Sigmoid()(i64(3)), TypeError, rf"sigmoid: input {NOT_FLOAT}"),
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
     r"to: dtype must be float32 or float64, got int32"),
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
    with pytest.raises(TypeError, match="input must be float32 or float64"):
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
