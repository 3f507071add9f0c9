import warnings

import numpy as np
import pytest
from numba import cuda

from convkern.kernels import elementwise as ew
from convkern.kernels.cuda_util import is_device_array
from convkern.kernels.float16 import accumulator_dtype
from tests.reference import tolerance

DTYPES = [np.float32, np.float64, np.float16]     # float16: stored as float16, computed in float32
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
    check(out, ref(a.astype(np.float64), float(accumulator_dtype(dtype).type(value))), dtype)


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
    a = (rng.standard_normal(40_000) * (1.0 if dtype == np.float16 else 1e3)).astype(dtype)   # float16: no overflow
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


FLOATS = [np.float16, np.float32, np.float64]
SPECIAL = [0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 1e-6, 6e-8, 65504.0, 65520.0, 7e4, 1e-30, 3.4e38]


@pytest.mark.parametrize("dst", FLOATS)
@pytest.mark.parametrize("src", FLOATS)
def test_cast_any_pair(src, dst, device, rng):
    """Round to nearest even, as NumPy's conversion does: float16 subnormals, overflow to inf
    (65520 and above), signed zeros, inf and NaN included. float64 -> float16 rounds through
    float32, as PyTorch's Half conversion does."""
    with np.errstate(over="ignore"):
        x = np.concatenate([np.array(SPECIAL), rng.standard_normal(37) * 100]).astype(src)
    out = garbage(x.shape, dst, device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)   # the simulator's float16()
        ew.cast(put(x, device), out)
    with np.errstate(over="ignore"):
        want = x.astype(np.float32).astype(dst) if dst == np.float16 else x.astype(dst)
    got = host(out)
    assert got.dtype == dst
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_cast_float64_to_float16_rounds_through_float32_as_pytorch(device):
    # just above the midpoint of 1 and 1 + 2^-10: float32 rounds it onto the midpoint, which then
    # ties to even (1.0); a direct rounding would give 1 + 2^-10
    x = np.array([1 + 2.0 ** -11 + 2.0 ** -40])
    out = garbage((1,), np.float16, device)
    ew.cast(put(x, device), out)
    assert host(out)[0] == 1.0


def test_cast_bad_arguments():
    with pytest.raises(TypeError, match="cast: src and dst must be float16, float32 or float64 arrays"):
        ew.cast(np.ones(3, np.int64), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="cast: src and dst must share one shape"):
        ew.cast(np.ones(3, np.float16), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="both be CUDA device arrays or both NumPy"):
        ew.cast(cuda.to_device(np.ones(3, np.float16)), np.ones(3, np.float32))


@pytest.mark.parametrize("n", [5000, 40_000])
def test_float16_sums_accumulate_in_float32(n, device):
    """A float16 running sum would stop at 2048 (2048 + 1 rounds back to 2048); float32
    partial sums reach n, rounded once to float16 (5000 and 40 000 are float16 numbers). The bias
    gradient sums n values per channel alike."""
    ones = np.ones(n, np.float16)
    out = garbage((1,), np.float16, device)
    ew.sum_all(put(ones, device), out)
    assert host(out)[0] == n
    dy = np.ones((n // 100, 2, 10, 10), np.float16)
    db = garbage(2, np.float16, device)
    ew.bias_grad_nchw(put(dy, device), db)
    assert (host(db) == n).all()


def test_sum_all_scales_before_rounding(device):
    """scale * sum is rounded once: the float16 mean of 10 000 values of 1000 is 1000 although
    their sum (10^7) overflows float16."""
    a = np.full(10_000, 1000.0, np.float16)
    out = garbage((1,), np.float16, device)
    ew.sum_all(put(a, device), out, scale=1e-4)
    assert host(out)[0] == 1000.0
