"""The layers around the convolutions: ``linear``, ``flatten``, the activations ``relu``,
``tanh``, ``sigmoid``, ``dropout``, ``softmax``, ``log_softmax`` and the fused
``cross_entropy``, each a ``Function`` over the kernels in ``kernels/`` (``gemm``,
``activation``, ``dropout``, ``softmax``) plus its public wrapper."""
import numbers

import numpy as np

from convkern import amp, backend, random
from convkern.autograd import Function, cast_array
from convkern.kernels import activation, dropout as dropout_kernels, elementwise, gemm, softmax as softmax_kernels
from convkern.kernels.activation import epilogue_code
from convkern.kernels.float16 import accumulator_dtype
from convkern.ops.common import as_tensor, check_float, check_rank, check_same

REDUCTIONS = ("mean", "sum", "none")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _dim(dim, ndim, name, op):
    """``dim`` (negative counts from the end) as an index into a tensor of rank ``ndim``; a 0-d
    tensor has one position, like PyTorch."""
    if not _is_int(dim):
        raise TypeError(f"{op}: {name} must be an int, got {dim!r}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise ValueError(f"{op}: {name} out of range: expected one of [{-rank}, {rank - 1}] for a {ndim}-D input, "
                         f"got {dim}")
    return int(dim) % rank


def _float_input(input, op, half=False):
    x = as_tensor(input, "input", op)
    check_float(x, "input", op, half=half)
    return x


def _no_inplace(inplace, op):
    if inplace:
        raise ValueError(f"{op}: inplace=True is not supported; convkern ops always return a new tensor")


class Linear(Function):
    """y = act(x Wᵀ + b) over the last axis of x (``activation`` None: no act); backward
    dz = dy * act' (from the saved y) with db = Σ_rows dz in one pass, dx = dz W, dW = dzᵀ x."""

    def forward(self, x, w, b):
        need_x, need_w, need_b = self.needs_input_grad
        act = self.params.get("activation")
        out_features, in_features = w.shape
        lead = tuple(x.shape)[:-1]
        rows = int(np.prod(lead, dtype=np.int64))
        x2 = x.reshape((rows, in_features))
        y = backend.empty((rows, out_features), x.dtype, self.device)
        gemm.gemm(x2, w, y, trans_b=True)
        if b is not None or act is not None:
            activation.bias_activation(act, y, b)
        self.x_shape, self.rows, self.out_features = tuple(x.shape), rows, out_features
        self.save_for_backward(x2 if need_w else None, w if need_x else None,
                               y if act is not None and (need_x or need_w or need_b) else None)
        return y.reshape(lead + (out_features,))

    def backward(self, dy):
        need_x, need_w, need_b = self.needs_input_grad
        act = self.params.get("activation")
        x2, w, y = self.saved
        out_features = self.out_features
        dy2 = dy.reshape((self.rows, out_features))
        dx = dw = db = None
        if need_b:
            db = backend.empty((out_features,), dy.dtype, self.device)
        if act is not None:
            dz = backend.empty(dy2.shape, dy.dtype, self.device)
            activation.activation_bias_grad(act, y, dy2, dz, db)
            dy2 = dz
        elif need_b:
            elementwise.bias_grad_nchw(dy2.reshape((self.rows, out_features, 1, 1)), db)
        if need_x:
            dx = backend.empty((self.rows, self.x_shape[-1]), dy.dtype, self.device)
            gemm.gemm(dy2, w, dx)
            dx = dx.reshape(self.x_shape)
        if need_w:
            dw = backend.empty((out_features, self.x_shape[-1]), dy.dtype, self.device)
            gemm.gemm(dy2, x2, dw, trans_a=True)
        return dx, dw, db


def linear(input, weight, bias=None, activation=None):
    """Fully connected layer, PyTorch's ``F.linear``: ``y[..., j] = sum_i x[..., i] * W[j, i] + b[j]``.

    input (*, in_features) with any number of leading dimensions (1-D included); weight
    (out_features, in_features); bias (out_features,) or None. Returns a Tensor
    (*, out_features). The product runs on ``kernels.gemm``: BLAS on the CPU, the hand-written
    tiled kernel on CUDA; the bias is added per feature and its gradient is a deterministic
    column sum. float16 input, weight and bias are multiplied with fp32 accumulation and the
    result rounded to float16 (the gradients likewise).

    ``activation`` None (default), "relu", "tanh" or "sigmoid" returns ``activation(linear)``: the
    bias and activation in one pass over the product, and backward the activation's gradient and
    the bias gradient in one pass (equal to applying ``F.relu`` (...) after).
    """
    op = "linear"
    epilogue_code(activation, op)
    input, weight, bias = amp.autocast_inputs(op, input, weight, bias)
    x = _float_input(input, op, half=True)
    w = as_tensor(weight, "weight", op)
    check_same(w, x, "weight", "input", op)
    check_rank(w, 2, "weight", "(out_features, in_features)", op)
    if x.ndim < 1:
        raise ValueError(f"{op}: input must have at least 1 dimension (*, in_features), got a 0-d tensor")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"{op}: in_features mismatch: input of shape {x.shape} has {x.shape[-1]} features in its "
                         f"last dimension but weight of shape {w.shape} expects in_features = weight.shape[1] = "
                         f"{w.shape[1]}")
    b = None
    if bias is not None:
        b = as_tensor(bias, "bias", op)
        check_same(b, x, "bias", "input", op)
        if b.shape != (w.shape[0],):
            raise ValueError(f"{op}: bias must have shape (out_features,) = ({w.shape[0]},), got {b.shape}")
    return Linear.apply(x, w, b, activation=activation)


def flatten(input, start_dim=1, end_dim=-1):
    """Merge dimensions ``start_dim .. end_dim`` (inclusive; negative counts from the end) into one,
    PyTorch's ``torch.flatten``: (N, C, H, W) with the defaults gives (N, C*H*W). A reshape: no
    data moves, and the gradient is reshaped back. A 0-d input gives shape (1,)."""
    op = "flatten"
    x = as_tensor(input, "input", op)
    if x.ndim == 0:
        return x.reshape((1,))
    start = _dim(start_dim, x.ndim, "start_dim", op)
    end = _dim(end_dim, x.ndim, "end_dim", op)
    if start > end:
        raise ValueError(f"{op}: start_dim ({start_dim}) must not come after end_dim ({end_dim}) "
                         f"for an input of shape {x.shape}")
    merged = int(np.prod(x.shape[start:end + 1], dtype=np.int64))
    return x.reshape(x.shape[:start] + (merged,) + x.shape[end + 1:])


class Activation(Function):
    """y = relu(x), tanh(x) or sigmoid(x); the gradient comes from the saved output y."""

    def forward(self, x):
        y = backend.empty(x.shape, x.dtype, self.device)
        activation.activation_fwd(self.params["op"], backend.flat(x), backend.flat(y))
        if self.needs_input_grad[0]:
            self.save_for_backward(y)
        return y

    def backward(self, dy):
        (y,) = self.saved
        dx = backend.empty(dy.shape, dy.dtype, self.device)
        activation.activation_bwd(self.params["op"], backend.flat(y), backend.flat(dy), backend.flat(dx))
        return (dx,)


def relu(input, inplace=False):
    """``y = max(x, 0)`` elementwise (NaN passes through); the gradient is 0 where ``x <= 0``.
    ``inplace=True`` is not supported."""
    _no_inplace(inplace, "relu")
    return Activation.apply(_float_input(input, "relu", half=True), op="relu")


def tanh(input):
    """``y = tanh(x)`` elementwise; ``dx = dy * (1 - y^2)``."""
    return Activation.apply(_float_input(input, "tanh", half=True), op="tanh")


def sigmoid(input):
    """``y = 1 / (1 + exp(-x))`` elementwise, evaluated without overflow; ``dx = dy * y * (1 - y)``."""
    return Activation.apply(_float_input(input, "sigmoid", half=True), op="sigmoid")


class Dropout(Function):
    """y = x * mask / (1 - p), the mask a counter-based hash of (seed, element index); backward
    recomputes the mask from the seed (nothing else is saved)."""

    def forward(self, x):
        y = backend.empty(x.shape, x.dtype, self.device)
        dropout_kernels.dropout(backend.flat(x), backend.flat(y), self.params["seed"], self.params["p"])
        return y

    def backward(self, dy):
        dx = backend.empty(dy.shape, dy.dtype, self.device)
        dropout_kernels.dropout(backend.flat(dy), backend.flat(dx), self.params["seed"], self.params["p"])
        return (dx,)


def dropout(input, p=0.5, training=True, inplace=False, seed=None):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``, so that
    ``E[y] = x``; PyTorch's ``F.dropout``. With ``training=False`` or ``p == 0`` the input is
    returned unchanged.

    The mask is a pure function of ``seed`` and the element's flat index (see
    ``kernels/dropout.py``): the same seed gives the same mask on the CPU and on CUDA, in float16,
    float32 and float64. ``seed=None`` draws one from convkern's global generator, so
    ``convkern.manual_seed`` makes a run reproducible. ``0 <= p < 1``; ``inplace=True`` is not
    supported.
    """
    op = "dropout"
    x = _float_input(input, op, half=True)
    _no_inplace(inplace, op)
    if not isinstance(p, numbers.Real) or isinstance(p, bool):
        raise TypeError(f"{op}: p must be a number in [0, 1), got {p!r}")
    if not 0 <= p < 1:
        raise ValueError(f"{op}: p must be in [0, 1), got {p!r}")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ValueError(f"{op}: seed must be None or a non-negative int, got {seed!r}")
    if not training or p == 0:
        return x
    return Dropout.apply(x, p=float(p), seed=random.next_seed() if seed is None else int(seed))


def _outer_c_inner(shape, dim):
    outer = int(np.prod(shape[:dim], dtype=np.int64))
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    return outer, (shape[dim] if shape else 1), inner


class Softmax(Function):
    """Softmax or log-softmax over one axis, the array viewed as (outer, C, inner); the gradient
    comes from the saved output."""

    def forward(self, x):
        mode, view = self.params["mode"], self.params["view"]
        y = backend.empty(x.shape, x.dtype, self.device)
        if y.size:
            softmax_kernels.softmax_fwd(mode, x.reshape(view), y.reshape(view))
        if self.needs_input_grad[0]:
            self.save_for_backward(y)
        return y

    def backward(self, g):
        mode, view = self.params["mode"], self.params["view"]
        (y,) = self.saved
        dx = backend.empty(g.shape, g.dtype, self.device)
        if dx.size:
            softmax_kernels.softmax_bwd(mode, y.reshape(view), g.reshape(view), dx.reshape(view))
        return (dx,)


def _softmax(input, dim, mode):
    (input,) = amp.autocast_inputs(mode, input)
    x = _float_input(input, mode, half=True)
    d = _dim(dim, x.ndim, "dim", mode)
    return Softmax.apply(x, mode=mode, view=_outer_c_inner(x.shape, d))


def softmax(input, dim):
    """``y = exp(x - m) / sum_dim exp(x - m)`` along ``dim`` (required; negative counts from the
    end) with ``m = max_dim x``, so no ``exp`` overflows. Any rank; the output has the input's
    shape. Backward: ``dx = y * (g - sum_dim g * y)``. float16 input gives float16 output, computed
    in float32 (under ``convkern.amp.autocast`` float16 input is cast to float32 first)."""
    return _softmax(input, dim, "softmax")


def log_softmax(input, dim):
    """``y = (x - m) - log(sum_dim exp(x - m))`` along ``dim`` (required) with ``m = max_dim x``:
    finite for any finite logits. Backward: ``dx = g - exp(y) * sum_dim g``. float16 as ``softmax``."""
    return _softmax(input, dim, "log_softmax")


class CrossEntropy(Function):
    """Per-row loss ``logsumexp(x[n]) - x[n, label]`` in one pass over the logits, then the
    reduction; backward ``dx = (softmax(x) - onehot(label)) * g`` (divided by the count of rows
    not ignored for "mean") from the saved logits and per-row max and log-sum. The count is
    summed where the logits are, so a CUDA step never reads the labels on the host.

    Float16 logits: the per-row losses, statistics and count, the reduction and the incoming
    gradient are float32 (``accumulator_dtype``); only the returned loss is rounded to float16."""

    def forward(self, x):
        labels, ignore, reduction = self.params["labels"], self.params["ignore_index"], self.params["reduction"]
        N = x.shape[0]
        acc = accumulator_dtype(x.dtype)
        loss = backend.empty((N,), acc, self.device)
        stats = backend.empty((N, 2), acc, self.device)
        counted = backend.empty((N,), acc, self.device)
        softmax_kernels.cross_entropy_fwd(x, labels, ignore, loss, stats, counted)
        count = None
        if reduction == "mean":
            count = backend.empty((1,), acc, self.device)
            elementwise.sum_all(counted, count)
        if self.needs_input_grad[0]:
            self.save_for_backward(x, stats, count)
        if reduction == "none":
            return _to_dtype(loss, x.dtype)
        total = backend.empty((1,), acc, self.device)
        elementwise.sum_all(loss, total)
        if reduction == "mean":
            elementwise.binary("div", total, count, total)
        return _to_dtype(total, x.dtype).reshape(())

    def backward(self, g):
        labels, ignore = self.params["labels"], self.params["ignore_index"]
        x, stats, count = self.saved
        g = _to_dtype(g.reshape(g.shape if g.ndim else (1,)), stats.dtype)
        if count is not None:
            scaled = backend.empty((1,), stats.dtype, self.device)
            elementwise.binary("div", g, count, scaled)
            g = scaled
        dx = backend.empty(x.shape, x.dtype, self.device)
        softmax_kernels.cross_entropy_bwd(x, stats, labels, ignore, g, 1.0, dx)
        return (dx,)


def _to_dtype(a, dtype):
    """``a`` itself when it has ``dtype``, else a converted copy."""
    return a if a.dtype == dtype else cast_array(a, dtype)


def _labels(target, x, ignore_index, op):
    """The target as int64 labels on the logits' device. CPU targets are checked against the C
    classes here; CUDA targets by the kernel, on the device (raised at the next host read)."""
    t = as_tensor(target, "target", op)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices (any integer dtype), got dtype {t.dtype}; "
                        "class probabilities are not supported")
    if t.device != x.device:
        raise ValueError(f"{op}: target is on device {t.device!r} but input is on {x.device!r}; "
                         f"move it with .to({x.device!r})")
    N, C = x.shape
    if t.shape != (N,):
        raise ValueError(f"{op}: target must have shape (N,) = ({N},) for input of shape {x.shape}, got {t.shape}")
    if t.device == "cuda" and t.dtype == np.int64:
        return t.data
    host = t.numpy().astype(np.int64)       # int64 CUDA targets avoid this round trip
    bad = (host != ignore_index) & ((host < 0) | (host >= C))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{op}: target values must be class indices in [0, {C - 1}] (C = {C}) or "
                         f"ignore_index={ignore_index}; got target[{i}] = {t.numpy()[i]}")
    return t.data if t.dtype == np.int64 else backend.to_device(host, x.device)


def cross_entropy(input, target, *, reduction="mean", ignore_index=-100):
    """Softmax cross-entropy of logits, PyTorch's ``F.cross_entropy`` for class-index targets.

    input: logits (N, C), float16, float32 or float64 (float16: computed in float32 and the loss
    rounded to float16 as PyTorch; under ``convkern.amp.autocast`` float16 logits are cast to
    float32 first, so the loss is float32). target: (N,) integer class indices in [0, C) (any
    integer dtype; values equal to ``ignore_index`` are skipped), on the input's device.
    Per row ``loss[n] = logsumexp(x[n]) - x[n, target[n]]`` with
    ``logsumexp(x[n]) = m + log(sum_c exp(x[n, c] - m))``, ``m = max_c x[n, c]``: finite for any
    finite logits. ``reduction``: "mean" (sum over the rows not ignored divided by their count;
    NaN when every row is ignored), "sum" (a 0-d Tensor each) or "none" (the (N,) losses, 0 on
    ignored rows). The sums are deterministic. Gradient:
    ``dx[n, c] = (softmax(x[n])[c] - [c == target[n]]) * g``. PyTorch's (C,) and
    (N, C, d1, ...) inputs, class weights and label smoothing are not supported.

    A target value outside [0, C) raises ValueError: here for CPU tensors; for CUDA tensors the
    kernel checks it on the device and the next host read (``numpy()``, ``item()``,
    ``convkern.cuda.synchronize()``) raises ``convkern.cuda.DeviceCheckError`` (a ValueError).
    """
    op = "cross_entropy"
    (input,) = amp.autocast_inputs(op, input)
    x = _float_input(input, op, half=True)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{op}: input must be 2-D logits (N, C) with C >= 1, got shape {x.shape} (PyTorch's (C,) "
                         "and (N, C, d1, ...) forms are not supported: move the class axis last and reshape to "
                         "(-1, C))")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not _is_int(ignore_index):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    labels = _labels(target, x, int(ignore_index), op)
    return CrossEntropy.apply(x, labels=labels, ignore_index=int(ignore_index), reduction=reduction)
