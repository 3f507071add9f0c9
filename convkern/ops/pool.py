"""Pooling of spatial rank 1-3: max pooling with argmax, average and adaptive average pooling
(PyTorch's semantics, plus TensorFlow's "same" and explicit (before, after) padding),
TensorFlow's ``max_pool_with_argmax`` on NHWC, 2-D max unpooling, converters to and from
TensorFlow's argmax index layout, and LeNet-5's trainable subsampling."""
import numbers

import numpy as np

from convkern import backend
from convkern.autograd import Function, tensor
from convkern.kernels import pool
from convkern.kernels.shapes import PoolGeometry, same_padding
from convkern.ops.common import as_tensor, check_float, check_rank, check_same, int_pair, int_tuple
from convkern.ops.conv import conv2d

LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
AXES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
TUPLES = {1: "a tuple of 1 int", 2: "a pair of ints", 3: "3 ints"}
PAIRS = {1: "((left, right),)", 2: "((top, bottom), (left, right))", 3: "((front, back), (top, bottom), (left, right))"}


class MaxPool(Function):
    """y = max over each window (any rank); the argmax goes to ``params["indices"]`` and routes
    dy back (``params["global_index"]``: indices counted from the start of the input)."""

    def forward(self, x):
        g, indices = self.params["geometry"], self.params["indices"]
        y = backend.empty(g.y_shape, x.dtype, self.device)
        if y.size:
            pool.maxpool_fwd(x, y, indices, g, self.params["global_index"])
        if self.needs_input_grad[0]:
            self.save_for_backward(indices)
        return y

    def backward(self, dy):
        g = self.params["geometry"]
        (indices,) = self.saved
        dx = backend.empty(g.x_shape, dy.dtype, self.device)
        if dx.size:
            pool.maxpool_bwd(dy, indices, dx, g, self.params["global_index"])
        return (dx,)


class AvgPool(Function):
    """y = mean over each window (any rank; divisor per ``count_include_pad``)."""

    def forward(self, x):
        g = self.params["geometry"]
        y = backend.empty(g.y_shape, x.dtype, self.device)
        if y.size:
            pool.avgpool_fwd(x, y, g, self.params["count_include_pad"])
        return y

    def backward(self, dy):
        g = self.params["geometry"]
        dx = backend.empty(g.x_shape, dy.dtype, self.device)
        if dx.size:
            pool.avgpool_bwd(dy, dx, g, self.params["count_include_pad"])
        return (dx,)


class AdaptiveAvgPool(Function):
    """y = mean over PyTorch's adaptive windows (any rank)."""

    def forward(self, x):
        self.in_shape = x.shape
        y = backend.empty(x.shape[:2] + tuple(self.params["output_size"]), x.dtype, self.device)
        if y.size:
            pool.adaptive_avgpool_fwd(x, y)
        return y

    def backward(self, dy):
        dx = backend.empty(self.in_shape, dy.dtype, self.device)
        if dx.size:
            pool.adaptive_avgpool_bwd(dy, dx)
        return (dx,)


class MaxUnpool2d(Function):
    """out = zeros with x written at the flat plane positions ``indices``; dx = dy at indices."""

    def forward(self, x, indices):
        out = backend.empty(x.shape[:2] + tuple(self.params["output_size"]), x.dtype, self.device)
        if out.size:
            pool.maxunpool2d_fwd(x, indices, out)
        if self.needs_input_grad[0]:
            self.save_for_backward(indices)
        return out

    def backward(self, dy):
        (indices,) = self.saved
        dx = backend.empty(indices.shape, dy.dtype, self.device)
        if dx.size:
            pool.maxunpool2d_bwd(dy, indices, dx)
        return dx, None


def _check_bool(value, name, op):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return bool(value)


def _float_input(input, rank, op, layout=None, may_be_empty=2):
    """The float input (float16, float32 or float64) of ``rank`` spatial axes; its first
    ``may_be_empty`` dimensions (batch and channels) may be 0, giving an empty result, the
    windowed ones may not."""
    x = as_tensor(input, "input", op)
    check_rank(x, rank + 2, "input", layout or LAYOUTS[rank], op)
    check_float(x, "input", op, half=True)
    if min(x.shape[may_be_empty:]) < 1:
        what = "batch and channel" if may_be_empty == 2 else "batch"
        raise ValueError(f"{op}: input must have no zero-size dimension other than the {what} dimension, "
                         f"got shape {x.shape}")
    return x


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _explicit_pairs(padding, rank):
    """True when ``padding`` is ``rank`` (before, after) pairs of ints."""
    return (isinstance(padding, (tuple, list)) and len(padding) == rank and
            all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p) for p in padding))


def _padding_forms(rank):
    return f"an int, {TUPLES[rank]}, 'same', 'valid' or {PAIRS[rank]}"


def _padding(padding, size, kernel, stride, dilation, ceil_mode, op):
    """(pad_before, pad_after) per axis from any accepted form of ``padding`` (see max_pool2d)."""
    rank = len(size)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * rank, (0,) * rank
        if padding != "same":
            raise ValueError(f"{op}: padding must be {_padding_forms(rank)}, got {padding!r}")
        if ceil_mode:
            raise ValueError(f"{op}: ceil_mode=True cannot be combined with padding='same' (TensorFlow's rule "
                             "has no ceil mode; 'same' already rounds the output size up)")
        pads = [same_padding(*a) for a in zip(size, kernel, stride, dilation)]
        return tuple(p[0] for p in pads), tuple(p[1] for p in pads)
    if _explicit_pairs(padding, rank):
        if ceil_mode:
            raise ValueError(f"{op}: ceil_mode=True cannot be combined with explicit (before, after) padding "
                             "pairs (TensorFlow's explicit padding has no ceil mode)")
        for axis, (before, after), k in zip(AXES[rank], padding, kernel):
            if min(before, after) < 0:
                raise ValueError(f"{op}: padding must be >= 0, got {padding!r}")
            if max(before, after) > k - 1:
                raise ValueError(f"{op}: explicit padding along {axis} must be at most kernel_size - 1 = {k - 1} "
                                 f"per side (TensorFlow's limit), got ({before}, {after})")
        return tuple(int(p[0]) for p in padding), tuple(int(p[1]) for p in padding)
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        raise TypeError(f"{op}: explicit padding must be {rank} (before, after) pairs of ints, one per spatial "
                        f"axis ({', '.join(AXES[rank])}), got {padding!r}")
    try:
        pad = int_tuple(padding, rank, "padding", op, 0)
    except TypeError:
        raise TypeError(f"{op}: padding must be {_padding_forms(rank)}, got {padding!r}") from None
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise ValueError(f"{op}: padding should be at most half of kernel_size, got padding={pad} and "
                         f"kernel_size={kernel} (explicit (before, after) pairs allow up to kernel_size - 1)")
    return pad, pad


def _no_empty_window(size, out, kernel, stride, pad, dilation, axis, op):
    """Reject a window that lies entirely in the padding (possible only with dilation > 1). Only
    windows starting in the padding before can be empty: every other one starts inside the input."""
    for i in range(out):
        start = i * stride - pad
        if start >= 0:
            return
        first = -start // dilation if -start % dilation == 0 else -start // dilation + 1
        if first >= kernel or start + first * dilation >= size:
            raise ValueError(f"{op}: window {i} along {axis} covers no input element (input size {size}, "
                             f"kernel_size {kernel}, dilation {dilation}, padding {pad} before); use less "
                             "padding or dilation")


def _checked_geometry(N, C, size, kernel, stride, before, after, dilation, ceil_mode, axes, op):
    g = PoolGeometry.make(N, C, size, kernel, stride, before, after, dilation, ceil_mode)
    if min(g.out_size) < 1:
        pads = before if before == after else tuple(zip(before, after))
        raise ValueError(f"{op}: output size is too small: input {'x'.join(map(str, size))} with kernel_size "
                         f"{kernel}, stride {stride}, padding {pads}, dilation {dilation} gives "
                         f"{'x'.join(map(str, g.out_size))}")
    for a in zip(size, g.out_size, kernel, stride, before, dilation, axes):
        _no_empty_window(*a, op)
    return g


def pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, op):
    """Validate pooling arguments against the input shape (N, C, *size), spatial rank 1-3, and
    return the PoolGeometry.

    ``stride=None`` means ``kernel_size``. ``padding``: an int or one per axis (both sides, at
    most kernel_size // 2, PyTorch), "valid", "same" (TensorFlow's rule) or one (before, after)
    pair per axis (each at most kernel_size - 1, TensorFlow's explicit padding); ``ceil_mode``
    only with the first two. The output size per axis is ``window_out_size`` (floor, or ceil
    with the last window starting inside the input or the padding before).
    """
    rank = len(x_shape) - 2
    N, C, *size = x_shape
    kernel = int_tuple(kernel_size, rank, "kernel_size", op, 1)
    stride = kernel if stride is None else int_tuple(stride, rank, "stride", op, 1)
    dilation = int_tuple(dilation, rank, "dilation", op, 1)
    ceil_mode = _check_bool(ceil_mode, "ceil_mode", op)
    before, after = _padding(padding, size, kernel, stride, dilation, ceil_mode, op)
    return _checked_geometry(N, C, size, kernel, stride, before, after, dilation, ceil_mode, AXES[rank], op)


def _max_pool(op, rank, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    x = _float_input(input, rank, op)
    return_indices = _check_bool(return_indices, "return_indices", op)
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, op)
    indices = backend.empty(g.y_shape, np.int64, x.device)
    y = MaxPool.apply(x, geometry=g, indices=indices, global_index=False)
    return (y, tensor(indices)) if return_indices else y


def _avg_pool(op, rank, input, kernel_size, stride, padding, ceil_mode, count_include_pad):
    x = _float_input(input, rank, op)
    count_include_pad = _check_bool(count_include_pad, "count_include_pad", op)
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode, op)
    return AvgPool.apply(x, geometry=g, count_include_pad=count_include_pad)


def _adaptive_avg_pool(op, rank, input, output_size):
    x = _float_input(input, rank, op)
    if isinstance(output_size, (tuple, list)) and len(output_size) == rank:
        output_size = tuple(x.shape[2 + i] if v is None else v for i, v in enumerate(output_size))
    return AdaptiveAvgPool.apply(x, output_size=int_tuple(output_size, rank, "output_size", op, 1))


_POS = {1: ("l", "l"), 2: ("(h, w)", "h*W + w"), 3: ("(d, h, w)", "(d*H + h)*W + w")}

_PADDING_ARG = """padding: how far windows reach past the input (default 0):
            {ints}: that many on both sides of each axis, at most kernel_size // 2 (PyTorch);
            "valid": none;
            "same": TensorFlow's rule for any stride and dilation: ``out = ceil(in / stride)``,
            ``pad_total = max(0, (out - 1)*stride + dilation*(kernel - 1) + 1 - in)``,
            ``pad_before = pad_total // 2``, the extra one after (bottom/right);
            {pairs}: explicit pads before and after, each at most kernel_size - 1
            (TensorFlow's explicit padding)."""

_MAX_DOC = """{rank}-D max pooling, {layout}, PyTorch's semantics plus TensorFlow's padding rules.

    ``y[n, c, o] = max_t x[n, c, o*stride - pad_before + t*dilation]`` per output position ``o``
    over the window taps ``t`` (both tuples of {rank}) whose position lies inside the input:
    padding is never selected. Output size per axis:
    ``out = floor((in + pad_before + pad_after - dilation*(kernel - 1) - 1 + (stride - 1 if ceil_mode)) / stride) + 1``,
    minus one when ceil_mode puts the last window's start at or past ``in + pad_before``. The
    gradient flows to the argmax only (summed where windows share it).

    Args:
        input: {layout}, float16, float32 or float64 (float16 is computed in float32).
        kernel_size: {ints}.
        stride: {ints}; default (None) kernel_size.
        {padding}
        dilation: {ints} (default 1).
        ceil_mode: round the output size up, PyTorch's rule; only with int padding or "valid".
        return_indices: also return the argmax, int64 of the output's shape: the flat position
            ``{index}`` of input position {pos} within its (n, c) {plane}; the first maximum in
            row-major window order wins (a NaN counts as larger than anything, the last NaN wins).

    Returns a Tensor (N, C, *out), or (values, indices).
    """

_AVG_DOC = """{rank}-D average pooling, {layout}, PyTorch's semantics plus TensorFlow's padding rules.

    ``y[n, c, o] = sum_t x[n, c, o*stride - pad_before + t] / divisor(o)`` per output position ``o``
    over the window taps ``t`` (both tuples of {rank}) whose position lies inside the input. The
    divisor is the product over the axes of the window's extent clipped to the padded extent
    ``[-pad_before, in + pad_after)`` (``count_include_pad=True``, PyTorch's default; only a
    ceil_mode window that overhangs the padding is cut) or clipped to the input
    (``count_include_pad=False``: the number of real elements, TensorFlow's ``avg_pool``).
    Output size as in ``max_pool{rank}d`` with dilation 1.

    Args:
        input: {layout}, float16, float32 or float64 (float16 is computed in float32).
        kernel_size: {ints}.
        stride: {ints}; default (None) kernel_size.
        {padding}
        ceil_mode: round the output size up, PyTorch's rule; only with int padding or "valid".
        count_include_pad: whether padding positions count in the divisor (default True).

    Returns a Tensor (N, C, *out).
    """

_ADAPTIVE_DOC = """Adaptive {rank}-D average pooling, {layout}, PyTorch's windows.

    Output position ``o`` averages input positions ``floor(o*in/out) .. ceil((o + 1)*in/out) - 1``
    per axis, so windows can overlap or differ in size by one; ``output_size=1`` is global
    average pooling.

    Args:
        input: {layout}, float16, float32 or float64 (float16 is computed in float32).
        output_size: {ints}; an entry None keeps that input size.

    Returns a Tensor (N, C, *output_size).
    """


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool("avg_pool3d", 3, input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def adaptive_avg_pool1d(input, output_size):
    return _adaptive_avg_pool("adaptive_avg_pool1d", 1, input, output_size)


def adaptive_avg_pool2d(input, output_size):
    return _adaptive_avg_pool("adaptive_avg_pool2d", 2, input, output_size)


def adaptive_avg_pool3d(input, output_size):
    return _adaptive_avg_pool("adaptive_avg_pool3d", 3, input, output_size)


for _r in (1, 2, 3):
    _fmt = dict(rank=_r, layout=LAYOUTS[_r], ints=f"an int or {TUPLES[_r]}", pos=_POS[_r][0], index=_POS[_r][1],
                plane={1: "row", 2: "plane", 3: "volume"}[_r])
    _fmt["padding"] = _PADDING_ARG.format(ints=f"An int or {TUPLES[_r]}", pairs=PAIRS[_r])
    (max_pool1d, max_pool2d, max_pool3d)[_r - 1].__doc__ = _MAX_DOC.format(**_fmt)
    (avg_pool1d, avg_pool2d, avg_pool3d)[_r - 1].__doc__ = _AVG_DOC.format(**_fmt)
    (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d)[_r - 1].__doc__ = _ADAPTIVE_DOC.format(**_fmt)


def _tf_window(value, name, op):
    """TensorFlow's ksize/strides for NHWC: an int, or 1, 2 or 4 ints ([1, h, w, 1]), as (h, w)."""
    values = [value] if _is_int(value) else list(value) if isinstance(value, (tuple, list)) else None
    if values is None or len(values) not in (1, 2, 4) or not all(_is_int(v) for v in values):
        raise TypeError(f"{op}: {name} must be an int or a list of 1, 2 or 4 ints (NHWC), got {value!r}")
    if len(values) == 4:
        if values[0] != 1 or values[3] != 1:
            raise ValueError(f"{op}: {name} pools over H and W only: its batch and channel entries must be 1 "
                             f"([1, h, w, 1], NHWC), got {value!r}")
        values = values[1:3]
    hw = (int(values[0]),) * 2 if len(values) == 1 else (int(values[0]), int(values[1]))
    if min(hw) < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value!r}")
    return hw


def max_pool_with_argmax(input, ksize, strides, padding, include_batch_in_index=False):
    """TensorFlow's ``tf.nn.max_pool_with_argmax``: 2-D max pooling of NHWC input and its argmax.

    ``output[n, p, q, c] = max x[n, h, w, c]`` over the window rows ``h = p*sh - pad_top + r``
    (r < kh) and columns ``w = q*sw - pad_left + s`` (s < kw) inside the input (padding is never
    selected). ``padding="VALID"``: no padding, ``P = floor((H - kh) / sh) + 1``; ``"SAME"``:
    ``P = ceil(H / sh)``, ``pad_total = max(0, (P - 1)*sh + kh - H)``, ``pad_top = pad_total // 2``,
    the extra row at the bottom (columns alike). ``argmax[n, p, q, c]`` is the flat index of the
    window's first maximum in row-major order: ``((n*H + h)*W + w)*C + c`` with
    ``include_batch_in_index``, else ``(h*W + w)*C + c``. The gradient flows from ``output`` to
    the argmax positions (``argmax`` has none). Runs on the 3-D pooling kernels, the NHWC input
    viewed as one (H, W, C) volume per batch entry with a unit window along C.

    Args:
        input: (N, H, W, C), float16, float32 or float64.
        ksize, strides: an int or a list of 1, 2 (h, w) or 4 ints ([1, h, w, 1]).
        padding: "VALID" or "SAME" (either case).
        include_batch_in_index: whether the argmax counts the batch entries before n (default False).

    Returns (output, argmax): a Tensor (N, P, Q, C) and an int64 Tensor (N, P, Q, C).
    """
    op = "max_pool_with_argmax"
    x = _float_input(input, 2, op, "(N, H, W, C)", may_be_empty=1)
    kernel = _tf_window(ksize, "ksize", op)
    stride = _tf_window(strides, "strides", op)
    mode = padding.upper() if isinstance(padding, str) else None
    if mode not in ("VALID", "SAME"):
        raise ValueError(f"{op}: padding must be 'VALID' or 'SAME', got {padding!r}")
    include_batch_in_index = _check_bool(include_batch_in_index, "include_batch_in_index", op)
    N, H, W, C = x.shape
    if mode == "VALID" and (kernel[0] > H or kernel[1] > W):
        raise ValueError(f"{op}: ksize {kernel[0]}x{kernel[1]} is larger than the input's H x W = {H}x{W} "
                         "(padding 'VALID')")
    pads = [same_padding(*a) if mode == "SAME" else (0, 0) for a in zip((H, W), kernel, stride)]
    g = _checked_geometry(N, 1, (H, W, C), kernel + (1,), stride + (1,), (pads[0][0], pads[1][0], 0),
                          (pads[0][1], pads[1][1], 0), (1, 1, 1), False, ("H", "W", "C"), op)
    indices = backend.empty(g.y_shape, np.int64, x.device)
    y = MaxPool.apply(x.reshape(N, 1, H, W, C), geometry=g, indices=indices, global_index=include_batch_in_index)
    out = (N,) + g.out_size
    return y.reshape(out), tensor(indices.reshape(out))


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
    x = _float_input(input, 2, op)
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
    x = _float_input(input, 2, op, may_be_empty=1)
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
    y = _avg_pool(op, 2, x, kernel_size, stride, 0, False, True)
    return conv2d(y, w.reshape(C, 1, 1, 1), b, groups=C, algorithm="direct")
