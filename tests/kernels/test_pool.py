"""Pooling kernels (kernels/pool.py) against plain float64 NumPy loops, on CPU and on the CUDA
path, float32 and float64."""
import numpy as np
import pytest
from numba import cuda

from convkern.kernels import pool
from convkern.kernels.cuda_util import is_device_array
from convkern.kernels.shapes import PoolGeometry
from tests.reference import tolerance

DTYPES = [np.float32, np.float64]

# (N, C, H, W), (R, S), (sh, sw), (ph, pw), (dh, dw), ceil_mode
CASES = [
    ((2, 3, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((1, 2, 6, 5), (2, 3), (1, 2), (1, 1), (1, 1), True),
    ((2, 2, 6, 6), (3, 2), (2, 3), (0, 1), (2, 1), True),
    ((1, 3, 5, 8), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ((2, 1, 8, 7), (4, 3), (3, 2), (2, 1), (1, 2), False),
    ((1, 2, 4, 6), (2, 2), (3, 3), (1, 1), (1, 1), True),     # ceil rule drops the last window along H
    ((2, 2, 5, 5), (1, 1), (2, 1), (0, 0), (1, 1), False),
    ((1, 2, 5, 4), (6, 2), (6, 2), (0, 1), (1, 1), True),     # one window taller than the input
]
AVG_CASES = [c for c in CASES if c[4] == (1, 1)]


def case_id(c):
    return "x{}-k{}-s{}-p{}-d{}-{}".format(*("x".join(map(str, v)) for v in c[:5]), "ceil" if c[5] else "floor")


def out_size(size, k, s, p, d, ceil):
    span = d * (k - 1) + 1
    if ceil:
        out = -(-(size + 2 * p - span) // s) + 1
        if (out - 1) * s >= size + p:
            out -= 1
        return out
    return (size + 2 * p - span) // s + 1


def geometry(case):
    (N, C, H, W), (R, S), (sh, sw), (ph, pw), (dh, dw), ceil = case
    return PoolGeometry(N, C, H, W, R, S, out_size(H, R, sh, ph, dh, ceil), out_size(W, S, sw, pw, dw, ceil),
                        sh, sw, ph, pw, dh, dw)


def windows(g):
    """For each output (p, q): the input positions (h, w) of its window, row-major, inside the input."""
    for p in range(g.P):
        for q in range(g.Q):
            cells = [(p * g.stride_h - g.pad_h + r * g.dil_h, q * g.stride_w - g.pad_w + s * g.dil_w)
                     for r in range(g.R) for s in range(g.S)]
            yield p, q, [(h, w) for h, w in cells if 0 <= h < g.H and 0 <= w < g.W]


def maxpool_ref(x, g):
    y = np.zeros((g.N, g.C, g.P, g.Q))
    idx = np.zeros((g.N, g.C, g.P, g.Q), np.int64)
    for n in range(g.N):
        for c in range(g.C):
            for p, q, cells in windows(g):
                best = None
                for h, w in cells:
                    if best is None or x[n, c, h, w] > x[n, c, best[0], best[1]]:
                        best = (h, w)
                y[n, c, p, q] = x[n, c, best[0], best[1]]
                idx[n, c, p, q] = best[0] * g.W + best[1]
    return y, idx


def maxpool_bwd_ref(dy, idx, g):
    dx = np.zeros((g.N, g.C, g.H * g.W))
    for n in range(g.N):
        for c in range(g.C):
            np.add.at(dx[n, c], idx[n, c].ravel(), dy[n, c].astype(np.float64).ravel())
    return dx.reshape(g.N, g.C, g.H, g.W)


def avg_divisor(g, p, q, cells, count_include_pad):
    if not count_include_pad:
        return len(cells)
    h0, w0 = p * g.stride_h - g.pad_h, q * g.stride_w - g.pad_w
    return (min(h0 + g.R, g.H + g.pad_h) - h0) * (min(w0 + g.S, g.W + g.pad_w) - w0)


def avgpool_ref(x, g, count_include_pad):
    y = np.zeros((g.N, g.C, g.P, g.Q))
    for p, q, cells in windows(g):
        total = sum(x[:, :, h, w].astype(np.float64) for h, w in cells)
        y[:, :, p, q] = total / avg_divisor(g, p, q, cells, count_include_pad)
    return y


def avgpool_bwd_ref(dy, g, count_include_pad):
    dx = np.zeros((g.N, g.C, g.H, g.W))
    for p, q, cells in windows(g):
        for h, w in cells:
            dx[:, :, h, w] += dy[:, :, p, q] / avg_divisor(g, p, q, cells, count_include_pad)
    return dx


def adaptive_ref(x, P, Q):
    N, C, H, W = x.shape
    y = np.zeros((N, C, P, Q))
    for p in range(P):
        for q in range(Q):
            h0, h1 = int(np.floor(p * H / P)), int(np.ceil((p + 1) * H / P))
            w0, w1 = int(np.floor(q * W / Q)), int(np.ceil((q + 1) * W / Q))
            y[:, :, p, q] = x[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    return y


def adaptive_bwd_ref(dy, H, W):
    N, C, P, Q = dy.shape
    dx = np.zeros((N, C, H, W))
    for p in range(P):
        for q in range(Q):
            h0, h1 = int(np.floor(p * H / P)), int(np.ceil((p + 1) * H / P))
            w0, w1 = int(np.floor(q * W / Q)), int(np.ceil((q + 1) * W / Q))
            dx[:, :, h0:h1, w0:w1] += dy[:, :, p:p + 1, q:q + 1] / ((h1 - h0) * (w1 - w0))
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


def run_max(x, g, device):
    y, idx = empty((g.N, g.C, g.P, g.Q), x.dtype, device), empty((g.N, g.C, g.P, g.Q), np.int64, device)
    pool.maxpool2d_fwd(put(x, device), y, idx, g)
    return y, idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_maxpool2d(case, dtype, device):
    g = geometry(case)
    x = tie_free(case[0], dtype)
    y, idx = run_max(x, g, device)
    y_ref, idx_ref = maxpool_ref(x, g)
    check(y, y_ref, dtype)
    assert idx.dtype == np.int64 and (host(idx) == idx_ref).all()
    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
    dx = empty(x.shape, dtype, device)
    pool.maxpool2d_bwd(put(dy, device), idx, dx, g)
    check(dx, maxpool_bwd_ref(dy, idx_ref, g), dtype)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_avgpool2d(case, dtype, count_include_pad, device):
    g = geometry(case)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(case[0]).astype(dtype)
    y = empty((g.N, g.C, g.P, g.Q), dtype, device)
    pool.avgpool2d_fwd(put(x, device), y, g, count_include_pad)
    check(y, avgpool_ref(x, g, count_include_pad), dtype)
    dy = rng.standard_normal((g.N, g.C, g.P, g.Q)).astype(dtype)
    dx = empty(x.shape, dtype, device)
    pool.avgpool2d_bwd(put(dy, device), dx, g, count_include_pad)
    check(dx, avgpool_bwd_ref(dy, g, count_include_pad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, out", [((2, 3, 7, 5), (3, 2)), ((1, 2, 6, 6), (1, 1)), ((2, 1, 4, 5), (6, 3))],
                         ids=str)
def test_adaptive_avgpool2d(shape, out, dtype, device):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    y = empty(shape[:2] + out, dtype, device)
    pool.adaptive_avgpool2d_fwd(put(x, device), y)
    check(y, adaptive_ref(x, *out), dtype)
    dy = rng.standard_normal(shape[:2] + out).astype(dtype)
    dx = empty(shape, dtype, device)
    pool.adaptive_avgpool2d_bwd(put(dy, device), dx)
    check(dx, adaptive_bwd_ref(dy, *shape[2:]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
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
                # max_pool2d indices are positions in the 7x7 input; placed in an 8x9 plane they are
                # plain flat positions, as in PyTorch
                want[n, c, j] = vals[n, c].ravel()[k]
    check(out, want.reshape(out.shape), dtype)
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    dx = empty(idx.shape, dtype, device)
    pool.maxunpool2d_bwd(put(dout, device), put(idx, device), dx)
    check(dx, np.take_along_axis(dout.reshape(g.N, g.C, -1), idx.reshape(g.N, g.C, -1), 2).reshape(idx.shape),
          dtype)


def test_maxunpool2d_rejects_indices_out_of_range(device):
    x = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([[[[0, 3], [4, -1]]]], np.int64)
    out = empty((1, 1, 2, 2), np.float32, device)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        pool.maxunpool2d_fwd(put(x, device), put(idx, device), out)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        pool.maxunpool2d_bwd(put(x, device), put(idx, device), empty((1, 1, 2, 2), np.float32, device))


def test_maxpool2d_ties_first_maximum_wins(device):
    # overlapping 3x3 windows, stride 2, padding 1, on a plane of equal values: every window picks
    # its first in-input position in row-major order, never the padding
    g = geometry(((1, 1, 5, 5), (3, 3), (2, 2), (1, 1), (1, 1), False))
    x = np.full((1, 1, 5, 5), 0.5, np.float32)
    y, idx = run_max(x, g, device)
    want = [[(max(0, 2 * p - 1)) * 5 + max(0, 2 * q - 1) for q in range(3)] for p in range(3)]
    assert (host(idx)[0, 0] == want).all() and (host(y) == 0.5).all()
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    dx = empty(x.shape, np.float32, device)
    pool.maxpool2d_bwd(put(dy, device), idx, dx, g)
    dx_want = np.zeros((5, 5), np.float32)
    for p in range(3):
        for q in range(3):
            dx_want.flat[want[p][q]] += dy[0, 0, p, q]
    assert (host(dx)[0, 0] == dx_want).all()


def test_maxpool2d_all_minus_inf_window_picks_first_input_position(device):
    # -inf everywhere but one element: windows without it return -inf at their first position
    # inside the input (the -inf padding never wins)
    g = geometry(((1, 1, 4, 4), (3, 3), (2, 2), (1, 1), (1, 1), True))
    x = np.full((1, 1, 4, 4), -np.inf, np.float64)
    x[0, 0, 3, 3] = 1.0
    y, idx = run_max(x, g, device)
    for p, q, cells in windows(g):
        h, w = (3, 3) if (3, 3) in cells else cells[0]
        assert host(idx)[0, 0, p, q] == h * 4 + w
        assert host(y)[0, 0, p, q] == x[0, 0, h, w]


def test_maxpool2d_nan_propagates_last_nan_wins(device):
    # PyTorch's rule: a NaN replaces the running max, so the window's last NaN is the argmax
    g = geometry(((1, 1, 2, 4), (2, 4), (1, 1), (0, 0), (1, 1), False))
    x = np.array([[[[1.0, np.nan, 3.0, 2.0], [np.nan, 5.0, 0.0, 1.0]]]], np.float32)
    y, idx = run_max(x, g, device)
    assert np.isnan(host(y)).all() and host(idx).ravel().tolist() == [4]


def test_maxpool2d_backward_is_bitwise_identical_on_cpu_and_cuda():
    g = geometry(((2, 3, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), False))
    x = tie_free((2, 3, 7, 7), np.float32, seed=7)
    _, idx = run_max(x, g, "cpu")
    dy = (np.random.default_rng(8).standard_normal((2, 3, 7, 7)) * 1e3).astype(np.float32)
    results = []
    for device in ("cpu", "cuda"):
        dx = empty(x.shape, np.float32, device)
        pool.maxpool2d_bwd(put(dy, device), put(idx, device), dx, g)
        results.append(host(dx).tobytes())
    assert results[0] == results[1]


def test_launchers_reject_bad_operands():
    g = geometry(CASES[0])
    x = np.zeros((2, 3, 7, 7), np.float32)
    y = np.zeros((2, 3, 4, 4), np.float32)
    idx = np.zeros((2, 3, 4, 4), np.int64)
    with pytest.raises(TypeError, match="float32 or float64"):
        pool.maxpool2d_fwd(x.astype(np.int32), y, idx, g)
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        pool.maxpool2d_fwd(x, y, idx.astype(np.int32), g)
    with pytest.raises(TypeError, match="dtype float32"):
        pool.maxpool2d_fwd(x, y.astype(np.float64), idx, g)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 4\), got \(2, 3, 3, 4\)"):
        pool.maxpool2d_fwd(x, y[:, :, :3], idx, g)
    with pytest.raises(ValueError, match="C-contiguous"):
        pool.avgpool2d_fwd(x, np.zeros((2, 3, 4, 8), np.float32)[..., ::2], g)
    with pytest.raises(TypeError, match="CUDA device"):
        pool.avgpool2d_fwd(cuda.to_device(x), y, g)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) and \(N, C, P, Q\)"):
        pool.adaptive_avgpool2d_fwd(x, np.zeros((2, 2, 1, 1), np.float32))
