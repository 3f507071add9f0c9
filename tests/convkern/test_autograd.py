"""The autograd core: Tensor arithmetic and reductions, accumulation, graph order, no_grad,
device moves and the errors of misuse."""
import numpy as np
import pytest

import convkern as ck


def _pair(device, dtype=np.float64, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, shape).astype(dtype)
    b = rng.uniform(0.5, 2.0, shape).astype(dtype)
    return a, b, ck.tensor(a, requires_grad=True, device=device), ck.tensor(b, requires_grad=True, device=device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arithmetic_values_and_gradients(device, dtype):
    a, b, ta, tb = _pair(device, dtype)
    out = ((ta + tb) * ta - tb / ta + 2.0 * ta - 3.0 / tb + ta ** 3 - (1.0 - tb) + (-ta)).sum()
    expected = ((a + b) * a - b / a + 2 * a - 3 / b + a ** 3 - (1 - b) - a).sum()
    out.backward()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.item(), expected, rtol=rtol)
    np.testing.assert_allclose(ta.grad.numpy(), 2 * a + b + b / a ** 2 + 2 + 3 * a ** 2 - 1, rtol=rtol)
    np.testing.assert_allclose(tb.grad.numpy(), a - 1 / a + 3 / b ** 2 + 1, rtol=rtol)
    assert ta.grad.dtype == dtype and ta.grad.device == device


def test_mean_reshape_and_fan_out(device):
    a, _, ta, _ = _pair(device)
    y = ta.reshape(4, 3)
    loss = (y * y).mean() + y.reshape(-1).sum()
    loss.backward()
    np.testing.assert_allclose(loss.item(), (a * a).mean() + a.sum(), rtol=1e-12)
    np.testing.assert_allclose(ta.grad.numpy(), 2 * a / a.size + 1, rtol=1e-12)


def test_gradients_accumulate_across_backward_calls(device):
    a, _, ta, _ = _pair(device)
    (ta * 2.0).sum().backward()
    (ta * 3.0).sum().backward()
    np.testing.assert_allclose(ta.grad.numpy(), np.full(a.shape, 5.0))


def test_backward_with_explicit_grad(device):
    a, _, ta, _ = _pair(device)
    g = np.arange(a.size, dtype=np.float64).reshape(a.shape)
    (ta * ta).backward(g)
    np.testing.assert_allclose(ta.grad.numpy(), 2 * a * g)


def test_deep_graph_has_no_recursion_limit():
    t = ck.tensor(np.ones(3), requires_grad=True)
    y = t
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), np.ones(3))


def test_no_grad_records_nothing(device):
    _, _, ta, _ = _pair(device)
    with ck.no_grad():
        y = ta * 2.0
    assert not y.requires_grad and y.grad_fn is None
    assert ck.is_grad_enabled()


def test_to_device_round_trip_carries_gradient():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = ck.tensor(a, requires_grad=True)
    u = t.to("cuda")
    assert u.device == "cuda" and u.dtype == np.float32
    (u * u).sum().backward()
    assert t.grad.device == "cpu"
    np.testing.assert_allclose(t.grad.numpy(), 2 * a)
    np.testing.assert_array_equal(u.to("cpu").numpy(), a)


def test_detach_shares_data_and_cuts_graph():
    t = ck.tensor(np.ones(3), requires_grad=True)
    d = (t * 2.0).detach()
    assert not d.requires_grad and d.grad_fn is None
    np.testing.assert_array_equal(d.numpy(), [2.0, 2.0, 2.0])


def test_tensor_constructor_normalises_arrays():
    big_endian = np.arange(4, dtype=">f4")
    t = ck.tensor(big_endian)
    assert t.dtype == np.float32 and t.data.dtype.isnative
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    assert ck.tensor(strided).data.flags.c_contiguous
    assert ck.tensor([[1.0, 2.0]]).shape == (1, 2)


def test_misuse_raises_clear_errors(device):
    _, _, ta, _ = _pair(device)
    with pytest.raises(RuntimeError, match="grad must be given for a non-scalar tensor of shape"):
        (ta * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        ck.tensor(np.ones(2), device=device).sum().backward()
    with pytest.raises(ValueError, match="same shape"):
        ta + ck.tensor(np.ones(3), device=device)
    with pytest.raises(TypeError, match="dtype float32 but the tensor has dtype float64"):
        ta * ck.tensor(np.ones((3, 4), np.float32), device=device)
    with pytest.raises(ValueError, match="cannot reshape"):
        ta.reshape(5, 3)
    with pytest.raises(TypeError, match="requires_grad=True needs a float16, float32 or float64 tensor"):
        ck.tensor(np.arange(3), requires_grad=True)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        ck.tensor(np.ones(2), device="gpu")
    y = (ta * ta).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_device_mismatch_in_arithmetic():
    a = ck.tensor(np.ones(3))
    b = ck.tensor(np.ones(3), device="cuda")
    with pytest.raises(ValueError, match="is on device 'cuda' but the tensor is on 'cpu'"):
        a + b
