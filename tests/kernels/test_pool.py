"""Pooling kernels (kernels/pool.py) against plain float64 NumPy references, spatial rank 1-3,
symmetric, uneven (TensorFlow's SAME and explicit pairs) and ceil-mode padding, on CPU and on the
CUDA path, float32, float64 and float16 (references of the same float16 inputs). The references
pad explicitly: -inf for max pooling, and masks of the real elements and of the padded extent for
the average divisors."""
import itertools

import numpy as np
import pytest
from numba import cuda

from convkern import cuda as runtime
from convkern.kernels import pool
from convkern.kernels.cuda_util import is_device_array
from convkern.kernels.shapes import PoolGeometry
from tests.reference import tolerance

DTYPES = [np.float32, np.float64]
HALF_DTYPES = DTYPES + [np.float16]     # float16: stored as float16, computed in float32

# (N, C, *size), kernel, stride, pad_before, pad_after, dilation, ceil_mode
CASES = [
    ((2, 3, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), False),
    ((1, 2, 6, 5), (2, 3), (1, 2), (1, 1), (1, 1), (1, 1), True),
    ((2, 2, 6, 6), (3, 2), (2, 3), (0, 1), (0, 1), (2, 1), True),
    ((1, 3, 5, 8), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), True),
    ((2, 1, 8, 7), (4, 3), (3, 2), (2, 1), (2, 1), (1, 2), False),
    ((1, 2, 4, 6), (2, 2), (3, 3), (1, 1), (1, 1), (1, 1), True),      # ceil rule drops the last window along H
    ((2, 2, 5, 5), (1, 1), (2, 1), (0, 0), (0, 0), (1, 1), False),
    ((1, 2, 5, 4), (6, 2), (6, 2), (0, 1), (0, 1), (1, 1), True),      # one window taller than the input
    ((1, 2, 5, 6), (2, 2), (1, 1), (0, 0), (1, 1), (1, 1), False),     # TF SAME, even window, stride 1
    ((2, 1, 6, 7), (3, 3), (2, 2), (0, 1), (1, 1), (1, 1), False),     # TF SAME 3x3/2 on 6x7
    ((1, 2, 7, 5), (3, 3), (3, 1), (2, 0), (1, 2), (1, 1), False),     # explicit pairs up to kernel - 1
    ((1, 1, 6, 7), (2, 3), (1, 2), (1, 0), (0, 2), (2, 1), False),     # uneven with dilation
    ((2, 2, 5, 4), (4, 2), (3, 2), (1, 0), (3, 1), (1, 1), False),     # after pad beyond kernel // 2
    ((2, 3, 10, 10), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), False),   # 2x2/2 (CPU avgpool2x2 kernels)
    ((2, 2, 7, 9), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), False),     # ... a row and a column no window covers
]
TWO_BY_TWO = CASES[-2:]
CASES_3D = [
    ((1, 2, 4, 5, 4), (2, 3, 2), (1, 2, 2), (1, 1, 0), (1, 1, 0), (1, 1, 1), True),
    ((2, 1, 5, 4, 5), (3, 2, 3), (2, 1, 2), (0, 0, 1), (1, 1, 1), (1, 1, 1), False),   # TF SAME-style uneven
    ((1, 1, 5, 5, 4), (2, 2, 2), (2, 2, 1), (1, 0, 0), (0, 1, 1), (2, 1, 2), False),
]
CASES_1D = [
    ((2, 3, 9), (3,), (2,), (1,), (1,), (1,), True),
    ((1, 2, 7), (2,), (1,), (0,), (1,), (1,), False),
    ((1, 2, 8), (3,), (3,), (2,), (0,), (2,), False),
]
ALL_CASES = CASES + CASES_3D + CASES_1D
AVG_CASES = [c for c in ALL_CASES if set(c[5]) == {1}]


def case_id(c):
    return "x{}-k{}-s{}-pb{}-pa{}-d{}-{}".format(*("x".join(map(str, v)) for v in c[:6]),
                                                 "ceil" if c[6] else "floor")


def geometry(case):
    (N, C, *size), kernel, stride, before, after, dilation, ceil = case
    return PoolGeometry.make(N, C, size, kernel, stride, before, after, dilation, ceil)


def _padded(x, g, value):
    """x in float64 padded with ``value``: pad_before before each spatial axis and, after it, as much
    as the last window reaches (at least pad_after)."""
    widths = [(0, 0), (0, 0)]
    for n, k, o, s, b, a, d in zip(g.in_size, g.kernel, g.out_size, g.stride, g.pad_before, g.pad_after,
                                   g.dilation):
        widths.append((b, max(a, (o - 1) * s + d * (k - 1) + 1 - n - b)))
    return np.pad(np.asarray(x, np.float64), widths, constant_values=value)


def _windows(g):
    """For each output position (row-major): its index tuple and its taps, row-major, as index
    tuples into the padded arrays of ``_padded``."""
    for out in itertools.product(*(range(o) for o in g.out_size)):
        taps = itertools.product(*(range(k) for k in g.kernel))
        yield out, [tuple(o * s + t * d for o, s, t, d in zip(out, g.stride, tap, g.dilation)) for tap in taps]


def _flat_index(padded_pos, g):
    """Flat position within the (n, c) plane/volume of a padded coordinate."""
    return int(np.ravel_multi_index(tuple(p - b for p, b in zip(padded_pos, g.pad_before)), g.in_size))


def maxpool_ref(x, g):
    """(y, idx): max over -inf-padded windows; the first maximum in row-major tap order."""
    xp = _padded(x, g, -np.inf)
    y = np.zeros(g.y_shape)
    idx = np.zeros(g.y_shape, np.int64)
    for out, taps in _windows(g):
        vals = np.stack([xp[(slice(None), slice(None)) + t] for t in taps], axis=-1)
        best = np.argmax(vals, axis=-1)
        for n, c in np.ndindex(g.N, g.C):
            y[(n, c) + out] = vals[n, c, best[n, c]]
            idx[(n, c) + out] = _flat_index(taps[best[n, c]], g)
    assert np.isfinite(y).all(), "a reference window picked the padding"
    return y, idx


def maxpool_bwd_ref(dy, idx, g):
    dx = np.zeros((g.N, g.C, int(np.prod(g.in_size))))
    for n, c in np.ndindex(g.N, g.C):
        np.add.at(dx[n, c], idx[n, c].ravel(), dy[n, c].astype(np.float64).ravel())
    return dx.reshape(g.x_shape)


def avg_divisors(g, count_include_pad):
    """Per output: the number of real elements in its window, or of elements of the padded extent
    [-pad_before, size + pad_after), counted on explicit masks."""
    real = _padded(np.ones((1, 1) + g.in_size), g, 0.0)[0, 0]
    extent = np.zeros_like(real)
    extent[tuple(slice(0, n + b + a) for n, b, a in zip(g.in_size, g.pad_before, g.pad_after))] = 1
    mask = extent if count_include_pad else real
    return {out: sum(mask[t] for t in taps) for out, taps in _windows(g)}


def avgpool_ref(x, g, count_include_pad):
    xp = _padded(x, g, 0.0)
    div = avg_divisors(g, count_include_pad)
    y = np.zeros(g.y_shape)
    for out, taps in _windows(g):
        y[(slice(None), slice(None)) + out] = sum(xp[(slice(None), slice(None)) + t] for t in taps) / div[out]
    return y


def avgpool_bwd_ref(dy, g, count_include_pad):
    div = avg_divisors(g, count_include_pad)
    dxp = _padded(np.zeros(g.x_shape), g, 0.0)
    for out, taps in _windows(g):
        for t in taps:
            dxp[(slice(None), slice(None)) + t] += dy[(slice(None), slice(None)) + out] / div[out]
    return dxp[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(g.pad_before, g.in_size))]


def _adaptive_slices(size, out):
    for pos in itertools.product(*(range(o) for o in out)):
        yield pos, tuple(slice(int(np.floor(p * n / o)), int(np.ceil((p + 1) * n / o)))
                         for p, n, o in zip(pos, size, out))


def adaptive_ref(x, out):
    y = np.zeros(x.shape[:2] + tuple(out))
    axes = tuple(range(2, x.ndim))
    for pos, win in _adaptive_slices(x.shape[2:], out):
        y[(slice(None), slice(None)) + pos] = x[(slice(None), slice(None)) + win].astype(np.float64).mean(axis=axes)
    return y


def adaptive_bwd_ref(dy, size):
    dx = np.zeros(dy.shape[:2] + tuple(size))
    for pos, win in _adaptive_slices(size, dy.shape[2:]):
        count = np.prod([s.stop - s.start for s in win])
        dx[(slice(None), slice(None)) + win] += dy[(slice(None), slice(None)) + pos + (None,) * len(size)] / count
    return dx


def tie_free(shape, dtype, seed=0):
    """A shuffled linspace: no two elements equal, gaps far above float32 rounding."""
    size = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(np.linspace(-1, 1, size)).reshape(shape).astype(dtype)


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def empty(shape, dtype, device):
    a = np.full(shape, -7, dtype)
    return cuda.to_device(a) if device == "cuda" else a


def host(a):
    return a.copy_to_host() if is_device_array(a) else a


def check(got, want, dtype):
    rtol, atol = tolerance(dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(host(got), want, rtol=rtol, atol=atol)


def run_max(x, g, device, global_index=False):
    y, idx = empty(g.y_shape, x.dtype, device), empty(g.y_shape, np.int64, device)
    pool.maxpool_fwd(put(x, device), y, idx, g, global_index)
    return y, idx


def test_reference_pads_uneven_sides():
    # TF SAME 2x2/1 on [[1, 2], [3, 4]] pads one row below and one column right: the windows of
    # the last row and column hold fewer real elements
    g = geometry(((1, 1, 2, 2), (2, 2), (1, 1), (0, 0), (1, 1), (1, 1), False))
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y, idx = maxpool_ref(x, g)
    assert y.ravel().tolist() == [4, 4, 4, 4] and idx.ravel().tolist() == [3, 3, 3, 3]
    assert avgpool_ref(x, g, False).ravel().tolist() == [2.5, 3.0, 3.5, 4.0]
    assert avgpool_ref(x, g, True).ravel().tolist() == [2.5, 1.5, 1.75, 1.0]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_maxpool(case, dtype, device):
    g = geometry(case)
    x = tie_free(case[0], dtype)
    y, idx = run_max(x, g, device)
    y_ref, idx_ref = maxpool_ref(x, g)
    check(y, y_ref, dtype)
    assert idx.dtype == np.int64 and (host(idx) == idx_ref).all()
    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
    dx = empty(x.shape, dtype, device)
    pool.maxpool_bwd(put(dy, device), idx, dx, g)
    check(dx, maxpool_bwd_ref(dy, idx_ref, g), dtype)


def test_2x2_windows_take_the_cpu_fast_path():
    """Only the TWO_BY_TWO cases (2 x 2 at stride 2, unpadded, inside the input) take avgpool2x2."""
    assert [c for c in AVG_CASES if pool._is_2x2(geometry(c).as_3d())] == TWO_BY_TWO


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_avgpool(case, dtype, count_include_pad, device):
    g = geometry(case)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(case[0]).astype(dtype)
    y = empty(g.y_shape, dtype, device)
    pool.avgpool_fwd(put(x, device), y, g, count_include_pad)
    check(y, avgpool_ref(x, g, count_include_pad), dtype)
    dy = rng.standard_normal(g.y_shape).astype(dtype)
    dx = empty(x.shape, dtype, device)
    pool.avgpool_bwd(put(dy, device), dx, g, count_include_pad)
    check(dx, avgpool_bwd_ref(dy, g, count_include_pad), dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape, out", [((2, 3, 7, 5), (3, 2)), ((1, 2, 6, 6), (1, 1)), ((2, 1, 4, 5), (6, 3)),
                                        ((2, 2, 7), (3,)), ((1, 2, 3, 5, 4), (2, 3, 5))], ids=str)
def test_adaptive_avgpool(shape, out, dtype, device):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    y = empty(shape[:2] + out, dtype, device)
    pool.adaptive_avgpool_fwd(put(x, device), y)
    check(y, adaptive_ref(x, out), dtype)
    dy = rng.standard_normal(shape[:2] + out).astype(dtype)
    dx = empty(shape, dtype, device)
    pool.adaptive_avgpool_bwd(put(dy, device), dx)
    check(dx, adaptive_bwd_ref(dy, shape[2:]), dtype)


@pytest.mark.parametrize("case", [CASES[9], CASES_3D[1]], ids=case_id)
def test_maxpool_global_index_counts_from_the_start_of_the_input(case, device):
    g = geometry(case)
    x = tie_free(case[0], np.float64, seed=3)
    _, idx_ref = maxpool_ref(x, g)
    volume = int(np.prod(g.in_size))
    planes = (np.arange(g.N * g.C) * volume).reshape((g.N, g.C) + (1,) * g.rank)
    y, idx = run_max(x, g, device, global_index=True)
    assert (host(idx) == idx_ref + planes).all()
    dy = np.random.default_rng(4).standard_normal(g.y_shape)
    dx = empty(x.shape, np.float64, device)
    pool.maxpool_bwd(put(dy, device), idx, dx, g, global_index=True)
    check(dx, maxpool_bwd_ref(dy, idx_ref, g), np.float64)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_maxunpool2d(dtype, device):
    g = geometry(CASES[0])
    x = tie_free(CASES[0][0], dtype)
    _, idx = maxpool_ref(x, g)
    vals = np.random.default_rng(4).standard_normal(idx.shape).astype(dtype)
    out = empty((g.N, g.C, 8, 9), dtype, device)
    pool.maxunpool2d_fwd(put(vals, device), put(idx, device), out)
    want = np.zeros((g.N, g.C, 8 * 9))
    for n in range(g.N):
        for c in range(g.C):
            for k, j in enumerate(idx[n, c].ravel()):
                # max pooling indices are positions in the 7x7 input; placed in an 8x9 plane they are
                # plain flat positions, as in PyTorch
                want[n, c, j] = vals[n, c].ravel()[k]
    check(out, want.reshape(out.shape), dtype)
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    dx = empty(idx.shape, dtype, device)
    pool.maxunpool2d_bwd(put(dout, device), put(idx, device), dx)
    check(dx, np.take_along_axis(dout.reshape(g.N, g.C, -1), idx.reshape(g.N, g.C, -1), 2).reshape(idx.shape),
          dtype)


def test_maxunpool2d_duplicate_indices_last_wins(device):
    """Several inputs naming one output position: the last in row-major order wins, on both
    devices, every run (the CUDA kernel resolves the race with an integer atomic max)."""
    x = np.arange(1, 13, dtype=np.float32).reshape(1, 2, 2, 3)
    idx = np.array([[[[4, 0, 4], [7, 4, 0]], [[1, 1, 1], [1, 1, 2]]]], np.int64)
    want = np.zeros((1, 2, 9), np.float32)
    for c in range(2):
        for k, j in enumerate(idx[0, c].ravel()):
            want[0, c, j] = x[0, c].ravel()[k]
    for _ in range(3):
        out = empty((1, 2, 3, 3), np.float32, device)
        pool.maxunpool2d_fwd(put(x, device), put(idx, device), out)
        np.testing.assert_array_equal(host(out).reshape(1, 2, 9), want)


def test_maxunpool2d_rejects_indices_out_of_range(device):
    """On the CPU at once; on CUDA the kernels flag the index and the next host read raises."""
    x = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([[[[0, 3], [4, -1]]]], np.int64)
    out = empty((1, 1, 2, 2), np.float32, device)
    calls = [lambda: pool.maxunpool2d_fwd(put(x, device), put(idx, device), out),
             lambda: pool.maxunpool2d_bwd(put(x, device), put(idx, device), empty((1, 1, 2, 2), np.float32, device))]
    for name, call in zip(("maxunpool2d_fwd", "maxunpool2d_bwd"), calls):
        with pytest.raises(ValueError, match=rf"{name}: indices must lie in \[0, 4\)"):
            call()
            runtime.synchronize()


def test_maxpool_ties_first_maximum_wins(device):
    # overlapping 3x3 windows, stride 2, padding 1, on a plane of equal values: every window picks
    # its first in-input position in row-major order, never the padding
    g = geometry(((1, 1, 5, 5), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), False))
    x = np.full((1, 1, 5, 5), 0.5, np.float32)
    y, idx = run_max(x, g, device)
    want = [[(max(0, 2 * p - 1)) * 5 + max(0, 2 * q - 1) for q in range(3)] for p in range(3)]
    assert (host(idx)[0, 0] == want).all() and (host(y) == 0.5).all()
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    dx = empty(x.shape, np.float32, device)
    pool.maxpool_bwd(put(dy, device), idx, dx, g)
    dx_want = np.zeros((5, 5), np.float32)
    for p in range(3):
        for q in range(3):
            dx_want.flat[want[p][q]] += dy[0, 0, p, q]
    assert (host(dx)[0, 0] == dx_want).all()


def test_maxpool3d_ties_first_maximum_in_depth_row_column_order(device):
    g = geometry(((1, 1, 3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 0, 1), (0, 1, 0), (1, 1, 1), False))
    x = np.full((1, 1, 3, 3, 3), 2.0, np.float64)
    _, idx = run_max(x, g, device)
    for o, p, q in np.ndindex(*g.out_size):
        first = (max(o - 1, 0), p, max(q - 1, 0))
        assert host(idx)[0, 0, o, p, q] == (first[0] * 3 + first[1]) * 3 + first[2]


@pytest.mark.parametrize("case", [((1, 1, 4, 4), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), True),
                                  ((1, 1, 3, 4, 4), (2, 3, 3), (2, 2, 2), (1, 1, 0), (1, 0, 2), (1, 1, 1), False)],
                         ids=case_id)
def test_maxpool_all_minus_inf_window_picks_first_input_position(case, device):
    # -inf everywhere but the last element: windows without it return -inf at their first
    # position inside the input (the -inf padding never wins)
    g = geometry(case)
    x = np.full(case[0], -np.inf, np.float64)
    x.flat[-1] = 1.0
    y, idx = run_max(x, g, device)
    last = x.size - 1
    for out, taps in _windows(g):
        inside = [t for t in taps if all(b <= p < b + n for p, b, n in zip(t, g.pad_before, g.in_size))]
        positions = [_flat_index(t, g) for t in inside]
        want = last if last in positions else positions[0]
        assert host(idx)[(0, 0) + out] == want
        assert host(y)[(0, 0) + out] == x.flat[want]


def test_maxpool_nan_propagates_last_nan_wins(device):
    # PyTorch's rule: a NaN replaces the running max, so the window's last NaN is the argmax
    g = geometry(((1, 1, 2, 4), (2, 4), (1, 1), (0, 0), (0, 0), (1, 1), False))
    x = np.array([[[[1.0, np.nan, 3.0, 2.0], [np.nan, 5.0, 0.0, 1.0]]]], np.float32)
    y, idx = run_max(x, g, device)
    assert np.isnan(host(y)).all() and host(idx).ravel().tolist() == [4]


@pytest.mark.parametrize("case", [((2, 3, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), False),
                                  ((1, 2, 4, 5, 5), (3, 2, 3), (1, 1, 2), (1, 0, 1), (1, 1, 1), (1, 1, 1), False)],
                         ids=case_id)
def test_maxpool_backward_is_bitwise_identical_on_cpu_and_cuda(case):
    g = geometry(case)
    x = tie_free(case[0], np.float32, seed=7)
    _, idx = run_max(x, g, "cpu")
    dy = (np.random.default_rng(8).standard_normal(g.y_shape) * 1e3).astype(np.float32)
    results = []
    for device in ("cpu", "cuda"):
        dx = empty(x.shape, np.float32, device)
        pool.maxpool_bwd(put(dy, device), put(idx, device), dx, g)
        results.append(host(dx).tobytes())
    assert results[0] == results[1]


@pytest.mark.parametrize("case", [((2, 3, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), False)], ids=case_id)
def test_float16_backward_sums_in_float32_on_cpu_and_cuda(case):
    """Overlapping windows add several gradients into one dx: the CPU scatter sums them in a
    float32 workspace and the CUDA gather in float32 registers, in the same order, so both round
    the same float32 sum once and agree bitwise."""
    g = geometry(case)
    x = np.full(case[0], 1.0, np.float16)                   # ties: position 0 of each window wins
    # halves up to 1000 are float16 numbers and their sums are exact in float32
    dy = (np.random.default_rng(9).integers(-2000, 2000, g.y_shape) / 2).astype(np.float16)
    results = []
    for device in ("cpu", "cuda"):
        _, idx = run_max(x, g, device)
        dx = empty(x.shape, np.float16, device)
        pool.maxpool_bwd(put(dy, device), idx, dx, g)
        dxa = empty(x.shape, np.float16, device)
        pool.adaptive_avgpool_bwd(put(dy[:, :, :3, :3].copy(), device), dxa)
        results.append((host(dx).tobytes(), host(dxa).tobytes()))
        want = maxpool_bwd_ref(dy, host(idx), g).astype(np.float32).astype(np.float16)
        np.testing.assert_array_equal(host(dx), want)
    assert results[0] == results[1]


def test_launchers_reject_bad_operands():
    g = geometry(CASES[0])
    x = np.zeros((2, 3, 7, 7), np.float32)
    y = np.zeros((2, 3, 4, 4), np.float32)
    idx = np.zeros((2, 3, 4, 4), np.int64)
    with pytest.raises(TypeError, match="float32 or float64"):
        pool.maxpool_fwd(x.astype(np.int32), y, idx, g)
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        pool.maxpool_fwd(x, y, idx.astype(np.int32), g)
    with pytest.raises(TypeError, match="dtype float32"):
        pool.maxpool_fwd(x, y.astype(np.float64), idx, g)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 4\), got \(2, 3, 3, 4\)"):
        pool.maxpool_fwd(x, y[:, :, :3], idx, g)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 7, 7\), got \(2, 3, 1, 7, 7\)"):
        pool.maxpool_fwd(x[:, :, None], y, idx, g)
    with pytest.raises(ValueError, match="C-contiguous"):
        pool.avgpool_fwd(x, np.zeros((2, 3, 4, 8), np.float32)[..., ::2], g)
    with pytest.raises(TypeError, match="CUDA device"):
        pool.avgpool_fwd(cuda.to_device(x), y, g)
    with pytest.raises(ValueError, match=r"average pooling has no dilation, got \(2, 1\)"):
        pool.avgpool_fwd(x, np.zeros((2, 3, 3, 4), np.float32), PoolGeometry.make(2, 3, (7, 7), (3, 3), (2, 2), (1, 1),
                                                                                    (1, 1), (2, 1)))
    with pytest.raises(ValueError, match=r"\(N, C, \*in_size\) and \(N, C, \*out_size\)"):
        pool.adaptive_avgpool_fwd(x, np.zeros((2, 2, 1, 1), np.float32))
    with pytest.raises(ValueError, match="spatial rank 1-3"):
        pool.adaptive_avgpool_fwd(x[0, 0], np.zeros((1, 1), np.float32))
