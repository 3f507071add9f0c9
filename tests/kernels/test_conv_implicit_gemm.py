import sys

import numpy as np
import pytest
from numba import cuda

from convkern.kernels import conv_implicit_gemm as G
from tests.kernels.conv_cases import CASES, case_id, geometry, random_operands
from tests.reference import conv2d_bwd_data_ref, conv2d_bwd_filter_ref, conv2d_fwd_ref, tolerance

DTYPES = [np.float32, np.float64]

# more channels than a simulated block tile holds (Kg, Cg > BM = 8), long reductions, odd sizes
WIDE_CASES = [
    (1, 18, 4, 5, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 36, 5, 4, 34, 3, 2, (2, 1), (1, 0, 1, 1), (1, 2), 2),
]


@pytest.fixture(autouse=True, scope="module")
def _fast_thread_switches():
    """The CUDA simulator runs a thread per CUDA thread and its scheduler busy-polls them, so
    every syncthreads waits on GIL hand-offs; a short switch interval makes those quick."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


def _run_passes(case, dtype, device):
    """Run the three launchers on NaN-filled outputs; yield (name, result, float64 reference)."""
    g = geometry(case)
    *_, stride, pad, dil, groups = case
    kw = dict(stride=stride, pad=pad, dilation=dil, groups=groups)
    x, w, dy = random_operands(case, dtype)
    passes = [
        (G.conv2d_fwd_implicit_gemm, x, w, dy.shape, lambda: conv2d_fwd_ref(x, w, **kw)),
        (G.conv2d_bwd_data_implicit_gemm, dy, w, x.shape, lambda: conv2d_bwd_data_ref(dy, w, x.shape, **kw)),
        (G.conv2d_bwd_filter_implicit_gemm, dy, x, w.shape, lambda: conv2d_bwd_filter_ref(dy, x, w.shape, **kw)),
    ]
    for launcher, a, b, shape, reference in passes:
        out = np.full(shape, np.nan, dtype)
        if device == "cuda":
            dev_out = cuda.to_device(out)
            launcher(cuda.to_device(a), cuda.to_device(b), dev_out, g)
            out = dev_out.copy_to_host()
        else:
            launcher(a, b, out, g)
        yield launcher.__name__, out, reference()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_passes_match_reference(case, dtype, device):
    for name, out, expected in _run_passes(case, dtype, device):
        np.testing.assert_allclose(out, expected, *tolerance(dtype), err_msg=name)


@pytest.mark.parametrize("case", WIDE_CASES, ids=case_id)
def test_wide_channels_match_reference(case, device):
    for name, out, expected in _run_passes(case, np.float32, device):
        np.testing.assert_allclose(out, expected, *tolerance(np.float32), err_msg=name)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5], WIDE_CASES[1]], ids=case_id)
def test_cpu_tile_edges(case, monkeypatch):
    """Tiny CPU tiles: pixel tiles and tap blocks that are not multiples of the 4 x 3 register
    block, several reduction segments per image, and the batch split into slices."""
    monkeypatch.setattr(G, "CPU_TILE_ELEMS", 1)
    monkeypatch.setattr(G, "CPU_TILE_MIN", 5)
    monkeypatch.setattr(G, "CPU_FILTER_COLS", 7)
    monkeypatch.setattr(G, "CPU_FILTER_SEG", 10)
    monkeypatch.setattr(G, "CPU_MIN_ITEMS", 1000)
    for name, out, expected in _run_passes(case, np.float64, "cpu"):
        np.testing.assert_allclose(out, expected, *tolerance(np.float64), err_msg=name)


@pytest.mark.parametrize("case", [CASES[2], WIDE_CASES[1]], ids=case_id)
def test_cpu_results_are_deterministic(case):
    first = [out for _, out, _ in _run_passes(case, np.float32, "cpu")]
    second = [out for _, out, _ in _run_passes(case, np.float32, "cpu")]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_stride_phases_cover_every_input_position_once():
    for n_in, n_out, k, stride, pad, dil in [(9, 5, 3, 2, 1, 1), (10, 3, 4, 3, 3, 1), (8, 4, 1, 2, 0, 1),
                                             (7, 3, 3, 2, 1, 2)]:
        phases, before, length = G._stride_phases(n_in, n_out, k, stride, pad, dil)
        covered = sorted(a + i * stride for a, count, _, _ in phases for i in range(count))
        assert covered == list(range(n_in))
        for a, count, taps, offsets in phases:
            for t, o in zip(taps, offsets):
                assert (a + pad - t * dil) == o * stride
                assert count == 0 or (0 <= o + before and o + count - 1 + before < length)


@pytest.mark.parametrize("min_blocks", [1, 10**6], ids=["one-slice", "most-slices"])
def test_cuda_filter_reduction_slices(min_blocks, monkeypatch):
    """Backward filter on CUDA with its N*P*Q reduction in one slice and in as many as it allows."""
    monkeypatch.setattr(G, "CUDA_MIN_BLOCKS", min_blocks)
    case = CASES[5]
    g = geometry(case)
    x, w, dy = random_operands(case, np.float64)
    *_, stride, pad, dil, groups = case
    expected = conv2d_bwd_filter_ref(dy, x, w.shape, stride=stride, pad=pad, dilation=dil, groups=groups)
    dw = cuda.to_device(np.full(w.shape, np.nan))
    G.conv2d_bwd_filter_implicit_gemm(cuda.to_device(dy), cuda.to_device(x), dw, g)
    np.testing.assert_allclose(dw.copy_to_host(), expected, *tolerance(np.float64))
