"""Output-size arithmetic shared by every windowed op, and the conv geometry record."""
from typing import NamedTuple


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


class ConvGeometry(NamedTuple):
    """Everything a conv kernel needs to know about one 2-D convolution (NCHW).

    Input (N, C, H, W), weight (K, C/groups, R, S), output (N, K, P, Q).
    Output pixel (p, q) reads input rows ``p*stride_h - pad_h + r*dil_h`` and columns
    ``q*stride_w - pad_w + s*dil_w``; reads outside [0, H) x [0, W) are zero. ``pad_h`` and
    ``pad_w`` are the top and left padding; bottom/right padding only shows in P and Q.
    """
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    groups: int

    @property
    def flops(self):
        """FLOPs of one pass: 2*N*K*P*Q*(C/groups)*R*S."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S


class PoolGeometry(NamedTuple):
    """Everything a pooling kernel needs to know about one 2-D pooling (NCHW).

    Input (N, C, H, W), window R x S, output (N, C, P, Q). Output pixel (p, q) covers input
    rows ``p*stride_h - pad_h + r*dil_h`` (r < R) and columns ``q*stride_w - pad_w + s*dil_w``
    (s < S); positions outside [0, H) x [0, W) are padding, which pooling never reads.
    P and Q come from ``window_out_size`` (ceil_mode included).
    """
    N: int
    C: int
    H: int
    W: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int = 1
    dil_w: int = 1
