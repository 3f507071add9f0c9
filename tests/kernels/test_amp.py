"""The GradScaler kernel (unscale a gradient and flag inf/NaN) on CPU and on the CUDA path."""
import numpy as np
import pytest
from numba import cuda

from convkern.kernels import amp
from convkern.kernels.cuda_util import is_device_array


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


@pytest.mark.parametrize("n", [1, 37, 100])          # 37, 100: more than one simulated block
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unscale_multiplies_in_place_and_leaves_the_flag_clear(dtype, n, device, rng):
    g = rng.standard_normal(n).astype(dtype) * 1024
    found = put(np.zeros(1, np.float32), device)
    gd = put(g, device)
    amp.unscale_check(gd, 2.0 ** -10, found)
    np.testing.assert_array_equal(host(gd), g * dtype(2.0 ** -10))    # a power of two: exact
    assert host(found)[0] == 0


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [0, 36])
def test_a_non_finite_value_sets_the_flag(bad, where, device):
    g = np.linspace(-1, 1, 37).astype(np.float32)
    g[where] = bad
    found = put(np.zeros(1, np.float32), device)
    gd = put(g, device)
    amp.unscale_check(gd, 0.5, found)
    assert host(found)[0] == 1
    out = host(gd)
    np.testing.assert_array_equal(np.delete(out, where), np.delete(g, where) * np.float32(0.5))


def test_the_flag_is_never_cleared(device):
    """One flag collects the checks of every gradient of a step: a finite one after a bad one
    leaves it set."""
    found = put(np.zeros(1, np.float32), device)
    amp.unscale_check(put(np.array([np.nan], np.float32), device), 1.0, found)
    amp.unscale_check(put(np.ones(5, np.float32), device), 1.0, found)
    amp.unscale_check(put(np.zeros(0, np.float32), device), 1.0, found)
    assert host(found)[0] == 1


def test_unscale_check_rejects_bad_arrays():
    g = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="g must be a 1-D float32 or float64 array, got float16"):
        amp.unscale_check(g.astype(np.float16), 1.0, np.zeros(1, np.float32))
    with pytest.raises(TypeError, match="g must be a 1-D"):
        amp.unscale_check(np.ones((2, 2), np.float32), 1.0, np.zeros(1, np.float32))
    with pytest.raises(TypeError, match=r"found_inf must be a \(1,\) float32 NumPy array like g, got float64"):
        amp.unscale_check(g, 1.0, np.zeros(1, np.float64))
    with pytest.raises(TypeError, match="found_inf must be a .* CUDA device array like g"):
        amp.unscale_check(cuda.to_device(g), 1.0, np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        amp.unscale_check(np.ones(8, np.float32)[::2], 1.0, np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="inv_scale must be finite"):
        amp.unscale_check(g, np.inf, np.zeros(1, np.float32))
