"""Batch normalisation: the ``BatchNorm`` Function and the public ``batch_norm``."""
import math
import numbers

import numpy as np

from convkern import backend
from convkern.autograd import Function, cast_array
from convkern.kernels import activation, batchnorm, elementwise
from convkern.kernels.float16 import accumulator_dtype
from convkern.ops.common import as_tensor, check_float, check_same


def _copy(a):
    out = backend.empty(a.shape, a.dtype, backend.device_of(a))
    elementwise.scalar("mul", a, 1.0, out)
    return out


def _as(a, dtype):
    """``a`` itself when it has ``dtype``, else a converted copy (None stays None)."""
    return a if a is None or a.dtype == dtype else cast_array(a, dtype)


class BatchNorm(Function):
    """y = (x - mean) * invstd * weight + bias per channel of x viewed as (N, C, L); in training
    the batch statistics are used (and the running ones updated), in eval the running ones.

    The kernels take the per-channel arrays in the statistics dtype (float32 for float16 x):
    float16 weight, bias or running statistics are converted for them, and the weight and bias
    gradients converted back to their parameter's dtype."""

    def forward(self, x, w, b):
        p = self.params
        need_x, need_w, _ = self.needs_input_grad
        N, C = x.shape[0], x.shape[1]
        if x.size == 0:
            # no values: an empty output, the running statistics untouched (PyTorch), no launch
            self.shape3 = (N, C, 0)
            return backend.empty(x.shape, x.dtype, self.device)
        shape3 = (N, C, x.size // (N * C))
        x3 = x.reshape(shape3)
        stat = accumulator_dtype(x.dtype)
        w, b = _as(w, stat), _as(b, stat)
        if p["training"]:
            mean = backend.empty((C,), stat, self.device)
            var = backend.empty((C,), stat, self.device)
            batchnorm.batchnorm_stats(x3, mean, var)
            if p["running_mean"] is not None:
                m = shape3[0] * shape3[2]
                batchnorm.batchnorm_update_running(p["running_mean"], p["running_var"], mean, var,
                                                   p["momentum"], m / (m - 1))
        else:
            mean, var = p["running_mean"], p["running_var"]
            if mean.dtype != stat:
                mean, var = cast_array(mean, stat), cast_array(var, stat)
            elif need_x or need_w:  # backward must see these values even if the buffers change later
                mean, var = _copy(mean), _copy(var)
        y = backend.empty(x.shape, x.dtype, self.device)
        relu = p.get("activation") == "relu"
        batchnorm.batchnorm_fwd(x3, mean, var, w, b, p["eps"], y.reshape(shape3), relu=relu)
        self.shape3 = shape3
        if need_x or need_w:
            self.save_for_backward(x3, mean, var, w if need_x else None, y.reshape(shape3) if relu else None)
        elif relu:  # only the bias needs a gradient: the ReLU mask
            self.save_for_backward(None, None, None, None, y.reshape(shape3))
        return y

    def backward(self, dy):
        p = self.params
        need_x, need_w, need_b = self.needs_input_grad
        N, C, L = self.shape3
        _, w_dtype, b_dtype = p["grad_dtypes"]
        if dy.size == 0:  # the sums over no values are zero
            return (backend.empty(dy.shape, dy.dtype, self.device) if need_x else None,
                    backend.zeros((C,), w_dtype, self.device) if need_w else None,
                    backend.zeros((C,), b_dtype, self.device) if need_b else None)
        x3, mean, var, w, y3 = self.saved or (None,) * 5
        if not (need_x or need_w):
            # the bias's dtype throughout: a float32 bias of float16 data gets a float32 sum
            db = backend.empty((C,), b_dtype, self.device)
            if y3 is None:
                elementwise.bias_grad_nchw(_as(dy, b_dtype).reshape((N, C, L, 1)), db)
            else:
                dz = backend.empty(y3.shape, dy.dtype, self.device)
                db_data = db if b_dtype == dy.dtype else backend.empty((C,), dy.dtype, self.device)
                activation.activation_bias_grad("relu", y3, dy.reshape(self.shape3), dz, db_data)
                db = _as(db_data, b_dtype)
            return None, None, db
        dy3 = dy.reshape(self.shape3)
        sum_dy = sum_dy_xhat = dx = None
        if need_w or need_b or p["training"]:
            sum_dy = backend.empty((C,), mean.dtype, self.device)
            sum_dy_xhat = backend.empty((C,), mean.dtype, self.device)
            batchnorm.batchnorm_bwd_reduce(x3, dy3, mean, var, p["eps"], sum_dy, sum_dy_xhat, relu_output=y3)
        if need_x:
            dx = backend.empty(dy.shape, dy.dtype, self.device)
            batchnorm.batchnorm_bwd_data(x3, dy3, mean, var, w, sum_dy, sum_dy_xhat, p["eps"], p["training"],
                                         dx.reshape(self.shape3), relu_output=y3)
        return dx, (_as(sum_dy_xhat, w_dtype) if need_w else None), (_as(sum_dy, b_dtype) if need_b else None)


def _per_channel(value, name, x, op):
    """An optional (C,) argument as a Tensor of x's dtype and device, or float16 or float32 for a
    float16 x (PyTorch's half batch norm takes float32 parameters); None stays None."""
    if value is None:
        return None
    t = as_tensor(value, name, op)
    if x.dtype != backend.HALF or t.device != x.device:
        check_same(t, x, name, "input", op)
    elif t.dtype not in (backend.HALF, np.dtype(np.float32)):
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; with a float16 input it must be float16 or float32")
    if t.shape != (x.shape[1],):
        raise ValueError(f"{op}: {name} must have shape (C,) = ({x.shape[1]},), got {t.shape}")
    return t


def _running_stat(value, name, x, op):
    """An optional running statistic as the array that is updated in place (None stays None)."""
    if isinstance(value, np.ndarray) and not (value.flags.c_contiguous and value.flags.writeable
                                              and value.dtype.isnative):
        raise ValueError(f"{op}: {name} must be a writeable C-contiguous array: it is updated in place")
    t = _per_channel(value, name, x, op)
    return None if t is None else t.data


def _number(value, name, op):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{op}: {name} must be a finite real number, got {value!r}")
    return float(value)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               activation=None):
    """Batch normalisation, PyTorch's semantics, over the channels (dimension 1) of input
    (N, C), (N, C, L), (N, C, H, W) or any (N, C, ...) viewed as (N, C, L), L the product of
    the trailing sizes: statistics per channel over the M = N*L values.

    ``y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]`` (weight 1, bias 0 when None).

    training=True: ``mean``, ``var`` are the batch mean and *biased* variance (``Σ(x-mean)²/M``);
    when given, running_mean and running_var are updated in place,
    ``running_mean = (1-momentum)*running_mean + momentum*mean`` and
    ``running_var = (1-momentum)*running_var + momentum*var*M/(M-1)`` (the unbiased variance).
    M must be > 1 (an empty input gives an empty output and leaves them unchanged, as in
    PyTorch). training=False: ``mean``, ``var`` are running_mean and running_var (required).

    Gradients flow to input, weight and bias (in training through the batch statistics:
    ``dx = weight*invstd/M * (M*dy - Σdy - xhat*Σ(dy*xhat))``), never to the running statistics.
    Returns a Tensor of input's shape and dtype.

    float16 input (storage; PyTorch's half batch norm): weight, bias, running_mean and
    running_var may each be float16 or float32; the statistics are computed and the output
    evaluated in float32 and rounded to float16 once. Each gradient has its tensor's dtype.

    ``activation="relu"`` returns ``relu(batch_norm(...))`` fused: the ReLU in the normalising
    pass, and backward its mask applied as the batch-norm kernels read ``dy`` (from the saved
    output; no ReLU gradient is stored). Equal to ``F.relu`` after.
    """
    op = "batch_norm"
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    x = as_tensor(input, "input", op)
    check_float(x, "input", op, half=True)
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be at least 2-D: (N, C), (N, C, L), (N, C, H, W), ..., got shape {x.shape}")
    rm = _running_stat(running_mean, "running_mean", x, op)
    rv = _running_stat(running_var, "running_var", x, op)
    if (rm is None) != (rv is None):
        raise ValueError(f"{op}: running_mean and running_var must be given together (or both None)")
    if rm is not None and rm.dtype != rv.dtype:
        raise TypeError(f"{op}: running_mean has dtype {rm.dtype} but running_var has dtype {rv.dtype}")
    if not training and rm is None:
        raise ValueError(f"{op}: running_mean and running_var are required when training=False")
    w = _per_channel(weight, "weight", x, op)
    b = _per_channel(bias, "bias", x, op)
    momentum = _number(momentum, "momentum", op)
    eps = _number(eps, "eps", op)
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps!r}")
    if training and x.size and x.size // x.shape[1] == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got input size {x.shape}")
    grad_dtypes = tuple(None if t is None else t.dtype for t in (x, w, b))
    return BatchNorm.apply(x, w, b, running_mean=rm, running_var=rv, training=bool(training),
                           momentum=momentum, eps=eps, grad_dtypes=grad_dtypes, activation=activation)

