"""The autograd core: Tensor arithmetic and reductions, accumulation, graph order, no_grad,
device moves and the errors of misuse."""
import warnings

import numpy as np
import pytest

import convkern as ck
from tests.convkern.half_check import check_half


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


# ---- float16 storage: Cast, half/float/double/to(dtype), arithmetic and reductions

def test_cast_methods_convert_and_send_gradients_back_in_the_source_dtype(device):
    a = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) + np.float32(1e-4)   # not float16 numbers
    t = ck.tensor(a, requires_grad=True, device=device)
    h = t.half()
    assert h.dtype == np.float16 and h.device == device and h.grad_fn is not None
    np.testing.assert_array_equal(h.numpy(), a.astype(np.float16))
    rounded = a.astype(np.float16)
    for u, want in [(h.float(), rounded.astype(np.float32)), (h.double(), rounded.astype(np.float64)),
                    (t.to(np.float16), rounded), (t.to(device, np.float64), a.astype(np.float64)),
                    (h.to(dtype=np.float32), rounded.astype(np.float32))]:
        assert u.dtype == want.dtype and u.device == device
        np.testing.assert_array_equal(u.numpy(), want)
    assert t.to(np.float32) is t and t.float() is t and h.half() is h
    (h * h).sum().backward()
    assert t.grad.dtype == np.float32                      # a float32 leaf gets a float32 gradient
    np.testing.assert_array_equal(t.grad.numpy(), (2 * a.astype(np.float16)).astype(np.float32))


def test_to_moves_and_casts_together_with_one_gradient_path():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = ck.tensor(a, requires_grad=True)
    u = t.to("cuda", np.float16)
    assert u.device == "cuda" and u.dtype == np.float16
    (u * 3.0).sum().backward()
    assert t.grad.device == "cpu" and t.grad.dtype == np.float64
    np.testing.assert_array_equal(t.grad.numpy(), np.full(a.shape, 3.0))


def test_float16_arithmetic_matches_float64_of_the_same_values(device):
    a, b, _, _ = _pair(device, np.float16)
    # ~10 ops, each rounding its float16 result once (2^-11 relative): 1e-2 covers their chain
    check_half(lambda x, y: ((x + y) * x - y / x + 2.0 * x - 3.0 / y + x ** 3 - (1.0 - y) + (-x)), [a, b], device,
               rtol=1e-2, atol=1e-2)


def test_float16_sum_and_mean_accumulate_in_float32(device):
    """Float32 partial sums: 2100 ones sum to 2100 (a float16 running sum stops at 2048). The
    mean scales before rounding: finite where the float16 sum overflows (inf, as in PyTorch)."""
    assert ck.tensor(np.ones(2100, np.float16), device=device).sum().item() == 2100.0
    big = ck.tensor(np.full(100, 1000.0, np.float16), requires_grad=True, device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)   # the simulator's float16()
        total = big.sum()
    assert total.dtype == np.float16 and total.item() == np.inf
    m = big.mean()
    assert m.dtype == np.float16 and m.item() == 1000.0
    m.backward()
    assert big.grad.dtype == np.float16
    np.testing.assert_array_equal(big.grad.numpy(), np.float16(1 / 100))


def test_float16_misuse_raises_clear_errors(device):
    h = ck.tensor(np.ones(3, np.float16), device=device)
    with pytest.raises(TypeError, match="other operand has dtype float32 but the tensor has dtype float16"):
        h + ck.tensor(np.ones(3, np.float32), device=device)
    with pytest.raises(TypeError, match="to: dtype must be float16, float32 or float64, got int32"):
        h.to(np.int32)
    with pytest.raises(TypeError, match="half: dtype must be"):
        h._cast("not a dtype", "half")
    with pytest.raises(TypeError, match=r"to: expected \(device, dtype\)"):
        h.to(np.float32, np.float64)
    ints = ck.tensor(np.arange(3), device=device)
    if device == "cuda":
        with pytest.raises(TypeError, match="cannot convert a CUDA tensor of dtype int64 to float16"):
            ints.half()
    else:
        assert ints.half().dtype == np.float16 and ints.float().numpy().tolist() == [0.0, 1.0, 2.0]


def test_sum_and_mean_run_in_float32_under_autocast(device):
    x = ck.tensor(np.full(100, 1000.0, np.float16), requires_grad=True, device=device)
    with ck.amp.autocast():
        total, mean = x.sum(), x.mean()
    assert total.dtype == mean.dtype == np.float32
    assert total.item() == 100_000.0 and mean.item() == 1000.0       # 100 000 overflows float16
    (total + mean).backward()
    assert x.grad.dtype == np.float16
    np.testing.assert_array_equal(x.grad.numpy(), np.float16(1 + 1 / 100))
    assert ck.tensor(np.ones(2, np.float16), device=device).sum().dtype == np.float16   # outside autocast
