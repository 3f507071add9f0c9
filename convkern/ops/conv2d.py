"""2-D convolution: the ``Conv2d`` Function, algorithm dispatch and the public ``conv2d``."""
import numbers

from convkern import autotune, backend
from convkern.autograd import Function
from convkern.kernels import conv_direct, conv_implicit_gemm, elementwise, im2col
from convkern.kernels.shapes import ConvGeometry, same_padding, window_out_size
from convkern.ops.common import as_tensor, check_float, check_rank, check_same, int_pair

PASSES = ("fwd", "bwd_data", "bwd_filter")

# name -> kernel module; each module has launchers conv2d_{fwd,bwd_data,bwd_filter}_<name>,
# which pick the CPU or CUDA kernel by the array type.
ALGORITHMS = {"direct": conv_direct, "im2col": im2col, "implicit_gemm": conv_implicit_gemm}


def conv_algorithms(device="cpu"):
    """Names usable as ``conv2d(..., algorithm=name)`` on ``device`` (besides "auto")."""
    if device not in backend.DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return list(ALGORITHMS)


def heuristic_algorithm(g, device, pass_):
    """The algorithm ``auto`` uses for one pass of geometry ``g`` (see docs/conv-algorithms.md).

    Depthwise layers go to ``direct``. On the CPU, 1x1 layers go to ``im2col`` (the column
    matrix is the input, possibly subsampled, and the GEMM is BLAS), and layers with a short
    reduction (C/groups*R*S <= 75: few input channels, as in LeNet C1, CIFAR conv1) go to
    ``direct``. Everything else goes to ``implicit_gemm``.
    """
    cg, kg = g.C // g.groups, g.K // g.groups
    if cg == 1 and kg == 1:
        return "direct"
    if device == "cpu":
        if g.R == 1 and g.S == 1:
            return "im2col"
        if cg * g.R * g.S <= 75:
            return "direct"
    return "implicit_gemm"


def launcher(algorithm, g, device, pass_):
    """The function ``f(a, b, out, g)`` running ``pass_`` with ``algorithm`` (overwrites ``out``).

    For "auto" it is looked up at each call: the autotuned choice for the key (device, dtype,
    pass, geometry), timed on the call's own arrays the first time (see ``convkern.autotune``),
    or ``heuristic_algorithm`` when autotuning is off.
    """
    def named(name):
        return getattr(ALGORITHMS[name], f"conv2d_{pass_}_{name}")
    if algorithm != "auto":
        return named(algorithm)

    def auto(a, b, out, g):
        name = autotune.choose(g, device, out.dtype, pass_, lambda n: named(n)(a, b, out, g), list(ALGORITHMS),
                               heuristic_algorithm(g, device, pass_))
        named(name)(a, b, out, g)  # the winner's result, whichever candidate was timed last
    return auto


class Conv2d(Function):
    """y = conv(x, w) + b; backward gives dx, dw, db with the chosen algorithm's kernels."""

    def forward(self, x, w, b):
        g, alg = self.params["geometry"], self.params["algorithm"]
        need_x, need_w, _ = self.needs_input_grad
        y = backend.empty((g.N, g.K, g.P, g.Q), x.dtype, self.device)
        launcher(alg, g, self.device, "fwd")(x, w, y, g)
        if b is not None:
            elementwise.bias_add_nchw(y, b)
        self.save_for_backward(x if need_w else None, w if need_x else None)
        return y

    def backward(self, dy):
        g, alg = self.params["geometry"], self.params["algorithm"]
        need_x, need_w, need_b = self.needs_input_grad
        x, w = self.saved
        dx = dw = db = None
        if need_x:
            dx = backend.empty((g.N, g.C, g.H, g.W), dy.dtype, self.device)
            launcher(alg, g, self.device, "bwd_data")(dy, w, dx, g)
        if need_w:
            dw = backend.empty((g.K, g.C // g.groups, g.R, g.S), dy.dtype, self.device)
            launcher(alg, g, self.device, "bwd_filter")(dy, x, dw, g)
        if need_b:
            db = backend.empty((g.K,), dy.dtype, self.device)
            elementwise.bias_grad_nchw(dy, db)
        return dx, dw, db


def conv_geometry(x_shape, w_shape, stride, padding, dilation, groups, op="conv2d"):
    """Validate conv arguments against the shapes and return the ConvGeometry.

    ``padding``: int, (ph, pw), "valid" (none) or "same" (TensorFlow's rule for any stride:
    ``P = ceil(H/stride)``, total padding split with the extra row/column bottom/right).
    """
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    sh, sw = int_pair(stride, "stride", op, 1)
    dh, dw = int_pair(dilation, "dilation", op, 1)
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if min(x_shape) < 1 or min(w_shape) < 1:
        raise ValueError(f"{op}: input {tuple(x_shape)} and weight {tuple(w_shape)} must have no zero-size dimension")
    if C % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C={C}")
    if K % groups:
        raise ValueError(f"{op}: groups={groups} must divide the output channels K={K} (weight.shape[0])")
    if Cg * groups != C:
        raise ValueError(f"{op}: channel mismatch: input has C={C} channels but weight of shape "
                         f"{tuple(w_shape)} with groups={groups} expects C = weight.shape[1]*groups = {Cg * groups}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            pads = same_padding(H, R, sh, dh) + same_padding(W, S, sw, dw)
        else:
            raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = int_pair(padding, "padding", op, 0)
        pads = (ph, ph, pw, pw)
    pt, pb, pl, pr = pads
    P = window_out_size(H, R, sh, pt, pb, dh)
    Q = window_out_size(W, S, sw, pl, pr, dw)
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: kernel (dilated extent {dh * (R - 1) + 1}x{dw * (S - 1) + 1}) is larger than "
                         f"the padded input ({H + pt + pb}x{W + pl + pr})")
    return ConvGeometry(N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    """2-D convolution (cross-correlation), NCHW, PyTorch's semantics.

    ``y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, g*C/groups + c, p*sh - pt + r*dh, q*sw - pl + s*dw] * w[k,c,r,s]``
    with ``g = k // (K/groups)`` and zero outside the input. Output size per axis:
    ``P = floor((H + pt + pb - dh*(R-1) - 1) / sh) + 1``.

    input (N, C, H, W); weight (K, C/groups, R, S); bias (K,) or None.
    stride, dilation: int or (h, w). padding: int, (h, w), "valid", or "same" (TensorFlow's
    rule for any stride, extra row/column bottom/right). algorithm: "auto" or one of
    ``convkern.conv_algorithms(device)``. Returns a Tensor (N, K, P, Q).
    """
    op = "conv2d"
    x = as_tensor(input, "input", op)
    w = as_tensor(weight, "weight", op)
    check_rank(x, 4, "input", "(N, C, H, W)", op)
    check_rank(w, 4, "weight", "(K, C/groups, R, S)", op)
    check_float(x, "input", op)
    check_same(w, x, "weight", "input", op)
    b = None
    if bias is not None:
        b = as_tensor(bias, "bias", op)
        check_same(b, x, "bias", "input", op)
        if b.shape != (w.shape[0],):
            raise ValueError(f"{op}: bias must have shape (K,) = ({w.shape[0]},), got {b.shape}")
    if algorithm != "auto" and algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: unknown algorithm {algorithm!r}; expected 'auto' or one of "
                         f"{conv_algorithms(x.device)}")
    g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups, op)
    return Conv2d.apply(x, w, b, geometry=g, algorithm=algorithm)
