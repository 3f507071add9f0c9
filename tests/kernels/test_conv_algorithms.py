"""The registry-driven grid: every registered conv algorithm x pass x dtype x backend on every
case of the shared grid that its ``supports`` accepts, against the float64 reference (with the
algorithm's own ``tolerance`` for a dtype it computes in reduced precision). A new algorithm is
tested here by being registered; nothing in this file names one."""
import numpy as np
import pytest

from convkern.kernels.conv_algorithm import check_conv_arrays
from convkern.kernels.conv_registry import ALGORITHMS, BY_NAME
from tests.kernels.conv_cases import CASES, CASES_3D, DTYPES, PASSES, assert_pass_matches, case_id, geometry

DEVICES = ["cpu", "cuda"]
GRID = CASES + CASES_3D


def _supported(device):
    return [(a.name, case, pass_) for a in ALGORITHMS for case in GRID for pass_ in PASSES
            if a.supports(geometry(case), device, pass_)[0]]


def _params(device):
    """Every supported (algorithm, case, pass) in every dtype; on the simulator (one Python thread
    per CUDA thread) the float64 builds, the float32 ones' code with another element type, run
    only the first case each (algorithm, pass) supports."""
    params, seen = [], set()
    for name, case, pass_ in _supported(device):
        for dtype in DTYPES:
            if device == "cuda" and dtype != np.float32 and (name, pass_, dtype) in seen:
                continue
            seen.add((name, pass_, dtype))
            params.append(pytest.param(name, case, pass_, dtype, id=f"{name}-{pass_}-{case_id(case)}-{np.dtype(dtype)}"))
    return params


@pytest.mark.parametrize("name,case,pass_,dtype", _params("cpu"))
def test_cpu_matches_reference(name, case, pass_, dtype):
    assert_pass_matches(BY_NAME[name].launcher(pass_), pass_, case, dtype, "cpu", BY_NAME[name].tolerance(dtype))


@pytest.mark.parametrize("name,case,pass_,dtype", _params("cuda"))
def test_cuda_matches_reference(name, case, pass_, dtype):
    assert_pass_matches(BY_NAME[name].launcher(pass_), pass_, case, dtype, "cuda", BY_NAME[name].tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_every_algorithm_runs_every_pass_somewhere_in_the_grid(device):
    covered = {(name, pass_) for name, _, pass_ in _supported(device)}
    missing = [(a.name, p) for a in ALGORITHMS for p in PASSES if (a.name, p) not in covered]
    assert not missing, f"no grid case exercises {missing} on {device}: add an eligible case to conv_cases.py"


@pytest.mark.parametrize("device", DEVICES)
def test_refusals_say_why(device):
    """Every (algorithm, case, pass) the grid skips carries a reason that names the algorithm."""
    for a in ALGORITHMS:
        for case in GRID:
            for pass_ in PASSES:
                ok, why = a.supports(geometry(case), device, pass_)
                assert isinstance(ok, bool) and isinstance(why, str)
                assert ok or (why and a.name in why), (a.name, case_id(case), pass_, why)


def test_names_are_unique_and_launchers_complete():
    names = [a.name for a in ALGORITHMS]
    assert len(names) == len(set(names)) and "auto" not in names
    for a in ALGORITHMS:
        assert set(a.launchers) == set(PASSES) and all(callable(f) for f in a.launchers.values())


@pytest.mark.parametrize("name", list(BY_NAME))
def test_launchers_reject_mismatched_arrays(name):
    """Every launcher checks its arrays (check_conv_arrays) before any work."""
    case = CASES[0]
    g = geometry(case)
    x = np.zeros(g.x_shape, np.float32)
    w = np.zeros(g.w_shape, np.float32)
    fwd = BY_NAME[name].launcher("fwd")
    with pytest.raises(ValueError, match="expected input/weight/output shapes"):
        fwd(x, w, np.empty(g.y_shape[:-1] + (g.y_shape[-1] + 1,), np.float32), g)
    with pytest.raises(TypeError, match="float32 or all float64"):
        fwd(x, w.astype(np.float64), np.empty(g.y_shape, np.float32), g)


def test_check_conv_arrays_messages():
    g = geometry(CASES[0])
    dy = np.zeros(g.y_shape, np.float32)
    w = np.zeros(g.w_shape, np.float32)
    with pytest.raises(ValueError, match="grad_input must be C-contiguous"):
        check_conv_arrays("x", g, "bwd_data", dy, w, np.zeros(g.x_shape[::-1], np.float32).T)
    with pytest.raises(TypeError, match="grad_output float32, weight float32, grad_input int32"):
        check_conv_arrays("x", g, "bwd_data", dy, w, np.zeros(g.x_shape, np.int32))


ACTIVATION_REF = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh,
                  "sigmoid": lambda v: 0.5 * (1 + np.tanh(v / 2))}


def _fused_params(device):
    """Per algorithm, the first case of each rank whose forward it supports, with each epilogue
    in float32 and float64 on the CPU; on the simulator (where every algorithm's forward is
    followed by the one bias-activation kernel) float64 and tanh only."""
    params = []
    for a in ALGORITHMS:
        for cases in (CASES, CASES_3D):
            case = next((c for c in cases if a.supports(geometry(c), device, "fwd")[0]), None)
            for act in (ACTIVATION_REF if device == "cpu" else ["tanh"]) if case is not None else ():
                for dtype in (np.float32, np.float64) if device == "cpu" else (np.float64,):
                    if a.takes(dtype) and a.supports(geometry(case), device, "fwd", dtype)[0]:
                        params.append(pytest.param(a.name, case, act, dtype, device,
                                                   id=f"{device}-{a.name}-{case_id(case)}-{act}-{np.dtype(dtype)}"))
    return params


@pytest.mark.parametrize("name,case,act,dtype,device", _fused_params("cpu") + _fused_params("cuda"))
def test_forward_fused_matches_reference(name, case, act, dtype, device, monkeypatch):
    """``forward_fused``: act(conv(x, w) + b), in the kernel's epilogue where the algorithm has
    one (the CPU implicit GEMM, here with tiny tiles so the epilogue meets every tile edge)."""
    from tests.kernels.conv_cases import random_operands, reference, tiny_cpu_tiles, to_device, to_host
    from tests.reference import tolerance
    if device == "cpu":
        tiny_cpu_tiles(monkeypatch)
    g = geometry(case)
    x, w, _ = random_operands(case, dtype)
    b = np.random.default_rng(3).standard_normal(g.K).astype(dtype)
    xd, wd, bd, y = to_device(device, x, w, b, np.full(g.y_shape, np.nan, dtype))
    BY_NAME[name].forward_fused(xd, wd, y, g, bd, act)
    pre = reference("fwd", case, x, w, None) + b.reshape((1, -1) + (1,) * (len(g.y_shape) - 2))
    rtol, atol = BY_NAME[name].tolerance(dtype) or tolerance(dtype)
    np.testing.assert_allclose(to_host(y), ACTIVATION_REF[act](pre), rtol=rtol, atol=atol)
