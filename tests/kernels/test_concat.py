"""Concatenation block copies on CPU and on the CUDA path against NumPy slicing."""
import numpy as np
import pytest
from numba import cuda

from convkern.kernels import concat
from convkern.kernels.cuda_util import is_device_array

DTYPES = [np.float32, np.float64, np.float16]


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer, widths", [(1, [5, 3]), (3, [4, 1, 7]), (4, [2, 2, 2])])
def test_fwd_places_each_block_at_its_offset(outer, widths, dtype, device, rng):
    parts = [rng.standard_normal((outer, w)).astype(dtype) for w in widths]
    out = put(np.full((outer, sum(widths)), np.nan, dtype), device)
    offset = 0
    for p in parts:
        concat.concat_fwd(put(p, device), out, offset)
        offset += p.shape[1]
    got = host(out)
    assert got.dtype == dtype
    want = np.zeros((outer, sum(widths)))
    offset = 0
    for p in parts:
        for o in range(outer):
            for j in range(p.shape[1]):
                want[o, offset + j] = p[o, j]
        offset += p.shape[1]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer, total, offset, width", [(1, 8, 0, 8), (3, 9, 2, 4), (2, 7, 6, 1)])
def test_bwd_takes_the_slice(outer, total, offset, width, dtype, device, rng):
    whole = rng.standard_normal((outer, total)).astype(dtype)
    part = put(np.full((outer, width), np.nan, dtype), device)
    concat.concat_bwd(put(whole, device), part, offset)
    np.testing.assert_array_equal(host(part), whole[:, offset:offset + width])


def test_cpu_rows_longer_than_a_chunk(rng):
    """A single long row (cat along dim 0) is split into several parallel chunks."""
    width = 2 * concat.CPU_CHUNK + 5
    src = rng.standard_normal((1, width))
    out = np.zeros((1, width + 3))
    concat.concat_fwd(src, out, 3)
    np.testing.assert_array_equal(out[:, 3:], src)
    back = np.zeros_like(src)
    concat.concat_bwd(out, back, 3)
    np.testing.assert_array_equal(back, src)


def test_empty_block_is_a_no_op():
    out = np.ones((2, 3))
    concat.concat_fwd(np.zeros((2, 0)), out, 3)
    np.testing.assert_array_equal(out, 1.0)


def test_launcher_rejects_bad_arrays():
    with pytest.raises(ValueError, match=r"block of shape \(2, 3\) at column offset 2 does not fit"):
        concat.concat_fwd(np.zeros((2, 3)), np.zeros((2, 4)), 2)
    with pytest.raises(ValueError, match="does not fit"):
        concat.concat_bwd(np.zeros((3, 4)), np.zeros((2, 3)), 0)
    with pytest.raises(TypeError, match="both arrays must have dtype float64"):
        concat.concat_fwd(np.zeros((2, 3)), np.zeros((2, 4), np.float32), 0)
    with pytest.raises(ValueError, match=r"expected 2-D \(outer, width\) arrays"):
        concat.concat_fwd(np.zeros(3), np.zeros((1, 4)), 0)
