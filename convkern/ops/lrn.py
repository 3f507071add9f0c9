"""Cross-channel local response normalisation: the ``LocalResponseNorm`` Function and the public
``local_response_norm`` (PyTorch's convention) and ``lrn`` (TensorFlow's and the AlexNet paper's)."""
import math
import numbers

from convkern import backend
from convkern.autograd import Function, is_grad_enabled
from convkern.kernels import lrn as lrn_kernels
from convkern.ops.common import as_tensor, check_float


class LocalResponseNorm(Function):
    """``y = x * s^-beta``, ``s = k + alpha * sum of x^2`` over the channel window [c - lo, c + hi]
    (clipped to the channels); the forward keeps ``s^-beta`` and ``s^(-beta-1)`` for backward."""

    def forward(self, x):
        p = self.params
        y = backend.empty(x.shape, x.dtype, self.device)
        saved = ()
        if self.needs_input_grad[0] and is_grad_enabled():
            saved = (backend.empty(x.shape, x.dtype, self.device), backend.empty(x.shape, x.dtype, self.device))
            self.save_for_backward(x, *saved)
        lrn_kernels.lrn_fwd(x, y, p["lo"], p["hi"], p["alpha"], p["beta"], p["k"], *saved)
        return y

    def backward(self, dy):
        p = self.params
        x, sb, sb1 = self.saved
        dx = backend.empty(x.shape, x.dtype, self.device)
        lrn_kernels.lrn_bwd(x, sb, sb1, dy, dx, p["lo"], p["hi"], p["alpha"], p["beta"])
        return (dx,)


def _input(value, op):
    x = as_tensor(value, "input", op)
    check_float(x, "input", op)
    if x.ndim < 3:
        raise ValueError(f"{op}: input must be 3-D (N, C, L), 4-D (N, C, H, W) or higher (N, C, ...), "
                         f"normalised across dimension 1; got shape {x.shape}")
    return x


def _int(value, name, op, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


def _number(value, name, op):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{op}: {name} must be a finite real number, got {value!r}")
    return float(value)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels, PyTorch's convention.

    ``y[n,c,...] = x[n,c,...] / (k + alpha/size * sum_{j} x[n,j,...]^2) ** beta`` with j running
    over ``c - size//2 ... c + (size-1)//2``, channels outside [0, C) counting as zero (so the
    window is centred for odd size and reaches one channel further down for even size, and
    alpha is always divided by the full size).

    input (N, C, L), (N, C, H, W) or any (N, C, ...), float32 or float64; size an int >= 1.
    Returns a Tensor of input's shape. The TensorFlow form ``lrn(depth_radius=r, bias, alpha_tf,
    beta)`` equals ``local_response_norm(size=2r+1, alpha=alpha_tf*(2r+1), beta, k=bias)``.
    """
    op = "local_response_norm"
    x = _input(input, op)
    size = _int(size, "size", op, 1)
    alpha, beta, k = _number(alpha, "alpha", op), _number(beta, "beta", op), _number(k, "k", op)
    return LocalResponseNorm.apply(x, lo=size // 2, hi=(size - 1) // 2, alpha=alpha / size, beta=beta, k=k)


def lrn(input, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
    """Local response normalisation across channels, TensorFlow's (``tf.nn.lrn``) and the AlexNet
    paper's convention, on NCHW data (TensorFlow's "depth" is the channel dimension 1 here).

    ``y[n,c,...] = x[n,c,...] / (bias + alpha * sum_{j=c-r}^{c+r} x[n,j,...]^2) ** beta`` with
    ``r = depth_radius`` and channels outside [0, C) counting as zero; alpha is *not* divided by
    the window size. AlexNet (k=2, n=5, alpha=1e-4, beta=0.75) is ``lrn(x, 2, 2.0, 1e-4, 0.75)``.

    input (N, C, L), (N, C, H, W) or any (N, C, ...), float32 or float64; depth_radius an int >= 0.
    Returns a Tensor of input's shape.
    """
    op = "lrn"
    x = _input(input, op)
    r = _int(depth_radius, "depth_radius", op, 0)
    bias, alpha, beta = _number(bias, "bias", op), _number(alpha, "alpha", op), _number(beta, "beta", op)
    return LocalResponseNorm.apply(x, lo=r, hi=r, alpha=alpha, beta=beta, k=bias)
