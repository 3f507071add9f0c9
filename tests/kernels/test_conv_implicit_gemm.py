"""Implicit-GEMM specifics beyond the shared grid (tests/kernels/test_conv_algorithms.py): wide
channel counts, the CPU tiling edges, determinism, stride phases and the CUDA reduction slices."""
import numpy as np
import pytest

from convkern.kernels import conv_implicit_gemm as G
from tests.kernels.conv_cases import CASES, PASSES, assert_pass_matches, case2d, case_id, run_pass, tiny_cpu_tiles

LAUNCH = {"fwd": G.conv2d_fwd_implicit_gemm, "bwd_data": G.conv2d_bwd_data_implicit_gemm,
          "bwd_filter": G.conv2d_bwd_filter_implicit_gemm}

# more channels and pixels than a simulated block tile holds (Kg, Cg, N*P*Q > BM = BN = 16), long
# reductions, odd sizes
WIDE_CASES = [case2d(*c) for c in [
    (1, 18, 4, 5, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 36, 5, 4, 34, 3, 2, (2, 1), (1, 0, 1, 1), (1, 2), 2),
]]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", WIDE_CASES, ids=case_id)
def test_wide_channels_match_reference(case, pass_, device):
    assert_pass_matches(LAUNCH[pass_], pass_, case, np.float32, device)


@pytest.mark.parametrize("turned", [False, "nb", "vector"], ids=["gathered", "turned-round", "one-vector"])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5], WIDE_CASES[1]], ids=case_id)
def test_cpu_tile_edges(case, turned, monkeypatch):
    """Tiny CPU tiles (``tiny_cpu_tiles``) in both orientations of the product: columns and rows
    that are not multiples of the register tile, several reduction chunks per item, several
    channel blocks, the backward-filter reduction in slices."""
    tiny_cpu_tiles(monkeypatch, turned)
    for pass_ in PASSES:
        assert_pass_matches(LAUNCH[pass_], pass_, case, np.float64, "cpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_turned_round_products_match_reference(dtype):
    """Shapes the rule turns round, at the CPU's real tile sizes: all three passes of a 5x5 layer
    with one and two NB-wide panels of channels (pixels as the micro-kernel's rows in the forward
    and data gradient, taps in the filter gradient), and of one with one-vector panels (8 and a
    vector's worth of channels); the forward and filter gradient of a strided 3x3 layer in two
    groups."""
    nb, w = G.gather_panel_width(dtype), G.lanes(dtype)
    same = case2d(2, nb, 9, 7, 2 * nb - 3, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1)
    few = case2d(2, 8, 9, 9, w, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1)
    strided = case2d(1, 4 * nb, 32, 32, 2 * nb, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2)
    assert G._turned_round(same.K, same.C * 25, dtype) == G._turned_round(same.C, same.K * 25, dtype) == nb
    assert G._turned_round(few.K, few.C * 25, dtype) == G._turned_round(few.C, few.K * 25, dtype) == w
    assert G._turned_round(few.K, few.N * 9 * 9, dtype) == w     # the filter gradient: the same-size output
    assert G._turned_round(strided.K // 2, strided.C // 2 * 9, dtype) == G._turned_round(nb, 16 * 16, dtype) == nb
    for case, passes in ((same, PASSES), (few, PASSES), (strided, ("fwd", "bwd_filter"))):
        for pass_ in passes:
            assert_pass_matches(LAUNCH[pass_], pass_, case, dtype, "cpu")


def test_turned_round_rule():
    """NB-wide panels for one or two panels of rows and a reduction of at least
    CPU_TURNED_MIN_LENGTH; one-vector panels for CPU_ONE_VECTOR_MIN_ROWS up to a vector of rows
    and a reduction of at least CPU_ONE_VECTOR_MIN_LENGTH; otherwise gathered (0)."""
    nb, w = G.gather_panel_width(np.float32), G.lanes(np.float32)
    long, short = G.CPU_TURNED_MIN_LENGTH, G.CPU_ONE_VECTOR_MIN_LENGTH
    assert G._turned_round(nb, long, np.float32) == G._turned_round(2 * nb, long, np.float32) == nb
    assert G._turned_round(w, short, np.float32) == G._turned_round(G.CPU_ONE_VECTOR_MIN_ROWS, short, np.float32) == w
    for rows, length in ((w + 1, long), (2 * nb + 1, long), (nb, long - 1), (w, short - 1),
                         (G.CPU_ONE_VECTOR_MIN_ROWS - 1, long)):
        assert G._turned_round(rows, length, np.float32) == 0


@pytest.mark.parametrize("case", [case2d(2, 3, 3, 70, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                                  case2d(1, 2, 1, 100, 3, 1, 5, (1, 1), (0, 0, 2, 2), (1, 1), 1)], ids=case_id)
def test_cpu_rows_wider_than_a_micro_panel(case):
    """Stride-1 rows of >= NR pixels: a panel's origins are consecutive and the gather copies
    whole vectors (the fast path of _gather_panels); panels that straddle two rows do not."""
    for pass_ in PASSES:
        assert_pass_matches(LAUNCH[pass_], pass_, case, np.float64, "cpu")
        assert_pass_matches(LAUNCH[pass_], pass_, case, np.float32, "cpu")


@pytest.mark.parametrize("case", [CASES[2], WIDE_CASES[1]], ids=case_id)
def test_cpu_results_are_deterministic(case):
    for pass_ in PASSES:
        first, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, "cpu")
        second, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, "cpu")
        np.testing.assert_array_equal(first, second)


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


@pytest.mark.parametrize("slots", [1, 10**6], ids=["one-slice", "most-slices"])
def test_cuda_filter_reduction_slices(slots, monkeypatch):
    """Backward filter on CUDA with its N*P*Q reduction in one slice and in as many as it allows."""
    monkeypatch.setattr(G, "resident_blocks", lambda kernel, threads: slots)
    assert_pass_matches(LAUNCH["bwd_filter"], "bwd_filter", CASES[5], np.float64, "cuda")


def test_filter_gradients_with_few_taps_stay_gathered(monkeypatch):
    """With NB-wide panels the filter gradient turns round only for at least CPU_TURNED_MIN_TAPS
    taps (cifar10.conv1's 75 ran at half the gathered kernel's speed); the results match either way."""
    nb = G.gather_panel_width(np.float32)
    few = case2d(2, 3, 16, 16, nb, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1)        # 75 taps
    many = case2d(1, 16, 16, 16, nb, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1)      # 400 taps
    turned = G.implicit_gemm_bwd_filter_tap_rows_cpu
    calls = []
    monkeypatch.setattr(G, "implicit_gemm_bwd_filter_tap_rows_cpu", lambda *a: (calls.append(1), turned(*a)))
    assert_pass_matches(LAUNCH["bwd_filter"], "bwd_filter", few, np.float32, "cpu")
    assert not calls
    assert_pass_matches(LAUNCH["bwd_filter"], "bwd_filter", many, np.float32, "cpu")
    assert calls
