"""The build check: every registered CUDA kernel compiles to SASS for sm_80 and sm_90 without spills,
with an occupancy and instruction counts; the occupancy model and the SASS counter on hand-made input.

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
    assert {e.dtype for e in cuda_util.REGISTRY} == {"float16", "float32", "float64"}
    failures = [r["error"] for r in rows if r["error"] is not None]
    assert not failures, f"{len(failures)} failed; the first:\n{failures[0]}\nall:\n" + "\n".join(
        e.splitlines()[0] for e in failures)
    assert {(r["name"], r["dtype"], r["cc"]) for r in rows} == expected
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spills, spills
    assert all(r["registers"] > 0 for r in rows)
    assert returncode == 0


def test_every_kernel_reports_occupancy_and_sass_counts(report):
    _, rows = report
    if buildcheck.find_disassembler() is None:
        pytest.skip("no nvdisasm on PATH or from the nvidia-cuda-nvdisasm wheel (pip install -e '.[test]')")
    for row in rows:
        where = (row["name"], row["dtype"], row["cc"])
        assert set(buildcheck.METRICS) <= set(row), where
        missing = [key for key in buildcheck.METRICS if row[key] is None]
        assert not missing, (where, missing)
        # GPU block sizes (this process has the simulator's): whole warps, at most 1024 threads
        assert row["threads"] % 32 == 0 and 32 <= row["threads"] <= 1024, where
        assert 0 < row["occupancy"] <= 1, where
        assert row["occupancy"] == buildcheck.occupancy(row["threads"], row["registers"], row["shared_bytes"],
                                                        row["cc"]), where
        # the counts describe one kernel's SASS: every class is a subset of all instructions
        assert row["instructions"] > 0, where
        for key in ("ffma_ops", "mma_ops", "vector_loads", "async_copies"):
            assert 0 <= row[key] <= row["instructions"], (where, key)
    # float32 kernels fuse multiply-adds into FFMA: a build check that counts none reads the SASS wrongly
    assert any(r["ffma_ops"] > 0 for r in rows if r["dtype"] == "float32")


def test_implicit_gemm_tc_kernels_run_on_tensor_cores(report):
    """Issue 13's SASS targets: every implicit_gemm_tc kernel (each pass, every dtype: TF32, FP16 and
    FP64 MMA, sm_80 and sm_90) has tensor-core MMAs and cp.async copies, no spills, and at least 25 %
    occupancy."""
    _, rows = report
    tc = [r for r in rows if "implicit_gemm_tc" in r["name"]]
    passes = ("fwd", "bwd_data", "bwd_filter")
    assert sorted((p, r["dtype"], r["cc"]) for r in tc for p in passes if f"_{p}_" in r["name"]) == sorted(
        (p, dtype, cc) for p in passes for dtype in ("float16", "float32", "float64") for cc in ("sm_80", "sm_90"))
    if any(r["mma_ops"] is None for r in tc):
        pytest.skip("no nvdisasm (pip install nvidia-cuda-nvdisasm): the SASS instruction counts are missing")
    bad = [r for r in tc if not (r["mma_ops"] > 0 and r["async_copies"] > 0 and r["spill_stores"] == 0
                                 and r["spill_loads"] == 0 and r["occupancy"] >= 0.25)]
    assert not bad, bad


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


# Hand-computed occupancies. sm_80: 64 warps, 32 blocks, 65536 registers and 164 KiB = 167936 bytes
# of shared memory per SM; nvJitLink's sm_80 shared count excludes the 1 KiB reserved per block, its
# sm_90 count (228 KiB = 233472 per SM) includes it when the kernel has shared arrays at all.
OCCUPANCY_CASES = [
    # register-limited: 8 warps/block; 64 regs x 32 lanes = 2048 regs/warp -> 65536 // 2048 = 32 warps
    # = 4 blocks (warp limit 64 // 8 = 8, shared 167936 // 1024 = 164) -> 4 x 8 / 64 = 0.5
    ((256, 64, 0, "sm_80"), 0.5),
    # register granularity: 33 x 32 = 1056 regs/warp rounds up to 1280 -> 65536 // 1280 = 51 warps
    # -> 51 // 8 = 6 blocks -> 48 / 64 = 0.75
    ((256, 33, 0, "sm_80"), 0.75),
    # nothing limits below the warp limit: 32 x 32 = 1024 regs/warp -> 64 warps = 8 blocks = 64 warps -> 1.0
    ((256, 32, 0, "sm_80"), 1.0),
    # shared-limited: 4 warps/block, registers allow 64 warps = 16 blocks; 48 KiB + 1 KiB = 50176 bytes
    # -> 167936 // 50176 = 3 blocks -> 12 / 64 = 0.1875
    ((128, 32, 49152, "sm_80"), 0.1875),
    # the same on sm_90, where 49152 already holds the reserved 1 KiB: 233472 // 49152 = 4 -> 16 / 64 = 0.25
    ((128, 32, 49152, "sm_90"), 0.25),
    # sm_90 with no shared arrays reports 0 bytes, yet each block reserves 1 KiB: 233472 // 1024 = 228,
    # so warps limit: 64 // 8 = 8 blocks (registers 16 x 32 = 512/warp allow 128 warps) -> 1.0
    ((256, 16, 0, "sm_90"), 1.0),
    # block-limited: 1 warp/block; warps would allow 64 blocks, registers (512/warp) 128, shared 164,
    # but an SM holds 32 blocks -> 32 / 64 = 0.5
    ((32, 16, 0, "sm_80"), 0.5),
    # unlaunchable by registers: 32 warps/block, 255 x 32 = 8160 rounds to 8192 regs/warp -> 65536 // 8192
    # = 8 warps -> 8 // 32 = 0 blocks
    ((1024, 255, 0, "sm_80"), 0.0),
    # unlaunchable by shared memory: 200 KiB + 1 KiB > 164 KiB
    ((128, 32, 200 << 10, "sm_80"), 0.0),
    # unlaunchable by block size: more than 1024 threads
    ((2048, 16, 0, "sm_90"), 0.0),
]


@pytest.mark.parametrize("args, expected", OCCUPANCY_CASES)
def test_occupancy_against_hand_computed_cases(args, expected):
    assert buildcheck.occupancy(*args) == expected


def test_occupancy_is_none_for_a_cc_without_known_limits():
    assert buildcheck.occupancy(256, 32, 0, "sm_75") is None


def test_an_unlaunchable_block_fails_the_check():
    row = {"name": "k", "dtype": "float32", "cc": "sm_80", "registers": 255, "spill_stores": 0, "spill_loads": 0,
           "shared_bytes": 0, "stack_bytes": 0, "threads": 1024, "error": None,
           "occupancy": buildcheck.occupancy(1024, 255, 0, "sm_80")}
    assert buildcheck.failed(row)


# nvdisasm -c style output (sm_80): a predicated FFMA, an FFMA32I, a tensor-core HMMA, a 128-bit and a
# 32-bit global load, a 128-bit shared load, a cp.async LDGSTS (its .128 is a copy, not a load into
# registers), a DFMA, a 128-bit store, and NOP padding.
SASS_SNIPPET = """//--------------------- .text._ZN8__main__1kB2v1 --------------------------
        .section        .text._ZN8__main__1kB2v1,"ax",@progbits
_ZN8__main__1kB2v1:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E R8, desc[UR4][R2.64+0x10] ;
        /*0040*/                   LDGSTS.E.BYPASS.LTC128B.128 [R9], desc[UR4][R2.64] ;
        /*0050*/                   LDS.128 R12, [R9] ;
        /*0060*/              @!P0 FFMA R4, R12, R13, R4 ;
        /*0070*/                   FFMA32I R5, R14, 0.5, R5 ;
        /*0080*/                   HMMA.16816.F32 R16, R12, R4, R16 ;
        /*0090*/                   DFMA R20, R22, R24, R20 ;
        /*00a0*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*00b0*/                   EXIT ;
.L_x_0:
        /*00c0*/                   BRA `(.L_x_0) ;
        /*00d0*/                   NOP;
        /*00e0*/                   NOP;
"""


def test_sass_counts_on_a_disassembly_snippet():
    # 13 instructions, the two NOPs not counted; FFMA, FFMA32I, DFMA are FMAs; LDG.E.128 and LDS.128
    # are 128-bit loads (LDG.E, STG.E.128 and the LDGSTS are not)
    assert buildcheck.sass_counts(SASS_SNIPPET) == {"instructions": 13, "ffma_ops": 3, "mma_ops": 1,
                                                    "vector_loads": 2, "async_copies": 1}


def test_sass_counts_refuses_text_without_instructions():
    with pytest.raises(ValueError, match="no SASS instruction"):
        buildcheck.sass_counts("nvdisasm: nothing here\n")


# two loops and a forward branch: .L_x_1 .. the BRA back to it (3 FFMAs in 7 instructions, an inner
# loop and a forward branch included) holds the inner loop .L_x_2 (2 FFMAs in 3); .L_x_4 loops
# without an FMA; the BRA to .L_x_3 jumps forward and makes no loop
LOOP_SNIPPET = """_ZN8__main__1kB2v1:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   FFMA R1, R2, R3, R1 ;
.L_x_1:
        /*0020*/                   LDS.128 R4, [R0] ;
.L_x_2:
        /*0030*/                   FFMA R8, R4, R5, R8 ;
        /*0040*/                   FFMA R9, R6, R7, R9 ;
        /*0050*/              @P0 BRA `(.L_x_2) ;
        /*0060*/              @P1 BRA `(.L_x_3) ;
        /*0070*/                   FFMA R10, R4, R4, R10 ;
.L_x_3:
        /*0080*/              @P2 BRA `(.L_x_1) ;
        /*0090*/                   NOP;
.L_x_4:
        /*00a0*/                   IADD3 R0, R0, 0x1, RZ ;
        /*00b0*/              @P3 BRA `(.L_x_4) ;
        /*00c0*/                   EXIT ;
"""


def test_loop_counts_pick_the_loop_with_the_most_fmas():
    assert buildcheck.loop_counts(LOOP_SNIPPET) == {"loop_instructions": 7, "loop_ffma_ops": 3}
    # without the outer loop's FFMA the two loops tie on FMAs: the shorter (inner) one wins
    tied = LOOP_SNIPPET.replace("FFMA R10, R4, R4, R10", "IADD3 R10, R4, R4, RZ")
    assert buildcheck.loop_counts(tied) == {"loop_instructions": 3, "loop_ffma_ops": 2}
    straight = "\n".join(line for line in LOOP_SNIPPET.splitlines() if "BRA" not in line)
    assert buildcheck.loop_counts(straight) == {"loop_instructions": 0, "loop_ffma_ops": 0}


def test_implicit_gemm_fwd_float32_mainloop_is_mostly_ffma(report):
    """Issue 13, item 5: the FP32 implicit-GEMM forward kernel's hottest loop is at least half FFMA."""
    _, rows = report
    fwd = [r for r in rows if r["name"] == "conv2d_fwd_implicit_gemm_cuda" and r["dtype"] == "float32"]
    assert sorted(r["cc"] for r in fwd) == ["sm_80", "sm_90"]
    if any(r["loop_instructions"] is None for r in fwd):
        pytest.skip("no nvdisasm (pip install nvidia-cuda-nvdisasm): the SASS instruction counts are missing")
    for r in rows:
        if r["error"] is None and r["loop_instructions"] is not None:
            assert 0 <= r["loop_ffma_ops"] <= r["loop_instructions"] <= r["instructions"], r
    bad = [r for r in fwd if not 2 * r["loop_ffma_ops"] >= r["loop_instructions"] > 0]
    assert not bad, bad
