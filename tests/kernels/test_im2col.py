"""im2col / col2im against their definitions, and the chunked batch path (the three passes
are in the shared grid, tests/kernels/test_conv_algorithms.py)."""
import numpy as np
import pytest

from convkern.kernels import im2col as I
from tests.kernels.conv_cases import (CASES, DTYPES, assert_pass_matches, case2d, case_id, geometry,
                                      random_operands, to_device, to_host)
from tests.reference import tolerance


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
    dev_x, col, dev_dcol, dx = to_device(device, x, _garbage((rows, cols), dtype), dcol, dx_start)
    I.im2col(dev_x, col, n0, g)
    I.col2im(dev_dcol, dx, n0, nb, g)
    np.testing.assert_array_equal(to_host(col), im2col_ref(x, g, n0, nb).astype(dtype))
    dx = to_host(dx)
    np.testing.assert_allclose(dx[n0:], col2im_ref(dcol, g, n0, nb)[n0:], *tolerance(dtype))
    assert (dx[:n0] == 7).all()


@pytest.mark.parametrize("images_per_chunk", [1, 2])
def test_batch_chunks_give_the_same_result(images_per_chunk, device):
    """A workspace for one image per chunk (and for two: chunks of 2 and 1) runs every chunked path."""
    case = case2d(3, 2, 6, 5, 4, 3, 3, (1, 2), (1, 0, 1, 1), (1, 1), 2)
    g = geometry(case)
    workspace = images_per_chunk * (g.C * g.R * g.S + g.K) * g.P * g.Q * 8
    launch = {"fwd": I.conv2d_fwd_im2col, "bwd_data": I.conv2d_bwd_data_im2col,
              "bwd_filter": I.conv2d_bwd_filter_im2col}
    for pass_, f in launch.items():
        assert_pass_matches(lambda a, b, out, g: f(a, b, out, g, max_workspace=workspace), pass_, case,
                            np.float64, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [case2d(3, 5, 6, 7, 4, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
                                  case2d(2, 3, 7, 6, 5, 1, 1, (2, 3), (0, 0, 0, 0), (1, 1), 1)], ids=case_id)
def test_pointwise_layers_take_blas_without_a_column_matrix(case, dtype, monkeypatch):
    """1 x 1 unpadded single-group layers on the CPU, strided too: no im2col or col2im, every pass
    matches the reference; a grouped 1 x 1 layer still takes the column matrix."""
    def refuse(*args):
        raise AssertionError("the pointwise path built a column matrix")
    monkeypatch.setattr(I, "im2col", refuse)
    monkeypatch.setattr(I, "col2im", refuse)
    launch = {"fwd": I.conv2d_fwd_im2col, "bwd_data": I.conv2d_bwd_data_im2col,
              "bwd_filter": I.conv2d_bwd_filter_im2col}
    for pass_, f in launch.items():
        assert_pass_matches(f, pass_, case, dtype, "cpu")
    grouped = geometry(case2d(2, 4, 5, 5, 2, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 2))
    assert I._pointwise_cpu(geometry(case), np.zeros(1, dtype)) and not I._pointwise_cpu(grouped, np.zeros(1, dtype))
