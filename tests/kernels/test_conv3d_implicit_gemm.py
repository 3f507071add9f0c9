"""Implicit-GEMM 3-D specifics beyond the shared grid (tests/kernels/test_conv_algorithms.py,
CASES_3D): channel counts wider than a block tile, the CPU tiling edges, the stride-phase tables,
the CUDA reduction slices, the rank dispatch of the 2-D launchers, determinism."""
import numpy as np
import pytest

from convkern.kernels import conv3d_implicit_gemm as G3
from convkern.kernels import conv_implicit_gemm as G
from tests.kernels.conv_cases import (CASES_3D, PASSES, Case, assert_pass_matches, case_id, geometry, run_pass,
                                     tiny_cpu_tiles)

LAUNCH = {"fwd": G3.conv3d_fwd_implicit_gemm, "bwd_data": G3.conv3d_bwd_data_implicit_gemm,
          "bwd_filter": G3.conv3d_bwd_filter_implicit_gemm}


def _case(N, C, size, K, kernel, stride=(1, 1, 1), pads=((0, 0),) * 3, dilation=(1, 1, 1), groups=1):
    return Case(N, C, tuple(size), K, tuple(kernel), tuple(stride), tuple(pads), tuple(dilation), groups)


# more channels than a simulated block tile holds (Kg, Cg > BM = 8), odd sizes, strides and groups
WIDE_CASES = [
    _case(1, 10, (3, 4, 3), 12, (2, 2, 2), pads=((1, 0), (0, 1), (1, 1))),
    _case(2, 20, (4, 3, 5), 18, (2, 1, 3), stride=(2, 1, 2), pads=((1, 1), (0, 0), (1, 0)), dilation=(1, 1, 2),
          groups=2),
]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", WIDE_CASES, ids=case_id)
def test_wide_channels_match_reference(case, pass_, device):
    assert_pass_matches(LAUNCH[pass_], pass_, case, np.float32, device)


@pytest.mark.parametrize("case", [CASES_3D[0], CASES_3D[1], WIDE_CASES[1]], ids=case_id)
def test_cpu_tile_edges(case, monkeypatch):
    """Tiny CPU tiles (``tiny_cpu_tiles``): columns and rows that are not multiples of the
    register tile, several reduction chunks per item, the backward-filter reduction in slices."""
    tiny_cpu_tiles(monkeypatch)
    for pass_ in PASSES:
        assert_pass_matches(LAUNCH[pass_], pass_, case, np.float64, "cpu")


@pytest.mark.parametrize("case", [CASES_3D[1], WIDE_CASES[1]], ids=case_id)
def test_cpu_results_are_deterministic(case):
    for pass_ in PASSES:
        first, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, "cpu")
        second, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, "cpu")
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("case", CASES_3D + WIDE_CASES, ids=case_id)
def test_phase_tables_cover_every_input_position_once(case):
    """The backward-data phases write each dx position exactly once and read inside padded dy."""
    g = geometry(case)
    split = [G._stride_phases(*a) for a in zip(g.in_size, g.out_size, g.kernel, g.stride, g.pad_before, g.dilation)]
    padded = tuple(s[2] for s in split)
    _, spix, dpix, npix = G3._phase_tables(g, [s[0] for s in split], padded)
    written = np.concatenate([dpix[f, :npix[f]] for f in range(len(npix))])
    assert sorted(written) == list(range(int(np.prod(g.in_size))))
    assert all(spix[f, :npix[f]].max(initial=0) < np.prod(padded) for f in range(len(npix)))


@pytest.mark.parametrize("slots", [1, 10**6], ids=["one-slice", "most-slices"])
def test_cuda_filter_reduction_slices(slots, monkeypatch):
    """Backward filter on CUDA with its N*O*P*Q reduction in one slice and in as many as it allows."""
    monkeypatch.setattr(G3, "resident_blocks", lambda kernel, threads: slots)
    assert_pass_matches(LAUNCH["bwd_filter"], "bwd_filter", CASES_3D[1], np.float64, "cuda")


@pytest.mark.parametrize("pass_", ["bwd_data", "bwd_filter"])
def test_cuda_backward_is_bitwise_reproducible(pass_):
    first, _ = run_pass(LAUNCH[pass_], pass_, CASES_3D[0], np.float32, "cuda")
    second, _ = run_pass(LAUNCH[pass_], pass_, CASES_3D[0], np.float32, "cuda")
    np.testing.assert_array_equal(first, second)
