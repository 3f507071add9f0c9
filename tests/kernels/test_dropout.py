import warnings

import numpy as np
import pytest
from numba import cuda

from convkern.kernels import dropout as dk
from convkern.kernels.cuda_util import is_device_array

DTYPES = [np.float32, np.float64, np.float16]
M64 = (1 << 64) - 1


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


def run(x, seed, p, device):
    out = put(np.full(x.shape, np.nan, x.dtype), device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the simulator must not hit uint64 overflow warnings
        dk.dropout(put(x, device), out, seed, p)
    return host(out)


def splitmix64_finalise(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mask_ref(n, seed, p):
    """The documented mask with Python integers: u_i = (mix64(key + i) >> 11) / 2^53 >= p."""
    key = splitmix64_finalise((seed + 0x9E3779B97F4A7C15) & M64) >> 1
    return np.array([(splitmix64_finalise(key + i) >> 11) / 2.0 ** 53 >= p for i in range(n)])


def test_key_is_splitmix64():
    # the first output of splitmix64 seeded with 0 (Vigna's reference implementation)
    assert dk.dropout_key(0) == 0xE220A8397B1DCDAF >> 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_matches_the_documented_mask(p, dtype, device, rng):
    x = rng.uniform(1, 2, 77).astype(dtype)              # 77: not a multiple of the block
    y = run(x, 1234, p, device)
    keep = mask_ref(x.size, 1234, p)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_array_equal(y[keep], x[keep] * dtype(1 / (1 - p)))


def test_same_seed_same_mask_on_cpu_and_cuda_in_every_dtype():
    x = np.ones(300)
    masks = [run(x.astype(dt), 99, 0.4, device) != 0 for device in ("cpu", "cuda") for dt in DTYPES]
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])


def test_different_seeds_give_different_masks(device):
    x = np.ones(200)
    a, b = run(x, 1, 0.5, device), run(x, 2, 0.5, device)
    assert (a != b).mean() > 0.3                          # independent masks differ in half the places


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_fraction_and_mean_on_a_big_array(p):
    n = 1_000_000
    y = run(np.ones(n, np.float32), 7, p, "cpu")
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs((y == 0).mean() - p) < 5 * sigma
    assert abs(y.astype(np.float64).mean() - 1) < 5 * sigma / (1 - p)      # E[y] = x


def test_p_zero_keeps_everything_and_out_may_alias(device, rng):
    x = rng.standard_normal(50)
    np.testing.assert_array_equal(run(x, 3, 0.0, device), x)
    buf = put(x, device)
    dk.dropout(buf, buf, 3, 0.5)
    np.testing.assert_array_equal(host(buf), np.where(mask_ref(50, 3, 0.5), x * 2, 0))


def test_dropout_bad_arguments():
    a = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        dk.dropout(a, a, 0, 1.0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        dk.dropout(a, a, 0, -0.1)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        dk.dropout(a, a, -1, 0.5)
    with pytest.raises(ValueError, match="share one shape"):
        dk.dropout(a, np.ones(5, np.float32), 0, 0.5)
