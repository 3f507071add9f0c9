"""Finite-difference gradient check for any differentiable function of Tensors."""
import numpy as np

from convkern import backend
from convkern.autograd import Tensor, no_grad, tensor


class GradcheckError(RuntimeError):
    """An analytic gradient disagrees with the finite-difference one."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, max_checks=None, seed=0, raise_exception=True):
    """Check the gradients of ``fn(*inputs)`` against central finite differences.

    ``inputs``: a sequence; its float64 Tensors with ``requires_grad=True`` are checked, anything
    else (ints, tuples, Tensors without grad) is passed to ``fn`` unchanged. ``fn`` returns a
    Tensor of any shape; with a fixed random probe ``v`` of that shape, the scalar
    ``L = sum(fn(*inputs) * v)`` is differentiated both ways: ``x.grad`` from ``backward()`` and
    ``(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`` for each element ``i`` (or ``max_checks``
    random elements per input, for large or simulated inputs). An element passes when
    ``|analytic - numeric| <= atol + rtol * |numeric|``.

    Returns True; on a mismatch raises ``GradcheckError`` naming the input, the element and both
    values (or returns False with ``raise_exception=False``).
    """
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: inputs must contain at least one Tensor with requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} must be float64 (finite differences in float32 are "
                            f"too coarse), got {inputs[i].dtype}")
    if eps <= 0:
        raise ValueError(f"gradcheck: eps must be > 0, got {eps}")

    rng = np.random.default_rng(seed)
    leaves = [Tensor(t.data, requires_grad=True) if i in checked else t for i, t in enumerate(inputs)]
    out = fn(*leaves)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a convkern Tensor, got {type(out).__name__}")
    if not out.requires_grad:
        raise GradcheckError("gradcheck: fn's output does not depend on any checked input (no grad_fn)")
    probe = rng.standard_normal(out.shape)
    (out * tensor(probe, device=out.device)).sum().backward()

    hosts = {i: inputs[i].numpy().copy() for i in checked}

    def loss(i, host):
        args = list(inputs)
        args[i] = tensor(host, device=inputs[i].device)
        with no_grad():
            y = fn(*args)
        return float((backend.to_numpy(y.data).astype(np.float64) * probe).sum())

    for i in checked:
        grad = leaves[i].grad
        analytic = np.zeros(inputs[i].shape) if grad is None else grad.numpy()
        host = hosts[i]
        size = host.size
        picks = range(size) if max_checks is None or max_checks >= size else \
            rng.choice(size, size=max_checks, replace=False)
        for j in picks:
            idx = np.unravel_index(int(j), host.shape)
            old = host[idx]
            host[idx] = old + eps
            plus = loss(i, host)
            host[idx] = old - eps
            minus = loss(i, host)
            host[idx] = old
            numeric = (plus - minus) / (2 * eps)
            if not abs(analytic[idx] - numeric) <= atol + rtol * abs(numeric):
                if not raise_exception:
                    return False
                raise GradcheckError(f"gradcheck: gradient of input {i} at index {tuple(int(k) for k in idx)}: "
                                     f"analytic {analytic[idx]!r}, finite difference {numeric!r} "
                                     f"(atol={atol}, rtol={rtol})")
    return True
