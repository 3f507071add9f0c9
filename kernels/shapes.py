"""Output-size arithmetic shared by every windowed op, the N-d conv geometry and the pooling geometry."""
import math
from typing import NamedTuple, Tuple


def window_out_size(size, kernel, stride, pad_before, pad_after, dilation=1, ceil_mode=False):
    """Output length of a sliding window along one axis.

    ``out = floor((size + pad_before + pad_after - (dilation*(kernel-1)+1) + (stride-1 if ceil_mode)) / stride) + 1``;
    with ``ceil_mode`` the last window must start inside the input or the left padding,
    else ``out -= 1`` (PyTorch's rule). May return a value < 1; callers reject that.
    """
    span = dilation * (kernel - 1) + 1
    extra = stride - 1 if ceil_mode else 0
    out = (size + pad_before + pad_after - span + extra) // stride + 1
    if ceil_mode and out > 0 and (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def same_padding(size, kernel, stride, dilation=1):
    """TensorFlow's SAME rule for any stride: ``out = ceil(size/stride)``,
    ``pad_total = max(0, (out-1)*stride + dilation*(kernel-1)+1 - size)``,
    ``pad_before = pad_total // 2``, the extra row/column after. Returns (before, after)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    return total // 2, total - total // 2


def single_window_stride(size, kernel, stride, pad_before, pad_after, dilation=1, ceil_mode=False):
    """``stride``, or a smaller one giving the same single output along this axis.

    With one output the stride never multiplies anything (window 0 starts at ``-pad_before``),
    but a huge one (2**40) would reach the kernels' index arithmetic and their stride-phase
    tables. ``max(padded extent, window span)`` gives the same ``window_out_size`` of 1, floor or
    ceil mode; any other case keeps ``stride``.
    """
    out = window_out_size(size, kernel, stride, pad_before, pad_after, dilation, ceil_mode)
    cap = max(size + pad_before + pad_after, dilation * (kernel - 1) + 1, 1)
    if out == 1 and stride > cap and window_out_size(size, kernel, cap, pad_before, pad_after, dilation,
                                                     ceil_mode) == 1:
        return cap
    return stride


def _normalised(in_size, kernel, stride, pad_before, pad_after, dilation, ceil_mode=False):
    """(stride, dilation) per axis as the kernels see them: a single-output axis keeps a stride
    of at most its padded extent (``single_window_stride``), a one-tap axis dilation 1; the
    results are unchanged."""
    stride = tuple(single_window_stride(*a, ceil_mode) for a in zip(in_size, kernel, stride, pad_before, pad_after,
                                                                     dilation))
    dilation = tuple(1 if k == 1 else d for k, d in zip(kernel, dilation))
    return stride, dilation


PASSES = ("fwd", "bwd_data", "bwd_filter")


class ConvGeometry(NamedTuple):
    """One convolution of spatial rank 1, 2 or 3 (NCL, NCHW, NCDHW), for every pass.

    Input ``(N, C, *in_size)``, weight ``(K, C/groups, *kernel)``, output ``(N, K, *out_size)``.
    Along axis ``i``, output position ``o`` reads input positions
    ``o*stride[i] - pad_before[i] + t*dilation[i]`` for taps ``t < kernel[i]``; reads outside
    ``[0, in_size[i])`` are zero. ``out_size`` comes from ``window_out_size``; ``pad_after`` only
    shows in it (it may be negative for a transposed convolution, whose last input rows are
    then never read). ``output_padding`` is zero for a plain convolution; for a transposed one
    (whose forward is this geometry's backward-data pass) it is the extra size its output got.

    Passes and their operands (``operand_shapes``): forward ``(x, w) -> y``, backward-data
    ``(dy, w) -> dx``, backward-filter ``(dy, x) -> dw``.
    """
    N: int
    C: int
    K: int
    groups: int
    in_size: Tuple[int, ...]
    kernel: Tuple[int, ...]
    out_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    pad_before: Tuple[int, ...]
    pad_after: Tuple[int, ...]
    dilation: Tuple[int, ...]
    output_padding: Tuple[int, ...]

    @classmethod
    def make(cls, N, C, K, in_size, kernel, stride=None, pad_before=None, pad_after=None, dilation=None,
             groups=1, output_padding=None):
        """The geometry with ``out_size`` computed; per-axis arguments default to stride 1,
        padding 0, dilation 1 and no output padding. Stride and dilation are stored as the
        kernels see them (``_normalised``: a single-output axis keeps a stride of at most its
        padded extent, a one-tap axis dilation 1). No validation (see ``convkern.conv_geometry``)."""
        rank = len(in_size)

        def axes(v, default):
            return tuple(int(a) for a in v) if v is not None else (default,) * rank
        in_size, kernel = axes(in_size, 0), axes(kernel, 0)
        stride, dilation = axes(stride, 1), axes(dilation, 1)
        pad_before, pad_after, output_padding = axes(pad_before, 0), axes(pad_after, 0), axes(output_padding, 0)
        out = tuple(window_out_size(*a) for a in zip(in_size, kernel, stride, pad_before, pad_after, dilation))
        stride, dilation = _normalised(in_size, kernel, stride, pad_before, pad_after, dilation)
        return cls(int(N), int(C), int(K), int(groups), in_size, kernel, out, stride, pad_before, pad_after, dilation,
                   output_padding)

    @property
    def rank(self):
        """Number of spatial axes (1, 2 or 3)."""
        return len(self.in_size)

    @property
    def x_shape(self):
        return (self.N, self.C) + self.in_size

    @property
    def w_shape(self):
        return (self.K, self.C // self.groups) + self.kernel

    @property
    def y_shape(self):
        return (self.N, self.K) + self.out_size

    def operand_shapes(self, pass_):
        """(first operand, second operand, output) shapes of ``pass_``."""
        x, w, y = self.x_shape, self.w_shape, self.y_shape
        return {"fwd": (x, w, y), "bwd_data": (y, w, x), "bwd_filter": (y, x, w)}[pass_]

    @property
    def flops(self):
        """FLOPs of one pass: 2*N*K*prod(out_size)*(C/groups)*prod(kernel)."""
        return 2 * self.N * self.K * math.prod(self.out_size) * (self.C // self.groups) * math.prod(self.kernel)

    @property
    def depthwise(self):
        """One input and one output channel per group."""
        return self.C == self.groups and self.K == self.groups

    def as_2d(self):
        """A rank-1 geometry as the rank-2 one with a leading unit axis (conv1d runs on the 2-D
        kernels); other ranks unchanged."""
        if self.rank != 1:
            return self
        return self._replace(in_size=(1,) + self.in_size, kernel=(1,) + self.kernel, out_size=(1,) + self.out_size,
                             stride=(1,) + self.stride, pad_before=(0,) + self.pad_before,
                             pad_after=(0,) + self.pad_after, dilation=(1,) + self.dilation,
                             output_padding=(0,) + self.output_padding)

    def key(self):
        """A compact string naming the geometry (the autotune cache key uses it)."""
        def t(v):
            return "x".join(map(str, v))
        return (f"N{self.N},C{self.C},K{self.K},g{self.groups},in{t(self.in_size)},k{t(self.kernel)},"
                f"out{t(self.out_size)},s{t(self.stride)},pb{t(self.pad_before)},pa{t(self.pad_after)},"
                f"d{t(self.dilation)},op{t(self.output_padding)}")

    # 2-D names, for the 2-D kernels: input H x W, filter R x S, output P x Q
    def _axis(self, field, i, name):
        if self.rank != 2:
            raise AttributeError(f"ConvGeometry.{name} is defined for 2-D geometries; this one is {self.rank}-D")
        return getattr(self, field)[i]

    H = property(lambda self: self._axis("in_size", 0, "H"))
    W = property(lambda self: self._axis("in_size", 1, "W"))
    R = property(lambda self: self._axis("kernel", 0, "R"))
    S = property(lambda self: self._axis("kernel", 1, "S"))
    P = property(lambda self: self._axis("out_size", 0, "P"))
    Q = property(lambda self: self._axis("out_size", 1, "Q"))
    stride_h = property(lambda self: self._axis("stride", 0, "stride_h"))
    stride_w = property(lambda self: self._axis("stride", 1, "stride_w"))
    pad_h = property(lambda self: self._axis("pad_before", 0, "pad_h"))
    pad_w = property(lambda self: self._axis("pad_before", 1, "pad_w"))
    dil_h = property(lambda self: self._axis("dilation", 0, "dil_h"))
    dil_w = property(lambda self: self._axis("dilation", 1, "dil_w"))


class PoolGeometry(NamedTuple):
    """One pooling of spatial rank 1, 2 or 3 (NCL, NCHW, NCDHW).

    Input ``(N, C, *in_size)``, window ``kernel``, output ``(N, C, *out_size)``. Along axis ``i``,
    output position ``o`` covers input positions ``o*stride[i] - pad_before[i] + t*dilation[i]``
    (``t < kernel[i]``); positions outside ``[0, in_size[i])`` are padding, which pooling never
    reads. ``pad_after`` bounds the padded extent ``[-pad_before, in_size + pad_after)`` that
    average pooling's ``count_include_pad`` divisor is clipped to; ``out_size`` comes from
    ``window_out_size`` (with ``ceil_mode`` a last window may reach past the padded extent).
    Kernels read ``pad_before`` and ``out_size``; only the average divisor reads ``pad_after``.
    Pooling with a padding of one (before, after) pair per axis, TensorFlow's SAME among them,
    is this geometry with uneven pads.
    """
    N: int
    C: int
    in_size: Tuple[int, ...]
    kernel: Tuple[int, ...]
    out_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    pad_before: Tuple[int, ...]
    pad_after: Tuple[int, ...]
    dilation: Tuple[int, ...]

    @classmethod
    def make(cls, N, C, in_size, kernel, stride=None, pad_before=None, pad_after=None, dilation=None,
             ceil_mode=False):
        """The geometry with ``out_size`` computed; per-axis arguments default to stride = kernel,
        padding 0 and dilation 1; stride and dilation are stored as the kernels see them (as in
        ``ConvGeometry.make``). No validation (see ``convkern.ops.pool.pool_geometry``)."""
        rank = len(in_size)
        kernel = tuple(int(a) for a in kernel)

        def axes(v, default):
            return tuple(int(a) for a in v) if v is not None else default
        stride = axes(stride, kernel)
        pad_before, pad_after = axes(pad_before, (0,) * rank), axes(pad_after, (0,) * rank)
        dilation = axes(dilation, (1,) * rank)
        in_size = tuple(int(a) for a in in_size)
        out = tuple(window_out_size(*a, ceil_mode) for a in zip(in_size, kernel, stride, pad_before, pad_after,
                                                               dilation))
        stride, dilation = _normalised(in_size, kernel, stride, pad_before, pad_after, dilation, ceil_mode)
        return cls(int(N), int(C), in_size, kernel, out, stride, pad_before, pad_after, dilation)

    @property
    def rank(self):
        """Number of spatial axes (1, 2 or 3)."""
        return len(self.in_size)

    @property
    def x_shape(self):
        return (self.N, self.C) + self.in_size

    @property
    def y_shape(self):
        return (self.N, self.C) + self.out_size

    def as_3d(self):
        """The geometry as rank 3, with leading unit axes (window 1, stride 1, no padding): the
        pooling kernels work on (N, C, D, H, W) and see 1-D and 2-D pooling this way."""
        k = 3 - self.rank
        return self._replace(in_size=(1,) * k + self.in_size, kernel=(1,) * k + self.kernel,
                             out_size=(1,) * k + self.out_size, stride=(1,) * k + self.stride,
                             pad_before=(0,) * k + self.pad_before, pad_after=(0,) * k + self.pad_after,
                             dilation=(1,) * k + self.dilation)
