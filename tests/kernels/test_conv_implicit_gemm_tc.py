"""implicit_gemm_tc beyond the shared grid (tests/kernels/test_conv_algorithms.py): tiles with
tails, strides, padding, groups and dilation on every pass; the TF32 rounding itself (CPU and the
simulated tensor cores round the operands to nearest, then agree up to accumulation order); the
bias epilogue; the backward-filter slices; the GPU's warp tiles run simulated; PyTorch's
float32 conv2d through ``F.conv2d``; and ``auto`` leaving TF32 alone unless ``allow_tf32``.
float16 (FP16 MMA, fp32 accumulation): every pass on both backends against the float64 result
of the float16 inputs, its paired copies against element loads, and PyTorch's float16 conv2d."""
import json

import numpy as np
import pytest
from numba import cuda

import convkern as ck
import convkern.functional as F
from convkern import autotune, bench
from convkern.kernels import conv_implicit_gemm_tc as TC
from convkern.kernels.conv_registry import BY_NAME
from convkern.kernels.shapes import ConvGeometry
from convkern.ops import conv as conv_ops
from tests.kernels.conv_cases import (CASES, PASSES, assert_pass_matches, case2d, case_id, geometry,
                                      random_operands, reference, run_pass, to_device, to_host)
from tests.kernels.test_conv_direct import half_sum_operands
from tests.reference import tolerance

ALG = BY_NAME["implicit_gemm_tc"]
LAUNCH = {p: ALG.launcher(p) for p in PASSES}
TF32 = ALG.tolerance(np.float32)

# against the simulated tiles (float32 16 x 32 x 8, float64 8 x 32 x 8, 3 stages): rows of A past
# one tile and not a multiple of it, reductions of several tiles (more than the stages) with a
# partial last one, pixel counts that end inside a tile; strides, uneven padding, dilation, groups
TAIL_CASES = [case2d(*c) for c in [
    # N  C  H  W  K   R  S  stride   pad           dil     groups
    (2, 5, 5, 6, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 18, 6, 5, 10, 3, 2, (2, 1), (1, 0, 2, 1), (1, 2), 2),
]]


def _max_rel_err(out, ref):
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def _tf32(a):
    out = np.empty_like(a)
    TC.round_tf32_cpu(a.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint32))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", TAIL_CASES, ids=case_id)
def test_tails_strides_groups_match_reference(case, pass_, dtype, device):
    assert_pass_matches(LAUNCH[pass_], pass_, case, dtype, device, ALG.tolerance(dtype))


@pytest.mark.parametrize("pass_", PASSES)
def test_float32_rounds_operands_to_tf32_then_accumulates_in_fp32(pass_):
    """Both backends equal the float64 result of the TF32-rounded operands up to fp32
    accumulation (2e-6 of the largest value), while the unrounded operands' result is farther off:
    the operands are rounded to nearest (truncating them, as the MMA alone would, is ~2^-11 off)."""
    case = TAIL_CASES[1]
    x, w, dy = random_operands(case, np.float32)
    exact_tf32 = reference(pass_, case, _tf32(x), _tf32(w), _tf32(dy))
    results = {device: run_pass(LAUNCH[pass_], pass_, case, np.float32, device) for device in ("cpu", "cuda")}
    for device, (out, ref) in results.items():
        assert _max_rel_err(out, exact_tf32) < 2e-6, device
        assert _max_rel_err(out, ref) > 2e-5, device
    assert _max_rel_err(results["cuda"][0], results["cpu"][0]) < 2e-6


def test_float64_is_full_precision_on_both_backends():
    for device in ("cpu", "cuda"):
        for pass_ in PASSES:
            out, ref = run_pass(LAUNCH[pass_], pass_, TAIL_CASES[0], np.float64, device)
            assert _max_rel_err(out, ref) < 1e-13, (device, pass_)


def test_documented_tf32_error_on_long_reductions():
    """The module docstring's table: max |err| / max |ref| of a TF32 forward stays near
    2.6e-4 - 3.2e-4 for reduction lengths 27 - 4608 (unit-variance data, CPU)."""
    for C in (3, 32, 512):
        case = case2d(1, C, 6, 6, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
        out, ref = run_pass(LAUNCH["fwd"], "fwd", case, np.float32, "cpu")
        assert 5e-5 < _max_rel_err(out, ref) < 5e-4, C


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_bias_is_added_in_the_epilogue(dtype, device):
    case = TAIL_CASES[0]
    g = geometry(case)
    x, w, _ = random_operands(case, dtype)
    bias = np.random.default_rng(1).standard_normal(g.K).astype(dtype)
    y = np.full(g.y_shape, np.nan, dtype)
    args = (x, w, y, bias) if device == "cpu" else tuple(cuda.to_device(a) for a in (x, w, y, bias))
    TC.conv2d_fwd_implicit_gemm_tc(args[0], args[1], args[2], g, bias=args[3])
    expected = reference("fwd", case, x, w, None) + bias[None, :, None, None]
    np.testing.assert_allclose(to_host(args[2]), expected, *(ALG.tolerance(dtype) or tolerance(dtype)))


def test_bias_of_the_wrong_shape_is_refused():
    case = TAIL_CASES[0]
    g = geometry(case)
    x, w, _ = random_operands(case, np.float32)
    with pytest.raises(ValueError, match=r"implicit_gemm_tc fwd: bias must be a contiguous \(20,\) array"):
        TC.conv2d_fwd_implicit_gemm_tc(x, w, np.empty(g.y_shape, np.float32), g, bias=np.zeros(19, np.float32))


@pytest.mark.parametrize("slots", [1, 10 ** 6], ids=["one-slice", "most-slices"])
def test_cuda_filter_reduction_slices(slots, monkeypatch):
    """Backward filter's N*P*Q = 98 reduction in as few and as many slices as it allows (summed
    in order by conv_implicit_gemm.sum_slices_cuda)."""
    chosen = []
    wave_splits = TC.wave_splits

    def splits(tiles, most, resident):
        chosen.append(wave_splits(tiles, most, resident))
        return chosen[-1]
    monkeypatch.setattr(TC, "resident_blocks", lambda kernel, threads: slots)
    monkeypatch.setattr(TC, "wave_splits", splits)
    for dtype in (np.float32, np.float64):
        assert_pass_matches(LAUNCH["bwd_filter"], "bwd_filter", CASES[0], dtype, "cuda", ALG.tolerance(dtype))
    assert chosen == ([1, 1] if slots == 1 else [3, 3])


# The GPU's warp tiles (float32 32 x 32 per warp, BK 16: 2 x 4 MMAs per k-step, two k-steps and
# a swizzle over 4 chunks; float64 32 x 16, BK 8) on a grid of two warps. GPU_TILES itself (16
# warps) takes 25-40 s per pass under the simulator: too slow for the suite.
# float16 as float32 with BK 32 halves (16 words: two k-steps of m16n8k16, the same swizzle).
WARP_TILES = {np.dtype(np.float32): TC.Tiles(32, 64, 16, 1, 2, 3), np.dtype(np.float64): TC.Tiles(64, 16, 8, 2, 1, 3),
              np.dtype(np.float16): TC.Tiles(32, 64, 32, 1, 2, 3)}


def test_gpu_warp_tiles_run_simulated():
    for dtype, tiles in WARP_TILES.items():
        gpu = TC.GPU_TILES[dtype]
        assert (tiles.bm // tiles.warps_m, tiles.bn // tiles.warps_n, tiles.bk) == (
            gpu.bm // gpu.warps_m, gpu.bn // gpu.warps_n, gpu.bk)
    built = TC.build(WARP_TILES)
    run = {"fwd": lambda x, w, y, g: TC._fwd_cuda(x, w, y, g, None, build=built),
           "bwd_data": lambda dy, w, dx, g: TC._bwd_data_cuda(dy, w, dx, g, build=built),
           "bwd_filter": lambda dy, x, dw, g: TC._bwd_filter_cuda(dy, x, dw, g, build=built)}
    case = case2d(1, 3, 5, 4, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    for dtype in (np.float16, np.float32, np.float64):
        for pass_ in PASSES:
            assert_pass_matches(run[pass_], pass_, case, dtype, "cuda", ALG.tolerance(dtype))


def test_int32_offset_limit_names_the_algorithm():
    g = ConvGeometry.make(1, 1 << 16, 8, (256, 256), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1)
    ok, why = ALG.supports(g, "cuda", "fwd")
    assert not ok and why.startswith("implicit_gemm_tc indexes with int32 offsets")


# ---------------------------------------------------------------- through the public API

@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 0, 2)])
def test_conv2d_on_simulated_cuda_matches_pytorch_within_tf32(stride, padding, groups):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    kw = dict(stride=stride, padding=padding, groups=groups)
    xs, ws, bs = (ck.tensor(a, requires_grad=True, device="cuda") for a in (x, w, b))
    y = F.conv2d(xs, ws, bs, algorithm="implicit_gemm_tc", **kw)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(ck.tensor(dy, device="cuda"))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    yt.backward(torch.tensor(dy))
    for mine, theirs in [(y, yt), (xs.grad, xt.grad), (ws.grad, wt.grad), (bs.grad, bt.grad)]:
        np.testing.assert_allclose(mine.numpy(), theirs.detach().numpy(), *TF32)


@pytest.fixture
def tf32_setting():
    previous = ck.allow_tf32()
    yield
    ck.allow_tf32(previous)


BIG = ConvGeometry.make(8, 64, 64, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1)


@pytest.mark.parametrize("pass_", PASSES)
def test_auto_heuristic_picks_tf32_only_when_allowed(pass_, tf32_setting):
    assert ck.allow_tf32() is False     # the default
    assert ALG.preference(BIG, "cuda", pass_) < min(a.preference(BIG, "cuda", pass_) for a in BY_NAME.values()
                                                   if a is not ALG)
    assert conv_ops.heuristic_algorithm(BIG, "cuda", pass_, np.float32) != "implicit_gemm_tc"
    assert "implicit_gemm_tc" not in conv_ops.auto_candidates(BIG, "cuda", pass_, np.float32)
    # float64 runs FP64 tensor-core math at full precision: always a candidate
    assert conv_ops.heuristic_algorithm(BIG, "cuda", pass_, np.float64) == "implicit_gemm_tc"
    assert ck.allow_tf32(True) is False
    assert conv_ops.heuristic_algorithm(BIG, "cuda", pass_, np.float32) == "implicit_gemm_tc"
    assert "implicit_gemm_tc" in conv_ops.auto_candidates(BIG, "cuda", pass_, np.float32)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_autotuner_is_offered_tf32_only_when_allowed(device, tf32_setting, monkeypatch):
    """What ``algorithm="auto"`` hands the autotuner as candidates, with TF32 off and on."""
    offered = []

    def choose(g, device, dtype, pass_, run_candidate, candidates, default):
        offered.append(list(candidates))
        return "direct"
    monkeypatch.setattr(autotune, "choose", choose)
    x, w, _ = random_operands(CASES[1], np.float32)
    for allowed in (False, True):
        ck.allow_tf32(allowed)
        F.conv2d(ck.tensor(x, device=device), ck.tensor(w, device=device))
    assert "implicit_gemm_tc" not in offered[0] and "implicit_gemm_tc" in offered[1]
    assert set(offered[1]) - set(offered[0]) == {"implicit_gemm_tc"}


@pytest.mark.parametrize("bad", [1, 0, "yes", np.bool_(True)])
def test_allow_tf32_refuses_anything_but_a_bool(bad, tf32_setting):
    with pytest.raises(TypeError, match="allow_tf32: enabled must be True, False or None"):
        ck.allow_tf32(bad)
    assert ck.allow_tf32() is False


def test_bench_checks_tf32_results_with_the_algorithms_tolerance(monkeypatch, tmp_path):
    """A result 2e-3 off (relative to its largest value): within implicit_gemm_tc's TF32
    tolerance, so correct for it, and wrong for an algorithm that keeps float32 precision."""
    def off_by(launch):
        def run(a, b, out, g):
            launch(a, b, out, g)
            out += 2e-3 * np.max(np.abs(out))
        return run
    for name in ("implicit_gemm_tc", "implicit_gemm"):
        monkeypatch.setitem(BY_NAME[name].launchers, "fwd", off_by(BY_NAME[name].launchers["fwd"]))
    monkeypatch.setattr(bench, "measure_peak_gflops", lambda device: 100.0)
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([{"name": "tiny", "N": 1, "C": 4, "H": 6, "W": 5, "K": 3, "R": 3, "S": 3, "pad": 1}]))
    records = bench.run_bench(str(suite), "cpu", algorithms=["implicit_gemm_tc", "implicit_gemm"], passes=["fwd"],
                              min_seconds=0.0, log=None)
    correct = {r["algorithm"]: r["correct"] for r in records}
    assert correct == {"implicit_gemm_tc": True, "implicit_gemm": False}


# ---------------------------------------------------------------- float16: FP16 MMA, fp32 accumulation

HALF = np.float16
# element loads and paired copies: forward L = 45 (odd) and 54, 27, 16; backward data 3x3, stride
# 2 and (the last) stride 1 with a 4x2 filter; backward filter P*Q = 30, 18, 49 (odd), 42
HALF_CASES = TAIL_CASES + [CASES[0], CASES[10]]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_float16_matches_the_float64_result_of_its_inputs(case, pass_, device):
    assert ALG.tolerance(HALF) is None and not ALG.reduces_precision(HALF)
    assert_pass_matches(LAUNCH[pass_], pass_, case, HALF, device)


@pytest.mark.parametrize("pass_", PASSES)
def test_float16_accumulates_in_float32(pass_, device):
    """1 + 64 * 2^-11 is 1 + 2^-5 summed in fp32 (the MMA's accumulators), 1 in float16."""
    g, a, b = half_sum_operands(pass_)
    out = np.full(g.operand_shapes(pass_)[2], np.nan, HALF)
    args = to_device(device, a, b, out)
    LAUNCH[pass_](*args, g)
    assert to_host(args[2]).reshape(-1).tolist() == [1 + 2.0 ** -5]


# a pass whose contiguous operand runs in aligned pairs along the reduction, per pass
PAIRED = {"fwd": TAIL_CASES[1], "bwd_data": CASES[10], "bwd_filter": TAIL_CASES[0]}


@pytest.mark.parametrize("pass_", PASSES)
def test_float16_paired_copies_equal_element_loads(pass_, monkeypatch):
    """Where the launcher finds the operand in aligned pairs it copies them with 4-byte cp.async;
    loading the same operand element by element gives bitwise the same result."""
    words = TC._words
    flags = []

    def spy(a, pairs):
        found = words(a, pairs)
        flags.append(found[1])
        return found
    monkeypatch.setattr(TC, "_words", spy)
    paired, _ = run_pass(LAUNCH[pass_], pass_, PAIRED[pass_], HALF, "cuda")
    monkeypatch.setattr(TC, "_words", lambda a, pairs: spy(a, False))
    single, _ = run_pass(LAUNCH[pass_], pass_, PAIRED[pass_], HALF, "cuda")
    assert flags == [1, 0]
    np.testing.assert_array_equal(paired, single)


def test_float16_pairs_need_even_aligned_runs():
    assert TC.weight_pairs(geometry(CASES[10]))              # stride 1, 4x2 taps
    assert not TC.weight_pairs(geometry(CASES[0]))           # 3x3: rows R*S = 9 apart
    assert TC.weight_pairs(geometry(TAIL_CASES[1]))          # stride (2, 1): phases keep whole rows of 2 taps
    assert not TC.weight_pairs(geometry(case2d(1, 2, 6, 6, 4, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), 1)))  # 1 tap each
    a = cuda.to_device(np.zeros(10, HALF))
    assert TC._words(a, True)[1] == 1 and TC._words(a, True)[0].dtype == np.float32
    assert TC._words(a, False)[1] == 0
    assert TC._words(a[1:9], True)[1] == 0                   # starts between two words
    assert TC._words(a[:9], True)[1] == 0                    # an odd count


def test_cuda_float16_filter_slices_stay_fp32_until_added(monkeypatch):
    """Backward filter in several slices: their fp32 partial products are added in order and
    rounded once (conv_implicit_gemm.sum_slices_cuda); one slice goes the same way."""
    chosen = []
    wave_splits = TC.wave_splits

    def splits(tiles, most, resident):
        chosen.append(wave_splits(tiles, most, resident))
        return chosen[-1]
    monkeypatch.setattr(TC, "wave_splits", splits)
    case = case2d(2, 3, 10, 10, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)     # N*P*Q = 200
    for slots in (1, 10 ** 6):
        monkeypatch.setattr(TC, "resident_blocks", lambda kernel, threads: slots)
        assert_pass_matches(LAUNCH["bwd_filter"], "bwd_filter", case, HALF, "cuda")
    assert chosen == [1, 3]


@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 0, 2)])
def test_conv2d_float16_on_simulated_cuda_matches_pytorch_within_half_tolerance(stride, padding, groups):
    """Issue 13's done-when line for float16, forward and gradients. PyTorch runs on the same
    float16 inputs in float32, which is what its CUDA float16 convolutions accumulate in; its CPU
    float16 backward (the PyTorch here) sums partly in float16 and lands up to 1.7x the float16
    tolerance off the float64 result on these shapes, so only its float16 forward is compared as is."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6)).astype(HALF)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(HALF)
    b = rng.standard_normal(6).astype(HALF)
    kw = dict(stride=stride, padding=padding, groups=groups)
    xs, ws, bs = (ck.tensor(a, requires_grad=True, device="cuda") for a in (x, w, b))
    y = F.conv2d(xs, ws, bs, algorithm="implicit_gemm_tc", **kw)
    dy = rng.standard_normal(y.shape).astype(HALF)
    y.backward(ck.tensor(dy, device="cuda"))
    xt, wt, bt = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    yt.backward(torch.tensor(dy, dtype=torch.float32))
    for mine, theirs in [(y, yt), (xs.grad, xt.grad), (ws.grad, wt.grad), (bs.grad, bt.grad)]:
        assert mine.dtype == HALF
        np.testing.assert_allclose(mine.numpy(), theirs.detach().numpy(), *tolerance(HALF))
    y16 = torch.nn.functional.conv2d(*(torch.tensor(a) for a in (x, w, b)), **kw)
    assert y16.dtype == torch.float16
    np.testing.assert_allclose(y.numpy(), y16.numpy(), *tolerance(HALF))
