"""Autotuning for ``algorithm="auto"``, like cuDNN's find / ``cudnn.benchmark``, but remembered
across runs and tied to the machine that measured it.

The first call of a pass on a new key (machine, device, dtype, pass, whole ConvGeometry) times
every algorithm that supports the pass on the call's real arrays and keeps the fastest, in memory
and in ``cache_path()``, a JSON file in the user cache directory (``$CONVKERN_CACHE_DIR``, else
``$XDG_CACHE_HOME/convkern`` or ``~/.cache/convkern``).

- **Machine.** The key starts with a short hash of ``machine()``: CPU model and ISA, thread
  count, convkern, Numba and NumPy versions, a hash of the kernels' source files, and on CUDA the
  GPU's name and compute capability. A choice measured elsewhere (another CPU, another thread
  count, an upgrade, changed kernels) is never used; the
  file keeps each machine's description (``provenance()``, shown by ``convkern info``).
- **Timing.** One warm-up call per candidate (JIT compilation), then ``ROUNDS`` rounds that run
  every candidate once each, interleaved, so a slow spell of the machine hits all of them; the
  median of each candidate's rounds decides. When the winner leads the runner-up by less than
  ``RECHECK_MARGIN``, both get ``RECHECK_ROUNDS`` more interleaved rounds and the medians over
  all rounds decide.
- **Re-validation.** ``retune()`` (``convkern tune``) re-times every cached shape of this
  machine on fresh random data and replaces the choices that no longer win.

A corrupt, unreadable or stale file is ignored with a warning and rewritten; an unwritable
directory only warns. ``CONVKERN_AUTOTUNE=0``, and the CUDA simulator (where timings mean
nothing), use the heuristic instead.
"""
import functools
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
import warnings

import numpy as np
from numba import cuda

from convkern.kernels.cuda_util import SIMULATOR
from convkern.kernels.shapes import ConvGeometry

FORMAT = 3
ROUNDS = 5
RECHECK_MARGIN = 0.10
RECHECK_ROUNDS = 6
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
             "amx_tile", "amx_bf16", "neon", "asimd", "sve")
_state = {"path": None, "entries": {}, "machines": {}, "write_warned": False, "generation": 0}


def cache_path():
    """The autotune cache file: ``autotune.json`` in the convkern user cache directory."""
    d = os.environ.get("CONVKERN_CACHE_DIR")
    if not d:
        d = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                         "convkern")
    return os.path.join(d, "autotune.json")


def enabled(device):
    """False under ``CONVKERN_AUTOTUNE=0`` (or false/off/no) and for "cuda" on the simulator."""
    off = os.environ.get("CONVKERN_AUTOTUNE", "1").strip().lower() in ("0", "false", "off", "no")
    return not off and not (device == "cuda" and SIMULATOR)


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_isa():
    """The vector-ISA flags of the host CPU that change which code is fastest."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    flags = set(line.split(":", 1)[1].split())
                    return ",".join(f for f in ISA_FLAGS if f in flags)
    except OSError:
        pass
    return platform.machine()


def _kernels_hash():
    """12 hex digits of the kernels' source files: a choice timed on other kernels is stale."""
    from convkern import kernels
    folder = os.path.dirname(kernels.__file__)
    digest = hashlib.sha256()
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def _fixed_machine(device, gpu):
    import numba

    import convkern
    info = {"cpu": _cpu_model(), "isa": _cpu_isa(), "convkern": convkern.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "kernels": _kernels_hash()}
    if gpu:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        info["gpu"] = f"{name} cc {'.'.join(map(str, dev.compute_capability))}"
    return tuple(sorted(info.items()))


def machine(device="cpu"):
    """What a timing depends on besides the shape: a dict of strings (see the module docstring)."""
    import numba
    gpu = device == "cuda" and not SIMULATOR
    return dict(_fixed_machine(device, gpu), threads=str(numba.get_num_threads()))


@functools.lru_cache(maxsize=64)
def _hash(items):
    return hashlib.sha256(json.dumps(dict(items), sort_keys=True).encode()).hexdigest()[:12]


def machine_id(info):
    """A short stable hash of a ``machine()`` dict."""
    return _hash(tuple(sorted(info.items())))


def cache_key(g, device, dtype, pass_, machine_hash=None):
    mid = machine_hash or machine_id(machine(device))
    return f"{mid}|{device}|{np.dtype(dtype).name}|{pass_}|{g.key()}"


def _read(path, quiet=False):
    """(entries, machines) of the cache file; empty when it is missing, or (with a warning) bad."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("not a convkern autotune cache")
        if data.get("format") != FORMAT:
            why = f"stale (format {data.get('format')!r}; this is format {FORMAT})"
            data = None
        elif not isinstance(data.get("machines", {}), dict) or \
                not all(isinstance(v, dict) and isinstance(v.get("algorithm"), str) for v in data["entries"].values()):
            raise ValueError("not a convkern autotune cache")
    except (FileNotFoundError, NotADirectoryError):
        return {}, {}
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why, data = f"unreadable or corrupt ({e})", None
    if data is None:
        if not quiet:
            warnings.warn(f"convkern: ignoring autotune cache {path}: {why}; it will be rewritten", stacklevel=4)
        return {}, {}
    return dict(data["entries"]), dict(data.get("machines", {}))


def _load():
    path = cache_path()
    if _state["path"] != path:
        entries, machines = _read(path)
        _state.update(path=path, entries=entries, machines=machines, write_warned=False)
        _state["generation"] = _state.get("generation", 0) + 1
    return _state["entries"]


def _write():
    path = _state["path"]
    entries, machines = _read(path, quiet=True)          # keep what other processes added
    entries.update(_state["entries"])
    machines.update(_state["machines"])
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "machines": machines, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        if not _state["write_warned"]:
            _state["write_warned"] = True
            warnings.warn(f"convkern: cannot write autotune cache {path} ({e}); choices are kept in memory only",
                          stacklevel=4)


def _time_once(fn, device):
    """Seconds of one call of ``fn()`` (the device drained after it)."""
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        cuda.synchronize()
    return time.perf_counter() - t0


def measure(run_candidate, candidates, device):
    """{name: median seconds} of every candidate, timed as the module docstring says."""
    for name in candidates:
        run_candidate(name)                              # warm-up: compilation, caches, workspaces
        if device == "cuda":
            cuda.synchronize()
    samples = {name: [] for name in candidates}

    def rounds(names, n):
        for _ in range(n):
            for name in names:
                samples[name].append(_time_once(lambda: run_candidate(name), device))
    rounds(candidates, ROUNDS)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    if len(candidates) > 1:
        first, second = sorted(medians, key=medians.get)[:2]
        if medians[second] < medians[first] * (1 + RECHECK_MARGIN):
            rounds([first, second], RECHECK_ROUNDS)
            medians.update({n: statistics.median(samples[n]) for n in (first, second)})
    return medians


def _remember(key, g, device, dtype, pass_, medians, info):
    mid = key.split("|", 1)[0]
    _state["machines"][mid] = info
    if key in _state["entries"]:                  # a re-timed choice: remembered answers may be stale
        _state["generation"] = _state.get("generation", 0) + 1
    _state["entries"][key] = {"algorithm": min(medians, key=medians.get), "device": device,
                              "dtype": np.dtype(dtype).name, "pass": pass_, "geometry": _geometry_json(g),
                              "median_ms": {n: round(t * 1e3, 6) for n, t in medians.items()}}
    _write()
    return _state["entries"][key]["algorithm"]


def choose(g, device, dtype, pass_, run_candidate, candidates, default):
    """The algorithm for one pass: ``default`` when autotuning is off, else this machine's cached
    winner, else the fastest of ``candidates`` (the algorithms whose ``supports`` accepts this
    pass) timed with ``run_candidate(name)``, which runs that algorithm on the real arrays. The
    output buffer then holds whichever candidate ran last: the caller runs the winner."""
    if not enabled(device):
        return default
    info = machine(device)
    entries, key = _load(), cache_key(g, device, dtype, pass_, machine_id(info))
    hit = entries.get(key)
    if hit is not None and hit["algorithm"] in candidates:
        return hit["algorithm"]
    return _remember(key, g, device, dtype, pass_, measure(run_candidate, candidates, device), info)


def state_token():
    """What ``choose``'s answer depends on besides its arguments: the settings it reads from the
    environment, the thread count and a counter of changes to cached choices (a new cache file, a
    cleared or re-timed choice; a choice added for a new shape changes no earlier answer). A caller may
    keep an answer while the token is unchanged (``convkern.ops.conv`` does, per shape)."""
    import numba
    env = os.environ
    return (env.get("CONVKERN_AUTOTUNE"), env.get("CONVKERN_CACHE_DIR"), env.get("XDG_CACHE_HOME"),
            numba.get_num_threads(), id(_state), _state.get("generation", 0))


def _geometry_json(g):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in g._asdict().items()}


def _geometry_from_json(d):
    return ConvGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def provenance():
    """{machine hash: {"machine": description, "entries": count, "current": bool}} of the cache file,
    ``current`` marking this machine's CPU description."""
    entries = _load()
    here = {machine_id(machine("cpu"))}
    if not SIMULATOR and cuda.is_available():
        here.add(machine_id(machine("cuda")))
    counts = {}
    for key in entries:
        mid = key.split("|", 1)[0]
        counts[mid] = counts.get(mid, 0) + 1
    return {mid: {"machine": _state["machines"].get(mid, {}), "entries": n, "current": mid in here}
            for mid, n in counts.items()}


def retune(device="cpu", log=None):
    """Re-time every cached choice of this machine on ``device`` with fresh random operands.

    Returns a list of (pass, geometry key, old choice, new choice). Shapes whose cached
    algorithm is no longer registered are re-timed as well."""
    from convkern import backend
    from convkern.kernels.conv_registry import BY_NAME
    from convkern.ops.conv import auto_candidates
    backend.check_device(device)
    if not enabled(device):
        raise RuntimeError("autotuning is off (CONVKERN_AUTOTUNE=0, or cuda on the simulator): nothing to re-time")
    info = machine(device)
    mid = machine_id(info)
    entries = _load()
    changes = []
    for key in [k for k in entries if k.startswith(f"{mid}|{device}|")]:
        e = entries[key]
        g = _geometry_from_json(e["geometry"])
        pass_ = e["pass"]
        rng = np.random.default_rng(0)
        a_shape, b_shape, out_shape = g.operand_shapes(pass_)
        a, b = (backend.to_device(rng.standard_normal(s).astype(e["dtype"]), device) for s in (a_shape, b_shape))
        out = backend.empty(out_shape, e["dtype"], device)
        names = auto_candidates(g, device, pass_, e["dtype"])
        medians = measure(lambda n: BY_NAME[n].launcher(pass_)(a, b, out, g), names, device)
        old = e["algorithm"]
        new = _remember(key, g, device, e["dtype"], pass_, medians, info)
        changes.append((pass_, g.key(), old, new))
        if log is not None:
            print(f"{pass_:10} {g.key()}: {old} -> {new}" + ("" if old == new else "  (changed)"), file=log)
    return changes


def clear_cache(file=True):
    """Forget the autotuned choices: in memory, and (``file=True``) the cache file."""
    _state.update(path=None, entries={}, machines={}, write_warned=False)
    _state["generation"] = _state.get("generation", 0) + 1
    if file:
        try:
            os.remove(cache_path())
        except FileNotFoundError:
            pass
