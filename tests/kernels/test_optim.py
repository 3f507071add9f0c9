"""The fused optimizer kernels against the update rules written out in NumPy float64 (of the same
inputs, for float16 too)."""
import numpy as np
import pytest
from numba import cuda

from convkern.kernels import optim as kernels
from convkern.kernels.cuda_util import is_device_array
from tests.reference import tolerance

DTYPES = [np.float32, np.float64, np.float16]     # float16 parameters and state: float32 math, rounded once


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("first, nesterov", [(True, False), (False, False), (False, True)])
def test_sgd_step(first, nesterov, dtype, device, rng):
    p, g, buf = (rng.standard_normal(37).astype(dtype) for _ in range(3))
    lr, mu, tau, wd = 0.1, 0.9, 0.2 if not nesterov else 0.0, 0.01
    d = g.astype(np.float64) + wd * p
    b = d if first else mu * buf + (1 - tau) * d
    want_p = p - lr * (d + mu * b if nesterov else b)
    pd, bd = put(p, device), put(buf, device)
    kernels.sgd_step(pd, put(g, device), bd, lr, mu, tau, wd, nesterov, first)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(pd), want_p, rtol=rtol, atol=atol)
    np.testing.assert_allclose(host(bd), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_step(dtype, device, rng):
    p, g = (rng.standard_normal(37).astype(dtype) for _ in range(2))
    m, v = rng.standard_normal(37).astype(dtype), rng.uniform(0.1, 1, 37).astype(dtype)
    lr, b1, b2, eps, wd, step = 0.01, 0.9, 0.999, 1e-8, 0.1, 3
    d = g.astype(np.float64) + wd * p
    m2, v2 = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
    want = p - lr / (1 - b1 ** step) * m2 / (np.sqrt(v2) / np.sqrt(1 - b2 ** step) + eps)
    pd, md, vd = put(p, device), put(m, device), put(v, device)
    kernels.adam_step(pd, put(g, device), md, vd, lr, b1, b2, eps, wd, step)
    rtol, atol = tolerance(dtype)
    for got, ref in [(pd, want), (md, m2), (vd, v2)]:
        np.testing.assert_allclose(host(got), ref, rtol=rtol, atol=atol)


def test_mismatched_state_is_refused():
    with pytest.raises(ValueError, match="must match the parameter's shape"):
        kernels.sgd_step(np.ones(3), np.ones(3), np.ones(4), 0.1)


def test_float16_update_is_computed_in_float32(device):
    """Intermediates that float16 cannot hold: Adam's eps = 1e-8 (0 in float16, so 0 / 0 with
    zero moments) and SGD's weight_decay * p = 2 * 60000 (inf in float16)."""
    zeros = np.zeros(4, np.float16)
    p = put(np.ones(4, np.float16), device)
    kernels.adam_step(p, put(zeros, device), put(zeros, device), put(zeros, device), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    np.testing.assert_array_equal(host(p), 1.0)
    p = put(np.full(4, 60000, np.float16), device)
    kernels.sgd_step(p, put(zeros, device), put(zeros, device), 0.25, weight_decay=2.0)
    np.testing.assert_array_equal(host(p), 30000.0)
