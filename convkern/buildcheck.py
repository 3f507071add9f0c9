"""The GPU build check, no GPU needed: compile every CUDA kernel to machine code and report it.

Each kernel in ``convkern.kernels.cuda_util.REGISTRY`` (both dtypes) is compiled for real,
per compute capability: Numba → PTX (``numba.cuda.compile_ptx``, NVVM), then PTX → SASS with
nvJitLink, whose verbose log gives registers, spill stores and loads, shared memory and stack
frame per kernel. The simulator never type-checks a kernel, so this is where a kernel that
only "works" simulated gets caught. Needs the ``numba-cuda[cu13]`` wheels (NVVM and
nvJitLink), not a GPU, and a process without ``NUMBA_ENABLE_CUDASIM``.

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
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path

DEFAULT_CCS = ((8, 0), (9, 0))
CACHE_FILE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convkern" / "buildcheck.json"
METRICS = ("registers", "spill_stores", "spill_loads", "shared_bytes", "stack_bytes")
COLUMNS = (("name", "kernel"), ("dtype", "dtype"), ("cc", "cc"), ("registers", "registers"),
           ("spill_stores", "spill stores"), ("spill_loads", "spill loads"),
           ("shared_bytes", "shared bytes"), ("stack_bytes", "stack bytes"))


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


def _link_log(nvjitlink, handle, error):
    size = (nvjitlink.get_error_log_size if error else nvjitlink.get_info_log_size)(handle)
    buf = bytearray(size)
    (nvjitlink.get_error_log if error else nvjitlink.get_info_log)(handle, buf)
    return buf.decode(errors="replace").rstrip("\x00").strip()


def compile_kernel(entry, cc):
    """Compile one REGISTRY entry for ``cc`` (e.g. ``"sm_90"``) and return its resource use.

    Returns ``{"name", "dtype", "cc", "registers", "spill_stores", "spill_loads",
    "shared_bytes", "stack_bytes"}`` (bytes per thread for spills and stack, per block for
    shared memory). Raises RuntimeError naming kernel, dtype and cc, with the compiler's
    log, when NVVM or nvJitLink rejects the kernel.
    """
    from cuda.bindings import nvjitlink
    from numba import cuda
    target = arch(cc)
    where = f"{entry.name} ({entry.dtype}, {target})"
    major, minor = int(target[3:-1]), int(target[-1])
    try:
        # Compile with the options the kernel runs with (launch bounds change register allocation).
        opts = entry.kernel.targetoptions
        ptx, _ = cuda.compile_ptx(entry.kernel.py_func, entry.signature, cc=(major, minor),
                                  fastmath=opts.get("fastmath", False),
                                  launch_bounds=opts.get("launch_bounds"))
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
    finally:
        nvjitlink.destroy(handle)
    try:
        metrics = parse_link_log(log)
    except ValueError as exc:
        raise RuntimeError(f"{where}: {exc}") from exc
    return {"name": entry.name, "dtype": entry.dtype, "cc": target, **metrics}


_JOBS = []      # (entry, cc) pairs, inherited by forked workers, which get indices only


def _run_job(index):
    entry, cc = _JOBS[index]
    try:
        return {**compile_kernel(entry, cc), "error": None}
    except RuntimeError as exc:
        return {"name": entry.name, "dtype": entry.dtype, "cc": arch(cc), **dict.fromkeys(METRICS),
                "error": str(exc)}


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
    _JOBS[:] = [(entry, cc) for entry in REGISTRY for cc in ccs]
    indices = range(len(_JOBS))
    if workers > 1 and len(_JOBS) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            rows = list(pool.map(_run_job, indices))
    else:
        rows = [_run_job(i) for i in indices]
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
    digest.update(repr((versions, nvjitlink.version(), NVVM().get_version(), settings, ccs)).encode())
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
    """True when the row is an import or compile failure or the kernel spills."""
    return row["error"] is not None or row["spill_stores"] > 0 or row["spill_loads"] > 0


def format_table(rows):
    """The report as an aligned text table, failures listed with their logs below it."""
    cells = [[title for _, title in COLUMNS]]
    for row in rows:
        if row["error"] is None:
            cells.append([str(row[key]) for key, _ in COLUMNS])
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
                             "shared_bytes, stack_bytes, error} instead of a table")
    parser.add_argument("--cc", type=_parse_ccs, default=tuple(arch(cc) for cc in DEFAULT_CCS),
                        help="compute capabilities to compile for, comma-separated (default: 80,90)")
    parser.add_argument("--workers", type=int, default=2,
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
        description="Compile every CUDA kernel to SASS (no GPU needed) and report registers, spills "
                    "and shared memory; exit status 1 if any kernel spills or fails to compile.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
