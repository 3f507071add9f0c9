"""cat and bias_add through the autograd graph on CPU and on the CUDA path, finite differences,
bad input, and the residual add x + f(x) (fan-out: both gradient paths are summed)."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from tests.convkern.half_check import check_half


def _cat_shapes(base, dim, sizes):
    d = dim % len(base)
    return [base[:d] + (s,) + base[d + 1:] for s in sizes]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_cat_values_and_gradients(dim, dtype, device):
    rng = np.random.default_rng(dim + 7)
    arrays = [rng.standard_normal(s).astype(dtype) for s in _cat_shapes((2, 3, 4, 5), dim, [1, 3, 2])]
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in arrays]
    y = ck.cat(ts, dim=dim)
    want = np.concatenate(arrays, axis=dim)
    assert y.shape == want.shape and y.dtype == dtype and y.device == device
    np.testing.assert_array_equal(y.numpy(), want)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    for t, g in zip(ts, np.split(dy, np.cumsum([a.shape[dim] for a in arrays])[:-1], axis=dim)):
        assert t.grad.dtype == dtype and t.grad.device == device
        np.testing.assert_array_equal(t.grad.numpy(), g)


def test_cat_only_some_inputs_need_grad_and_zero_size_parts():
    a = ck.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    b = np.ones((2, 0))
    c = ck.tensor(np.full((2, 2), 5.0))
    y = ck.cat((a, b, c), dim=1)
    np.testing.assert_array_equal(y.numpy(), [[0, 1, 2, 5, 5], [3, 4, 5, 5, 5]])
    y.backward(np.arange(10.0).reshape(2, 5))
    np.testing.assert_array_equal(a.grad.numpy(), [[0, 1, 2], [5, 6, 7]])
    assert c.grad is None


def test_cat_single_tensor_and_1d():
    a = ck.tensor(np.arange(3.0), requires_grad=True)
    one = ck.cat([a])
    assert one.data is not a.data
    np.testing.assert_array_equal(ck.cat([a, a], dim=-1).numpy(), [0, 1, 2, 0, 1, 2])


def test_cat_pytorch_agrees():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(2, 1, 3), (2, 4, 3)]]
    np.testing.assert_array_equal(ck.cat(arrays, dim=-2).numpy(),
                                  torch.cat([torch.tensor(a) for a in arrays], dim=-2).numpy())


def test_cat_gradcheck_float64(device):
    rng = np.random.default_rng(2)
    ts = [ck.tensor(rng.standard_normal(s), requires_grad=True, device=device) for s in [(2, 2, 3), (2, 1, 3)]]
    assert ck.gradcheck(lambda a, b: ck.cat([a, b], dim=1), ts, max_checks=None if device == "cpu" else 4)


CAT_BAD = [
    (lambda a: [], ValueError, "cat: expected a non-empty list of tensors"),
    (lambda a: a, TypeError, "cat: tensors must be a list or tuple of tensors, got ndarray"),
    (lambda a: [a, a, np.zeros((2, 3, 5))], ValueError,
     "cat: sizes must match except in dimension 1: tensors[2] has shape (2, 3, 5), tensors[0] has shape (2, 3, 4)"),
    (lambda a: [a, np.zeros((2, 12))], ValueError, "cat: tensors[1] has 2 dimensions"),
    (lambda a: [a, a.astype(np.float32)], TypeError,
     "cat: tensors[1] has dtype float32 but tensors[0] has dtype float64"),
    (lambda a: [a, ck.tensor(a, device="cuda")], ValueError,
     "cat: tensors[1] is on device 'cuda' but tensors[0] is on 'cpu'"),
    (lambda a: [a, [1.0]], TypeError, "cat: tensors[1] must be a convkern Tensor"),
    (lambda a: [a.astype(np.int32)], TypeError, "cat: tensors[0] must be float16, float32 or float64"),
    (lambda a: [ck.Tensor(np.zeros(()))], ValueError, "cat: tensors[0] is zero-dimensional"),
]


@pytest.mark.parametrize("make,exc,message", CAT_BAD, ids=[m for _, _, m in CAT_BAD])
def test_cat_bad_input(make, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        ck.cat(make(np.zeros((2, 3, 4))), dim=1)


@pytest.mark.parametrize("dim", [3, -4, 1.0])
def test_cat_bad_dim(dim):
    a = np.zeros((2, 3, 4))
    with pytest.raises(TypeError if isinstance(dim, float) else ValueError, match="cat: dim must be"):
        ck.cat([a, a], dim=dim)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5)], ids=str)
def test_bias_add_values_and_gradients(shape, dtype, device):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    xt, bt = ck.tensor(x, requires_grad=True, device=device), ck.tensor(b, requires_grad=True, device=device)
    y = F.bias_add(xt, bt)
    bshape = (1, shape[1]) + (1,) * (len(shape) - 2)
    np.testing.assert_allclose(y.numpy(), x.astype(np.float64) + b.reshape(bshape), rtol=1e-6)
    dy = rng.standard_normal(shape).astype(dtype)
    y.backward(dy)
    np.testing.assert_array_equal(xt.grad.numpy(), dy)
    axes = tuple(i for i in range(len(shape)) if i != 1)
    np.testing.assert_allclose(bt.grad.numpy(), dy.astype(np.float64).sum(axis=axes), rtol=1e-5, atol=1e-6)
    assert y.dtype == dtype and bt.grad.dtype == dtype and bt.grad.device == device


def test_bias_add_gradcheck_float64(device):
    rng = np.random.default_rng(4)
    ts = [ck.tensor(rng.standard_normal(s), requires_grad=True, device=device) for s in [(2, 3, 2, 2), (3,)]]
    assert ck.gradcheck(F.bias_add, ts, max_checks=None if device == "cpu" else 4)


BIAS_BAD = [
    (dict(x=(3,)), ValueError, "bias_add: input must be 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W)"),
    (dict(b=(4,)), ValueError, "bias_add: bias must have shape (C,) = (3,), got (4,)"),
    (dict(b=(3, 1)), ValueError, "bias_add: bias must be 1-D (C,)"),
    (dict(b_dtype=np.float32), TypeError, "bias_add: bias has dtype float32 but input has dtype float64"),
]


@pytest.mark.parametrize("case,exc,message", BIAS_BAD, ids=[m for _, _, m in BIAS_BAD])
def test_bias_add_bad_input(case, exc, message):
    x = np.zeros(case.get("x", (2, 3, 4, 4)))
    b = np.zeros(case.get("b", (3,)), case.get("b_dtype", np.float64))
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        F.bias_add(x, b)


def test_residual_add_sums_both_gradient_paths(device):
    """y = x + f(x): x fans out to the identity and to f; x.grad must be the sum of both paths."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((3, 3, 3, 3))
    b = rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    xt, wt, bt = (ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b))
    y = xt + F.bias_add(F.conv2d(xt, wt, padding=1), bt)
    y.backward(dy)
    X, W, B = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    Y = X + torch.nn.functional.conv2d(X, W, B, padding=1)
    Y.backward(torch.tensor(dy))
    for mine, theirs in [(y, Y), (xt.grad, X.grad), (wt.grad, W.grad), (bt.grad, B.grad)]:
        np.testing.assert_allclose(mine.numpy(), theirs.detach().numpy(), rtol=1e-10, atol=1e-10)
    conv_path_only = X.grad.numpy() - dy
    assert np.abs(conv_path_only).max() > 0.1           # both paths contribute


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5)], ids=str)
def test_float16_bias_add_matches_float64(shape, device, rng):
    x = rng.standard_normal(shape).astype(np.float16)
    b = rng.standard_normal(shape[1]).astype(np.float16)
    check_half(F.bias_add, [x, b], device)
