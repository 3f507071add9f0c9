"""local_response_norm and lrn through the autograd graph, on CPU and the CUDA path: against
PyTorch (when installed), against finite differences, and bad input."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F


def _random_configs(n, seed, max_channels, max_pixels):
    """(shape, form, window, alpha, beta, k): form "pt" takes window = size, "tf" window = depth_radius."""
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        C = int(rng.integers(1, max_channels + 1))
        spatial = [tuple(int(v) for v in rng.integers(1, max_pixels + 1, size=d)) for d in (1, 2, 3)]
        shape = (int(rng.integers(1, 3)), C) + spatial[int(rng.choice(3, p=[0.25, 0.5, 0.25]))]
        beta = float(rng.choice([0.75, 0.5, 1.0, 0.6, 1.3]))
        k = float(rng.choice([1.0, 2.0, 0.5]))
        if rng.random() < 0.5:
            configs.append((shape, "pt", int(rng.integers(1, C + 3)), float(rng.choice([1e-4, 1e-2, 0.5])), beta, k))
        else:
            configs.append((shape, "tf", int(rng.integers(0, C + 1)), float(rng.choice([1e-4, 1e-2, 0.1])), beta, k))
    return configs


def _convkern(x, form, window, alpha, beta, k):
    if form == "pt":
        return F.local_response_norm(x, window, alpha=alpha, beta=beta, k=k)
    return F.lrn(x, depth_radius=window, bias=k, alpha=alpha, beta=beta)


def _torch(torch, x, form, window, alpha, beta, k):
    if form == "pt":
        return torch.nn.functional.local_response_norm(x, window, alpha=alpha, beta=beta, k=k)
    size = 2 * window + 1   # TensorFlow's window r is PyTorch's size 2r+1 with alpha scaled by it
    return torch.nn.functional.local_response_norm(x, size, alpha=alpha * size, beta=beta, k=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_matches_pytorch(device, dtype):
    torch = pytest.importorskip("torch")
    configs = _random_configs(6, 1, 4, 4) if device == "cuda" else _random_configs(30, 2, 40, 9)
    rng = np.random.default_rng(3)
    for shape, form, window, alpha, beta, k in configs:
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        xt = ck.tensor(x, requires_grad=True, device=device)
        y = _convkern(xt, form, window, alpha, beta, k)
        y.backward(dy)
        xr = torch.tensor(x, requires_grad=True)
        yr = _torch(torch, xr, form, window, alpha, beta, k)
        yr.backward(torch.tensor(dy))
        tol = 2e-5 if dtype == np.float32 else 1e-12
        msg = f"{shape} {form} window={window} alpha={alpha} beta={beta} k={k}"
        assert y.shape == shape and y.dtype == dtype and y.device == device
        np.testing.assert_allclose(y.numpy(), yr.detach().numpy(), rtol=tol, atol=tol, err_msg=msg)
        np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=tol, atol=tol, err_msg=msg)


def test_alexnet_parameters_in_both_conventions():
    """AlexNet's k=2, n=5, alpha=1e-4, beta=0.75 is lrn(r=2) = local_response_norm(size=5, alpha=5e-4)."""
    x = np.random.default_rng(4).standard_normal((2, 16, 5, 5)).astype(np.float32) * 30
    tf_form = F.lrn(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75).numpy()
    pt_form = F.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0).numpy()
    np.testing.assert_allclose(tf_form, pt_form, rtol=1e-6)
    x64 = x.astype(np.float64)
    sq = np.pad(x64 ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    s = 2.0 + 1e-4 * sum(sq[:, i:i + 16] for i in range(5))
    np.testing.assert_allclose(tf_form, x64 / s ** 0.75, rtol=1e-5)


@pytest.mark.parametrize("form, window", [("pt", 4), ("pt", 3), ("tf", 1), ("tf", 0)])
def test_lrn_gradcheck(device, form, window):
    rng = np.random.default_rng(5)
    shape = (2, 3, 3, 2) if device == "cuda" else (2, 5, 3, 2)
    x = ck.tensor(rng.standard_normal(shape), requires_grad=True, device=device)
    beta = 0.75 if window % 2 else 0.6
    ck.gradcheck(lambda t: _convkern(t, form, window, 0.3, beta, 1.2), [x], eps=1e-6, atol=1e-7, rtol=1e-5,
                 max_checks=8 if device == "cuda" else None)


def test_lrn_without_grad_matches_with_grad(device):
    x = np.random.default_rng(6).standard_normal((2, 4, 3, 3))
    with ck.no_grad():
        a = F.lrn(ck.tensor(x, requires_grad=True, device=device), 1, 1.5, 0.2, 0.75)
    b = F.lrn(ck.tensor(x, requires_grad=True, device=device), 1, 1.5, 0.2, 0.75)
    assert a.grad_fn is None and b.grad_fn is not None
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_lrn_accepts_numpy_and_empty_batches():
    x = np.ones((0, 3, 4), np.float32)
    y = F.local_response_norm(x, 2)
    assert isinstance(y, ck.Tensor) and y.shape == (0, 3, 4)


X4 = np.zeros((1, 3, 4, 4), np.float32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.local_response_norm(X4[0, 0], 3), ValueError,
     r"local_response_norm: input must be 3-D .*got shape \(4, 4\)"),
    (lambda: F.lrn(X4[0, 0, 0], 1), ValueError, r"lrn: input must be 3-D .*got shape \(4,\)"),
    (lambda: F.local_response_norm(X4.astype(np.int64), 3), TypeError,
     "local_response_norm: input must be float32 or float64"),
    (lambda: F.lrn(X4.astype(np.int32)), TypeError, "lrn: input must be float32 or float64"),
    (lambda: F.local_response_norm([1.0, 2.0], 3), TypeError, "local_response_norm: input must be a convkern Tensor"),
    (lambda: F.local_response_norm(X4, 0), ValueError, "local_response_norm: size must be >= 1, got 0"),
    (lambda: F.local_response_norm(X4, 2.0), TypeError, "local_response_norm: size must be an int"),
    (lambda: F.local_response_norm(X4, True), TypeError, "local_response_norm: size must be an int"),
    (lambda: F.lrn(X4, depth_radius=-1), ValueError, "lrn: depth_radius must be >= 0, got -1"),
    (lambda: F.lrn(X4, depth_radius=1.5), TypeError, "lrn: depth_radius must be an int"),
    (lambda: F.local_response_norm(X4, 3, alpha="1"), TypeError, "local_response_norm: alpha must be a finite real"),
    (lambda: F.local_response_norm(X4, 3, k=float("nan")), TypeError, "local_response_norm: k must be a finite real"),
    (lambda: F.lrn(X4, 2, bias=None), TypeError, "lrn: bias must be a finite real"),
    (lambda: F.lrn(X4, 2, beta=float("inf")), TypeError, "lrn: beta must be a finite real"),
])
def test_lrn_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
