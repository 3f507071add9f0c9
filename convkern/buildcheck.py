"""The GPU build check, no GPU needed: compile every CUDA kernel to machine code and report it.

Each kernel in ``convkern.kernels.cuda_util.REGISTRY`` (both dtypes) is compiled for real,
per compute capability: Numba → PTX (``numba.cuda.compile_ptx``, NVVM), then PTX → SASS with
nvJitLink, whose verbose log gives registers, spill stores and loads, shared memory and stack
frame per kernel. From those and the block size its launcher uses (``per_dtype(threads=)``)
comes its ``occupancy``: resident warps per SM over the SM's maximum (``occupancy``). The linked
cubin is disassembled (``nvdisasm``, from the ``nvidia-cuda-nvdisasm`` wheel of the test extra)
and its instructions counted (``sass_counts``): all of them, FMAs, tensor-core MMAs, 128-bit
vector loads and asynchronous copies; without a disassembler those fields are None. The
simulator never type-checks a kernel, so this is where a kernel that only "works" simulated
gets caught. Needs the ``numba-cuda[cu13]`` wheels (NVVM and nvJitLink), not a GPU, and a
process without ``NUMBA_ENABLE_CUDASIM``.

    convkern kernels [--json] [--cc 80,90] [--no-cache]    # or: python -m convkern.buildcheck

A clean report is cached (``~/.cache/convkern/buildcheck.json``) under a hash of every kernel
source file, this file, the compiler versions, the ``NUMBA_*`` settings and the ccs, so
re-running the check on unchanged kernels takes a second instead of a minute.

Exit status 1 when a kernel module fails to import, a kernel fails to compile or a kernel
spills; 2 when the check cannot run at all (simulator on, wheels missing).
"""
import argparse
import hashlib
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path

DEFAULT_CCS = ((8, 0), (9, 0))
CACHE_FILE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convkern" / "buildcheck.json"
SASS_METRICS = ("instructions", "ffma_ops", "mma_ops", "vector_loads", "async_copies")
LOOP_METRICS = ("loop_instructions", "loop_ffma_ops")
METRICS = ("registers", "spill_stores", "spill_loads", "shared_bytes", "stack_bytes", "threads", "occupancy",
           *SASS_METRICS, *LOOP_METRICS)
COLUMNS = (("name", "kernel"), ("dtype", "dtype"), ("cc", "cc"), ("registers", "registers"),
           ("spill_stores", "spill stores"), ("spill_loads", "spill loads"),
           ("shared_bytes", "shared bytes"), ("stack_bytes", "stack bytes"), ("threads", "threads"),
           ("occupancy", "occupancy"), ("instructions", "instructions"), ("ffma_ops", "ffma"), ("mma_ops", "mma"),
           ("vector_loads", "128-bit loads"), ("async_copies", "async copies"),
           ("loop_instructions", "loop instructions"), ("loop_ffma_ops", "loop ffma"))

# Per-SM limits by compute capability (CUDA C Programming Guide, "Compute Capabilities"):
# resident warps, resident blocks, shared memory for blocks (bytes); every one has 64K 32-bit
# registers allocated per warp in units of 256, reserves 1 KiB of shared memory per block and
# allocates shared memory in units of 128 bytes.
SM_LIMITS = {"sm_80": (64, 32, 164 << 10), "sm_86": (48, 16, 100 << 10), "sm_89": (48, 24, 100 << 10),
             "sm_90": (64, 32, 228 << 10), "sm_100": (64, 32, 228 << 10)}
REGISTERS_PER_SM = 65536
MAX_THREADS_PER_BLOCK = 1024
REGISTER_UNIT = 256
SHARED_RESERVED = 1024
SHARED_UNIT = 128
# nvJitLink's shared-memory count already includes the reserved 1 KiB from sm_90 on, but only for a
# kernel with shared arrays: one without reports 0 and still has the 1 KiB reserved per block
SHARED_COUNTS_RESERVED = ("sm_90", "sm_100")
FMA_OPS = ("FFMA", "FFMA32I", "DFMA", "HFMA2", "HFMA2.MMA")
MMA_OPS = ("HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA", "BGMMA")
VECTOR_LOAD_OPS = ("LDG", "LDS", "LD")
ASYNC_COPY_OPS = ("LDGSTS", "UBLKCP", "UTMALDG")
_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)")


def load_all_kernels():
    """Import every module of the ``convkern.kernels`` package, so that ``REGISTRY`` is complete.

    Modules are found with ``pkgutil`` on the package's path: a new kernel file is picked up
    without being listed anywhere. Returns ``{module name: traceback text}`` for the modules
    that failed to import (empty when all imported).
    """
    import convkern.kernels as package
    failures = {}
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception:
            failures[info.name] = traceback.format_exc()
    return failures


def require_toolchain():
    """Raise RuntimeError saying what to do when kernels cannot be compiled for real here."""
    from numba import config
    if config.ENABLE_CUDASIM:
        raise RuntimeError("the build check compiles real GPU code and cannot run under Numba's CUDA "
                           "simulator: unset NUMBA_ENABLE_CUDASIM (it must be unset before Numba is imported)")
    try:
        from cuda.bindings import nvjitlink
        from numba.cuda.cudadrv.nvvm import NVVM
        nvjitlink.version()
        NVVM().get_version()
    except Exception as exc:
        raise RuntimeError(f"NVVM or nvJitLink is not available ({type(exc).__name__}: {exc}); the build check "
                           "needs the CUDA 13 wheels: pip install 'numba-cuda[cu13]'") from exc


def arch(cc):
    """``(9, 0)``, ``"90"``, ``"sm_90"`` or ``90`` → ``"sm_90"``."""
    if isinstance(cc, tuple):
        major, minor = cc
        return f"sm_{major}{minor}"
    digits = str(cc).strip().lower().removeprefix("sm_").replace(".", "")
    if not re.fullmatch(r"\d{2,3}", digits):
        raise ValueError(f"compute capability must look like 80, 90 or sm_90, got {cc!r}")
    return f"sm_{digits}"


def _numbers(pattern, log):
    return [int(v) for v in re.findall(pattern, log)]


def parse_link_log(log):
    """Registers, spills, shared memory and stack frame from nvJitLink's ``-verbose`` info log.

    nvJitLink 13 prints ptxas's lines (``N bytes stack frame, N bytes spill stores, N bytes
    spill loads`` and ``Used N registers``) and its own summary (``used N registers, used N
    barriers, N stack, N bytes smem, ..., N bytes lmem``). Spills are summed over every
    function in the log; registers, shared memory and stack are the largest value reported.
    Shared bytes are per block as nvJitLink counts them; for sm_90 that is 1 KiB more than
    the kernel's own shared arrays.
    Raises ValueError when the register count or the spill line is missing, so that a
    changed log format fails loudly rather than reading as zero.
    """
    registers = _numbers(r"[Uu]sed (\d+) registers", log)
    stores = _numbers(r"(\d+) bytes spill stores", log)
    loads = _numbers(r"(\d+) bytes spill loads", log)
    if not registers or not stores or not loads:
        raise ValueError(f"unrecognised nvJitLink log (no register count or spill line):\n{log}")
    stack = _numbers(r"(\d+) bytes stack frame", log) + _numbers(r"(\d+) stack\b", log)
    return {"registers": max(registers), "spill_stores": sum(stores), "spill_loads": sum(loads),
            "shared_bytes": max(_numbers(r"(\d+) bytes smem", log), default=0),
            "stack_bytes": max(stack, default=0)}


def occupancy(threads, registers, shared_bytes, cc):
    """Resident warps per SM over the SM's maximum for blocks of ``threads`` threads using
    ``registers`` per thread and ``shared_bytes`` per block (as nvJitLink counts them for ``cc``),
    as the CUDA occupancy calculator computes it; None for a cc without known limits.

    blocks = min(resident-block limit, warps limit // warps per block,
                 (REGISTERS_PER_SM // registers per warp) // warps per block,
                 shared memory per SM // shared memory per block), registers per warp rounded up
    to REGISTER_UNIT, shared memory per block (plus the reserved 1 KiB) rounded up to SHARED_UNIT.
    0 means the block cannot be launched at all (also: more than MAX_THREADS_PER_BLOCK threads)."""
    target = arch(cc)
    if target not in SM_LIMITS:
        return None
    if int(threads) > MAX_THREADS_PER_BLOCK:
        return 0.0
    max_warps, max_blocks, shared_per_sm = SM_LIMITS[target]
    warps = -(-int(threads) // 32)
    per_warp = -(-int(registers) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    if target in SHARED_COUNTS_RESERVED:
        need = max(int(shared_bytes), SHARED_RESERVED)
    else:
        need = int(shared_bytes) + SHARED_RESERVED
    need = -(-need // SHARED_UNIT) * SHARED_UNIT
    resident = min(max_blocks, max_warps // warps, (REGISTERS_PER_SM // max(per_warp, 1)) // warps,
                   shared_per_sm // need)
    return round(resident * warps / max_warps, 4)


def sass_counts(sass):
    """Instruction counts of ``nvdisasm`` output: ``instructions`` (every instruction but NOP
    padding), ``ffma_ops`` (FFMA, DFMA, HFMA2), ``mma_ops`` (tensor-core HMMA/IMMA/DMMA and the
    sm_90 warpgroup GMMAs), ``vector_loads`` (128-bit LDG/LDS/LD) and ``async_copies`` (cp.async
    LDGSTS and the sm_90 bulk copies UBLKCP, UTMALDG). Static counts of the whole kernel, not of
    the instructions executed. Raises ValueError on text with no instruction at all."""
    counts = dict.fromkeys(SASS_METRICS, 0)
    seen = False
    for line in sass.splitlines():
        m = _SASS_LINE.match(line)
        if m is None:
            continue
        seen = True
        op, mods = m.group(1), m.group(2).split(".")[1:]
        if op == "NOP":
            continue
        counts["instructions"] += 1
        full = ".".join([op] + mods)
        counts["ffma_ops"] += op in FMA_OPS or full in FMA_OPS
        counts["mma_ops"] += op in MMA_OPS
        counts["vector_loads"] += op in VECTOR_LOAD_OPS and "128" in mods
        counts["async_copies"] += op in ASYNC_COPY_OPS
    if not seen:
        raise ValueError("no SASS instruction found in the disassembly")
    return counts


_SASS_LABEL = re.compile(r"^\s*(\.L[\w.$]*):")
_BRANCH_TARGET = re.compile(r"`\((\.L[\w.$]*)\)")


def loop_counts(sass):
    """``loop_instructions`` and ``loop_ffma_ops`` of the kernel's hottest loop in ``nvdisasm`` text.

    A loop is the range from a label to a ``BRA`` further down that jumps back to it (a backward
    branch). The hottest is the loop with the most FMAs (counted as ``sass_counts`` does); among
    equals the shortest, i.e. the innermost. Counts cover every instruction in the range but
    NOP padding, inner branches included. Both are 0 when the code has no backward branch."""
    labels = {}
    ops = []            # (op, is_fma) of each instruction, in order
    best = None         # (ffma, -instructions) of the hottest loop so far
    for line in sass.splitlines():
        label = _SASS_LABEL.match(line)
        if label is not None:
            labels[label.group(1)] = len(ops)
            continue
        m = _SASS_LINE.match(line)
        if m is None:
            continue
        op, mods = m.group(1), m.group(2).split(".")[1:]
        if op == "NOP":
            continue
        ops.append(op in FMA_OPS or ".".join([op] + mods) in FMA_OPS)
        target = _BRANCH_TARGET.search(line) if op == "BRA" else None
        if target is not None and target.group(1) in labels:
            body = ops[labels[target.group(1)]:]
            key = (sum(body), -len(body))
            best = key if best is None or key > best else best
    if best is None:
        return {"loop_instructions": 0, "loop_ffma_ops": 0}
    return {"loop_instructions": -best[1], "loop_ffma_ops": best[0]}


def find_disassembler():
    """Path of ``nvdisasm``: on PATH, else from the ``nvidia-cuda-nvdisasm`` wheel; None if absent."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for folder in nvidia.__path__:
        for candidate in sorted(Path(folder).glob("cu*/bin/nvdisasm")):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def disassemble(cubin, tool):
    """The SASS text of ``cubin`` (bytes) by ``nvdisasm -c``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([tool, "-c", f.name], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"nvdisasm failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _link_log(nvjitlink, handle, error):
    size = (nvjitlink.get_error_log_size if error else nvjitlink.get_info_log_size)(handle)
    buf = bytearray(size)
    (nvjitlink.get_error_log if error else nvjitlink.get_info_log)(handle, buf)
    return buf.decode(errors="replace").rstrip("\x00").strip()


# numba-cuda's front end reads the compute capability only to choose code below sm_60 (float64
# atomics) and sm_75 (fast tanh): for targets from sm_75 up its LLVM IR is the same.
_SAME_FRONT_END_FROM = (7, 5)


def _ptx_by_target(entry, targets):
    """{target: PTX} of ``entry``: Numba's typing and lowering (two thirds of a build) run once for
    all ``targets`` from sm_75 up, NVVM once per target; ``cuda.compile_ptx`` per target otherwise
    (or when numba-cuda lacks the internal entry point)."""
    from numba import cuda
    from numba.cuda import compiler
    opts = entry.kernel.targetoptions
    # Compile with the options the kernel runs with (launch bounds change register allocation).
    kw = dict(fastmath=opts.get("fastmath", False), launch_bounds=opts.get("launch_bounds"))
    ccs = {t: (int(t[3:-1]), int(t[-1])) for t in targets}
    lower_once = hasattr(compiler, "_compile_pyfunc_with_fixup") and min(ccs.values()) >= _SAME_FRONT_END_FROM
    if not lower_once:
        return {t: cuda.compile_ptx(entry.kernel.py_func, entry.signature, cc=cc, **kw)[0] for t, cc in ccs.items()}
    library, _ = compiler._compile_pyfunc_with_fixup(entry.kernel.py_func, entry.signature, device=False,
                                                     abi="numba", cc=min(ccs.values()), **kw)
    return {t: "\n".join(library.get_asm_strs(cc=cc)) for t, cc in ccs.items()}


def compile_kernel(entry, cc, ptx=None):
    """Compile one REGISTRY entry for ``cc`` (e.g. ``"sm_90"``) and return its resource use
    (``ptx``: its PTX for that target when already made).

    Returns ``{"name", "dtype", "cc", "registers", "spill_stores", "spill_loads",
    "shared_bytes", "stack_bytes", "threads", "occupancy", "instructions", "ffma_ops",
    "mma_ops", "vector_loads", "async_copies", "loop_instructions", "loop_ffma_ops"}`` (bytes per
    thread for spills and stack, per block for shared memory; the SASS counts None without a disassembler). Raises RuntimeError
    naming kernel, dtype and cc, with the compiler's (or disassembler's) log, when NVVM,
    nvJitLink or nvdisasm rejects the kernel.
    """
    from cuda.bindings import nvjitlink
    target = arch(cc)
    where = f"{entry.name} ({entry.dtype}, {target})"
    if ptx is None:
        try:
            ptx = _ptx_by_target(entry, [target])[target]
        except Exception as exc:
            raise RuntimeError(f"{where}: Numba/NVVM compilation failed:\n{exc}") from exc
    handle = nvjitlink.create(2, [f"-arch={target}", "-verbose"])
    try:
        data = ptx.encode()
        try:
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), entry.name)
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as exc:
            raise RuntimeError(f"{where}: nvJitLink failed ({exc}):\n"
                               f"{_link_log(nvjitlink, handle, error=True)}") from exc
        log = _link_log(nvjitlink, handle, error=False)
        cubin = bytearray(nvjitlink.get_linked_cubin_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
    finally:
        nvjitlink.destroy(handle)
    try:
        metrics = parse_link_log(log)
    except ValueError as exc:
        raise RuntimeError(f"{where}: {exc}") from exc
    metrics["threads"] = entry.threads
    metrics["occupancy"] = occupancy(entry.threads, metrics["registers"], metrics["shared_bytes"], target)
    tool = find_disassembler()
    counts = dict.fromkeys(SASS_METRICS + LOOP_METRICS)
    if tool is not None:
        try:
            sass = disassemble(bytes(cubin), tool)
            counts = {**sass_counts(sass), **loop_counts(sass)}
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{where}: disassembling the cubin failed: {exc}") from exc
    return {"name": entry.name, "dtype": entry.dtype, "cc": target, **metrics, **counts}


_JOBS = []      # (entry, targets) pairs, inherited by forked workers, which get indices only


def _run_job(index):
    """One row per target of one REGISTRY entry."""
    entry, targets = _JOBS[index]

    def failed(target, exc):
        return {"name": entry.name, "dtype": entry.dtype, "cc": target, **dict.fromkeys(METRICS), "error": str(exc)}
    try:
        ptxs = _ptx_by_target(entry, targets)
    except Exception as exc:
        return [failed(t, f"{entry.name} ({entry.dtype}, {t}): Numba/NVVM compilation failed:\n{exc}")
                for t in targets]
    rows = []
    for target in targets:
        try:
            rows.append({**compile_kernel(entry, target, ptxs[target]), "error": None})
        except RuntimeError as exc:
            rows.append(failed(target, exc))
    return rows


def build_report(ccs=DEFAULT_CCS, workers=2, cache=True):
    """Compile every REGISTRY kernel (both dtypes) for every cc in ``ccs``; one dict per compile.

    Each dict is ``compile_kernel``'s plus ``"error"``: None, or the message when the kernel
    failed to compile (its metrics are then None). A kernel module that fails to import
    gives a row named after the module, with dtype and cc None and the traceback as error.
    Compiles run in ``workers`` forked processes (1: in this process). With ``cache``, a
    report without errors is stored in ``CACHE_FILE`` and returned again while its key
    (``cache_key``) holds. Raises RuntimeError when the simulator is on or the CUDA 13
    wheels are missing.
    """
    require_toolchain()
    ccs = tuple(arch(cc) for cc in ccs)
    key = cache_key(ccs) if cache else None
    rows = _read_cache(key) if cache else None
    if rows is not None:
        return rows
    failures = load_all_kernels()
    from convkern.kernels.cuda_util import REGISTRY
    _JOBS[:] = [(entry, ccs) for entry in REGISTRY]
    indices = range(len(_JOBS))
    if workers > 1 and len(_JOBS) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            per_entry = list(pool.map(_run_job, indices))
    else:
        per_entry = [_run_job(i) for i in indices]
    rows = [row for entry_rows in per_entry for row in entry_rows]
    rows += [{"name": module, "dtype": None, "cc": None, **dict.fromkeys(METRICS),
              "error": f"{module}: import failed:\n{text}"} for module, text in failures.items()]
    if cache and all(row["error"] is None for row in rows):
        _write_cache(key, rows)
    return rows


def cache_key(ccs):
    """Hash of what a report depends on: kernel sources, this file, compiler versions, settings, ccs."""
    import convkern.kernels as package
    from cuda.bindings import nvjitlink
    from numba.cuda.cudadrv.nvvm import NVVM
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for folder in package.__path__:
        for path in sorted(Path(folder).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    versions = [metadata.version(dist) for dist in ("numba", "numba-cuda", "cuda-bindings")]
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("NUMBA_"))
    digest.update(repr((versions, nvjitlink.version(), NVVM().get_version(), settings, ccs,
                        find_disassembler())).encode())
    return digest.hexdigest()


def _read_cache(key):
    try:
        stored = json.loads(CACHE_FILE.read_text())
    except (OSError, ValueError):
        return None
    return stored["rows"] if isinstance(stored, dict) and stored.get("key") == key else None


def _write_cache(key, rows):
    try:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        partial = CACHE_FILE.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"key": key, "rows": rows}))
        os.replace(partial, CACHE_FILE)
    except OSError:
        pass        # the cache only saves time; a read-only home must not fail the check


def failed(row):
    """True when the row is an import or compile failure, the kernel spills, or its block size
    cannot be resident at all (occupancy 0)."""
    return (row["error"] is not None or row["spill_stores"] > 0 or row["spill_loads"] > 0
            or row.get("occupancy") == 0)


def format_table(rows):
    """The report as an aligned text table, failures listed with their logs below it."""
    cells = [[title for _, title in COLUMNS]]
    for row in rows:
        if row["error"] is None:
            cells.append(["-" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS])
        else:
            cells.append([str(row[key] or "-") for key, _ in COLUMNS[:3]] + ["FAILED"] + ["-"] * (len(COLUMNS) - 4))
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.extend(f"\n{row['error']}" for row in rows if row["error"] is not None)
    return "\n".join(lines)


def _parse_ccs(text):
    try:
        return tuple(arch(cc) for cc in text.split(",") if cc.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser):
    """Add the ``convkern kernels`` options to an argparse (sub)parser."""
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {name, dtype, cc, registers, spill_stores, spill_loads, "
                             "shared_bytes, stack_bytes, threads, occupancy, instructions, ffma_ops, mma_ops, "
                             "vector_loads, async_copies, loop_instructions, loop_ffma_ops, error} instead of "
                             "a table")
    parser.add_argument("--cc", type=_parse_ccs, default=tuple(arch(cc) for cc in DEFAULT_CCS),
                        help="compute capabilities to compile for, comma-separated (default: 80,90)")
    from convkern.cli_args import Checked, positive_int
    parser.add_argument("--workers", action=Checked, check=positive_int, default=2,
                        help="compile in this many processes (default: 2)")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help=f"compile everything even when {CACHE_FILE} holds a report for these sources")


def run(args):
    """Run the build check for parsed ``args``; print the report; return the exit status."""
    try:
        rows = build_report(args.cc, workers=args.workers, cache=args.cache)
    except RuntimeError as exc:
        print(f"convkern kernels: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return int(any(failed(row) for row in rows))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="convkern kernels",
        description="Compile every CUDA kernel to SASS (no GPU needed) and report registers, spills, "
                    "shared memory, occupancy and what its SASS is made of; exit status 1 if any kernel "
                    "spills or fails to compile.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
