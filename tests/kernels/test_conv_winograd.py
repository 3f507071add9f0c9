"""Winograd specifics beyond the shared grid (tests/kernels/test_conv_algorithms.py): the
transform identities of F(2x2, 3x3) and F(4x4, 3x3), every pass with both tile sizes on awkward
shapes (CPU and the CUDA path), several chunks of tiles, the refusals, the float32 error bound
at C*9 = 4608 and the default tile size and preference."""
import itertools

import numpy as np
import pytest

from convkern.kernels import conv_winograd as WG
from convkern.kernels.shapes import ConvGeometry
from tests.kernels.conv_cases import PASSES, assert_pass_matches, case2d, case_id, run_pass

LAUNCH = {"fwd": WG.conv2d_fwd_winograd, "bwd_data": WG.conv2d_bwd_data_winograd,
          "bwd_filter": WG.conv2d_bwd_filter_winograd}

# N  C  H  W  K  R  S  stride  pad (top, bottom, left, right)  dilation  groups
AWKWARD = [case2d(*c) for c in [
    (1, 2, 7, 8, 3, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),    # output 5 x 6: no multiple of either tile
    (2, 2, 3, 4, 2, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),    # output 1 x 2: smaller than one tile
    (1, 4, 4, 5, 2, 3, 3, (1, 1), (3, 3, 3, 3), (1, 1), 2),    # pad 3 (bwd_data pad -1), groups 2
    (1, 2, 5, 6, 4, 3, 3, (1, 1), (3, 0, 1, 2), (1, 1), 2),    # uneven pads, groups 2
]]


def correlate1d(d, g):
    return np.array([d[i:i + len(g)] @ g for i in range(len(d) - len(g) + 1)])


def correlate2d(d, g):
    m = d.shape[0] - g.shape[0] + 1
    return np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)])


@pytest.mark.parametrize("m", WG.TILES)
def test_1d_transform_identity(m):
    """A^T [(G g) ⊙ (B^T d)] is the correlation of an (m + 2)-vector with a 3-tap filter."""
    at, g_mat, bt = WG.MATRICES[m]
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), correlate1d(d, g), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("m", WG.TILES)
def test_2d_transform_identity_and_its_adjoint(m):
    """Y = A^T [(G g G^T) ⊙ (B^T d B)] A is the 2-D correlation, and the adjoint used by the
    filter gradient, G^T [(A dY A^T) ⊙ (B^T d B)] G, is the correlation of d with dY."""
    at, g_mat, bt = WG.MATRICES[m]
    rng = np.random.default_rng(10 + m)
    d, g, dy = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3)), rng.standard_normal((m, m))
    y = at @ ((g_mat @ g @ g_mat.T) * (bt @ d @ bt.T)) @ at.T
    np.testing.assert_allclose(y, correlate2d(d, g), rtol=1e-12, atol=1e-12)
    dw = g_mat.T @ ((at.T @ dy @ at) * (bt @ d @ bt.T)) @ g_mat
    ref = np.array([[np.sum(dy * d[r:r + m, s:s + m]) for s in range(3)] for r in range(3)])
    np.testing.assert_allclose(dw, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", WG.TILES)
def test_adjoint_1d_transforms_are_the_transposes(m):
    """The 1-D helpers of the backward filter pass (A y, G^T s) are A^T and G transposed."""
    at, g_mat, _ = WG.MATRICES[m]
    np.testing.assert_array_equal(WG._matrix(WG.ONE_D["a"][m], m), at.T)
    np.testing.assert_allclose(WG._matrix(WG.ONE_D["gt"][m], m + 2), g_mat.T, rtol=1e-15)


@pytest.mark.parametrize("m", WG.TILES)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", AWKWARD, ids=case_id)
def test_passes_on_awkward_shapes(case, pass_, m, device):
    dtypes = [np.float32, np.float64] if device == "cpu" else [np.float64]
    for dtype in dtypes:
        assert_pass_matches(lambda a, b, out, g: LAUNCH[pass_](a, b, out, g, tile=m), pass_, case, dtype, device)


@pytest.mark.parametrize("m", WG.TILES)
def test_many_chunks_of_tiles(m, device, monkeypatch):
    """One tile row per chunk: the backward filter pass adds the chunks' GEMMs (beta = 1)."""
    monkeypatch.setattr(WG, "CPU_CHUNK_BYTES", 1)
    monkeypatch.setattr(WG, "CPU_MIN_TILES", 1)
    monkeypatch.setattr(WG, "CUDA_WORKSPACE", 1)
    case = case2d(2, 2, 6, 5, 2, 3, 3, (1, 1), (1, 2, 1, 0), (1, 1), 1)
    for pass_ in PASSES:
        assert_pass_matches(lambda a, b, out, g: LAUNCH[pass_](a, b, out, g, tile=m), pass_, case, np.float64, device)


def test_cpu_results_are_deterministic():
    case = AWKWARD[3]
    for pass_, m in itertools.product(PASSES, WG.TILES):
        launch = lambda a, b, out, g: LAUNCH[pass_](a, b, out, g, tile=m)  # noqa: E731
        first, _ = run_pass(launch, pass_, case, np.float32, "cpu")
        second, _ = run_pass(launch, pass_, case, np.float32, "cpu")
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("m", WG.TILES)
@pytest.mark.parametrize("pass_,case", [
    ("fwd", case2d(1, 512, 6, 10, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)),
    ("bwd_data", case2d(1, 4, 6, 10, 512, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)),
    ("bwd_filter", case2d(2, 2, 48, 48, 2, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)),
], ids=["fwd-C512", "bwd_data-K512", "bwd_filter-NPQ4608"])
def test_float32_error_bound_at_reduction_4608(pass_, case, m):
    """max |float32 result - float64 reference| / max |reference| <= 1e-3 on unit-variance data
    whose reductions are 4608 long (C*9, K*9 and N*P*Q)."""
    out, ref = run_pass(lambda a, b, o, g: LAUNCH[pass_](a, b, o, g, tile=m), pass_, case, np.float32, "cpu")
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-3


def _geometry(C=8, K=8, size=(9, 9), kernel=(3, 3), stride=None, dilation=None, groups=1):
    rank = len(size)
    return ConvGeometry.make(2, C, K, size, kernel, stride, (1,) * rank, (1,) * rank, dilation, groups)


@pytest.mark.parametrize("g,why", [
    (_geometry(kernel=(5, 5)), "winograd needs a 3x3 filter, got 5x5"),
    (_geometry(kernel=(3, 1)), "winograd needs a 3x3 filter, got 3x1"),
    (_geometry(size=(9,), kernel=(3,)), "winograd needs a 3x3 filter, got 1x3"),
    (_geometry(stride=(2, 1)), "winograd needs stride 1, got (2, 1)"),
    (_geometry(dilation=(1, 2)), "winograd needs dilation 1, got (1, 2)"),
    (_geometry(size=(5, 5, 5), kernel=(3, 3, 3)), "winograd runs 2-D convolutions only; this one is 3-D"),
])
@pytest.mark.parametrize("pass_", PASSES)
def test_refusals_name_the_reason(g, why, pass_, device):
    assert WG.ALGORITHM.supports(g, device, pass_) == (False, why)


def test_supports_any_padding_and_groups():
    g = ConvGeometry.make(1, 4, 6, (5, 7), (3, 3), None, (0, 3), (2, 5), None, 2)
    assert all(WG.ALGORITHM.supports(g, d, p) == (True, "") for d in ("cpu", "cuda") for p in PASSES)


def test_unknown_tile_is_refused():
    case = AWKWARD[0]
    with pytest.raises(ValueError, match="tile must be one of"):
        run_pass(lambda a, b, o, g: WG.conv2d_fwd_winograd(a, b, o, g, tile=3), "fwd", case, np.float32, "cpu")


def _layer(N, C, K, size, pad=1, groups=1):
    return ConvGeometry.make(N, C, K, (size, size), (3, 3), None, (pad, pad), (pad, pad), None, groups)


@pytest.mark.parametrize("g,pass_,m", [
    (_layer(4, 64, 64, 56), "fwd", 4),             # resnet34.layer1: many tiles
    (_layer(4, 512, 512, 7), "fwd", 2),            # resnet34.layer4: 16 F(4x4) tiles for 512 x 512 filters
    (_layer(4, 512, 512, 14), "bwd_filter", 4),    # vgg16.conv5_2: 64 tiles, just enough
    (_layer(64, 8, 8, 5), "fwd", 2),               # 5 x 5 output: F(4x4) would do as many multiplies
    (_layer(64, 8, 8, 5, pad=0), "bwd_data", 2),   # its data gradient is 5 x 5 too
    (_layer(64, 8, 8, 7, pad=0), "bwd_data", 4),   # 7 x 7 data gradient of a 5 x 5 output
])
def test_default_tile_size(g, pass_, m):
    assert WG.tile_size(g, pass_) == m


@pytest.mark.parametrize("g,device,rank", [
    (_layer(4, 256, 256, 14), "cpu", 1),           # resnet34.layer3: F(4x4), 64 tiles
    (_layer(4, 256, 256, 14), "cuda", 5),          # not measured on a GPU
    (_layer(2, 64, 32, 8), "cpu", 5),              # 8 tiles
    (_layer(4, 512, 512, 7), "cpu", 5),            # F(2x2)
    (ConvGeometry.make(4, 64, 64, (56, 56), (5, 5), None, (2, 2), (2, 2)), "cpu", 5),
])
def test_preference(g, device, rank):
    assert all(WG.ALGORITHM.preference(g, device, p) == rank for p in PASSES)


def test_heuristic_picks_winograd_where_preferred():
    from convkern.ops.conv import heuristic_algorithm
    assert heuristic_algorithm(_layer(4, 256, 256, 14), "cpu", "fwd") == "winograd"
    assert heuristic_algorithm(_layer(2, 64, 32, 8), "cpu", "fwd") == "implicit_gemm"
    assert heuristic_algorithm(_layer(4, 3, 64, 56), "cpu", "fwd") == "direct"     # C*9 = 27: direct's rule


def test_no_preference_for_short_reductions():
    """C*9 <= 75 (vgg16.conv1_1) is direct's: winograd does not compete for it."""
    assert WG.ALGORITHM.preference(_layer(4, 3, 64, 224), "cpu", "fwd") == 5
