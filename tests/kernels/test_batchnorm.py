"""Batch-norm kernels (statistics, normalise, running-stat update, backward reduce and data)
on CPU and on the CUDA path against plain float64 NumPy references."""
import numpy as np
import pytest
from numba import cuda

from convkern.kernels import batchnorm as bn
from convkern.kernels.cuda_util import is_device_array
from tests.reference import tolerance

DTYPES = [np.float16, np.float32, np.float64]
# (N, C, L): L = 1 is the 2-D (N, C) case; 37 values per channel are not a multiple of the block
SHAPES = [(4, 3, 1), (2, 3, 5), (1, 2, 37), (3, 2, 6)]
EPS = 1e-3


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def garbage(shape, dtype, device):
    return put(np.full(shape, np.nan, dtype), device)


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


def stat_dtype(dtype):
    """The dtype of the per-channel arrays for data of ``dtype``: float32 for float16 data."""
    return np.float32 if dtype == np.float16 else dtype


def check(got, want, dtype, scale=1.0):
    rtol, atol = tolerance(dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(host(got), want, rtol=rtol * scale, atol=atol * scale)


def stats_ref(x):
    x = x.astype(np.float64)
    N, C, L = x.shape
    mean = np.array([x[:, c, :].sum() / (N * L) for c in range(C)])
    var = np.array([((x[:, c, :] - mean[c]) ** 2).sum() / (N * L) for c in range(C)])
    return mean, var


def xhat_ref(x, mean, var):
    return (x.astype(np.float64) - mean[None, :, None]) / np.sqrt(var.astype(np.float64)[None, :, None] + EPS)


def operands(rng, shape, dtype):
    N, C, L = shape
    x = (rng.standard_normal(shape) * 2.0 + 1.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    stat = stat_dtype(dtype)
    mean = rng.standard_normal(C).astype(stat)
    var = rng.uniform(0.5, 2.0, C).astype(stat)
    w = rng.standard_normal(C).astype(stat)
    b = rng.standard_normal(C).astype(stat)
    return x, dy, mean, var, w, b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_stats(shape, dtype, device, rng):
    x = operands(rng, shape, dtype)[0]
    stat = stat_dtype(dtype)
    mean, var = garbage(shape[1], stat, device), garbage(shape[1], stat, device)
    bn.batchnorm_stats(put(x, device), mean, var)
    want_mean, want_var = stats_ref(x)
    check(mean, want_mean, stat)
    check(var, want_var, stat)


def test_stats_variance_is_accurate_with_a_large_mean(device, rng):
    """Two passes: E[x²] - E[x]² would lose every digit of the variance in float32 here."""
    x = (1000.0 + rng.standard_normal((4, 2, 25))).astype(np.float32)
    mean, var = garbage(2, np.float32, device), garbage(2, np.float32, device)
    bn.batchnorm_stats(put(x, device), mean, var)
    want_mean, want_var = stats_ref(x)
    np.testing.assert_allclose(host(mean), want_mean, rtol=1e-6)
    np.testing.assert_allclose(host(var), want_var, rtol=1e-3)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fwd(shape, dtype, affine, device, rng):
    x, _, mean, var, w, b = operands(rng, shape, dtype)
    y = garbage(shape, dtype, device)
    bn.batchnorm_fwd(put(x, device), put(mean, device), put(var, device),
                     put(w, device) if affine else None, put(b, device) if affine else None, EPS, y)
    want = xhat_ref(x, mean, var)
    if affine:
        want = want * w[None, :, None] + b[None, :, None]
    check(y, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_running(dtype, device, rng):
    rm, rv = (rng.uniform(0.5, 2.0, 5).astype(dtype) for _ in range(2))
    mean, var = (rng.uniform(0.5, 2.0, 5).astype(stat_dtype(dtype)) for _ in range(2))
    rm_d, rv_d = put(rm, device), put(rv, device)
    bn.batchnorm_update_running(rm_d, rv_d, put(mean, device), put(var, device), 0.1, 10 / 9)
    check(rm_d, 0.9 * rm.astype(np.float64) + 0.1 * mean, dtype)
    check(rv_d, 0.9 * rv.astype(np.float64) + 0.1 * var * 10 / 9, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bwd_reduce(shape, dtype, device, rng):
    x, dy, mean, var, _, _ = operands(rng, shape, dtype)
    stat = stat_dtype(dtype)
    sum_dy, sum_dy_xhat = garbage(shape[1], stat, device), garbage(shape[1], stat, device)
    bn.batchnorm_bwd_reduce(put(x, device), put(dy, device), put(mean, device), put(var, device), EPS,
                            sum_dy, sum_dy_xhat)
    check(sum_dy, dy.astype(np.float64).sum(axis=(0, 2)), stat)
    check(sum_dy_xhat, (dy * xhat_ref(x, mean, var)).sum(axis=(0, 2)), stat)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bwd_data(shape, dtype, training, device, rng):
    x, dy, _, _, w, _ = operands(rng, shape, dtype)
    stat = stat_dtype(dtype)
    mean, var = (a.astype(stat) for a in stats_ref(x))
    d = {k: put(v, device) for k, v in dict(x=x, dy=dy, mean=mean, var=var, w=w).items()}
    sums = None, None
    if training:
        sums = garbage(shape[1], stat, device), garbage(shape[1], stat, device)
        bn.batchnorm_bwd_reduce(d["x"], d["dy"], d["mean"], d["var"], EPS, *sums)
    dx = garbage(shape, dtype, device)
    bn.batchnorm_bwd_data(d["x"], d["dy"], d["mean"], d["var"], d["w"], *sums, EPS, training, dx)
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + EPS)
    dy64 = dy.astype(np.float64)
    if training:   # d/dx of Σ dy*y through the batch mean and variance, written out per channel
        xhat = xhat_ref(x, mean, var)
        M = shape[0] * shape[2]
        want = (w * invstd)[None, :, None] / M * (M * dy64 - dy64.sum(axis=(0, 2), keepdims=True)
                                                 - xhat * (dy64 * xhat).sum(axis=(0, 2), keepdims=True))
    else:
        want = dy64 * (w * invstd)[None, :, None]
    check(dx, want, dtype, scale=10.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_are_bitwise_deterministic(dtype, device, rng):
    x, dy, _, _, _, _ = operands(rng, (3, 2, 29), dtype)
    runs = []
    stat = stat_dtype(dtype)
    for _ in range(2):
        mean, var = garbage(2, stat, device), garbage(2, stat, device)
        bn.batchnorm_stats(put(x, device), mean, var)
        s1, s2 = garbage(2, stat, device), garbage(2, stat, device)
        bn.batchnorm_bwd_reduce(put(x, device), put(dy, device), mean, var, EPS, s1, s2)
        runs.append([host(a) for a in (mean, var, s1, s2)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_launcher_rejects_bad_arrays():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"x must be a 3-D \(N, C, L\) array"):
        bn.batchnorm_stats(np.zeros((2, 3), np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"var must have shape \(C,\) = \(3,\)"):
        bn.batchnorm_stats(x, np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="mean must have dtype float32"):
        bn.batchnorm_stats(x, np.zeros(3, np.float64), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="y must have x's shape"):
        bn.batchnorm_fwd(x, *(np.zeros(3, np.float32) for _ in range(4)), EPS, np.zeros((2, 3, 5), np.float32))
    with pytest.raises(TypeError, match=r"mean must have dtype float32 \(per-channel arrays of float16 data"):
        bn.batchnorm_stats(x.astype(np.float16), np.zeros(3, np.float16), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="y must have dtype float16"):
        bn.batchnorm_fwd(x.astype(np.float16), *(np.zeros(3, np.float32) for _ in range(4)), EPS, x.copy())
    with pytest.raises(TypeError, match="running_var must be a float16 array"):
        bn.batchnorm_update_running(np.zeros(3, np.float16), np.zeros(3, np.float32), np.zeros(3, np.float32),
                                    np.zeros(3, np.float32), 0.1, 1.0)
    with pytest.raises(TypeError, match="mean must be a float32 array"):
        bn.batchnorm_update_running(np.zeros(3, np.float16), np.zeros(3, np.float16), np.zeros(3, np.float16),
                                    np.zeros(3, np.float32), 0.1, 1.0)
    with pytest.raises(TypeError, match="x must be float16, float32 or float64"):
        bn.batchnorm_stats(x.astype(np.int32), np.zeros(3, np.int32), np.zeros(3, np.int32))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fwd_relu(shape, dtype, device, rng):
    x, _, mean, var, w, b = operands(rng, shape, dtype)
    y = garbage(shape, dtype, device)
    bn.batchnorm_fwd(put(x, device), put(mean, device), put(var, device), put(w, device), put(b, device), EPS, y,
                     relu=True)
    check(y, np.maximum(xhat_ref(x, mean, var) * w[None, :, None] + b[None, :, None], 0.0), dtype)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bwd_with_relu_output_masks_dy(shape, dtype, training, device, rng):
    """Fused BN + ReLU backward = the plain backward of dy zeroed where the output y <= 0."""
    x, dy, _, _, w, b = operands(rng, shape, dtype)
    stat = stat_dtype(dtype)
    mean, var = (a.astype(stat) for a in stats_ref(x))
    y = np.maximum(xhat_ref(x, mean, var) * w[None, :, None] + b[None, :, None], 0.0).astype(dtype)
    masked = np.where(y > 0, dy, 0).astype(dtype)
    got, want = [], []
    for g, relu_output in ((dy, y), (masked, None)):
        d = {k: put(v, device) for k, v in dict(x=x, dy=g, mean=mean, var=var, w=w).items()}
        out = put(relu_output, device) if relu_output is not None else None
        sums = garbage(shape[1], stat, device), garbage(shape[1], stat, device)
        bn.batchnorm_bwd_reduce(d["x"], d["dy"], d["mean"], d["var"], EPS, *sums, relu_output=out)
        dx = garbage(shape, dtype, device)
        bn.batchnorm_bwd_data(d["x"], d["dy"], d["mean"], d["var"], d["w"], *(sums if training else (None, None)),
                              EPS, training, dx, relu_output=out)
        (got if relu_output is not None else want).append([host(a) for a in (*sums, dx)])
    # equal up to the order of the sums (a vectorised masked loop may add in another order)
    for a, e, dt in zip(got[0], want[0], (stat, stat, dtype)):
        rtol, atol = tolerance(dt)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
