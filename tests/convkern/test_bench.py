"""convkern bench: records, correctness column, output formats, suites and bad input."""
import contextlib
import csv
import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import convkern as ck
from convkern import backend, bench, cli
from convkern.kernels.shapes import window_out_size
from convkern.ops.conv import conv_geometry
from convkern.suites import load_suite, quick

TINY_SUITE = [{"name": "tiny", "N": 1, "C": 2, "H": 6, "W": 5, "K": 2, "R": 3, "S": 3, "pad": 1}]


def test_quick_reference_suite_is_all_correct():
    records = bench.run_bench("reference", "cpu", quick_mode=True, min_seconds=0.0, log=None)
    layers = {r["layer"] for r in records}
    assert {"lenet5.c1", "alexnet.conv1", "vgg16.conv3_2", "resnet34.down3"} <= layers
    assert {r["algorithm"] for r in records} == set(ck.conv_algorithms("cpu")) | {"auto"}
    assert {r["pass"] for r in records} == {"fwd", "bwd_data", "bwd_filter"}
    assert all(r["correct"] for r in records), [r for r in records if not r["correct"]][:3]
    for r in records:
        assert set(bench.FIELDS) <= set(r)
        assert r["median_ms"] > 0 and r["gflops"] > 0 and r["pct_peak"] > 0


def test_wrong_results_are_never_reported_fast(monkeypatch):
    from convkern.kernels.conv_registry import BY_NAME

    def broken(x, w, y, g):
        y[...] = 0.0
    monkeypatch.setitem(BY_NAME["direct"].launchers, "fwd", broken)
    [rec] = bench.run_bench("convnet", "cpu", algorithms=["direct"], passes=["fwd"], quick_mode=True,
                            min_seconds=0.0, log=None)[:1]
    assert rec["correct"] is False and rec["gflops"] == 0.0 and rec["pct_peak"] is None


def test_cli_writes_json_csv_and_table(tmp_path, capsys):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(TINY_SUITE))
    out_json, out_csv = tmp_path / "out.json", tmp_path / "out.csv"
    rc = cli.main(["bench", "--suite", str(suite), "--quick", "--algorithms", "direct,im2col",
                   "--passes", "fwd,bwd_filter", "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "tiny" in table and "GF/s" in table
    records = json.loads(out_json.read_text())
    assert len(records) == 4 and all(r["correct"] for r in records)
    assert records[0]["suite"] == "custom" and records[0]["pad"] == [1, 1]
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and rows[0]["layer"] == "tiny"


def test_cuda_bench_runs_under_the_simulator(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([{"name": "t", "N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 3, "S": 3}]))
    records = bench.run_bench(str(suite), "cuda", passes=["fwd"], min_seconds=0.0, log=None)
    g = ck.conv_geometry((1, 1, 4, 4), (1, 1, 3, 3))
    assert [r["algorithm"] for r in records] == ck.conv_algorithms("cuda", g, ["fwd"]) + ["auto"]
    assert all(r["correct"] for r in records)


def test_unsupported_algorithm_is_skipped_with_its_reason(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([{"name": "t3d", "N": 1, "C": 2, "H": 6, "W": 6, "K": 2, "R": 3, "S": 3,
                                  "stride": 2}]))
    from convkern.kernels.conv_registry import ALGORITHMS
    g = ck.conv_geometry((1, 2, 6, 6), (2, 2, 3, 3), stride=2)
    refused = [a for a in ALGORITHMS if not a.supports(g, "cpu", "fwd")[0]]
    log = io.StringIO()
    records = bench.run_bench(str(suite), "cpu", passes=["fwd"], min_seconds=0.0, log=log)
    assert {r["algorithm"] for r in records} == set(ck.conv_algorithms("cpu", g, ["fwd"])) | {"auto"}
    for a in refused:
        assert f"t3d fwd: {a.name} skipped: {a.supports(g, 'cpu', 'fwd')[1]}" in log.getvalue()


def test_suites_load_and_quick_keeps_shapes_valid():
    for name in ("reference", "deepbench", "convnet"):
        layers = load_suite(name)
        assert layers
        for layer in layers:
            for simulated, cap in ((False, 16), (True, 8)):
                q = quick(layer, simulated)
                assert q["C"] % q["groups"] == 0 and q["K"] % q["groups"] == 0
                assert q["H"] + 2 * q["pad"][0] >= q["R"] and q["W"] + 2 * q["pad"][1] >= q["S"]
                assert q["N"] <= (1 if simulated else 2) and max(q["C"], q["K"]) <= max(cap, q["groups"])
                assert q["H"] <= max(cap, q["dilation"][0] * (q["R"] - 1) + 1)
    assert len(load_suite("deepbench")) == 94


@pytest.mark.parametrize("content,message", [
    ("not json", "not valid JSON"),
    ("[]", "non-empty list"),
    ('[{"N": 1, "C": 1}]', "lacks keys"),
])
def test_bad_suite_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_suite(str(path))
    assert cli.main(["bench", "--suite", str(path)]) == 2


def test_bad_bench_arguments():
    with pytest.raises(ValueError, match="does-not-exist.json"):
        load_suite("does-not-exist.json")
    with pytest.raises(ValueError, match="unknown algorithm 'no_such_algorithm'"):
        bench.run_bench("convnet", "cpu", algorithms=["no_such_algorithm"], log=None)
    with pytest.raises(ValueError, match="unknown pass 'bwd'"):
        bench.run_bench("convnet", "cpu", passes=["bwd"], log=None)


def test_format_table_is_aligned():
    records = bench.run_bench("convnet", "cpu", algorithms=["im2col"], passes=["fwd"], quick_mode=True,
                              min_seconds=0.0, log=None)
    lines = bench.format_table(records).splitlines()
    assert len(lines) == 2 + len(records)
    assert lines[0].index("algorithm") == lines[2].index("im2col")
    assert np.isfinite([r["gflops"] for r in records]).all()


def test_info_reports_versions_devices_threads_and_cache(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "convkern" in out and "numba" in out and "cpu threads" in out
    assert "Numba CUDA simulator" in out or "real GPU" in out
    assert "autotune cache" in out


PEER_SUITE = [{"name": "plain", "N": 2, "C": 4, "H": 7, "W": 6, "K": 3, "R": 3, "S": 3, "stride": 2, "pad": 1},
              {"name": "grouped", "N": 1, "C": 4, "H": 5, "W": 5, "K": 4, "R": 3, "S": 3, "pad": 1, "groups": 2},
              {"name": "dilated", "N": 1, "C": 2, "H": 8, "W": 7, "K": 2, "R": 3, "S": 2, "dilation": [2, 3]}]


@pytest.fixture
def no_peak(monkeypatch):
    """Skip the 2048^2 GEMM peak measurement: these tests are about the peers."""
    monkeypatch.setattr(bench, "measure_peak_gflops", lambda device: 1.0)


def _suite_file(tmp_path, layers):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(layers))
    return str(path)


def _fake_tensorflow(torch, tf32_seen):
    """A stand-in for the TensorFlow calls the peer makes, computed with PyTorch from TensorFlow's
    documented semantics: NHWC input, HWIO filter, explicit [[0,0],[top,bottom],[left,right],[0,0]]
    padding for tf.nn.conv2d and the flat form with padding="EXPLICIT" for the raw gradient ops."""
    from types import SimpleNamespace
    F = torch.nn.functional
    state = {"tf32": True}

    def conv2d(x, w, strides, padding, data_format, dilations):
        assert data_format == "NHWC" and len(strides) == len(dilations) == 4
        tf32_seen.append(state["tf32"])
        (_, _), (top, bottom), (left, right), (_, _) = padding
        xp = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
        y = F.conv2d(xp, w.permute(3, 2, 0, 1), stride=strides[1:3], dilation=dilations[1:3],
                     groups=x.shape[3] // w.shape[2])
        return y.permute(0, 2, 3, 1)

    def grads(x, w, out_backprop, padding, explicit_paddings, **kw):
        assert padding == "EXPLICIT" and len(explicit_paddings) == 8
        x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = conv2d(x, w, padding=[explicit_paddings[i:i + 2] for i in (0, 2, 4, 6)], **kw)
        return torch.autograd.grad(y, (x, w), out_backprop)

    def backprop_input(input_sizes, filter, out_backprop, **kw):
        return grads(torch.zeros(input_sizes.tolist(), dtype=filter.dtype), filter, out_backprop, **kw)[0]

    def backprop_filter(input, filter_sizes, out_backprop, **kw):
        return grads(input, torch.zeros(filter_sizes.tolist(), dtype=input.dtype), out_backprop, **kw)[1]

    def constant(value, dtype=None):
        return torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.tensor(value, dtype=dtype)

    experimental = SimpleNamespace(tensor_float_32_execution_enabled=lambda: state["tf32"],
                                   enable_tensor_float_32_execution=lambda on: state.update(tf32=on))
    return SimpleNamespace(
        __version__="stand-in", int32=torch.int32, constant=constant, identity=lambda t: t.clone(),
        device=lambda name: contextlib.nullcontext(), nn=SimpleNamespace(conv2d=conv2d),
        raw_ops=SimpleNamespace(Conv2DBackpropInput=backprop_input, Conv2DBackpropFilter=backprop_filter),
        config=SimpleNamespace(list_physical_devices=lambda kind: [], experimental=experimental),
        test=SimpleNamespace(experimental=SimpleNamespace())), state


def test_absent_peers_are_skipped_with_a_note(tmp_path, monkeypatch, no_peak):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    log = io.StringIO()
    records = bench.run_bench(_suite_file(tmp_path, TINY_SUITE), "cpu", algorithms=["direct"], passes=["fwd"],
                              peers=True, min_seconds=0.0, log=log, peer_process=False)   # sees the patched modules
    notes = log.getvalue()
    assert "torch skipped: PyTorch is not installed" in notes
    assert "tensorflow skipped: TensorFlow is not installed" in notes
    assert "none available" in notes
    assert [r["algorithm"] for r in records] == ["direct"]
    rec = records[0]
    assert rec["peer"] is None and rec["ratio_vs_peer"] is None and rec["peers"] == {}
    assert rec["ratio_vs_torch"] is None and rec["ratio_vs_tensorflow"] is None
    assert "x torch" not in bench.format_table(records)


def test_torch_peer_on_cpu_and_tensorflow_absent(tmp_path, monkeypatch, no_peak):
    pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    log = io.StringIO()
    records = bench.run_bench(_suite_file(tmp_path, PEER_SUITE), "cpu", algorithms=["im2col"],
                              passes=["fwd", "bwd_data", "bwd_filter"], peers=True, min_seconds=0.0, log=log)
    assert "PyTorch" in log.getvalue() and "tensorflow skipped: TensorFlow is not installed" in log.getvalue()
    assert "# peers: timed in a separate worker process (pid" in log.getvalue()
    assert all(r["correct"] for r in records)
    assert all(r["peer_timing"].startswith("in a separate worker process") for r in records)
    torch_rows = {(r["layer"], r["pass"]): r for r in records if r["algorithm"] == "torch"}
    assert len(torch_rows) == 9
    for r in records:
        if r["algorithm"] == "im2col":
            peer_ms = torch_rows[(r["layer"], r["pass"])]["median_ms"]
            assert r["peer"] == "torch" and r["peers"] == {"torch": peer_ms}
            assert r["ratio_vs_peer"] == r["ratio_vs_torch"] == pytest.approx(peer_ms / r["median_ms"])
            assert r["ratio_vs_tensorflow"] is None
    head = bench.format_table(records).splitlines()[0]
    assert "x torch" in head and "x tensorflow" not in head


def test_peers_in_their_own_process_leave_this_one_without_torch(tmp_path):
    """The worker imports PyTorch; the benchmarking process never does (one OpenMP pool each)."""
    pytest.importorskip("torch")
    suite = _suite_file(tmp_path, TINY_SUITE)
    code = ("import sys; from convkern import bench; "
            f"r = bench.run_bench({str(suite)!r}, 'cpu', algorithms=['direct'], passes=['fwd'], peers=True, "
            "min_seconds=0.0, log=None); "
            "assert [x['algorithm'] for x in r] == ['torch', 'direct'], r; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_tensorflow_peer_through_a_stand_in(tmp_path, monkeypatch, no_peak):
    torch = pytest.importorskip("torch")
    tf32_seen = []
    fake, state = _fake_tensorflow(torch, tf32_seen)
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    log = io.StringIO()
    records = bench.run_bench(_suite_file(tmp_path, PEER_SUITE), "cpu", algorithms=["direct"],
                              passes=["fwd", "bwd_data", "bwd_filter"], peers=True, min_seconds=0.0, log=log,
                              peer_process=False)       # the stand-in lives in this process
    notes = log.getvalue()
    assert "TensorFlow stand-in on cpu" in notes
    assert "tensorflow skipped on grouped bwd_data: TensorFlow has no CPU gradients for grouped" in notes
    assert "tensorflow skipped on dilated bwd_filter: TensorFlow's CPU gradients take no dilation > 1" in notes
    assert all(r["correct"] for r in records), [r for r in records if not r["correct"]][:2]
    tf_rows = {(r["layer"], r["pass"]) for r in records if r["algorithm"] == "tensorflow"}
    assert tf_rows == {("plain", "fwd"), ("plain", "bwd_data"), ("plain", "bwd_filter"),
                       ("grouped", "fwd"), ("dilated", "fwd")}
    mine = {(r["layer"], r["pass"]): r for r in records if r["algorithm"] == "direct"}
    assert set(mine[("plain", "bwd_filter")]["peers"]) == {"torch", "tensorflow"}
    assert mine[("plain", "fwd")]["peer"] == "torch"
    assert mine[("grouped", "bwd_data")]["ratio_vs_tensorflow"] is None
    assert mine[("grouped", "bwd_data")]["ratio_vs_torch"] is not None
    assert tf32_seen and not any(tf32_seen) and state["tf32"] is True
    head = bench.format_table(records).splitlines()[0]
    assert "x torch" in head and "x tensorflow" in head
    out_csv = tmp_path / "out.csv"
    bench.write_csv(records, out_csv)
    row = next(r for r in csv.DictReader(out_csv.open()) if r["algorithm"] == "direct")
    assert set(json.loads(row["peers"])) == {"torch", "tensorflow"}


def test_peers_are_skipped_on_the_cuda_simulator(tmp_path):
    if backend.cuda_kind() != "simulated":
        pytest.skip("needs the simulator; on a real GPU the peers run")
    log = io.StringIO()
    suite = _suite_file(tmp_path, [{"name": "t", "N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 3, "S": 3}])
    records = bench.run_bench(suite, "cuda", algorithms=["direct"], passes=["fwd"], peers=True, min_seconds=0.0,
                              log=log)
    notes = log.getvalue()
    assert "torch skipped: " in notes and "tensorflow skipped: " in notes
    if importlib.util.find_spec("torch"):
        assert "torch skipped: convkern's cuda device is Numba's simulator" in notes
    assert [r["algorithm"] for r in records] == ["direct"] and records[0]["peers"] == {}


@pytest.mark.parametrize("H,R,stride,pad,dilation", [
    (7, 3, 2, 1, 1), (6, 3, 2, 1, 1), (5, 1, 1, 1, 1), (9, 3, 3, 0, 2), (224, 7, 2, 3, 1), (11, 5, 4, 2, 1),
    (8, 3, 1, "same", 2), (10, 4, 3, "same", 1),
])
def test_tf_conv_args_give_exactly_the_output_size(H, R, stride, pad, dilation):
    g = conv_geometry((2, 4, H, H + 1), (6, 2, R, R), stride, pad, dilation, 2)
    a = bench.tf_conv_args(g)
    (n0, n1), (top, bottom), (left, right), (c0, c1) = a["padding"]
    assert (n0, n1, c0, c1) == (0, 0, 0, 0) and (top, left) == (g.pad_h, g.pad_w)
    assert window_out_size(g.H, g.R, g.stride_h, top, bottom, g.dil_h) == g.P
    assert window_out_size(g.W, g.S, g.stride_w, left, right, g.dil_w) == g.Q
    if not isinstance(pad, str):
        assert bottom <= pad and right <= pad
    assert a["explicit_paddings"] == [0, 0, top, bottom, left, right, 0, 0]
    assert a["strides"] == [1, stride, stride, 1] and a["dilations"] == [1, dilation, dilation, 1]


def test_tf_conv_args_known_case():
    g = conv_geometry((1, 1, 6, 6), (1, 1, 3, 3), 2, 1, 1, 1)
    assert bench.tf_conv_args(g)["padding"] == [[0, 0], [1, 0], [1, 0], [0, 0]]


@pytest.mark.parametrize("device,pass_,groups,dilation,expected", [
    ("cpu", "fwd", 2, 2, None),
    ("cpu", "bwd_data", 1, 1, None),
    ("cpu", "bwd_data", 2, 1, "grouped"),
    ("cpu", "bwd_filter", 1, 2, "dilation > 1"),
    ("cuda", "bwd_filter", 2, 2, None),
])
def test_tf_unsupported(device, pass_, groups, dilation, expected):
    g = conv_geometry((1, 4, 9, 9), (4, 4 // groups, 3, 3), 1, 1, dilation, groups)
    why = bench.tf_unsupported(g, device, pass_)
    assert why is None if expected is None else expected in why


def test_layers_selects_by_name_pattern_and_refuses_a_pattern_matching_nothing():
    records = bench.run_bench("reference", "cpu", algorithms=["direct"], passes=["fwd"], quick_mode=True,
                              min_seconds=0.0, log=None, layers=["lenet5.*", "cifar10.conv1"])
    assert [r["layer"] for r in records] == ["lenet5.c1", "lenet5.c3", "cifar10.conv1"]
    with pytest.raises(ValueError, match=r"--layers: 'nope\*' matches no layer of the suite"):
        bench.run_bench("reference", "cpu", layers=["nope*"], log=None)
