import numpy as np
import pytest
from numba import cuda

from convkern.kernels import im2col as I
from tests.kernels.conv_cases import CASES, case_id, geometry, random_operands
from tests.reference import conv2d_bwd_data_ref, conv2d_bwd_filter_ref, conv2d_fwd_ref, tolerance

DTYPES = [np.float32, np.float64]


def _ref_kwargs(case):
    *_, stride, pad, dil, groups = case
    return dict(stride=stride, pad=pad, dilation=dil, groups=groups)


def im2col_ref(x, g, n0, nb):
    """col[(c, r, s), (n, p, q)] by the definition, one element at a time."""
    col = np.zeros((g.C * g.R * g.S, nb * g.P * g.Q))
    for c in range(g.C):
        for r in range(g.R):
            for s in range(g.S):
                for n in range(nb):
                    for p in range(g.P):
                        for q in range(g.Q):
                            ih = p * g.stride_h - g.pad_h + r * g.dil_h
                            iw = q * g.stride_w - g.pad_w + s * g.dil_w
                            if 0 <= ih < g.H and 0 <= iw < g.W:
                                col[(c * g.R + r) * g.S + s, (n * g.P + p) * g.Q + q] = x[n0 + n, c, ih, iw]
    return col


def col2im_ref(col, g, n0, nb):
    """The adjoint of im2col_ref: scatter-add every column entry back to the pixel it came from."""
    dx = np.zeros((g.N, g.C, g.H, g.W))
    for c in range(g.C):
        for r in range(g.R):
            for s in range(g.S):
                for n in range(nb):
                    for p in range(g.P):
                        for q in range(g.Q):
                            ih = p * g.stride_h - g.pad_h + r * g.dil_h
                            iw = q * g.stride_w - g.pad_w + s * g.dil_w
                            if 0 <= ih < g.H and 0 <= iw < g.W:
                                dx[n0 + n, c, ih, iw] += col[(c * g.R + r) * g.S + s, (n * g.P + p) * g.Q + q]
    return dx


def _to(device, *arrays):
    return arrays if device == "cpu" else tuple(cuda.to_device(a) for a in arrays)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def _garbage(shape, dtype):
    return np.full(shape, np.nan, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_im2col_col2im_match_reference(case, dtype, device):
    """One chunk of images [n0, N): col2im writes that chunk of dx and nothing else."""
    g = geometry(case)
    x, _, _ = random_operands(case, dtype)
    n0 = g.N // 2
    nb = g.N - n0
    rows, cols = g.C * g.R * g.S, nb * g.P * g.Q
    dcol = np.random.default_rng(1).standard_normal((rows, cols)).astype(dtype)
    dx_start = _garbage(x.shape, dtype)
    dx_start[:n0] = 7
    dev_x, col, dev_dcol, dx = _to(device, x, _garbage((rows, cols), dtype), dcol, dx_start)
    I.im2col(dev_x, col, n0, g)
    I.col2im(dev_dcol, dx, n0, nb, g)
    np.testing.assert_array_equal(_host(col), im2col_ref(x, g, n0, nb).astype(dtype))
    dx = _host(dx)
    np.testing.assert_allclose(dx[n0:], col2im_ref(dcol, g, n0, nb)[n0:], *tolerance(dtype))
    assert (dx[:n0] == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv2d_fwd_im2col(case, dtype, device):
    g = geometry(case)
    x, w, _ = random_operands(case, dtype)
    want = conv2d_fwd_ref(x, w, **_ref_kwargs(case))
    x, w, y = _to(device, x, w, _garbage((g.N, g.K, g.P, g.Q), dtype))
    I.conv2d_fwd_im2col(x, w, y, g)
    np.testing.assert_allclose(_host(y), want, *tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv2d_bwd_data_im2col(case, dtype, device):
    g = geometry(case)
    x, w, dy = random_operands(case, dtype)
    want = conv2d_bwd_data_ref(dy, w, x.shape, **_ref_kwargs(case))
    dy, w, dx = _to(device, dy, w, _garbage(x.shape, dtype))
    I.conv2d_bwd_data_im2col(dy, w, dx, g)
    np.testing.assert_allclose(_host(dx), want, *tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv2d_bwd_filter_im2col(case, dtype, device):
    g = geometry(case)
    x, w, dy = random_operands(case, dtype)
    want = conv2d_bwd_filter_ref(dy, x, w.shape, **_ref_kwargs(case))
    dy, x, dw = _to(device, dy, x, _garbage(w.shape, dtype))
    I.conv2d_bwd_filter_im2col(dy, x, dw, g)
    np.testing.assert_allclose(_host(dw), want, *tolerance(dtype))


@pytest.mark.parametrize("images_per_chunk", [1, 2])
def test_batch_chunks_give_the_same_result(images_per_chunk, device):
    """A workspace for one image per chunk (and for two: chunks of 2 and 1) runs every chunked path."""
    case = (3, 2, 6, 5, 4, 3, 3, (1, 2), (1, 0, 1, 1), (1, 1), 2)
    g = geometry(case)
    workspace = images_per_chunk * (g.C * g.R * g.S + g.K) * g.P * g.Q * 8
    x, w, dy = random_operands(case, np.float64)
    kw = _ref_kwargs(case)
    want = (conv2d_fwd_ref(x, w, **kw), conv2d_bwd_data_ref(dy, w, x.shape, **kw),
            conv2d_bwd_filter_ref(dy, x, w.shape, **kw))
    x, w, dy, y, dx, dw = _to(device, x, w, dy, _garbage(dy.shape, np.float64),
                              _garbage(x.shape, np.float64), _garbage(w.shape, np.float64))
    I.conv2d_fwd_im2col(x, w, y, g, max_workspace=workspace)
    I.conv2d_bwd_data_im2col(dy, w, dx, g, max_workspace=workspace)
    I.conv2d_bwd_filter_im2col(dy, x, dw, g, max_workspace=workspace)
    for got, ref in zip((y, dx, dw), want):
        np.testing.assert_allclose(_host(got), ref, *tolerance(np.float64))


def test_rejects_mismatched_arrays():
    case = CASES[0]
    g = geometry(case)
    x, w, _ = random_operands(case, np.float32)
    with pytest.raises(ValueError, match="shapes"):
        I.conv2d_fwd_im2col(x, w, np.empty((g.N, g.K, g.P + 1, g.Q), np.float32), g)
    with pytest.raises(TypeError, match="float32"):
        I.conv2d_fwd_im2col(x, w.astype(np.float64), np.empty((g.N, g.K, g.P, g.Q), np.float32), g)
