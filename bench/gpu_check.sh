#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (written for an H100/H200) and a Python that already
# has numba, numba-cuda, PyTorch and pytest, with no network, install convkern in place, run the CUDA
# tests on the device, compute-sanitizer's memcheck and racecheck over a few kernel tests (when it is
# on PATH), the quick benchmark against PyTorch/cuDNN and the build check, and write one Markdown
# report into OUTDIR. The whole run fits in GPU_CHECK_BUDGET seconds (default 480): every step has
# its own time limit, cut to what is left; a failing step is recorded and the next one runs.
#
#   bench/gpu_check.sh OUTDIR              # or: make gpu-check GPU_CHECK_DIR=OUTDIR
#   bench/gpu_check.sh --dry-run OUTDIR    # print the steps and their commands, run nothing
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds, default 480), and per-step limits
# TEST_SECONDS, MEMCHECK_SECONDS, RACECHECK_SECONDS, BENCH_SECONDS, KERNELS_SECONDS. Exit status 0
# when every step passed or was skipped, 1 when one failed or timed out (the report says which),
# 2 on bad usage.
set -euo pipefail

usage() {
    echo "usage: bench/gpu_check.sh [--dry-run] OUTDIR" >&2
    exit 2
}

DRY_RUN=0
if [[ $# -ge 1 && $1 == --dry-run ]]; then
    DRY_RUN=1
    shift
fi
[[ $# -eq 1 && -n $1 && $1 != -* ]] || usage
OUT=$1
[[ $OUT == /* ]] || OUT=$PWD/$OUT       # the steps run in the repository

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-480}
REPORT_RESERVE=10                       # seconds kept back for writing the report
LOGS=$OUT/logs
REPORT=$OUT/gpu-check.md
# The CUDA path on the device, not under Numba's simulator (tests/conftest.py keeps a value that is set).
export NUMBA_ENABLE_CUDASIM=0
# Autotune choices of this run stay in OUTDIR, out of the user's cache.
export CONVKERN_CACHE_DIR=$OUT/cache

# The kernel tests the sanitizers run (about 40 and 15 small CUDA cases): memcheck over max_unpool2d
# (integer atomics, device-checked indices), cross-entropy (the device label check), batch-norm
# statistics (multi-block reductions) and split-K GEMM (workspaces); racecheck over the kernels
# that share memory between threads: batch-norm reductions and the tiled GEMM.
MEMCHECK_TESTS=(tests/kernels/test_pool.py tests/kernels/test_softmax.py tests/kernels/test_batchnorm.py
                tests/kernels/test_gemm.py)
MEMCHECK_SELECT="cuda and (maxunpool or cross_entropy or stats or split_k or deterministic)"
RACECHECK_TESTS=(tests/kernels/test_batchnorm.py tests/kernels/test_gemm.py)
RACECHECK_SELECT="cuda and float32 and (stats or bwd_reduce or split_k or batched)"

START=$SECONDS
STEPS=()            # "name|status|seconds|log" per step, in order

# run_step NAME SECONDS LOG CMD...: run CMD in the repository with a time limit of SECONDS (at most
# what is left of the budget), stdout into LOG and stderr into LOG's .err; record pass, fail (exit
# status), timeout or skipped (no time left). Never fails itself, so the next step always runs.
run_step() {
    local name=$1 want=$2 log=$3
    shift 3
    if ((DRY_RUN)); then
        printf '[%s] timeout %ss:' "$name" "$want"
        printf ' %q' "$@"
        printf ' > %q 2> %q\n' "$log" "${log%.log}.err"
        return 0
    fi
    local left=$((BUDGET - REPORT_RESERVE - (SECONDS - START)))
    local limit=$((want < left ? want : left))
    if ((limit <= 0)); then
        STEPS+=("$name|skipped (budget spent)|0|$log")
        return 0
    fi
    local began=$SECONDS rc=0 status=pass
    echo "[$name] up to ${limit}s: $*" >&2
    (cd "$REPO" && timeout --kill-after=10 "$limit" "$@") >"$log" 2>"${log%.log}.err" || rc=$?
    if ((rc == 124 || rc == 137)); then
        status="timeout after ${limit}s"
    elif ((rc != 0)); then
        status="fail (exit $rc)"
    fi
    STEPS+=("$name|$status|$((SECONDS - began))|$log")
    echo "[$name] $status" >&2
}

skip_step() {
    if ((DRY_RUN)); then
        echo "[$1] skipped: $2"
    else
        STEPS+=("$1|skipped: $2|0|")
    fi
}

if ((DRY_RUN)); then
    echo "gpu_check dry run, nothing is run: the report would be $REPORT, the logs in $LOGS"
else
    mkdir -p "$LOGS"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
    run_step nvidia-smi 15 "$LOGS/nvidia-smi.log" \
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
else
    skip_step nvidia-smi "nvidia-smi is not on PATH"
fi
run_step install 60 "$LOGS/install.log" \
    "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e .
run_step device-info 30 "$LOGS/device-info.log" "$PYTHON" bench/device_info.py
run_step cuda-tests "${TEST_SECONDS:-180}" "$LOGS/cuda-tests.log" \
    "$PYTHON" -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests -k cuda \
    --junitxml="$LOGS/cuda-tests.xml"
if command -v compute-sanitizer >/dev/null 2>&1; then
    run_step memcheck "${MEMCHECK_SECONDS:-50}" "$LOGS/memcheck.log" \
        compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
        "$PYTHON" -m pytest -q -p no:cacheprovider "${MEMCHECK_TESTS[@]}" -k "$MEMCHECK_SELECT" \
        --junitxml="$LOGS/memcheck.xml"
    run_step racecheck "${RACECHECK_SECONDS:-50}" "$LOGS/racecheck.log" \
        compute-sanitizer --tool racecheck --error-exitcode 99 --print-limit 20 \
        "$PYTHON" -m pytest -q -p no:cacheprovider "${RACECHECK_TESTS[@]}" -k "$RACECHECK_SELECT" \
        --junitxml="$LOGS/racecheck.xml"
else
    skip_step memcheck "compute-sanitizer is not on PATH"
    skip_step racecheck "compute-sanitizer is not on PATH"
fi
run_step bench "${BENCH_SECONDS:-120}" "$LOGS/bench.log" \
    "$PYTHON" -m convkern.cli bench --device cuda --peers --quick --json "$OUT/bench.json"
run_step kernels "${KERNELS_SECONDS:-60}" "$LOGS/kernels.log" \
    "$PYTHON" -m convkern.buildcheck --cc 90 --workers 8

if ((DRY_RUN)); then
    echo "[report] write $REPORT: device, driver, CUDA version, date, each step's status, test counts, the tables"
    exit 0
fi

# test_counts XML LOG: pytest's counts, "passed N, failed N, errors N, skipped N", from its JUnit XML,
# or from the progress marks of its -q log (". F E s x X") when a time limit stopped it before the XML.
test_counts() {
    "$PYTHON" - "$1" "$2" <<'PY' || echo "unreadable results"
import os
import re
import sys
import xml.etree.ElementTree as ET

xml, log = sys.argv[1:3]
if os.path.exists(xml) and os.path.getsize(xml):
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    print(f"passed {passed}, failed {n['failures']}, errors {n['errors']}, skipped {n['skipped']}")
elif os.path.exists(log):
    marks = "".join(re.findall(r"^([.FEsxX]+) *(?:\[ *\d+%\])?$", open(log, errors="replace").read(), re.M))
    print(f"stopped before the end; until then passed {marks.count('.')}, failed {marks.count('F')}, "
          f"errors {marks.count('E')}, skipped {marks.count('s')}, xfail/xpass {marks.count('x') + marks.count('X')}")
else:
    print("not run")
PY
}

# compute-sanitizer's closing "ERROR SUMMARY: N errors" lines (one per process it watched), counted.
sanitizer_summary() {
    local lines
    lines=$({ grep -h "ERROR SUMMARY" "$1" "${1%.log}.err" 2>/dev/null || true; } | sed 's/^=* *//' | sort |
            uniq -c | sed -E 's/^ *([0-9]+) (.*)/\2 (in \1 process(es))/' | paste -sd ';' -)
    echo "${lines:-no ERROR SUMMARY line}"
}

# stdin as a fenced text block, "(no output)" when empty.
fenced() {
    local text
    text=$(cat)
    echo '```text'
    echo "${text:-(no output)}"
    echo '```'
}

{
    echo "# convkern GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- host: $(hostname)"
    echo "- convkern: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")"
    if [[ -s $LOGS/nvidia-smi.log ]]; then
        echo "- nvidia-smi (name, driver, memory, max SM clock): $(head -n 1 "$LOGS/nvidia-smi.log")"
    fi
    if [[ -s $LOGS/device-info.log ]]; then
        sed 's/^/- /' "$LOGS/device-info.log"
    fi
    echo "- total time: $((SECONDS - START)) s of a ${BUDGET} s budget"
    echo
    echo "## Steps"
    echo
    echo "| step | status | seconds | log |"
    echo "|---|---|---:|---|"
    for row in "${STEPS[@]}"; do
        IFS='|' read -r name status secs log <<<"$row"
        echo "| $name | $status | $secs | ${log#"$OUT"/} |"
    done
    echo
    echo "## Tests on the device"
    echo
    echo "- CUDA tests (\`pytest tests -k cuda\`): $(test_counts "$LOGS/cuda-tests.xml" "$LOGS/cuda-tests.log")"
    if command -v compute-sanitizer >/dev/null 2>&1; then
        echo "- memcheck (\`-k '$MEMCHECK_SELECT'\` in ${MEMCHECK_TESTS[*]}):" \
             "$(test_counts "$LOGS/memcheck.xml" "$LOGS/memcheck.log");" \
             "$(sanitizer_summary "$LOGS/memcheck.log")"
        echo "- racecheck (\`-k '$RACECHECK_SELECT'\` in ${RACECHECK_TESTS[*]}):" \
             "$(test_counts "$LOGS/racecheck.xml" "$LOGS/racecheck.log");" \
             "$(sanitizer_summary "$LOGS/racecheck.log")"
    else
        echo "- compute-sanitizer: not on PATH, memcheck and racecheck not run"
    fi
    echo
    echo "Failures, errors and skips of the CUDA tests (pytest's short summary, the first 40):"
    echo
    { grep -hE '^(FAILED|ERROR|SKIPPED)' "$LOGS/cuda-tests.log" 2>/dev/null || true; } | head -n 40 | fenced
    echo
    echo "## Benchmark: \`convkern bench --device cuda --peers --quick\`"
    echo
    { cat "$LOGS/bench.log" 2>/dev/null || true; } | fenced
    echo
    echo "## Build check: \`convkern kernels --cc 90\`"
    echo
    echo "<details><summary>the table</summary>"
    echo
    { cat "$LOGS/kernels.log" 2>/dev/null || true; } | fenced
    echo
    echo "</details>"
} >"$REPORT"

echo "report: $REPORT" >&2
for row in "${STEPS[@]}"; do
    IFS='|' read -r _ status _ _ <<<"$row"
    [[ $status == pass || $status == skipped* ]] || exit 1
done
exit 0
