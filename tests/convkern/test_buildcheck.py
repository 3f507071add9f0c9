"""The build check: every registered CUDA kernel compiles to SASS for sm_80 and sm_90 without spills.

This pytest session runs with Numba's simulator on, and the simulator cannot compile real GPU
code, so the check itself runs in a subprocess with NUMBA_ENABLE_CUDASIM removed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convkern import buildcheck
from convkern.kernels import cuda_util

REPO = Path(__file__).absolute().parents[2]
TOOLCHAIN_PROBE = """
from cuda.bindings import nvjitlink
from numba.cuda.cudadrv.nvvm import NVVM
nvjitlink.version()
NVVM().get_version()
"""
# nvJitLink 13.5's -verbose log for a kernel with a 256-byte local array squeezed to 24 registers
SPILLING_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8__main__1kB2v1' for 'sm_80'
ptxas info    : Function properties for _ZN8__main__1kB2v1
ptxas         .     272 bytes stack frame, 68 bytes spill stores, 68 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 472 bytes cmem[0]
ptxas info    : Compile time = 205.162 ms
info    : 8 bytes gmem
info    : Function properties for '_ZN8__main__1kB2v1':
info    : used 24 registers, used 6 barriers, 272 stack, 2048 bytes smem, 472 bytes cmem[0], 0 bytes lmem
"""


def real_gpu_env():
    return {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}


def run_python(*args, timeout):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=real_gpu_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report():
    probe = run_python("-c", TOOLCHAIN_PROBE, timeout=120)
    if probe.returncode != 0:
        pytest.skip("the numba-cuda[cu13] wheels (NVVM, nvJitLink) are not installed: "
                    + (probe.stderr.strip().splitlines() or ["no error output"])[-1])
    check = run_python("-m", "convkern.buildcheck", "--json", "--cc", "80,90", "--no-cache", timeout=1800)
    assert check.stdout, f"the build check printed nothing (exit {check.returncode}):\n{check.stderr}"
    return check.returncode, json.loads(check.stdout)


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(report):
    returncode, rows = report
    assert buildcheck.load_all_kernels() == {}
    expected = {(e.name, e.dtype, cc) for e in cuda_util.REGISTRY for cc in ("sm_80", "sm_90")}
    assert {e.dtype for e in cuda_util.REGISTRY} == {"float32", "float64"}
    failures = [r["error"] for r in rows if r["error"] is not None]
    assert not failures, f"{len(failures)} failed; the first:\n{failures[0]}\nall:\n" + "\n".join(
        e.splitlines()[0] for e in failures)
    assert {(r["name"], r["dtype"], r["cc"]) for r in rows} == expected
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spills, spills
    assert all(r["registers"] > 0 for r in rows)
    assert returncode == 0


def test_kernel_names_identify_kernels():
    buildcheck.load_all_kernels()
    keys = [(e.name, e.dtype) for e in cuda_util.REGISTRY]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_parse_link_log_reads_ptxas_and_nvjitlink_lines():
    assert buildcheck.parse_link_log(SPILLING_LOG) == {
        "registers": 24, "spill_stores": 68, "spill_loads": 68, "shared_bytes": 2048, "stack_bytes": 272}


def test_parse_link_log_refuses_a_log_without_spill_counts():
    with pytest.raises(ValueError, match="unrecognised"):
        buildcheck.parse_link_log("info    : used 24 registers, used 6 barriers, 0 stack, 0 bytes smem")


def test_spills_and_failures_fail_the_check():
    ok = {"name": "k", "dtype": "float32", "cc": "sm_90", "registers": 24, "spill_stores": 0,
          "spill_loads": 0, "shared_bytes": 0, "stack_bytes": 0, "error": None}
    assert not buildcheck.failed(ok)
    assert buildcheck.failed({**ok, "spill_loads": 4})
    assert buildcheck.failed({**ok, **dict.fromkeys(buildcheck.METRICS), "error": "boom"})
    table = buildcheck.format_table([ok, {**ok, "name": "bad", **dict.fromkeys(buildcheck.METRICS), "error": "boom"}])
    assert "FAILED" in table and "\nboom" in table


@pytest.mark.parametrize("cc, expected", [((9, 0), "sm_90"), ("80", "sm_80"), ("sm_86", "sm_86"), ((10, 0), "sm_100")])
def test_arch_names(cc, expected):
    assert buildcheck.arch(cc) == expected


@pytest.mark.skipif(not cuda_util.SIMULATOR, reason="needs the simulator on, to check the refusal")
def test_refuses_to_run_under_the_simulator():
    with pytest.raises(RuntimeError, match="unset NUMBA_ENABLE_CUDASIM"):
        buildcheck.build_report()


def test_cache_returns_rows_only_for_the_same_key(tmp_path, monkeypatch):
    monkeypatch.setattr(buildcheck, "CACHE_FILE", tmp_path / "convkern" / "buildcheck.json")
    rows = [{"name": "k", "dtype": "float32", "cc": "sm_90", "registers": 24, "error": None}]
    assert buildcheck._read_cache("a") is None
    buildcheck._write_cache("a", rows)
    assert buildcheck._read_cache("a") == rows
    assert buildcheck._read_cache("b") is None
