"""Autotuning for ``conv2d(algorithm="auto")``, like cuDNN's find / ``cudnn.benchmark``, but
remembered across runs.

The first call of a pass on a new key (device, dtype, pass, whole ConvGeometry) times every
algorithm that supports the pass on the call's real arrays (one warm-up call, then the best of ``RUNS``)
and keeps the fastest, in memory and in ``cache_path()``, a JSON file in the user cache
directory (``$CONVKERN_CACHE_DIR``, else ``$XDG_CACHE_HOME/convkern`` or ``~/.cache/convkern``).
A corrupt, unreadable or stale file is ignored with a warning and rewritten; an unwritable
directory only warns. ``CONVKERN_AUTOTUNE=0``, and the CUDA simulator (where timings mean
nothing), use the heuristic instead.
"""
import json
import os
import tempfile
import time
import warnings

import numpy as np
from numba import cuda

from convkern.kernels.cuda_util import SIMULATOR

FORMAT = 2
RUNS = 2
_state = {"path": None, "entries": {}, "write_warned": False}


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


def cache_key(g, device, dtype, pass_):
    return f"{device}|{np.dtype(dtype).name}|{pass_}|{g.key()}"


def _version():
    import convkern
    return convkern.__version__


def _read(path, quiet=False):
    """The entries of the cache file; {} when it is missing, or (with a warning) bad."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) or \
                not all(isinstance(v, str) for v in data["entries"].values()):
            raise ValueError("not a convkern autotune cache")
        if data.get("format") != FORMAT or data.get("convkern") != _version():
            why = (f"stale (format {data.get('format')!r}, convkern {data.get('convkern')!r}; "
                   f"this is format {FORMAT}, convkern {_version()})")
            data = None
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why, data = f"unreadable or corrupt ({e})", None
    if data is None:
        if not quiet:
            warnings.warn(f"convkern: ignoring autotune cache {path}: {why}; it will be rewritten", stacklevel=4)
        return {}
    return dict(data["entries"])


def _entries():
    path = cache_path()
    if _state["path"] != path:
        _state.update(path=path, entries=_read(path), write_warned=False)
    return _state["entries"]


def _write():
    path = _state["path"]
    entries = {**_read(path, quiet=True), **_state["entries"]}  # keep what other processes added
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "convkern": _version(), "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        if not _state["write_warned"]:
            _state["write_warned"] = True
            warnings.warn(f"convkern: cannot write autotune cache {path} ({e}); choices are kept in memory only",
                          stacklevel=4)


def _time(fn, device):
    """Seconds of ``fn()``: one warm-up call (JIT compile), then the best of ``RUNS`` calls."""
    def once():
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            cuda.synchronize()
        return time.perf_counter() - t0
    once()
    return min(once() for _ in range(RUNS))


def choose(g, device, dtype, pass_, run_candidate, candidates, default):
    """The algorithm for one pass: ``default`` when autotuning is off, else the cached winner,
    else the fastest of ``candidates`` (the algorithms whose ``supports`` accepts this pass)
    timed with ``run_candidate(name)``, which runs that algorithm on the real arrays. The output
    buffer then holds whichever candidate ran last: the caller runs the winner."""
    if not enabled(device):
        return default
    entries, key = _entries(), cache_key(g, device, dtype, pass_)
    if entries.get(key) in candidates:
        return entries[key]
    times = {name: _time(lambda: run_candidate(name), device) for name in candidates}
    entries[key] = min(times, key=times.get)
    _write()
    return entries[key]


def clear_cache(file=True):
    """Forget the autotuned choices: in memory, and (``file=True``) the cache file."""
    _state.update(path=None, entries={}, write_warned=False)
    if file:
        try:
            os.remove(cache_path())
        except FileNotFoundError:
            pass
