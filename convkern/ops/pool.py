"""2-D pooling: max pooling with argmax, average and adaptive average pooling, max unpooling,
converters to and from TensorFlow's ``max_pool_with_argmax`` index layout, and LeNet-5's
trainable subsampling."""
import numbers

import numpy as np

from convkern import backend
from convkern.autograd import Function, tensor
from convkern.kernels import pool
from convkern.kernels.shapes import PoolGeometry, window_out_size
from convkern.ops.common import as_tensor, check_float, check_rank, check_same, int_pair
from convkern.ops.conv import conv2d


class MaxPool2d(Function):
    """y = max over each window; the argmax goes to ``params["indices"]`` and routes dy back."""

    def forward(self, x):
        g, indices = self.params["geometry"], self.params["indices"]
        y = backend.empty((g.N, g.C, g.P, g.Q), x.dtype, self.device)
        pool.maxpool2d_fwd(x, y, indices, g)
        if self.needs_input_grad[0]:
            self.save_for_backward(indices)
        return y

    def backward(self, dy):
        g = self.params["geometry"]
        (indices,) = self.saved
        dx = backend.empty((g.N, g.C, g.H, g.W), dy.dtype, self.device)
        pool.maxpool2d_bwd(dy, indices, dx, g)
        return (dx,)


class AvgPool2d(Function):
    """y = mean over each window (divisor per ``count_include_pad``)."""

    def forward(self, x):
        g = self.params["geometry"]
        y = backend.empty((g.N, g.C, g.P, g.Q), x.dtype, self.device)
        pool.avgpool2d_fwd(x, y, g, self.params["count_include_pad"])
        return y

    def backward(self, dy):
        g = self.params["geometry"]
        dx = backend.empty((g.N, g.C, g.H, g.W), dy.dtype, self.device)
        pool.avgpool2d_bwd(dy, dx, g, self.params["count_include_pad"])
        return (dx,)


class AdaptiveAvgPool2d(Function):
    """y = mean over PyTorch's adaptive windows."""

    def forward(self, x):
        self.in_shape = x.shape
        y = backend.empty(x.shape[:2] + tuple(self.params["output_size"]), x.dtype, self.device)
        pool.adaptive_avgpool2d_fwd(x, y)
        return y

    def backward(self, dy):
        dx = backend.empty(self.in_shape, dy.dtype, self.device)
        pool.adaptive_avgpool2d_bwd(dy, dx)
        return (dx,)


class MaxUnpool2d(Function):
    """out = zeros with x written at the flat plane positions ``indices``; dx = dy at indices."""

    def forward(self, x, indices):
        out = backend.empty(x.shape[:2] + tuple(self.params["output_size"]), x.dtype, self.device)
        pool.maxunpool2d_fwd(x, indices, out)
        if self.needs_input_grad[0]:
            self.save_for_backward(indices)
        return out

    def backward(self, dy):
        (indices,) = self.saved
        dx = backend.empty(indices.shape, dy.dtype, self.device)
        pool.maxunpool2d_bwd(dy, indices, dx)
        return dx, None


def _check_bool(value, name, op):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return bool(value)


def _float_input(input, op):
    x = as_tensor(input, "input", op)
    check_rank(x, 4, "input", "(N, C, H, W)", op)
    check_float(x, "input", op)
    if min(x.shape) < 1:
        raise ValueError(f"{op}: input must have no zero-size dimension, got shape {x.shape}")
    return x


def _no_empty_window(size, out, kernel, stride, pad, dilation, axis, op):
    """Reject a window that lies entirely in the padding (possible only with dilation > 1)."""
    for i in range(out):
        start = i * stride - pad
        if start >= 0:
            return
        first = -start // dilation if -start % dilation == 0 else -start // dilation + 1
        if first >= kernel or start + first * dilation >= size:
            raise ValueError(f"{op}: window {i} along {axis} covers no input element (input size {size}, "
                             f"kernel_size {kernel}, dilation {dilation}, padding {pad}); use less padding "
                             "or dilation")


def pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, op):
    """Validate pooling arguments against the input shape and return the PoolGeometry.

    ``stride=None`` means ``kernel_size``; padding must be at most half the kernel size; the
    output size per axis is ``window_out_size`` (floor, or ceil with the last window starting
    inside the input or the left padding).
    """
    N, C, H, W = x_shape
    R, S = int_pair(kernel_size, "kernel_size", op, 1)
    sh, sw = (R, S) if stride is None else int_pair(stride, "stride", op, 1)
    ph, pw = int_pair(padding, "padding", op, 0)
    dh, dw = int_pair(dilation, "dilation", op, 1)
    ceil_mode = _check_bool(ceil_mode, "ceil_mode", op)
    if ph > R // 2 or pw > S // 2:
        raise ValueError(f"{op}: padding should be at most half of kernel_size, got padding=({ph}, {pw}) "
                         f"and kernel_size=({R}, {S})")
    P = window_out_size(H, R, sh, ph, ph, dh, ceil_mode)
    Q = window_out_size(W, S, sw, pw, pw, dw, ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: output size is too small: input {H}x{W} with kernel_size ({R}, {S}), "
                         f"stride ({sh}, {sw}), padding ({ph}, {pw}), dilation ({dh}, {dw}) gives {P}x{Q}")
    _no_empty_window(H, P, R, sh, ph, dh, "H", op)
    _no_empty_window(W, Q, S, sw, pw, dw, "W", op)
    return PoolGeometry(N, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, NCHW, PyTorch's semantics.

    ``y[n,c,p,q] = max_{r,s} x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw]`` over the window
    positions inside the input (padding is never selected). Output size per axis:
    ``P = floor((H + 2*ph - dh*(R-1) - 1 + (sh-1 if ceil_mode)) / sh) + 1``, minus one when
    ceil_mode puts the last window's start at or past ``H + ph``. Padding must be at most half
    the kernel size.

    With ``return_indices=True`` also returns the argmax as an int64 Tensor of the output's
    shape: the flat position ``h*W + w`` within each (n, c) plane; the first maximum in
    row-major window order wins (a NaN counts as larger than anything, the last NaN wins).
    The gradient flows to the argmax only (summed where windows share it).

    input (N, C, H, W); kernel_size, stride, padding, dilation: int or (h, w); stride
    defaults to kernel_size. Returns a Tensor (N, C, P, Q), or (values, indices).
    """
    op = "max_pool2d"
    x = _float_input(input, op)
    return_indices = _check_bool(return_indices, "return_indices", op)
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, op)
    indices = backend.empty((g.N, g.C, g.P, g.Q), np.int64, x.device)
    y = MaxPool2d.apply(x, geometry=g, indices=indices)
    return (y, tensor(indices)) if return_indices else y


def _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, op):
    x = _float_input(input, op)
    count_include_pad = _check_bool(count_include_pad, "count_include_pad", op)
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode, op)
    return AvgPool2d.apply(x, geometry=g, count_include_pad=count_include_pad)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """2-D average pooling, NCHW, PyTorch's semantics.

    ``y[n,c,p,q] = sum_{window ∩ input} x / divisor``, window rows ``p*sh - ph .. p*sh - ph + R - 1``
    (columns alike). The divisor is the window clipped to the padded input ``[-ph, H + ph)``
    (``count_include_pad=True``; only a ceil_mode window overhanging the padding is cut) or
    clipped to the input ``[0, H)`` (False), times the same count along W. Output size as in
    ``max_pool2d`` with dilation 1; padding must be at most half the kernel size.

    input (N, C, H, W); kernel_size, stride, padding: int or (h, w); stride defaults to
    kernel_size. Returns a Tensor (N, C, P, Q).
    """
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, "avg_pool2d")


def adaptive_avg_pool2d(input, output_size):
    """Adaptive 2-D average pooling, NCHW, PyTorch's windows.

    Output row p averages input rows ``floor(p*H/P) .. ceil((p+1)*H/P) - 1`` (columns alike),
    so windows can overlap or differ in size by one. ``output_size=1`` is global average
    pooling. output_size: int or (P, Q), an entry None keeps that input size.
    Returns a Tensor (N, C, P, Q).
    """
    op = "adaptive_avg_pool2d"
    x = _float_input(input, op)
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(x.shape[2 + i] if v is None else v for i, v in enumerate(output_size))
    P, Q = int_pair(output_size, "output_size", op, 1)
    return AdaptiveAvgPool2d.apply(x, output_size=(P, Q))


def _unpool_size(in_shape, kernel, stride, padding, output_size, op):
    default = [(in_shape[2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i] for i in range(2)]
    if output_size is None:
        size = default
    else:
        if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 4) or \
                not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in output_size):
            raise TypeError(f"{op}: output_size must be (H, W) or (N, C, H, W) ints, got {output_size!r}")
        size = [int(v) for v in output_size[-2:]]
        for i, axis in enumerate("HW"):
            if not default[i] - stride[i] < size[i] < default[i] + stride[i]:
                raise ValueError(f"{op}: output_size {axis}={size[i]} must lie strictly between "
                                 f"{default[i] - stride[i]} and {default[i] + stride[i]} (default {default[i]})")
    if min(size) < 1:
        raise ValueError(f"{op}: output size {size[0]}x{size[1]} is too small (kernel_size {tuple(kernel)}, "
                         f"stride {tuple(stride)}, padding {tuple(padding)})")
    return tuple(size)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of ``max_pool2d``, PyTorch's semantics: a zero (N, C, Ho, Wo) output with
    ``out[n, c].flat[indices[n, c, p, q]] = input[n, c, p, q]``.

    Default size per axis ``Ho = (H - 1)*sh - 2*ph + R``; ``output_size`` ((Ho, Wo) or
    (N, C, Ho, Wo)) may pick any size strictly within one stride of it. ``indices`` are
    ``max_pool2d``'s (int64, same shape as input), each in ``[0, Ho*Wo)``. Where indices repeat,
    CPU keeps the last (row-major) write, CUDA an arbitrary one (max_pool2d's repeats carry
    equal values). The gradient is ``dy`` read back at the indices. Returns a Tensor.
    """
    op = "max_unpool2d"
    x = _float_input(input, op)
    idx = as_tensor(indices, "indices", op)
    if idx.dtype != np.int64:
        raise TypeError(f"{op}: indices must be int64 (as returned by max_pool2d), got {idx.dtype}")
    if idx.shape != x.shape:
        raise ValueError(f"{op}: indices must have the input's shape {x.shape}, got {idx.shape}")
    if idx.device != x.device:
        raise ValueError(f"{op}: indices is on device {idx.device!r} but input is on {x.device!r}")
    kernel = int_pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None else int_pair(stride, "stride", op, 1)
    padding = int_pair(padding, "padding", op, 0)
    size = _unpool_size(x.shape, kernel, stride, padding, output_size, op)
    return MaxUnpool2d.apply(x, idx, output_size=size)


def _index_input(indices, input_shape, op):
    idx = as_tensor(indices, "indices", op)
    if idx.dtype != np.int64:
        raise TypeError(f"{op}: indices must be int64, got {idx.dtype}")
    check_rank(idx, 4, "indices", "(N, C, P, Q)" if op.endswith("_to_tf") else "(N, P, Q, C)", op)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4 or \
            not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in input_shape):
        raise ValueError(f"{op}: input_shape must be the (N, C, H, W) shape of max_pool2d's input, "
                         f"positive ints, got {input_shape!r}")
    return idx, idx.numpy(), tuple(int(v) for v in input_shape)


def max_pool_indices_to_tf(indices, input_shape, include_batch_in_index=True):
    """Convert ``max_pool2d`` indices to TensorFlow's ``max_pool_with_argmax`` layout.

    indices (N, C, P, Q) hold plane positions ``ih*W + iw``; input_shape is the (N, C, H, W)
    shape of the pooled input. Returns an int64 Tensor (N, P, Q, C) (NHWC, like TF's output)
    holding ``((n*H + ih)*W + iw)*C + c``, or ``(ih*W + iw)*C + c`` with
    ``include_batch_in_index=False``. Computed on the host (device data makes a round trip).
    """
    op = "max_pool_indices_to_tf"
    idx, a, (N, C, H, W) = _index_input(indices, input_shape, op)
    include_batch_in_index = _check_bool(include_batch_in_index, "include_batch_in_index", op)
    if idx.shape[:2] != (N, C):
        raise ValueError(f"{op}: indices (N, C, P, Q) = {idx.shape} do not match input_shape {(N, C, H, W)}")
    if a.size and (a.min() < 0 or a.max() >= H * W):
        raise ValueError(f"{op}: indices must lie in [0, H*W) = [0, {H * W})")
    c = np.arange(C, dtype=np.int64)[None, :, None, None]
    n = np.arange(N, dtype=np.int64)[:, None, None, None]
    flat = (n * (H * W) + a) * C + c if include_batch_in_index else a * C + c
    return tensor(np.ascontiguousarray(flat.transpose(0, 2, 3, 1)), device=idx.device)


def max_pool_indices_from_tf(indices, input_shape, include_batch_in_index=True):
    """Inverse of ``max_pool_indices_to_tf``: TensorFlow argmax indices (N, P, Q, C) of the
    input with NCHW shape ``input_shape`` back to plane positions ``ih*W + iw``, an int64
    Tensor (N, C, P, Q). Raises ValueError when an index does not belong to its own batch
    entry and channel."""
    op = "max_pool_indices_from_tf"
    idx, a, (N, C, H, W) = _index_input(indices, input_shape, op)
    include_batch_in_index = _check_bool(include_batch_in_index, "include_batch_in_index", op)
    if idx.shape[0] != N or idx.shape[3] != C:
        raise ValueError(f"{op}: indices (N, P, Q, C) = {idx.shape} do not match input_shape {(N, C, H, W)}")
    c = np.arange(C, dtype=np.int64)[None, None, None, :]
    n = np.arange(N, dtype=np.int64)[:, None, None, None]
    plane = a // C
    if include_batch_in_index:
        ok = (plane // (H * W)) == n
        plane = plane % (H * W)
    else:
        ok = plane < H * W
    if (a < 0).any() or (a % C != c).any() or not ok.all():
        raise ValueError(f"{op}: indices are not TensorFlow argmax positions of an input of NCHW shape "
                         f"{(N, C, H, W)} (include_batch_in_index={include_batch_in_index}): each must be "
                         "its own channel's (and batch entry's) element")
    return tensor(np.ascontiguousarray(plane.transpose(0, 3, 1, 2)), device=idx.device)


def subsample2d(input, weight, bias, kernel_size=2, stride=None):
    """LeNet-5's trainable subsampling (LeCun et al. 1998, layers S2 and S4), per channel c:

    ``y[n,c] = weight[c] * avg_pool2d(x, kernel_size, stride)[n,c] + bias[c]``.

    The paper adds the 2x2 inputs, multiplies by a trainable coefficient and adds a trainable
    bias; sum x coefficient = average x (4 * coefficient), so ``weight`` is 4 times the paper's
    coefficient (kernel_size * kernel_size times in general). The squashing function that
    follows in the paper is not part of this op. Composed from ``avg_pool2d`` and a depthwise
    1x1 ``conv2d`` (groups=C), so every input gets its gradient from those ops.

    input (N, C, H, W); weight (C,); bias (C,) or None. Returns a Tensor (N, C, P, Q).
    """
    op = "subsample2d"
    x = _float_input(input, op)
    C = x.shape[1]
    w = as_tensor(weight, "weight", op)
    check_same(w, x, "weight", "input", op)
    if w.shape != (C,):
        raise ValueError(f"{op}: weight must have shape (C,) = ({C},), got {w.shape}")
    b = None
    if bias is not None:
        b = as_tensor(bias, "bias", op)
        check_same(b, x, "bias", "input", op)
        if b.shape != (C,):
            raise ValueError(f"{op}: bias must have shape (C,) = ({C},), got {b.shape}")
    y = _avg_pool(x, kernel_size, stride, 0, False, True, op)
    return conv2d(y, w.reshape(C, 1, 1, 1), b, groups=C, algorithm="direct")
