import numpy as np
import pytest
from numba import cuda

from convkern.kernels import lrn
from convkern.kernels.cuda_util import is_device_array
from tests.reference import tolerance

DTYPES = [np.float32, np.float64]

# (shape, lo, hi, beta): PyTorch windows (lo = size//2, hi = (size-1)//2), TensorFlow's (lo = hi = r),
# a window wider than C, C = 1, 2, 3; the betas with a fast form (0.5, 0.75, 1) and pow (0.6, 2)
SMALL = [
    ((2, 3, 5, 6), 2, 2, 0.75),     # size 5 / r 2: AlexNet
    ((2, 3, 4, 5), 1, 0, 0.5),      # size 2
    ((1, 2, 3, 7), 2, 1, 0.6),      # size 4
    ((2, 1, 6, 5), 0, 0, 1.0),      # size 1, a single channel
    ((1, 3, 5, 5), 4, 4, 2.0),      # window (9) wider than C
    ((2, 3, 7), 3, 2, 0.75),        # 3-D (N, C, L), size 6
]
# CPU only: many channels, several pixel chunks, float32 running sums checked against float64
LARGE = [
    ((2, 64, 9, 9), 2, 2, 0.75),
    ((1, 256, 30, 40), 2, 2, 0.75),
    ((2, 256, 7, 6), 5, 4, 0.6),
    ((1, 96, 3, 3), 20, 20, 0.5),
]


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


def garbage(shape, dtype, device):
    return put(np.full(shape, np.nan, dtype), device)


def lrn_ref(x, lo, hi, alpha, beta, k):
    """Plain float64 forward: y, s with s[c] = k + alpha * sum_{j=c-lo..c+hi, 0<=j<C} x[j]^2."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    s = np.full(x.shape, float(k))
    for c in range(C):
        for j in range(c - lo, c + hi + 1):
            if 0 <= j < C:
                s[:, c] += alpha * x[:, j] ** 2
    return x * s ** -beta, s


def lrn_bwd_ref(x, dy, lo, hi, alpha, beta, k):
    """dx[i] = sum_c dy[c] * dy_c/dx_i, differentiating y[c] = x[c] * s[c]^-beta term by term."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    _, s = lrn_ref(x, lo, hi, alpha, beta, k)
    C = x.shape[1]
    dx = dy * s ** -beta
    for c in range(C):
        for i in range(c - lo, c + hi + 1):
            if 0 <= i < C:
                dx[:, i] += dy[:, c] * x[:, c] * (-beta) * s[:, c] ** (-beta - 1) * alpha * 2 * x[:, i]
    return dx


def run(shape, lo, hi, beta, dtype, device, seed=0, alpha=1e-2, k=1.5, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, sb, sb1, dx = (garbage(shape, dtype, device) for _ in range(4))
    lrn.lrn_fwd(put(x, device), y, lo, hi, alpha, beta, k, sb, sb1)
    lrn.lrn_bwd(put(x, device), sb, sb1, put(dy, device), dx, lo, hi, alpha, beta)
    return x, dy, host(y), host(sb), host(sb1), host(dx)


def check(shape, lo, hi, beta, dtype, device, **kw):
    alpha, k = kw.get("alpha", 1e-2), kw.get("k", 1.5)
    x, dy, y, sb, sb1, dx = run(shape, lo, hi, beta, dtype, device, **kw)
    y_ref, s_ref = lrn_ref(x, lo, hi, alpha, beta, k)
    rtol, atol = tolerance(dtype)
    for got in (y, sb, sb1, dx):
        assert got.dtype == dtype
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(sb, s_ref ** -beta, rtol=rtol, atol=atol)
    np.testing.assert_allclose(sb1, s_ref ** (-beta - 1), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, lrn_bwd_ref(x, dy, lo, hi, alpha, beta, k), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SMALL, ids=lambda c: f"{c[0]}-lo{c[1]}-hi{c[2]}-b{c[3]}")
def test_lrn_matches_reference(case, dtype, device):
    check(*case, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LARGE, ids=lambda c: f"{c[0]}-lo{c[1]}-hi{c[2]}-b{c[3]}")
def test_lrn_many_channels_cpu(case, dtype):
    check(*case, dtype, "cpu", alpha=1e-3, k=1.0)


def test_lrn_running_sums_stay_accurate_over_a_wide_dynamic_range(device):
    """Channels alternate between blocks of large and small values and k is small: right after a
    large block leaves the window, plain add/subtract running sums are off by ~0.2% here."""
    C = 256 if device == "cpu" else 48
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, C, 4, 4) if device == "cpu" else (1, C, 2, 2)).astype(np.float32)
    x[:, (np.arange(C) // 7) % 2 == 0] *= 30.0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, sb, sb1, dx = (garbage(x.shape, x.dtype, device) for _ in range(4))
    lrn.lrn_fwd(put(x, device), y, 2, 2, 1.0, 0.75, 1e-2, sb, sb1)
    lrn.lrn_bwd(put(x, device), sb, sb1, put(dy, device), dx, 2, 2, 1.0, 0.75)
    _, s_ref = lrn_ref(x, 2, 2, 1.0, 0.75, 1e-2)
    np.testing.assert_allclose(host(sb), s_ref ** -0.75, rtol=2e-6)
    dx_ref = lrn_bwd_ref(x, dy, 2, 2, 1.0, 0.75, 1e-2)
    np.testing.assert_allclose(host(dx), dx_ref, rtol=1e-4, atol=1e-5 * np.abs(dx_ref).max())


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_forward_without_saving(beta, device):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    y = garbage(x.shape, x.dtype, device)
    lrn.lrn_fwd(put(x, device), y, 2, 1, 0.1, beta, 2.0)
    np.testing.assert_allclose(host(y), lrn_ref(x, 2, 1, 0.1, beta, 2.0)[0], rtol=1e-12)


def test_lrn_beta_modes():
    assert lrn.beta_mode(0.75) == lrn.BETA_THREE_QUARTERS
    assert lrn.beta_mode(np.float32(0.5)) == lrn.BETA_HALF
    assert lrn.beta_mode(1) == lrn.BETA_ONE
    assert lrn.beta_mode(0.7500001) == lrn.BETA_POW


def test_lrn_empty_input():
    x = np.empty((0, 3, 4, 4), np.float32)
    y = np.empty_like(x)
    lrn.lrn_fwd(x, y, 2, 2, 1e-4, 0.75, 2.0)
    assert y.shape == x.shape


def test_lrn_launcher_rejects_bad_arrays():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="y must match x"):
        lrn.lrn_fwd(x, np.zeros((2, 3, 4, 5), np.float32), 1, 1, 1e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="sb1 must match x"):
        lrn.lrn_fwd(x, np.empty_like(x), 1, 1, 1e-4, 0.75, 2.0, np.empty_like(x), np.empty(x.shape))
    with pytest.raises(ValueError, match="both sb and sb1"):
        lrn.lrn_fwd(x, np.empty_like(x), 1, 1, 1e-4, 0.75, 2.0, np.empty_like(x))
    with pytest.raises(ValueError, match="C-contiguous"):
        lrn.lrn_fwd(x, np.empty((2, 3, 4, 8), np.float32)[..., ::2], 1, 1, 1e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="at least one spatial"):
        lrn.lrn_fwd(x[:, :, 0, 0], np.empty((2, 3), np.float32), 1, 1, 1e-4, 0.75, 2.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        lrn.lrn_fwd(x.astype(np.int32), x.astype(np.int32), 1, 1, 1e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="lo, hi must be >= 0"):
        lrn.lrn_fwd(x, np.empty_like(x), -1, 1, 1e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="dx must match x"):
        lrn.lrn_bwd(x, x, x, x, np.empty((2, 3, 4, 4)), 1, 1, 1e-4, 0.75)
