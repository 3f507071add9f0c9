"""The convolution family: one ``Conv`` Function for every spatial rank, plain and transposed,
algorithm dispatch through the registry, and the public wrappers (``conv1d/2d/3d``,
``conv_transpose1d/2d/3d``, ``depthwise_conv2d``, ``separable_conv2d``, ``atrous_conv2d``)."""
import numbers

import numpy as np

from convkern import amp, autotune, backend
from convkern.autograd import Function
from convkern.kernels import activation, elementwise
from convkern.kernels.conv_registry import ALGORITHMS, BY_NAME
from convkern.kernels.shapes import PASSES, ConvGeometry, same_padding
from convkern.ops.common import as_tensor, check_float, check_rank, check_same, int_tuple

LAYOUTS = {1: ("(N, C, L)", "(K, C/groups, kL)"), 2: ("(N, C, H, W)", "(K, C/groups, R, S)"),
           3: ("(N, C, D, H, W)", "(K, C/groups, kD, R, S)")}


def conv_algorithms(device="cpu", geometry=None, passes=PASSES, dtype=None):
    """Names usable as ``algorithm=`` on ``device`` (besides "auto"), in registry order.

    With a ``geometry`` (``convkern.conv_geometry(...)``), only the algorithms that support
    every pass in ``passes`` of it (``ConvAlgorithm.supports``); with a ``dtype``, only those
    that take arrays of it (float16: ``direct`` and ``implicit_gemm_tc``)."""
    backend.check_device(device)
    if geometry is None:
        return [a.name for a in ALGORITHMS if dtype is None or a.takes(dtype)]
    return [a.name for a in ALGORITHMS if all(a.supports(geometry, device, p, dtype)[0] for p in passes)]


_TF32 = {"allowed": False}


def allow_tf32(enabled=None):
    """Whether ``algorithm="auto"`` may pick algorithms that compute float32 convolutions in
    reduced precision: TF32 tensor-core math, 10-bit mantissa (``implicit_gemm_tc``), like
    PyTorch's ``torch.backends.cudnn.allow_tf32``. Off by default: auto then picks only
    algorithms that keep float32 precision (float64 is never reduced). A named algorithm runs
    whatever this says.

    ``allow_tf32()`` returns the setting; ``allow_tf32(True)`` or ``allow_tf32(False)`` sets it
    and returns the previous one.
    """
    previous = _TF32["allowed"]
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise TypeError(f"allow_tf32: enabled must be True, False or None, got {enabled!r}")
        _TF32["allowed"] = enabled
    return previous


def auto_candidates(g, device, pass_, dtype):
    """The algorithms ``auto`` chooses among for one pass of ``g`` in ``dtype``: those that
    support it on arrays of ``dtype``, less those computing ``dtype`` in reduced precision unless
    ``allow_tf32``."""
    return [a.name for a in ALGORITHMS if a.supports(g, device, pass_, dtype)[0]
            and (_TF32["allowed"] or not a.reduces_precision(dtype))]


def heuristic_algorithm(g, device, pass_, dtype="float32"):
    """The algorithm ``auto`` uses for one pass of ``g`` in ``dtype`` without timing: the
    candidate (``auto_candidates``) with the lowest ``preference``, registry order breaking
    ties (the preferences are in docs/conv-algorithms.md)."""
    names = auto_candidates(g, device, pass_, dtype)
    ranked = [(a.preference(g, device, pass_), i, a.name) for i, a in enumerate(ALGORITHMS) if a.name in names]
    return min(ranked)[2]


def check_algorithm(algorithm, g, device, passes, op, dtype=None):
    """Raise ValueError unless ``algorithm`` is "auto" or a registered name that supports every
    pass in ``passes`` of ``g`` on ``device`` (the message carries the algorithm's reason).
    With a ``dtype`` the algorithm must take arrays of it for this geometry too (TypeError when
    it does not), and "auto" needs an algorithm that does for every pass."""
    if algorithm == "auto":
        # only a dtype that some algorithms refuse can leave a pass without candidates
        narrow = dtype is not None and not all(a.takes(dtype) for a in ALGORITHMS)
        for pass_ in passes if narrow else ():
            if not auto_candidates(g, device, pass_, dtype):
                why = "; ".join(a.supports(g, device, pass_, dtype)[1] for a in ALGORITHMS if a.takes(dtype))
                raise TypeError(f"{op}: no algorithm takes this {g.rank}-D {np.dtype(dtype).name} convolution's "
                                f"{pass_} pass on {device}: {why}")
        return
    if algorithm not in BY_NAME:
        raise ValueError(f"{op}: unknown algorithm {algorithm!r}; expected 'auto' or one of "
                         f"{conv_algorithms(device)}")
    alg = BY_NAME[algorithm]
    for pass_ in passes:
        ok, why = alg.supports(g, device, pass_)
        if not ok:
            raise ValueError(f"{op}: algorithm {algorithm!r} cannot run the {pass_} pass of this "
                             f"convolution on {device}: {why}")
    if dtype is not None:
        ok, why = alg.supports(g, device, passes[0], dtype)
        if not ok:
            raise TypeError(f"{op}: algorithm {algorithm!r} cannot run this convolution: {why}; the algorithms "
                            f"that take {np.dtype(dtype).name} are {conv_algorithms(device, dtype=dtype)}")


def launcher(algorithm, g, device, pass_):
    """The function ``f(a, b, out, g, bias=None, act=None)`` running ``pass_`` with ``algorithm``
    (overwrites ``out``); a forward given a ``bias`` or an activation ``act`` returns
    ``act(conv + bias)``, fused as the algorithm can (``ConvAlgorithm.forward_fused``).

    For "auto" it is looked up at each call: the autotuned choice for the key (device, dtype,
    pass, geometry) among ``auto_candidates``, timed on the call's own arrays (the plain pass)
    the first time (see ``convkern.autotune``), or ``heuristic_algorithm`` when autotuning is off.
    """
    if algorithm != "auto":
        alg = BY_NAME[algorithm]
        return lambda a, b, out, g, bias=None, act=None: _launch(alg, pass_, a, b, out, g, bias, act)

    def auto(a, b, out, g, bias=None, act=None):
        # the choice is remembered per call signature: asking every algorithm's supports and the
        # cache on every call cost ~1 ms of a LeNet-5 step (a replaced registry or autotuner, as in
        # tests, is asked afresh)
        key = (g, device, out.dtype, pass_, _TF32["allowed"], id(ALGORITHMS), id(BY_NAME), autotune.choose,
               autotune.state_token())
        name = _AUTO_CHOICES.get(key)
        if name is None:
            candidates = auto_candidates(g, device, pass_, out.dtype)
            name = autotune.choose(g, device, out.dtype, pass_, lambda n: BY_NAME[n].launcher(pass_)(a, b, out, g),
                                   candidates, heuristic_algorithm(g, device, pass_, out.dtype))
            if len(_AUTO_CHOICES) >= 4096:
                _AUTO_CHOICES.clear()
            _AUTO_CHOICES[key[:-1] + (autotune.state_token(),)] = name     # timing a new shape changes the token
        _launch(BY_NAME[name], pass_, a, b, out, g, bias, act)  # the winner's result, whichever ran last
    return auto


_AUTO_CHOICES = {}


def _launch(alg, pass_, a, b, out, g, bias, act):
    if bias is None and act is None:
        alg.launcher(pass_)(a, b, out, g)
    else:
        alg.forward_fused(a, b, out, g, bias, act)


def _view(a, shape):
    return a if tuple(a.shape) == tuple(shape) else a.reshape(shape)


def _add_bias(y, b):
    if b is not None and y.size:
        elementwise.bias_add_nchw(y.reshape(y.shape[0], y.shape[1], 1, -1), b)


class Conv(Function):
    """A convolution of any spatial rank; with ``transposed`` its transpose; with an
    ``activation`` (plain convolutions only) the activation of its output, fused.

    Plain: ``y = act(conv(x, w) + b)`` runs the geometry's forward pass with the bias and
    activation in its epilogue; backward gives ``dz = dy * act'`` (from the saved y) and
    ``db = Σ dz`` in one pass, then ``dx = bwd_data(dz, w)``, ``dw = bwd_filter(dz, x)``.
    Transposed (the adjoint of the geometry's forward): ``y = bwd_data(x, w) + b``, and
    backward reuses the forward and backward-filter kernels: ``dx = fwd(dy, w)``,
    ``dw = bwd_filter(x, dy)``. Rank-1 arrays are viewed as rank 2 (``ConvGeometry.as_2d``)
    and run on the 2-D kernels.
    """

    def _run(self, pass_, a, b, out, bias=None, act=None):
        g = self.params["geometry"].as_2d()
        if g.N == 0:
            # an empty batch: nothing to launch; the filter gradient of no images is zero
            if pass_ == "bwd_filter":
                elementwise.fill(out, 0.0)
            return out
        shapes = g.operand_shapes(pass_)
        launcher(self.params["algorithm"], g, self.device, pass_)(
            _view(a, shapes[0]), _view(b, shapes[1]), _view(out, shapes[2]), g, bias, act)
        return out

    def forward(self, x, w, b):
        g, transposed, act = self.params["geometry"], self.params["transposed"], self.params.get("activation")
        need_x, need_w, need_b = self.needs_input_grad
        if transposed:
            y = self._run("bwd_data", x, w, backend.empty(g.x_shape, x.dtype, self.device))
            _add_bias(y, b)
        else:
            y = self._run("fwd", x, w, backend.empty(g.y_shape, x.dtype, self.device), b, act)
        self.save_for_backward(x if need_w else None, w if need_x else None,
                               y if act is not None and (need_x or need_w or need_b) else None)
        return y

    def backward(self, dy):
        g, transposed, act = self.params["geometry"], self.params["transposed"], self.params.get("activation")
        need_x, need_w, need_b = self.needs_input_grad
        x, w, y = self.saved
        dx = dw = db = None
        if need_b:
            db = backend.empty((dy.shape[1],), dy.dtype, self.device)
        if act is not None:
            dz = backend.empty(dy.shape, dy.dtype, self.device)
            if dy.size:
                activation.activation_bias_grad(act, y, dy, dz, db)
            elif need_b:
                elementwise.fill(db, 0.0)
            dy = dz
        elif need_b:
            if dy.size:
                elementwise.bias_grad_nchw(dy.reshape(dy.shape[0], dy.shape[1], 1, -1), db)
            else:
                elementwise.fill(db, 0.0)
        if need_x:
            dx = backend.empty(g.y_shape if transposed else g.x_shape, dy.dtype, self.device)
            self._run("fwd" if transposed else "bwd_data", dy, w, dx)
        if need_w:
            dw = backend.empty(g.w_shape, dy.dtype, self.device)
            self._run("bwd_filter", x if transposed else dy, dy if transposed else x, dw)
        return dx, dw, db


def _groups(groups, op):
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    return int(groups)


def _check_sizes(x_shape, w_shape, op):
    """Only the batch may be empty (N = 0 gives an empty output, as in PyTorch)."""
    if min(x_shape[1:]) < 1 or min(w_shape) < 1:
        raise ValueError(f"{op}: input {tuple(x_shape)} and weight {tuple(w_shape)} must have no zero-size dimension "
                         "other than the batch")


def conv_geometry(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, op="conv_geometry"):
    """Validate convolution arguments against the shapes and return the ``ConvGeometry``.

    The spatial rank is ``len(input_shape) - 2`` (1, 2 or 3); weight is (K, C/groups, *kernel).
    ``stride``, ``dilation``: an int or one per axis. ``padding``: an int, one per axis,
    "valid" (none) or "same" (TensorFlow's rule for any stride: ``out = ceil(in/stride)``, the
    total padding split with the extra row/column after).
    """
    rank = len(input_shape) - 2
    if rank not in LAYOUTS or len(weight_shape) != rank + 2:
        raise ValueError(f"{op}: input and weight must both be 3-D, 4-D or 5-D (spatial rank 1-3) of the same "
                         f"rank, got shapes {tuple(input_shape)} and {tuple(weight_shape)}")
    N, C, *size = input_shape
    K, Cg, *kernel = weight_shape
    stride = int_tuple(stride, rank, "stride", op, 1)
    dilation = int_tuple(dilation, rank, "dilation", op, 1)
    groups = _groups(groups, op)
    _check_sizes(input_shape, weight_shape, op)
    if C % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C={C}")
    if K % groups:
        raise ValueError(f"{op}: groups={groups} must divide the output channels K={K} (weight.shape[0])")
    if Cg * groups != C:
        raise ValueError(f"{op}: channel mismatch: input has C={C} channels but weight of shape "
                         f"{tuple(weight_shape)} with groups={groups} expects C = weight.shape[1]*groups = {Cg * groups}")
    if isinstance(padding, str):
        if padding == "valid":
            before = after = (0,) * rank
        elif padding == "same":
            pads = [same_padding(*a) for a in zip(size, kernel, stride, dilation)]
            before, after = tuple(p[0] for p in pads), tuple(p[1] for p in pads)
        else:
            what = "an int, a pair of ints" if rank == 2 else f"an int, {rank} ints"
            raise ValueError(f"{op}: padding must be {what}, 'same' or 'valid', got {padding!r}")
    else:
        before = after = int_tuple(padding, rank, "padding", op, 0)
    g = ConvGeometry.make(N, C, K, size, kernel, stride, before, after, dilation, groups)
    if min(g.out_size) < 1:
        span = "x".join(str(d * (k - 1) + 1) for k, d in zip(kernel, dilation))
        padded = "x".join(str(s + b + a) for s, b, a in zip(size, before, after))
        raise ValueError(f"{op}: kernel (dilated extent {span}) is larger than the padded input ({padded})")
    return g


def conv_transpose_geometry(input_shape, weight_shape, stride=1, padding=0, output_padding=0, groups=1,
                            dilation=1, op="conv_transpose_geometry"):
    """The ``ConvGeometry`` of the convolution whose backward-data pass is this transposed
    convolution: input (N, C_in, *in), weight (C_in, C_out/groups, *kernel), output
    (N, C_out, *out) with ``out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) +
    output_padding + 1`` per axis (the geometry's input; its output is the transposed input)."""
    rank = len(input_shape) - 2
    if rank not in LAYOUTS or len(weight_shape) != rank + 2:
        raise ValueError(f"{op}: input and weight must both be 3-D, 4-D or 5-D (spatial rank 1-3) of the same "
                         f"rank, got shapes {tuple(input_shape)} and {tuple(weight_shape)}")
    N, Cin, *size = input_shape
    Cin_w, Cout_g, *kernel = weight_shape
    stride = int_tuple(stride, rank, "stride", op, 1)
    dilation = int_tuple(dilation, rank, "dilation", op, 1)
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be an int or one int per axis, got {padding!r} "
                         "(transposed convolutions take no 'same'/'valid')")
    padding = int_tuple(padding, rank, "padding", op, 0)
    output_padding = int_tuple(output_padding, rank, "output_padding", op, 0)
    groups = _groups(groups, op)
    _check_sizes(input_shape, weight_shape, op)
    if Cin != Cin_w:
        raise ValueError(f"{op}: channel mismatch: input has C_in={Cin} channels but weight of shape "
                         f"{tuple(weight_shape)} expects weight.shape[0] = {Cin_w}")
    if Cin % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C_in={Cin}")
    for op_, s, d in zip(output_padding, stride, dilation):
        if op_ >= max(s, d):
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than max(stride, dilation) "
                             f"per axis (stride {stride}, dilation {dilation})")
    out = tuple((i - 1) * s - 2 * p + d * (k - 1) + o + 1
                for i, s, p, d, k, o in zip(size, stride, padding, dilation, kernel, output_padding))
    if min(out) < 1:
        raise ValueError(f"{op}: output size {out} would be empty: padding {padding} is too large for input "
                         f"{tuple(size)}, kernel {tuple(kernel)}, stride {stride}")
    after = tuple(p - o for p, o in zip(padding, output_padding))
    g = ConvGeometry.make(N, Cout_g * groups, Cin, out, kernel, stride, padding, after, dilation, groups,
                          output_padding)
    assert g.out_size == tuple(size)
    return g


def _operands(op, input, weight, bias, rank, layouts, bias_len, bias_name="K"):
    input, weight, bias = amp.autocast_inputs(op, input, weight, bias)
    x = as_tensor(input, "input", op)
    w = as_tensor(weight, "weight", op)
    check_rank(x, rank + 2, "input", layouts[0], op)
    check_rank(w, rank + 2, "weight", layouts[1], op)
    check_float(x, "input", op, half=True)
    check_same(w, x, "weight", "input", op)
    b = None
    if bias is not None:
        b = as_tensor(bias, "bias", op)
        check_same(b, x, "bias", "input", op)
        n = bias_len(w)
        if b.shape != (n,):
            raise ValueError(f"{op}: bias must have shape ({bias_name},) = ({n},), got {b.shape}")
    return x, w, b


def _passes(x, w):
    """The passes a call will run: forward, and the backward passes its gradients need."""
    from convkern.autograd import is_grad_enabled
    grad = is_grad_enabled()
    return ("fwd",) + (("bwd_data",) if grad and x.requires_grad else ()) + \
        (("bwd_filter",) if grad and w.requires_grad else ())


def _conv(op, rank, input, weight, bias, stride, padding, dilation, groups, algorithm, activation_=None):
    activation.epilogue_code(activation_, op)
    layouts = (LAYOUTS[rank][0], LAYOUTS[rank][1])
    x, w, b = _operands(op, input, weight, bias, rank, layouts, lambda w: w.shape[0])
    g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups, op)
    check_algorithm(algorithm, g, x.device, _passes(x, w), op, x.dtype)
    return Conv.apply(x, w, b, geometry=g, algorithm=algorithm, transposed=False, activation=activation_)


def _conv_transpose(op, rank, input, weight, bias, stride, padding, output_padding, groups, dilation, algorithm):
    layouts = (LAYOUTS[rank][0].replace("C,", "C_in,"), LAYOUTS[rank][1].replace("K, C/groups", "C_in, C_out/groups"))
    groups = _groups(groups, op)
    x, w, b = _operands(op, input, weight, bias, rank, layouts, lambda w: w.shape[1] * groups, "C_out")
    g = conv_transpose_geometry(x.shape, w.shape, stride, padding, output_padding, groups, dilation, op)
    # the transposed forward is the geometry's bwd_data; its input gradient is the geometry's fwd
    passes = ("bwd_data",) + (("fwd",) if "bwd_data" in _passes(x, w) else ()) + \
        (("bwd_filter",) if "bwd_filter" in _passes(x, w) else ())
    check_algorithm(algorithm, g, x.device, passes, op, x.dtype)
    return Conv.apply(x, w, b, geometry=g, algorithm=algorithm, transposed=True)


_CONV_DOC = """{rank}-D convolution (cross-correlation), {layout}, PyTorch's semantics.

    ``y[n, k, o] = b[k] + sum_{{c, t}} x[n, gi*C/groups + c, o*stride - pad_before + t*dilation] * w[k, c, t]``
    per spatial position ``o`` and tap ``t`` (both tuples of {rank}), ``gi = k // (K/groups)``, zero outside
    the input. Output size per axis: ``out = floor((in + pad_before + pad_after - dilation*(k-1) - 1) / stride) + 1``.

    Args:
        input: {layout}, float32 or float64; float16 in 1-D and 2-D (algorithms ``direct`` and
            ``implicit_gemm_tc``: products summed in float32, the output rounded once to float16).
        weight: {wlayout}, of the input's dtype.
        bias: (K,) or None.
        stride, dilation: an int or {rank} ints (default 1).
        padding: an int or {rank} ints (both sides), "valid" (none) or "same" (TensorFlow's rule for
            any stride: ``out = ceil(in/stride)``, the extra row/column after). Default 0.
        groups: input and output channels split into this many independent groups (default 1).
        algorithm: "auto" or one of ``convkern.conv_algorithms(device)``; a named algorithm that
            cannot run this convolution raises ValueError saying why.
        activation: None (default), "relu", "tanh" or "sigmoid": returns ``activation(conv + b)``
            with the bias and activation fused into the forward kernel's epilogue (``implicit_gemm``
            on the CPU; one fused pass after the other algorithms) and, backward, the activation's
            gradient and the bias gradient in one pass. Equal to applying ``F.relu`` (...) after.

    Returns a Tensor (N, K, *out).
    """


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algorithm="auto", activation=None):
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups, algorithm, activation)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algorithm="auto", activation=None):
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups, algorithm, activation)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algorithm="auto", activation=None):
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups, algorithm, activation)


for _f, _r in ((conv1d, 1), (conv2d, 2), (conv3d, 3)):
    _f.__doc__ = _CONV_DOC.format(rank=_r, layout=LAYOUTS[_r][0], wlayout=LAYOUTS[_r][1])

_TRANSPOSE_DOC = """{rank}-D transposed convolution (the adjoint of conv{rank}d with the same arguments), PyTorch's semantics.

    ``y[n, gi*C_out/groups + c, i] = b[.] + sum over k in group gi and taps t with i = o*stride - padding + t*dilation
    of x[n, k, o] * w[k, c, t]``. Output size per axis:
    ``out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1``.
    Its forward runs the convolution's backward-data kernels; its backward the forward and
    backward-filter kernels.

    Args:
        input: (N, C_in, *in).
        weight: (C_in, C_out/groups, *kernel).
        bias: (C_out,) or None.
        stride, padding, dilation: an int or {rank} ints (defaults 1, 0, 1).
        output_padding: extra size added after the last position of each axis, an int or {rank} ints,
            each smaller than max(stride, dilation) (default 0).
        groups: default 1.
        algorithm: "auto" or one of ``convkern.conv_algorithms(device)``.

    Returns a Tensor (N, C_out, *out).
    """


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     algorithm="auto"):
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding, output_padding, groups,
                           dilation, algorithm)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     algorithm="auto"):
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding, groups,
                           dilation, algorithm)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     algorithm="auto"):
    return _conv_transpose("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding, groups,
                           dilation, algorithm)


for _f, _r in ((conv_transpose1d, 1), (conv_transpose2d, 2), (conv_transpose3d, 3)):
    _f.__doc__ = _TRANSPOSE_DOC.format(rank=_r)


def depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, algorithm="auto"):
    """TensorFlow's depthwise convolution in convkern's layout: every input channel ``c`` is
    convolved with its own ``M`` filters, giving output channels ``c*M + m``.

    ``y[n, c*M + m, p, q] = b[c*M + m] + sum_{r,s} x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw] * w[c*M + m, 0, r, s]``,
    i.e. ``conv2d(input, weight, bias, stride, padding, dilation, groups=C)``.

    Args:
        input: (N, C, H, W). weight: (C*M, 1, R, S) (TensorFlow's (R, S, C, M) filter, transposed).
        bias: (C*M,) or None. stride, padding, dilation: as ``conv2d``.
    """
    op = "depthwise_conv2d"
    x = as_tensor(input, "input", op)
    w = as_tensor(weight, "weight", op)
    check_rank(x, 4, "input", "(N, C, H, W)", op)
    check_rank(w, 4, "weight", "(C*M, 1, R, S)", op)
    C = x.shape[1]
    if w.shape[1] != 1 or w.shape[0] % C or w.shape[0] == 0:
        raise ValueError(f"{op}: weight must have shape (C*M, 1, R, S) with C={C} input channels, got {w.shape}")
    return _conv(op, 2, x, w, bias, stride, padding, dilation, C, algorithm)


def separable_conv2d(input, depthwise_weight, pointwise_weight, bias=None, stride=1, padding=0, dilation=1,
                     algorithm="auto"):
    """TensorFlow's separable convolution: a depthwise convolution, then a 1x1 convolution
    mixing its C*M channels into K.

    ``y = conv2d(depthwise_conv2d(x, depthwise_weight, None, stride, padding, dilation), pointwise_weight, bias)``.

    Args:
        input: (N, C, H, W). depthwise_weight: (C*M, 1, R, S). pointwise_weight: (K, C*M, 1, 1).
        bias: (K,) or None. stride, padding, dilation: of the depthwise step, as ``conv2d``.
    """
    op = "separable_conv2d"
    x = as_tensor(input, "input", op)
    pw = as_tensor(pointwise_weight, "pointwise_weight", op)
    check_rank(pw, 4, "pointwise_weight", "(K, C*M, 1, 1)", op)
    dw = as_tensor(depthwise_weight, "depthwise_weight", op)
    if dw.ndim == 4 and (pw.shape[1] != dw.shape[0] or pw.shape[2:] != (1, 1)):
        raise ValueError(f"{op}: pointwise_weight must have shape (K, C*M, 1, 1) = (K, {dw.shape[0]}, 1, 1), "
                         f"got {pw.shape}")
    try:
        mid = depthwise_conv2d(x, dw, None, stride, padding, dilation, algorithm)
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("depthwise_conv2d: weight", f"{op}: depthwise_weight")
                      .replace("depthwise_conv2d:", f"{op}:")) from None
    return _conv(op, 2, mid, pw, bias, 1, 0, 1, 1, algorithm)


def atrous_conv2d(input, weight, rate, padding, bias=None, algorithm="auto"):
    """TensorFlow's atrous (dilated) convolution, stride 1, in convkern's layout:
    ``conv2d(input, weight, bias, stride=1, padding=padding, dilation=rate)``.

    ``y[n, k, p, q] = sum_{c,r,s} x[n, c, p - pt + r*rate, q - pl + s*rate] * w[k, c, r, s]``.

    Args:
        input: (N, C, H, W). weight: (K, C, R, S). rate: a positive int (the dilation).
        padding: "same" or "valid" (either case, as TensorFlow's "SAME"/"VALID").
        bias: (K,) or None.
    """
    op = "atrous_conv2d"
    if not isinstance(rate, numbers.Integral) or isinstance(rate, bool) or rate < 1:
        raise ValueError(f"{op}: rate must be a positive int, got {rate!r}")
    if not isinstance(padding, str) or padding.lower() not in ("same", "valid"):
        raise ValueError(f"{op}: padding must be 'same' or 'valid', got {padding!r}")
    return _conv(op, 2, input, weight, bias, 1, padding.lower(), int(rate), 1, algorithm)
