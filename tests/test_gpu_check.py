"""bench/gpu_check.sh: its dry run lists every step of the GPU check with its command and runs none
of them. The programs it would call are stand-ins that leave a mark when run."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["nvidia-smi", "install", "device-info", "cuda-tests", "memcheck", "racecheck", "bench", "kernels", "report"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run bench/gpu_check.sh")


def stand_ins(folder, marker, names):
    """Executables ``names`` in ``folder`` that append their name to ``marker`` when run."""
    folder.mkdir()
    for name in names:
        path = folder / name
        path.write_text(f"#!/bin/sh\necho {name} >> '{marker}'\n")
        path.chmod(0o755)
    return folder


def dry_run(tmp_path, tools, *args):
    marker = tmp_path / "ran"
    fake = stand_ins(tmp_path / "bin", marker, tools)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin", "PYTHON": str(fake / "python3")}
    done = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    return done, marker


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "report"
    tools = ["python3", "nvidia-smi", "compute-sanitizer", "timeout", "pip", "pytest", "convkern"]
    done, marker = dry_run(tmp_path, tools, "--dry-run", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for step in STEPS:
        assert any(line.startswith(f"[{step}]") for line in lines), (step, done.stdout)
    text = done.stdout
    assert "-m pip install --no-index --no-deps --no-build-isolation -e ." in text
    assert "-m pytest -q -p no:cacheprovider --continue-on-collection-errors tests -k cuda" in text
    assert "compute-sanitizer --tool memcheck" in text and "compute-sanitizer --tool racecheck" in text
    assert "-m convkern.cli bench --device cuda --peers --quick" in text
    assert "-m convkern.buildcheck --cc 90" in text
    assert f"{out}/gpu-check.md" in text
    assert not marker.exists(), marker.read_text()
    assert not out.exists()


def test_dry_run_says_when_the_sanitizer_is_missing(tmp_path):
    if shutil.which("compute-sanitizer", path=f"/usr/bin{os.pathsep}/bin"):
        pytest.skip("compute-sanitizer is installed in /usr/bin or /bin")
    done, marker = dry_run(tmp_path, ["python3", "nvidia-smi"], "--dry-run", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "[memcheck] skipped: compute-sanitizer is not on PATH" in done.stdout
    assert "[racecheck] skipped: compute-sanitizer is not on PATH" in done.stdout
    assert not marker.exists()


@pytest.mark.parametrize("args", [[], ["--dry-run"], ["a", "b"], ["--verbose"]], ids=["none", "dry-run-only",
                                                                                    "two-dirs", "unknown-option"])
def test_bad_usage(tmp_path, args):
    done, marker = dry_run(tmp_path, ["python3"], *args)
    assert done.returncode == 2
    assert "usage: bench/gpu_check.sh [--dry-run] OUTDIR" in done.stderr
    assert not marker.exists()


def test_make_gpu_check_calls_the_script():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_CHECK_DIR=somewhere"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "bench/gpu_check.sh somewhere" in done.stdout
