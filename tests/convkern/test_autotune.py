"""conv2d(algorithm="auto") autotuning: timing on a miss, the in-memory and on-disk cache,
bad cache files, the off switch, and results equal to the named algorithm's."""
import json

import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern import autotune
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
CALLS_PER_MISS = {p: len(CANDIDATES[p]) + 1 for p in PASSES}   # each candidate once, then the winner
CALLS_PER_CONV = sum(CALLS_PER_MISS.values())


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache directory and a fresh in-memory cache for each test."""
    monkeypatch.setenv("CONVKERN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVKERN_AUTOTUNE", raising=False)
    monkeypatch.setattr(autotune, "_state", {"path": None, "entries": {}, "write_warned": False})
    return tmp_path / "cache" / "autotune.json"


@pytest.fixture
def calls(monkeypatch):
    """Record (algorithm, pass) of every launcher call; time each candidate as FAKE_TIMES says."""
    log = []
    for alg in ALGORITHMS:
        for pass_ in PASSES:
            real = alg.launcher(pass_)

            def spy(*args, _real=real, _key=(alg.name, pass_)):
                log.append(_key)
                return _real(*args)
            monkeypatch.setitem(alg.launchers, pass_, spy)

    def fake_time(fn, device):
        fn()
        return FAKE_TIMES.get(log[-1][0], 5.0)
    monkeypatch.setattr(autotune, "_time", fake_time)
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
    assert data["format"] == autotune.FORMAT and data["convkern"] == ck.__version__
    return data["entries"]


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVKERN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_path() == str(tmp_path / "xdg" / "convkern" / "autotune.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autotune.cache_path() == str(tmp_path / "home" / ".cache" / "convkern" / "autotune.json")


def test_key_is_the_whole_geometry_dtype_device_and_pass():
    g1 = conv_geometry((1, 2, 8, 8), (2, 2, 3, 3), 2, "same", 1, 1)      # pads (0, 1, 0, 1)
    g2 = conv_geometry((1, 2, 8, 8), (2, 2, 3, 3), 2, 0, 1, 1)           # same top/left, fewer rows out
    keys = {autotune.cache_key(g, dev, dt, p) for g in (g1, g2) for dev in ("cpu", "cuda")
            for dt in ("float32", "float64") for p in PASSES}
    assert len(keys) == 2 * 2 * 2 * 3


def test_miss_times_every_candidate_and_writes_the_winner(cache, calls):
    result = _conv()
    assert len(calls) == CALLS_PER_CONV
    for pass_ in PASSES:
        timed = [name for name, p in calls if p == pass_]
        assert set(timed) == set(CANDIDATES[pass_]) and timed[-1] == "im2col"
    entries = _file(cache)
    assert len(entries) == 3 and set(entries.values()) == {"im2col"}
    assert all(k.startswith("cpu|float64|") for k in entries)
    _assert_same(result, _conv("im2col"))


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
    assert "implicit_gemm" in _file(cache).values()       # fwd: next fastest after the refused im2col
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
    assert len(_file(cache)) == 3


def test_stale_version_is_ignored_with_a_warning(cache, calls):
    g = conv_geometry(CONFIG["x"], CONFIG["w"], 1, 1, 1, 1)
    key = autotune.cache_key(g, "cpu", "float64", "fwd")
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"format": autotune.FORMAT, "convkern": "0.0.0-old", "entries": {key: "direct"}}))
    with pytest.warns(UserWarning, match=r"autotune\.json.*stale"):
        _conv()
    assert len(calls) == CALLS_PER_CONV              # retuned, the old entry was not used
    assert _file(cache)[key] == "im2col"


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
    entries = _file(cache)
    winners = [entries[autotune.cache_key(g, "cpu", dtype, p)] for p in PASSES]
    rtol, atol = tolerance(dtype)
    for name in conv_algorithms("cpu", g):
        named = _conv(name, config=config, dtype=dtype)
        for i, winner in enumerate(winners):
            tight = name == winner                      # the same kernel on the same arrays
            np.testing.assert_allclose(result[i], named[i], rtol=1e-6 if tight else rtol, atol=1e-6 if tight else atol)
