"""batch_norm through the autograd graph on CPU and on the CUDA path: outputs, gradients and
updated running statistics against PyTorch (when installed), finite differences, the
running-statistics contract and bad input."""
import numpy as np
import pytest
from numba import cuda

import convkern as ck
import convkern.functional as F

SHAPES = [(4, 3), (2, 3, 5), (2, 3, 4, 3)]


def _case(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + 0.5).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, rm, rv, dy


# float64 on the CUDA path is covered by the kernel tests and the gradient check
@pytest.mark.parametrize("device, dtype", [("cpu", np.float32), ("cpu", np.float64), ("cuda", np.float32)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_matches_pytorch(shape, training, affine, device, dtype):
    torch = pytest.importorskip("torch")
    x, w, b, rm, rv, dy = _case(shape, dtype)
    xt, wt, bt = (ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b))
    rm_t, rv_t = ck.tensor(rm.copy(), device=device), ck.tensor(rv.copy(), device=device)
    kw = dict(training=training, momentum=0.3, eps=1e-3)
    y = F.batch_norm(xt, rm_t, rv_t, wt if affine else None, bt if affine else None, **kw)
    y.backward(dy)

    X, W, B = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    RM, RV = torch.tensor(rm), torch.tensor(rv)
    Y = torch.nn.functional.batch_norm(X, RM, RV, W if affine else None, B if affine else None, **kw)
    Y.backward(torch.tensor(dy))

    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    pairs = [(y, Y), (xt.grad, X.grad), (rm_t, RM), (rv_t, RV)]
    if affine:
        pairs += [(wt.grad, W.grad), (bt.grad, B.grad)]
    for mine, theirs in pairs:
        assert mine.dtype == dtype and mine.device == device
        np.testing.assert_allclose(mine.numpy(), theirs.detach().numpy(), **tol)


def test_batch_norm_5d_input_matches_pytorch():
    torch = pytest.importorskip("torch")
    x, w, b, rm, rv, dy = _case((2, 3, 2, 3, 2), np.float64)
    xt = ck.tensor(x, requires_grad=True)
    F.batch_norm(xt, rm.copy(), rv.copy(), w, b, training=True).backward(dy)
    X = torch.tensor(x, requires_grad=True)
    torch.nn.functional.batch_norm(X, None, None, torch.tensor(w), torch.tensor(b), training=True).backward(
        torch.tensor(dy))
    np.testing.assert_allclose(xt.grad.numpy(), X.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_running_stats_update_in_place_with_unbiased_variance(device):
    x, _, _, rm, rv, _ = _case((3, 2, 4), np.float64)
    rm_d = cuda.to_device(rm) if device == "cuda" else rm.copy()
    rv_t = ck.tensor(rv.copy(), device=device)
    y = F.batch_norm(ck.tensor(x, device=device), rm_d, rv_t, training=True, momentum=0.25)
    mean = x.mean(axis=(0, 2))
    biased = x.var(axis=(0, 2))
    unbiased = x.var(axis=(0, 2), ddof=1)
    host_rm = rm_d.copy_to_host() if device == "cuda" else rm_d
    np.testing.assert_allclose(host_rm, 0.75 * rm + 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv_t.numpy(), 0.75 * rv + 0.25 * unbiased, rtol=1e-12)
    # normalisation itself uses the biased batch variance
    want = (x - mean[None, :, None]) / np.sqrt(biased[None, :, None] + 1e-5)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-12)


def test_training_without_running_stats_and_under_no_grad():
    x, _, _, rm, rv, _ = _case((4, 3), np.float64)
    y = F.batch_norm(x, None, None, training=True)
    np.testing.assert_allclose(y.numpy(), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-10)
    rm1, rv1 = rm.copy(), rv.copy()
    with ck.no_grad():
        F.batch_norm(x, rm1, rv1, training=True)
    assert not np.array_equal(rm1, rm) and not np.array_equal(rv1, rv)


def test_eval_uses_running_stats_and_leaves_them_alone(device):
    x, w, b, rm, rv, _ = _case((1, 3, 2, 2), np.float64)           # M = 4; N = 1 is fine
    rm_t, rv_t = ck.tensor(rm, device=device), ck.tensor(rv, device=device)
    y = F.batch_norm(ck.tensor(x, device=device), rm_t, rv_t, ck.tensor(w, device=device),
                     ck.tensor(b, device=device), eps=0.01)
    want = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 0.01) * w[None, :, None, None] \
        + b[None, :, None, None]
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12)
    np.testing.assert_array_equal(rm_t.numpy(), rm)
    np.testing.assert_array_equal(rv_t.numpy(), rv)
    one_value = F.batch_norm(x[:, :, :1, :1], rm, rv)                # M = 1 is allowed in eval
    assert one_value.shape == (1, 3, 1, 1)


def test_eval_backward_keeps_the_statistics_of_its_forward():
    x, w, _, rm, rv, dy = _case((2, 3, 4), np.float64)
    xt, wt = ck.tensor(x, requires_grad=True), ck.tensor(w, requires_grad=True)
    rm1, rv1 = rm.copy(), rv.copy()
    y = F.batch_norm(xt, rm1, rv1, wt)
    F.batch_norm(x, rm1, rv1, training=True)                         # changes the buffers in place
    y.backward(dy)
    invstd = 1 / np.sqrt(rv + 1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), dy * (w * invstd)[None, :, None], rtol=1e-12)
    xhat = (x - rm[None, :, None]) * invstd[None, :, None]
    np.testing.assert_allclose(wt.grad.numpy(), (dy * xhat).sum(axis=(0, 2)), rtol=1e-12)


def test_bias_only_gradient_saves_nothing():
    x, w, b, rm, rv, dy = _case((2, 3, 4), np.float32)
    bt = ck.tensor(b, requires_grad=True)
    y = F.batch_norm(x, rm, rv, w, bt, training=True)
    assert y.grad_fn.saved == ()
    y.backward(dy)
    np.testing.assert_allclose(bt.grad.numpy(), dy.astype(np.float64).sum(axis=(0, 2)), rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck_float64(training, device):
    x, w, b, rm, rv, _ = _case((3, 2, 2, 2), np.float64, seed=4)
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    rm_t, rv_t = ck.tensor(rm, device=device), ck.tensor(rv, device=device)

    def fn(x_, w_, b_):
        return F.batch_norm(x_, rm_t, rv_t, w_, b_, training=training, eps=1e-3)
    assert ck.gradcheck(fn, ts, max_checks=None if device == "cpu" else 5)


def test_batch_norm_gradcheck_2d_no_affine():
    x = np.random.default_rng(5).standard_normal((5, 3))
    assert ck.gradcheck(lambda t: F.batch_norm(t, None, None, training=True), [ck.tensor(x, requires_grad=True)])


BAD_INPUTS = [
    (dict(x=(3,)), ValueError, "input must be at least 2-D: (N, C), (N, C, L), (N, C, H, W), ..., got shape (3,)"),
    (dict(rm=(4,)), ValueError, "running_mean must have shape (C,) = (3,), got (4,)"),
    (dict(rv=(3, 1)), ValueError, "running_var must have shape (C,) = (3,), got (3, 1)"),
    (dict(w=(2,)), ValueError, "weight must have shape (C,) = (3,), got (2,)"),
    (dict(b=(4,)), ValueError, "bias must have shape (C,) = (3,), got (4,)"),
    (dict(rm=None, rv=None), ValueError, "running_mean and running_var are required when training=False"),
    (dict(rv=None, training=True), ValueError, "running_mean and running_var must be given together"),
    (dict(x=(1, 3), training=True), ValueError, "expected more than 1 value per channel when training"),
    (dict(x=(1, 3, 1, 1), training=True), ValueError, "expected more than 1 value per channel when training"),
    (dict(rm_dtype=np.float64), TypeError, "running_mean has dtype float64 but input has dtype float32"),
    (dict(x_dtype=np.int64), TypeError, "input must be float16, float32 or float64"),
    (dict(x_dtype=np.float16, w=(3,), w_dtype=np.float64), TypeError,
     "weight has dtype float64; with a float16 input it must be float16 or float32"),
    (dict(x_dtype=np.float16, rv_dtype=np.float16), TypeError,
     "running_mean has dtype float32 but running_var has dtype float16"),
    (dict(rm_dtype=np.float16, rv_dtype=np.float16), TypeError,
     "running_mean has dtype float16 but input has dtype float32"),
    (dict(momentum=None), TypeError, "momentum must be a finite real number"),
    (dict(eps=-1.0), ValueError, "eps must be >= 0"),
    (dict(rm_strided=True), ValueError, "running_mean must be a writeable C-contiguous array"),
    (dict(x_type=list), TypeError, "input must be a convkern Tensor, a NumPy array or a CUDA"),
]


@pytest.mark.parametrize("case,exc,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_batch_norm_bad_input(case, exc, message):
    x = np.ones(case.get("x", (2, 3, 2)), case.get("x_dtype", np.float32))
    stat = {k: None if case.get(k, 0) is None else np.ones(case.get(k, (3,)), case.get(k + "_dtype", np.float32))
            for k in ("rm", "rv")}
    if case.get("rm_strided"):
        stat["rm"] = np.ones(6, np.float32)[::2]
    kw = {k: np.ones(case[k], case.get(k + "_dtype", np.float32)) for k in ("w", "b") if k in case}
    kw.update({k: case[k] for k in ("training", "momentum", "eps") if k in case})
    kw = {{"w": "weight", "b": "bias"}.get(k, k): v for k, v in kw.items()}
    if case.get("x_type") is list:
        x = x.tolist()
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        F.batch_norm(x, stat["rm"], stat["rv"], **kw)


def test_batch_norm_device_mismatch():
    x = ck.tensor(np.ones((2, 3), np.float32), device="cuda")
    with pytest.raises(ValueError, match="running_mean is on device 'cpu' but input is on 'cuda'"):
        F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32))


def _bn_reference(x, w, b, rm, rv, dy, training, momentum, eps):
    """batch_norm in float64 of the given values, written out over the channel axis 1: y, dx, dw,
    db and the updated running statistics."""
    x, w, b, rm, rv, dy = (a.astype(np.float64) for a in (x, w, b, rm, rv, dy))
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    M = x.size // x.shape[1]
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var * M / (M - 1)
    else:
        mean, var = rm, rv
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    g = dy * w.reshape(shape)                                   # d loss / d xhat
    if training:
        dx = invstd.reshape(shape) / M * (M * g - g.sum(axis=axes).reshape(shape)
                                          - xhat * (g * xhat).sum(axis=axes).reshape(shape))
    else:
        dx = g * invstd.reshape(shape)
    return [xhat * w.reshape(shape) + b.reshape(shape), dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes), rm, rv]


@pytest.mark.parametrize("param_dtype", [np.float32, np.float16], ids=["float32-params", "float16-params"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_batch_norm_float16_input(device, training, param_dtype):
    """float16 input with float32 parameters (what autocast gives a BatchNorm after a conv) or
    all-float16 parameters (a model made .half()): float32 statistics, a float16 output, each
    gradient in its tensor's dtype; against float64 of the same float16 values."""
    x, w, b, rm, rv, dy = _case((2, 3, 4, 3), np.float32, seed=6)
    x, dy = x.astype(np.float16), dy.astype(np.float16)
    w, b, rm, rv = (a.astype(param_dtype) for a in (w, b, rm, rv))
    xt, wt, bt = (ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b))
    rm_t, rv_t = ck.tensor(rm.copy(), device=device), ck.tensor(rv.copy(), device=device)
    y = F.batch_norm(xt, rm_t, rv_t, wt, bt, training=training, momentum=0.3, eps=1e-3)
    y.backward(ck.tensor(dy, device=device))
    want = _bn_reference(x, w, b, rm, rv, dy, training, 0.3, 1e-3)
    got = (y, xt.grad, wt.grad, bt.grad, rm_t, rv_t)
    dtypes = (np.float16, np.float16) + (param_dtype,) * 4
    for name, mine, theirs, dtype in zip(("y", "dx", "dw", "db", "running_mean", "running_var"), got, want, dtypes):
        assert mine.dtype == dtype and mine.device == device, name
        # float16 results: their own rounding; float32 ones: float32 sums of 24 float16 products
        tol = 2e-3 if dtype == np.float16 else 1e-4
        np.testing.assert_allclose(mine.numpy().astype(np.float64), theirs, rtol=tol, atol=tol * np.abs(theirs).max(),
                                   err_msg=name)


def test_batch_norm_float16_bias_only_gradient_is_summed_in_float32():
    """A float32 bias of float16 data gets the float32 sum of the float16 gradient, not a float16 one."""
    x = np.ones((2, 3, 2048), np.float16)
    dy = np.full(x.shape, 1.0 + 2.0 ** -10, np.float16)   # 4096 * dy is not a float16
    bt = ck.tensor(np.zeros(3, np.float32), requires_grad=True)
    F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), None, bt).backward(dy)
    assert bt.grad.dtype == np.float32
    np.testing.assert_array_equal(bt.grad.numpy(), np.full(3, 4096 * (1.0 + 2.0 ** -10), np.float32))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_relu_is_the_fused_composition(shape, training, device):
    from tests.convkern.test_conv import assert_fused_equals_composed
    x, w, b, rm, rv, _ = _case(shape, np.float64)

    def bn(x, w, b, **kw):
        return F.batch_norm(x, ck.tensor(rm.copy(), device=device), ck.tensor(rv.copy(), device=device), w, b,
                            training=training, **kw)
    assert_fused_equals_composed(lambda x, w, b: bn(x, w, b, activation="relu"), lambda x, w, b: F.relu(bn(x, w, b)),
                                 [x, w, b], device, np.float64, rtol=1e-9, atol=1e-11)


def test_batch_norm_relu_bias_only_gradient(device):
    x, w, b, rm, rv, dy = _case((2, 3, 4), np.float64)
    bt = ck.tensor(b, requires_grad=True, device=device)
    y = F.batch_norm(ck.tensor(x, device=device), ck.tensor(rm, device=device), ck.tensor(rv, device=device),
                     ck.tensor(w, device=device), bt, training=True, activation="relu")
    y.backward(ck.tensor(dy, device=device))
    np.testing.assert_allclose(bt.grad.numpy(), np.where(y.numpy() > 0, dy, 0).sum(axis=(0, 2)), rtol=1e-12)


def test_batch_norm_activation_bad_input():
    x, w, b, rm, rv, _ = _case((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="batch_norm: activation must be None or 'relu'"):
        F.batch_norm(x, rm, rv, w, b, training=True, activation="tanh")
