"""algorithm="auto" autotuning: interleaved median timing on a miss (and the re-check of close
calls), the in-memory and on-disk cache keyed by the machine, bad cache files, re-validation
(`convkern tune`), the off switch, and results equal to the named algorithm's."""
import contextlib
import io
import json

import numba
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern import autotune, cli
from convkern.kernels.cuda_util import SIMULATOR
from convkern.kernels.conv_registry import ALGORITHMS, BY_NAME
from convkern.ops.conv import PASSES, conv_algorithms, conv_geometry, heuristic_algorithm
from tests.reference import tolerance

# fake seconds per candidate: im2col wins, while the heuristic would pick direct for CONFIG;
# algorithms not named here take 5 s
FAKE_TIMES = {"direct": 3.0, "im2col": 1.0, "implicit_gemm": 2.0}
CONFIG = dict(x=(2, 3, 7, 6), w=(4, 3, 3, 3), stride=1, padding=1)
CONFIG_G = conv_geometry(CONFIG["x"], CONFIG["w"], CONFIG["stride"], CONFIG["padding"], 1, 1)
CANDIDATES = {p: conv_algorithms("cpu", CONFIG_G, [p]) for p in PASSES}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache directory and a fresh in-memory cache for each test."""
    monkeypatch.setenv("CONVKERN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVKERN_AUTOTUNE", raising=False)
    monkeypatch.setattr(autotune, "_state", {"path": None, "entries": {}, "machines": {}, "write_warned": False})
    return tmp_path / "cache" / "autotune.json"


class _Calls(list):
    """Launcher calls as (algorithm, pass); ``timed`` counts the timed calls per (algorithm, pass);
    ``set_times`` changes the fake timer: a dict of seconds per algorithm (5 s for the others), or
    a function (algorithm, its n-th timed call in this pass) -> seconds."""

    def __init__(self):
        super().__init__()
        self.timed = {}
        self.times = FAKE_TIMES

    def set_times(self, times):
        self.times = times

    def clear(self):
        super().clear()
        self.timed.clear()


@pytest.fixture
def calls(monkeypatch):
    """Record every launcher call; time each timed call as ``calls.times`` says."""
    log = _Calls()
    for alg in ALGORITHMS:
        for pass_ in PASSES:
            real = alg.launcher(pass_)

            def spy(*args, _real=real, _key=(alg.name, pass_)):
                log.append(_key)
                return _real(*args)
            monkeypatch.setitem(alg.launchers, pass_, spy)

    def fake_time_once(fn, device):
        fn()
        name, pass_ = log[-1]
        n = log.timed[(name, pass_)] = log.timed.get((name, pass_), 0) + 1
        return log.times(name, n) if callable(log.times) else log.times.get(name, 5.0)
    monkeypatch.setattr(autotune, "_time_once", fake_time_once)
    return log


def _conv(algorithm="auto", device="cpu", dtype=np.float64, config=CONFIG, seed=0):
    """y, dx, dw of one conv with a backward pass, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    x = ck.tensor(rng.standard_normal(config["x"]).astype(dtype), requires_grad=True, device=device)
    w = ck.tensor(rng.standard_normal(config["w"]).astype(dtype), requires_grad=True, device=device)
    y = F.conv2d(x, w, stride=config["stride"], padding=config["padding"], dilation=config.get("dilation", 1),
                 groups=config.get("groups", 1), algorithm=algorithm)
    y.backward(rng.standard_normal(y.shape).astype(dtype))
    return y.numpy(), x.grad.numpy(), w.grad.numpy()


def _assert_same(a, b):
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-10)


def _file(path):
    data = json.loads(path.read_text())
    assert data["format"] == autotune.FORMAT
    return data


def _choices(path):
    return {k: v["algorithm"] for k, v in _file(path)["entries"].items()}


def _stdout(buffer):
    return contextlib.redirect_stdout(buffer)


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVKERN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_path() == str(tmp_path / "xdg" / "convkern" / "autotune.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autotune.cache_path() == str(tmp_path / "home" / ".cache" / "convkern" / "autotune.json")


def test_key_is_the_machine_geometry_dtype_device_and_pass():
    g1 = conv_geometry((1, 2, 8, 8), (2, 2, 3, 3), 2, "same", 1, 1)      # pads (0, 1, 0, 1)
    g2 = conv_geometry((1, 2, 8, 8), (2, 2, 3, 3), 2, 0, 1, 1)           # same top/left, fewer rows out
    keys = {autotune.cache_key(g, dev, dt, p, m) for g in (g1, g2) for dev in ("cpu", "cuda")
            for dt in ("float32", "float64") for p in PASSES for m in ("machineA", "machineB")}
    assert len(keys) == 2 * 2 * 2 * 3 * 2


def test_machine_carries_cpu_isa_threads_and_versions():
    info = autotune.machine("cpu")
    assert {"cpu", "isa", "threads", "convkern", "numba", "numpy", "kernels"} <= set(info)
    assert info["threads"] == str(numba.get_num_threads()) and info["numba"] == numba.__version__
    before = autotune.machine_id(info)
    numba.set_num_threads(1)
    try:
        assert autotune.machine_id(autotune.machine("cpu")) != before     # another thread count: another key
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert autotune.machine_id(dict(info, cpu="another CPU")) != before
    assert autotune.machine_id(dict(info, kernels="0" * 12)) != before      # edited kernels: another key


def test_miss_times_every_candidate_interleaved_and_writes_the_winner(cache, calls):
    result = _conv()
    for pass_ in PASSES:
        ran = [name for name, p in calls if p == pass_]
        n = len(CANDIDATES[pass_])
        # one warm-up each, then ROUNDS rounds that run every candidate once, then the winner
        assert ran[:n] == CANDIDATES[pass_]
        assert ran[n:n + n * autotune.ROUNDS] == CANDIDATES[pass_] * autotune.ROUNDS
        assert ran[-1] == "im2col" and len(ran) == n * (1 + autotune.ROUNDS) + 1
    data = _file(cache)
    assert len(data["entries"]) == 3 and set(_choices(cache).values()) == {"im2col"}
    here = autotune.machine_id(autotune.machine("cpu"))
    assert all(k.startswith(f"{here}|cpu|float64|") for k in data["entries"])
    assert data["machines"][here] == autotune.machine("cpu")
    entry = next(iter(data["entries"].values()))
    assert entry["median_ms"]["im2col"] == 1000.0 and entry["geometry"]["kernel"] == [3, 3]
    _assert_same(result, _conv("im2col"))


def test_median_ignores_an_outlier_round(calls, cache):
    """im2col is fastest but one of its rounds is 100x slow: the median still picks it."""
    calls.set_times(lambda name, n: {"im2col": 100.0 if n == 2 else 1.0, "direct": 1.5}.get(name, 5.0))
    _conv()
    assert set(_choices(cache).values()) == {"im2col"}


def test_a_close_call_is_rechecked_with_more_rounds(calls, cache):
    """direct leads implicit_gemm by 5 % over the first rounds; the re-check rounds show
    implicit_gemm twice as fast, and the medians over all rounds pick it."""
    def times(name, n):
        if name == "direct":
            return 1.0
        if name == "implicit_gemm":
            return 1.05 if n <= autotune.ROUNDS else 0.5
        return 5.0
    calls.set_times(times)
    _conv()
    assert set(_choices(cache).values()) == {"implicit_gemm"}
    for pass_ in PASSES:
        for name in CANDIDATES[pass_]:
            rechecked = name in ("direct", "implicit_gemm")
            assert calls.timed[(name, pass_)] == autotune.ROUNDS + (autotune.RECHECK_ROUNDS if rechecked else 0)


def test_a_clear_winner_is_not_rechecked(calls, cache):
    _conv()
    assert all(calls.timed[(n, p)] == autotune.ROUNDS for p in PASSES for n in CANDIDATES[p])


def test_a_choice_from_another_machine_is_never_used(calls, cache):
    """A cache written on another CPU (or thread count, or Numba version) is kept but not trusted."""
    key = autotune.cache_key(CONFIG_G, "cpu", "float64", "fwd", "0123456789ab")
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"format": autotune.FORMAT, "machines": {"0123456789ab": {"cpu": "other"}},
                                 "entries": {key: {"algorithm": "direct", "pass": "fwd"}}}))
    _conv()
    assert ("im2col", "fwd") in calls                       # timed again here
    choices = _choices(cache)
    assert choices[key] == "direct" and list(choices.values()).count("im2col") == 3
    prov = autotune.provenance()
    assert prov["0123456789ab"] == {"machine": {"cpu": "other"}, "entries": 1, "current": False}
    here = autotune.machine_id(autotune.machine("cpu"))
    assert prov[here]["entries"] == 3 and prov[here]["current"]
    out = io.StringIO()
    with _stdout(out):
        assert cli.main(["info"]) == 0
    text = out.getvalue()
    assert f"autotune   {here} (this machine): 3 choices" in text and "0123456789ab: 1 choices; cpu other" in text


def test_retune_replaces_choices_that_no_longer_win(calls, cache):
    _conv()
    assert set(_choices(cache).values()) == {"im2col"}
    calls.set_times({"direct": 3.0, "im2col": 4.0, "implicit_gemm": 2.0})       # the machine changed its mind
    out = io.StringIO()
    with _stdout(out):
        assert cli.main(["tune"]) == 0
    assert set(_choices(cache).values()) == {"implicit_gemm"}
    assert "re-timed 3 cached choices on cpu; 3 changed" in out.getvalue()
    assert out.getvalue().count("im2col -> implicit_gemm  (changed)") == 3
    calls.clear()
    _conv()
    assert [n for n, _ in calls] == ["implicit_gemm"] * 3   # the re-validated choice is used, nothing timed


def test_retune_with_autotuning_off_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")
    with pytest.raises(RuntimeError, match="autotuning is off"):
        autotune.retune("cpu")


def test_hit_times_nothing_and_a_fresh_memory_cache_reloads_the_file(cache, calls):
    first = _conv()
    calls.clear()
    _assert_same(_conv(), first)
    assert calls == [("im2col", p) for p in PASSES]
    mtime = cache.stat().st_mtime_ns
    autotune.clear_cache(file=False)        # as in a new process
    calls.clear()
    _assert_same(_conv(), first)
    assert calls == [("im2col", p) for p in PASSES]
    assert cache.stat().st_mtime_ns == mtime
    autotune.clear_cache()
    assert not cache.exists()


def test_winner_result_survives_a_slower_candidate_that_ran_last(monkeypatch, calls):
    def garbage(x, w, y, g):
        calls.append(("implicit_gemm", "fwd"))
        y[...] = 7.0
    monkeypatch.setitem(BY_NAME["implicit_gemm"].launchers, "fwd", garbage)
    _assert_same(_conv(), _conv("im2col"))


def test_only_supporting_algorithms_are_timed(monkeypatch, cache, calls):
    """An algorithm whose supports() refuses the pass is never run, by auto or by the heuristic."""
    im2col = BY_NAME["im2col"]
    monkeypatch.setattr(im2col, "_limits", lambda g, device, pass_: (pass_ != "fwd", "im2col: refused for the test"))
    y = _conv()[0]
    assert ("im2col", "fwd") not in calls
    assert "implicit_gemm" in _choices(cache).values()    # fwd: next fastest after the refused im2col
    _assert_same([y], [_conv("direct")[0]])
    with pytest.raises(ValueError, match="algorithm 'im2col' cannot run the fwd pass .*refused for the test"):
        _conv("im2col")


@pytest.mark.parametrize("content", ["{not json", '["a", "list"]', '{"format": 1}', "\xff\xfe"])
def test_corrupt_file_warns_and_is_rewritten(cache, calls, content):
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content.encode("latin-1"))
    with pytest.warns(UserWarning, match=r"autotune\.json.*corrupt"):
        result = _conv()
    _assert_same(result, _conv("im2col"))
    assert len(_file(cache)["entries"]) == 3


def test_stale_format_is_ignored_with_a_warning(cache, calls):
    key = autotune.cache_key(CONFIG_G, "cpu", "float64", "fwd")
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"format": autotune.FORMAT - 1, "entries": {key: "direct"}}))
    with pytest.warns(UserWarning, match=r"autotune\.json.*stale"):
        _conv()
    assert ("im2col", "fwd") in calls                # retuned, the old entry was not used
    assert _choices(cache)[key] == "im2col"


def test_unwritable_cache_dir_only_warns(monkeypatch, tmp_path, calls):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("CONVKERN_CACHE_DIR", str(tmp_path / "a_file" / "convkern"))
    with pytest.warns(UserWarning, match="cannot write autotune cache") as record:
        result = _conv()
    assert len(record) == 1                              # once, not once per pass
    _assert_same(result, _conv("im2col"))
    calls.clear()
    _conv()
    assert calls == [("im2col", p) for p in PASSES]      # still remembered in memory


def test_disabled_uses_the_heuristic_and_writes_nothing(monkeypatch, cache, calls):
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")
    result = _conv()
    assert calls == [("direct", p) for p in PASSES]      # heuristic: C*R*S = 27 <= 75 on the CPU
    assert not cache.exists()
    _assert_same(result, _conv("direct"))


@pytest.mark.skipif(not SIMULATOR, reason="CUDA simulator only")
def test_simulator_uses_the_heuristic(cache, calls):
    _conv(device="cuda", dtype=np.float32)
    g = conv_geometry(CONFIG["x"], CONFIG["w"], 1, 1, 1, 1)
    assert calls == [(heuristic_algorithm(g, "cuda", p), p) for p in PASSES]
    assert not cache.exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", [
    CONFIG,
    dict(x=(1, 4, 8, 9), w=(4, 2, 3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
    dict(x=(2, 4, 7, 7), w=(4, 1, 3, 3), stride=2, padding="same", groups=4),
    dict(x=(1, 8, 6, 6), w=(16, 8, 1, 1), stride=2, padding=0),
], ids=["3x3", "grouped-dilated", "depthwise-same", "1x1-strided"])
def test_auto_matches_the_named_algorithms_with_real_timing(cache, config, dtype):
    result = _conv(config=config, dtype=dtype)
    g = conv_geometry(config["x"], config["w"], config["stride"], config["padding"],
                      config.get("dilation", 1), config.get("groups", 1))
    choices = _choices(cache)
    winners = [choices[autotune.cache_key(g, "cpu", dtype, p)] for p in PASSES]
    for name in conv_algorithms("cpu", g):
        named = _conv(name, config=config, dtype=dtype)
        rtol, atol = BY_NAME[name].tolerance(dtype) or tolerance(dtype)    # TF32 algorithms: their own
        for i, winner in enumerate(winners):
            tight = name == winner                      # the same kernel on the same arrays
            np.testing.assert_allclose(result[i], named[i], rtol=1e-6 if tight else rtol, atol=1e-6 if tight else atol)


def test_the_choice_is_remembered_per_shape_until_the_cache_or_a_setting_changes(calls, monkeypatch):
    from convkern.ops import conv
    asked = []
    real = conv.heuristic_algorithm          # asked, with the candidates, each time auto decides
    monkeypatch.setattr(conv, "heuristic_algorithm", lambda *a: asked.append(a[2]) or real(*a))
    _conv()
    assert sorted(asked) == sorted(PASSES)                    # one question per pass, then timing
    asked.clear()
    timed = dict(calls.timed)
    _conv()
    assert asked == [] and calls.timed == timed              # remembered: no question, no timing
    autotune.clear_cache(file=False)
    _conv()
    assert sorted(asked) == sorted(PASSES) and calls.timed == timed   # asked again, answered by the file
    asked.clear()
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")
    calls.clear()
    _conv()
    assert sorted(asked) == sorted(PASSES)                   # so is a changed setting: the heuristic now
    assert ("direct", "fwd") in calls and ("im2col", "fwd") not in calls
