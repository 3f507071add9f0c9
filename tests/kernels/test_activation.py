import warnings

import numpy as np
import pytest
from numba import cuda

from convkern.kernels import activation
from convkern.kernels.cuda_util import is_device_array
from tests.reference import tolerance

DTYPES = [np.float32, np.float64, np.float16]     # float16: stored as float16, computed in float32
SHAPES = [(1,), (37,), (3, 5, 7)]           # 37 and 105 elements: not a multiple of the block
OPS = ["relu", "tanh", "sigmoid"]


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


def garbage(shape, dtype, device):
    return put(np.full(shape, np.nan, dtype), device)


def forward_ref(op, x):
    x = x.astype(np.float64)
    if op == "relu":
        return np.where(x > 0, x, 0.0)
    if op == "tanh":
        return np.tanh(x)
    return 0.5 * (1 + np.tanh(x / 2))          # sigmoid, without overflow


def backward_ref(op, x, dy):
    """d op(x) / dx * dy from the input x."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    if op == "relu":
        return np.where(x > 0, dy, 0.0)
    if op == "tanh":
        return dy / np.cosh(x) ** 2
    s = forward_ref("sigmoid", x)
    return dy * s * (1 - s)


def backward_from_output_ref(op, y, dy):
    """The gradient from the saved output y itself (the kernel's formula), in float64."""
    y, dy = y.astype(np.float64), dy.astype(np.float64)
    if op == "relu":
        return np.where(y > 0, dy, 0.0)
    return dy * (1 - y * y) if op == "tanh" else dy * y * (1 - y)


def inputs(rng, shape, dtype):
    x = rng.uniform(-4, 4, shape)
    x.reshape(-1)[0] = 0.0                       # relu's kink: output 0, gradient 0
    return x.astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_activation_fwd(op, dtype, shape, device, rng):
    x = inputs(rng, shape, dtype)
    y = garbage(shape, dtype, device)
    activation.activation_fwd(op, put(x, device), y)
    rtol, atol = tolerance(dtype)
    assert y.dtype == dtype
    np.testing.assert_allclose(host(y), forward_ref(op, x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_activation_bwd_from_output(op, dtype, shape, device, rng):
    x = inputs(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = forward_ref(op, x).astype(dtype)
    dx = garbage(shape, dtype, device)
    activation.activation_bwd(op, put(y, device), put(dy, device), dx)
    rtol, atol = tolerance(dtype)
    # float16: y's rounding (2^-11) moves 1 - y^2 far more than the kernel's error, so compare with
    # the formula on the same stored y
    want = backward_from_output_ref(op, y, dy) if dtype == np.float16 else backward_ref(op, x, dy)
    assert dx.dtype == dtype
    np.testing.assert_allclose(host(dx), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_without_overflow(dtype, device):
    x = np.array([-1000, -100, -30, 0, 30, 100, 1000], dtype)
    for op, want in [("sigmoid", [0, 0, 0, 0.5, 1, 1, 1]), ("tanh", [-1, -1, -1, 0, 1, 1, 1])]:
        y = garbage(x.shape, dtype, device)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            activation.activation_fwd(op, put(x, device), y)
        np.testing.assert_allclose(host(y), want, atol=1e-12)


def test_relu_passes_nan_and_zeroes_its_gradient_at_and_below_zero(device):
    x = np.array([np.nan, -1.0, -0.0, 0.0, 2.0])
    y = garbage(x.shape, np.float64, device)
    activation.activation_fwd("relu", put(x, device), y)
    np.testing.assert_array_equal(host(y), [np.nan, 0, 0, 0, 2])
    dx = garbage(x.shape, np.float64, device)
    activation.activation_bwd("relu", y, put(np.ones(5), device), dx)
    np.testing.assert_array_equal(host(dx)[1:], [0, 0, 0, 1])


@pytest.mark.parametrize("op", OPS)
def test_activation_in_place(op, device, rng):
    x = inputs(rng, (4, 9), np.float64)
    buf = put(x, device)
    activation.activation_fwd(op, buf, buf)
    np.testing.assert_allclose(host(buf), forward_ref(op, x), rtol=1e-12, atol=1e-12)


def test_activation_bad_arguments():
    a = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="unknown op 'gelu'"):
        activation.activation_fwd("gelu", a, a)
    with pytest.raises(ValueError, match="share one shape"):
        activation.activation_bwd("relu", a, np.ones(5, np.float32), a)
    with pytest.raises(TypeError, match="float64"):
        activation.activation_fwd("tanh", np.ones(4), a)


def test_float32_tanh_is_within_a_few_ulp():
    x = np.concatenate([np.linspace(-10, 10, 100_001), 10.0 ** np.arange(-40, 1, 0.05)]).astype(np.float32)
    x = np.concatenate([x, -x])
    y = np.empty_like(x)
    activation.activation_fwd("tanh", x, y)
    want = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert (np.abs(y - want) <= 6 * ulp).all()


EPILOGUES = [None, "relu", "tanh", "sigmoid"]
LAYER_SHAPES = [(2, 3, 5), (5, 4), (1, 2, 3, 7)]   # (N, K, ...): a conv's output, a linear's (rows, features)


@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", EPILOGUES)
def test_bias_activation(op, dtype, shape, device, rng):
    x = inputs(rng, shape, dtype)
    b = rng.uniform(-1, 1, shape[1]).astype(dtype)
    y = put(x, device)
    activation.bias_activation(op, y, put(b, device))
    pre = x.astype(np.float64) + b.astype(np.float64).reshape((1, -1) + (1,) * (len(shape) - 2))
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(y), pre if op is None else forward_ref(op, pre), rtol=rtol, atol=atol)


@pytest.mark.parametrize("op", ["relu", "tanh"])
def test_bias_activation_without_bias_is_the_activation(op, device, rng):
    x = inputs(rng, (3, 4, 5), np.float64)
    y = put(x, device)
    activation.bias_activation(op, y, None)
    np.testing.assert_allclose(host(y), forward_ref(op, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", LAYER_SHAPES + [(3, 2, 300)], ids=str)   # 600 values: several CUDA splits
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", EPILOGUES)
def test_activation_bias_grad(op, dtype, shape, device, rng):
    y = (inputs(rng, shape, dtype) if op in (None, "relu") else forward_ref(op, inputs(rng, shape, dtype))).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = garbage(shape, dtype, device)
    db = garbage(shape[1], dtype, device)
    activation.activation_bias_grad(op, put(y, device), put(dy, device), dx, db)
    want = dy.astype(np.float64) if op is None else backward_from_output_ref(op, y, dy)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(dx), want, rtol=rtol, atol=atol)
    axes = (0,) + tuple(range(2, len(shape)))
    scale = np.sqrt(want.size / shape[1])            # a sum of that many rounded terms
    np.testing.assert_allclose(host(db), want.sum(axis=axes), rtol=rtol * scale, atol=atol * scale)


def test_activation_bias_grad_without_db_is_the_activation_gradient(device, rng):
    y = forward_ref("tanh", inputs(rng, (2, 3, 4), np.float64))
    dy = rng.standard_normal(y.shape)
    dx = garbage(y.shape, np.float64, device)
    activation.activation_bias_grad("tanh", put(y, device), put(dy, device), dx)
    np.testing.assert_allclose(host(dx), backward_from_output_ref("tanh", y, dy), rtol=1e-12)


def test_activation_bias_grad_is_bitwise_deterministic(device, rng):
    y = inputs(rng, (4, 3, 257), np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    runs = []
    for _ in range(2):
        db = garbage(3, np.float32, device)
        activation.activation_bias_grad("relu", put(y, device), put(dy, device), garbage(y.shape, np.float32, device),
                                        db)
        runs.append(host(db))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_fused_epilogue_bad_arguments():
    y = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="activation must be None or one of"):
        activation.bias_activation("gelu", y, None)
    with pytest.raises(ValueError, match=r"bias must have shape \(K,\) = \(3,\)"):
        activation.bias_activation("relu", y, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        activation.bias_activation(None, y, np.ones(3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        activation.bias_activation("relu", np.ones(3, np.float32), None)
    with pytest.raises(ValueError, match="share one shape"):
        activation.activation_bias_grad("relu", y, np.ones((2, 3, 5), np.float32), y, np.ones(3, np.float32))
