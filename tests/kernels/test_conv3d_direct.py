"""Direct 3-D convolution specifics beyond the shared grid (tests/kernels/test_conv_algorithms.py,
CASES_3D): shared-memory overflow and slab chunking on CUDA, the CPU register-block and
accumulator-chunk edges, the rank dispatch of the 2-D launchers, reproducibility."""
import numpy as np
import pytest

from convkern.kernels import conv3d_direct as D3
from convkern.kernels import conv_direct as D
from tests.kernels.conv_cases import CASES_3D, PASSES, Case, assert_pass_matches, case_id, geometry, run_pass

LAUNCH = {"fwd": D3.conv3d_fwd_direct, "bwd_data": D3.conv3d_bwd_data_direct,
          "bwd_filter": D3.conv3d_bwd_filter_direct}


def _case(N, C, size, K, kernel, stride=(1, 1, 1), pads=((0, 0),) * 3, dilation=(1, 1, 1), groups=1):
    return Case(N, C, tuple(size), K, tuple(kernel), tuple(stride), tuple(pads), tuple(dilation), groups)


def _many_taps_case():
    """More (r, s) taps than the CUDA forward stages (it reads global memory) and more (t, r, s)
    taps than backward-data stages at once (it stages them in chunks)."""
    k = int(np.sqrt(D.FWD_TAPS)) + 1
    return _case(1, 1, (3, k + 1, k), 2, (2, k, k), pads=((0, 1), (0, 0), (1, 0)))


def _wide_slab_case():
    """Dilation so large that even the smallest forward tile's slab outgrows shared memory."""
    dil = int(np.sqrt(D.FWD_SMEM_IN)) // 2 + 1
    span = 2 * dil + 1
    return _case(1, 1, (2, span + 1, span), 2, (2, 3, 3), pads=((1, 0), (0, 1), (1, 0)), dilation=(1, dil, dil))


def _many_slabs_case():
    """More (c, t) slabs than the CUDA forward stages at once, so it walks them in chunks."""
    return _case(1, 4, (4, 5, 6), 3, (3, 3, 3), stride=(2, 1, 1), pads=((1, 1), (1, 1), (1, 1)))


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", [_many_taps_case(), _wide_slab_case(), _many_slabs_case()],
                         ids=["many_taps", "wide_slab", "many_slabs"])
def test_direct3d_beyond_shared_memory(case, pass_, device):
    assert_pass_matches(LAUNCH[pass_], pass_, case, np.float64, device)


CPU_CASES = [
    # channel counts leaving 1, 2 and 3 channels after the blocks of KB, strides in every axis
    _case(2, 5, (5, 6, 7), 5, (3, 3, 3), pads=((1, 1),) * 3),
    _case(1, 6, (7, 6, 9), 6, (3, 2, 3), stride=(2, 1, 3), pads=((1, 0), (0, 1), (2, 1))),
    _case(1, 14, (5, 7, 6), 14, (2, 3, 3), stride=(1, 2, 1), pads=((0, 1), (1, 1), (1, 0)), dilation=(2, 1, 2),
          groups=2),
    # more flattened plane rows than one accumulator chunk holds
    _case(1, 2, (8, 8, 28), 3, (3, 3, 3), pads=((1, 1),) * 3),
    _case(1, 2, (20, 9, 40), 2, (2, 3, 3), stride=(2, 1, 2), pads=((1, 1),) * 3, dilation=(2, 1, 1)),
]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CPU_CASES, ids=case_id)
def test_direct3d_cpu_blocking_edges(case, dtype, pass_):
    assert_pass_matches(LAUNCH[pass_], pass_, case, dtype, "cpu")


def test_direct3d_cpu_long_cases_span_several_accumulator_chunks():
    for case in CPU_CASES[3:]:
        g = geometry(case)
        plan = D3._cpu_plan(g)
        assert (g.out_size[0] - 1) * plan.hq + g.out_size[1] > 2 * plan.rows, case_id(case)


@pytest.mark.parametrize("pass_", ["bwd_data", "bwd_filter"])
def test_direct3d_backward_is_bitwise_reproducible(pass_, device):
    case = CASES_3D[0]
    first, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, device)
    second, _ = run_pass(LAUNCH[pass_], pass_, case, np.float32, device)
    np.testing.assert_array_equal(first, second)
