import numpy as np
import pytest
from numba import cuda

from convkern.kernels import conv_direct as D
from tests.kernels.conv_cases import CASES, case_id, geometry, random_operands
from tests.reference import conv2d_bwd_data_ref, conv2d_bwd_filter_ref, conv2d_fwd_ref, tolerance

DTYPES = [np.float32, np.float64]
PASSES = ["fwd", "bwd_data", "bwd_filter"]


def _ref_kwargs(case):
    *_, stride, pad, dil, groups = case
    return dict(stride=stride, pad=pad, dilation=dil, groups=groups)


def _to(device, *arrays):
    return arrays if device == "cpu" else tuple(cuda.to_device(a) for a in arrays)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def _run(pass_, case, dtype, device):
    """Run one pass of the direct kernels on a NaN-filled output; return (result, reference)."""
    g = geometry(case)
    x, w, dy = random_operands(case, dtype)
    kw = _ref_kwargs(case)
    if pass_ == "fwd":
        args, out_shape, ref = (x, w), (g.N, g.K, g.P, g.Q), conv2d_fwd_ref(x, w, **kw)
        launch = D.conv2d_fwd_direct
    elif pass_ == "bwd_data":
        args, out_shape, ref = (dy, w), x.shape, conv2d_bwd_data_ref(dy, w, x.shape, **kw)
        launch = D.conv2d_bwd_data_direct
    else:
        args, out_shape, ref = (dy, x), w.shape, conv2d_bwd_filter_ref(dy, x, w.shape, **kw)
        launch = D.conv2d_bwd_filter_direct
    *dev_args, out = _to(device, *args, np.full(out_shape, np.nan, dtype))
    launch(*dev_args, out, g)
    return _host(out), ref


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_direct_matches_reference_and_overwrites(case, dtype, pass_, device):
    out, ref = _run(pass_, case, dtype, device)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ref, *tolerance(dtype))


def _wide_footprint_case():
    """Dilation so large that even the smallest forward tile's input footprint outgrows shared
    memory, so the CUDA forward reads global memory."""
    dil = int(np.sqrt(D.FWD_SMEM_IN)) // 2 + 1
    span = 2 * dil + 1
    return (1, 1, span + 2, span + 1, 3, 3, 3, (1, 1), (1, 0, 0, 1), (dil, dil), 1)


def _many_taps_case():
    """A filter with more taps than the CUDA kernels stage in shared memory at once: the forward
    reads global memory, backward-data stages the taps in chunks."""
    k = int(np.sqrt(D.SMEM_W)) + 1
    return (1, 1, k + 1, k, 2, k, k, (1, 1), (0, 0, 1, 0), (1, 1), 1)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", [_wide_footprint_case(), _many_taps_case()],
                         ids=["wide_footprint", "many_taps"])
def test_direct_beyond_shared_memory(case, pass_, device):
    out, ref = _run(pass_, case, np.float64, device)
    np.testing.assert_allclose(out, ref, *tolerance(np.float64))


CPU_CASES = [
    # channel counts leaving 1, 2 and 3 channels after the blocks of KB
    (2, 5, 9, 8, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 6, 9, 8, 6, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 14, 7, 9, 14, 3, 3, (1, 2), (0, 1, 1, 0), (2, 1), 2),
    # more plane rows than one accumulator chunk holds
    (2, 3, 300, 6, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 2, 260, 9, 4, 5, 2, (2, 3), (2, 1, 0, 1), (1, 2), 1),
    # AlexNet conv1 geometry, stride 4 with an 11 x 11 filter
    (2, 3, 39, 39, 7, 11, 11, (4, 4), (0, 0, 0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CPU_CASES, ids=case_id)
def test_direct_cpu_blocking_edges(case, dtype, pass_):
    out, ref = _run(pass_, case, dtype, "cpu")
    np.testing.assert_allclose(out, ref, *tolerance(dtype))


@pytest.mark.parametrize("pass_", ["bwd_data", "bwd_filter"])
def test_direct_backward_is_bitwise_reproducible(pass_, device):
    case = CASES[0]
    first, _ = _run(pass_, case, np.float32, device)
    second, _ = _run(pass_, case, np.float32, device)
    np.testing.assert_array_equal(first, second)


def test_direct_rejects_mismatched_arrays():
    case = CASES[0]
    g = geometry(case)
    x, w, _ = random_operands(case, np.float32)
    with pytest.raises(TypeError, match="float32 or all float64"):
        D.conv2d_fwd_direct(x, w.astype(np.float64), np.empty((g.N, g.K, g.P, g.Q), np.float32), g)
    with pytest.raises(ValueError, match="expected input/weight/output shapes"):
        D.conv2d_fwd_direct(x, w, np.empty((g.N, g.K, g.P + 1, g.Q), np.float32), g)
