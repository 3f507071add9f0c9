import numpy as np
import pytest
from numba import cuda

from convkern.kernels import elementwise as ew
from convkern.kernels.cuda_util import is_device_array
from tests.reference import tolerance

DTYPES = [np.float32, np.float64]
SHAPES = [(1,), (37,), (64,), (3, 5, 7)]       # 37 and 105 elements: not a multiple of the block
SUM_SIZES = [1, 37, 1000, 40_000]              # 1000: several CUDA blocks; 40 000: several CPU chunks


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def garbage(shape, dtype, device):
    return put(np.full(shape, np.nan, dtype), device)


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


def check(got, want, dtype):
    rtol, atol = tolerance(dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(host(got), want, rtol=rtol, atol=atol)


def operands(rng, shape, dtype, count):
    return [rng.uniform(0.5, 2.0, shape).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, ref", [("add", np.add), ("sub", np.subtract),
                                     ("mul", np.multiply), ("div", np.divide)])
def test_binary(op, ref, dtype, shape, device, rng):
    a, b = operands(rng, shape, dtype, 2)
    out = garbage(shape, dtype, device)
    ew.binary(op, put(a, device), put(b, device), out)
    check(out, ref(a.astype(np.float64), b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_accumulates_in_place(dtype, device, rng):
    acc, g = operands(rng, (3, 5, 7), dtype, 2)
    acc_d = put(acc, device)
    ew.binary("add", acc_d, put(g, device), acc_d)
    check(acc_d, acc.astype(np.float64) + g, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, ref", [
    ("add", lambda a, v: a + v), ("sub", lambda a, v: a - v), ("rsub", lambda a, v: v - a),
    ("mul", lambda a, v: a * v), ("div", lambda a, v: a / v), ("rdiv", lambda a, v: v / a),
    ("pow", lambda a, v: a ** v),
])
@pytest.mark.parametrize("value", [1.7, -0.5])
def test_scalar(op, ref, value, dtype, shape, device, rng):
    (a,) = operands(rng, shape, dtype, 1)
    out = garbage(shape, dtype, device)
    ew.scalar(op, put(a, device), value, out)
    check(out, ref(a.astype(np.float64), float(dtype(value))), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, ref", [("neg", np.negative), ("exp", np.exp), ("log", np.log), ("sqrt", np.sqrt)])
def test_unary(op, ref, dtype, shape, device, rng):
    (a,) = operands(rng, shape, dtype, 1)
    out = garbage(shape, dtype, device)
    ew.unary(op, put(a, device), out)
    check(out, ref(a.astype(np.float64)), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fill(dtype, shape, device):
    out = garbage(shape, dtype, device)
    ew.fill(out, 0.1)
    assert (host(out) == dtype(0.1)).all()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_scalar(dtype, shape, device):
    out = garbage(shape, dtype, device)
    ew.broadcast_scalar(put(np.array([2.5], dtype), device), out)
    assert (host(out) == dtype(2.5)).all()


@pytest.mark.parametrize("n", SUM_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_all(n, dtype, device, rng):
    a = rng.standard_normal(n).astype(dtype)
    out = garbage((1,), dtype, device)
    ew.sum_all(put(a, device), out)
    check(out, [a.astype(np.float64).sum()], dtype)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (3, 4, 7, 9)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_add_nchw(dtype, shape, device, rng):
    y, b = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    y_d = put(y, device)
    ew.bias_add_nchw(y_d, put(b, device))
    check(y_d, y.astype(np.float64) + b[None, :, None, None], dtype)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (3, 4, 7, 9)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_nchw(dtype, shape, device, rng):
    dy = rng.standard_normal(shape).astype(dtype)
    db = garbage(shape[1], dtype, device)
    ew.bias_grad_nchw(put(dy, device), db)
    check(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_are_bitwise_deterministic(dtype, device, rng):
    a = (rng.standard_normal(40_000) * 1e3).astype(dtype)
    dy = rng.standard_normal((5, 3, 9, 11)).astype(dtype)
    a_d, dy_d = put(a, device), put(dy, device)
    runs = []
    for _ in range(2):
        total, db = garbage((1,), dtype, device), garbage(3, dtype, device)
        ew.sum_all(a_d, total)
        ew.bias_grad_nchw(dy_d, db)
        runs.append((host(total).tobytes(), host(db).tobytes()))
    assert runs[0] == runs[1]


def test_bad_arguments_are_rejected():
    a = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="unknown op 'pow'"):
        ew.binary("pow", a, a, a)
    with pytest.raises(ValueError, match="share one shape"):
        ew.binary("add", a, np.ones(5, np.float32), a)
    with pytest.raises(TypeError, match="float64"):
        ew.unary("exp", np.ones(4), a)
    with pytest.raises(TypeError, match="float32 or float64"):
        ew.fill(np.ones(4, np.int64), 1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        ew.unary("neg", np.ones(8, np.float32)[::2], a)
    with pytest.raises(ValueError, match="shape \\(1,\\)"):
        ew.sum_all(a, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="bias of shape"):
        ew.bias_add_nchw(np.ones((1, 3, 2, 2), np.float32), np.ones(2, np.float32))
