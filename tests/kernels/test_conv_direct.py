"""Direct-convolution specifics beyond the shared grid (tests/kernels/test_conv_algorithms.py):
shared-memory overflow paths on CUDA, the CPU register-block and chunk edges, reproducibility;
float16 (fp32 accumulation, 2-D only)."""
import numpy as np
import pytest

from convkern.kernels import conv_direct as D
from convkern.kernels.shapes import ConvGeometry
from tests.kernels.conv_cases import (CASES, CASES_3D, PASSES, assert_pass_matches, case2d, case_id, geometry,
                                      random_operands, run_pass, to_device, to_host)

LAUNCH = {"fwd": D.conv2d_fwd_direct, "bwd_data": D.conv2d_bwd_data_direct, "bwd_filter": D.conv2d_bwd_filter_direct}


def _wide_footprint_case():
    """Dilation so large that even the smallest forward tile's input footprint outgrows shared
    memory, so the CUDA forward reads global memory."""
    dil = int(np.sqrt(D.FWD_SMEM_IN)) // 2 + 1
    span = 2 * dil + 1
    return case2d(1, 1, span + 2, span + 1, 3, 3, 3, (1, 1), (1, 0, 0, 1), (dil, dil), 1)


def _many_taps_case():
    """A filter with more taps than the CUDA kernels stage in shared memory at once: the forward
    reads global memory, backward-data stages the taps in chunks."""
    k = int(np.sqrt(D.SMEM_W)) + 1
    return case2d(1, 1, k + 1, k, 2, k, k, (1, 1), (0, 0, 1, 0), (1, 1), 1)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", [_wide_footprint_case(), _many_taps_case()], ids=["wide_footprint", "many_taps"])
def test_direct_beyond_shared_memory(case, pass_, device):
    assert_pass_matches(LAUNCH[pass_], pass_, case, np.float64, device)


CPU_CASES = [case2d(*c) for c in [
    # channel counts leaving 1, 2 and 3 channels after the blocks of KB
    (2, 5, 9, 8, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 6, 9, 8, 6, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 14, 7, 9, 14, 3, 3, (1, 2), (0, 1, 1, 0), (2, 1), 2),
    # more plane rows than one accumulator chunk holds
    (2, 3, 300, 6, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 2, 260, 9, 4, 5, 2, (2, 3), (2, 1, 0, 1), (1, 2), 1),
    # AlexNet conv1 geometry, stride 4 with an 11 x 11 filter
    (2, 3, 39, 39, 7, 11, 11, (4, 4), (0, 0, 0, 0), (1, 1), 1),
]]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CPU_CASES, ids=case_id)
def test_direct_cpu_blocking_edges(case, dtype, pass_):
    assert_pass_matches(LAUNCH[pass_], pass_, case, dtype, "cpu")


@pytest.mark.parametrize("pass_", ["bwd_data", "bwd_filter"])
def test_direct_backward_is_bitwise_reproducible(pass_, device):
    case = CASES[0]
    first, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, device)
    second, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, device)
    np.testing.assert_array_equal(first, second)


# ---------------------------------------------------------------- float16

# stride 1 and 2, groups, depthwise with dilation, asymmetric padding: the grid's float16 share
# (tests/kernels/test_conv_algorithms.py runs float32 and float64)
HALF_CASES = [CASES[0], CASES[2], CASES[3], CASES[4]]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_direct_float16_matches_the_float64_result_of_its_inputs(case, pass_, device):
    assert_pass_matches(LAUNCH[pass_], pass_, case, np.float16, device)


def half_sum_operands(pass_):
    """A 1x1 convolution whose pass sums 65 products: 1 first, then 64 of 2^-11. Summed in float32
    the result is 1 + 2^-5 (a float16); a float16 accumulator would drop every 2^-11 (half an ulp
    of 1, ties to even) and return 1. Returns (geometry, a, b) for ``launch(a, b, out, g)``."""
    n = 65
    shape = {"fwd": (1, n, 1, 1, 1), "bwd_data": (1, 1, 1, 1, n), "bwd_filter": (1, 1, 1, n, 1)}[pass_]
    N, C, H, W, K = shape
    g = ConvGeometry.make(N, C, K, (H, W), (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1)
    summed = np.full(n, 2.0 ** -11, np.float16)
    summed[0] = 1
    ones = {"fwd": g.w_shape, "bwd_data": g.w_shape, "bwd_filter": g.x_shape}[pass_]
    a_shape = {"fwd": g.x_shape, "bwd_data": g.y_shape, "bwd_filter": g.y_shape}[pass_]
    return g, summed.reshape(a_shape), np.ones(ones, np.float16)


@pytest.mark.parametrize("pass_", PASSES)
def test_direct_float16_accumulates_in_float32(pass_, device):
    g, a, b = half_sum_operands(pass_)
    out = np.full(g.operand_shapes(pass_)[2], np.nan, np.float16)
    args = to_device(device, a, b, out)
    LAUNCH[pass_](*args, g)
    assert to_host(args[2]).reshape(-1).tolist() == [1 + 2.0 ** -5]


def test_direct_takes_float16_in_2d_only():
    g3 = geometry(CASES_3D[0])
    ok, why = D.ALGORITHM.supports(g3, "cpu", "fwd", np.float16)
    assert not ok and why == "direct takes float16 for 2-D convolutions only; this one is 3-D"
    assert D.ALGORITHM.supports(g3, "cpu", "fwd", np.float32) == (True, "")
    assert D.ALGORITHM.supports(geometry(CASES[0]), "cuda", "bwd_filter", np.float16) == (True, "")
    x, w, _ = random_operands(CASES_3D[0], np.float16)
    with pytest.raises(TypeError, match="direct fwd: arrays must all be float32 or all float64, got input float16"):
        D.ALGORITHM.launcher("fwd")(x, w, np.empty(g3.y_shape, np.float16), g3)
