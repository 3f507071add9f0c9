"""Direct-convolution specifics beyond the shared grid (tests/kernels/test_conv_algorithms.py):
shared-memory overflow paths on CUDA, the CPU register-block and chunk edges, reproducibility."""
import numpy as np
import pytest

from convkern.kernels import conv_direct as D
from tests.kernels.conv_cases import CASES, PASSES, assert_pass_matches, case2d, case_id, run_pass

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
