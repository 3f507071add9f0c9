"""convkern bench: records, correctness column, output formats, suites and bad input."""
import csv
import json

import numpy as np
import pytest

from convkern import bench, cli
from convkern.suites import load_suite, quick

TINY_SUITE = [{"name": "tiny", "N": 1, "C": 2, "H": 6, "W": 5, "K": 2, "R": 3, "S": 3, "pad": 1}]


def test_quick_reference_suite_is_all_correct():
    records = bench.run_bench("reference", "cpu", quick_mode=True, min_seconds=0.0, log=None)
    layers = {r["layer"] for r in records}
    assert {"lenet5.c1", "alexnet.conv1", "vgg16.conv3_2", "resnet34.down3"} <= layers
    assert {r["algorithm"] for r in records} == {"direct", "im2col", "implicit_gemm", "auto"}
    assert {r["pass"] for r in records} == {"fwd", "bwd_data", "bwd_filter"}
    assert all(r["correct"] for r in records), [r for r in records if not r["correct"]][:3]
    for r in records:
        assert set(bench.FIELDS) <= set(r)
        assert r["median_ms"] > 0 and r["gflops"] > 0 and r["pct_peak"] > 0


def test_wrong_results_are_never_reported_fast(monkeypatch):
    from convkern.kernels import conv_direct

    def broken(x, w, y, g):
        y[...] = 0.0
    monkeypatch.setattr(conv_direct, "conv2d_fwd_direct", broken)
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
    assert len(records) == 4 and all(r["correct"] for r in records)


def test_suites_load_and_quick_keeps_shapes_valid():
    for name in ("reference", "deepbench", "convnet"):
        layers = load_suite(name)
        assert layers
        for layer in layers:
            q = quick(layer)
            assert q["C"] % q["groups"] == 0 and q["K"] % q["groups"] == 0
            assert q["H"] + 2 * q["pad"][0] >= q["R"] and q["W"] + 2 * q["pad"][1] >= q["S"]
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
    with pytest.raises(ValueError, match="unknown algorithm 'fft'"):
        bench.run_bench("convnet", "cpu", algorithms=["fft"], log=None)
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
