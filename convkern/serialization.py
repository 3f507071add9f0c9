"""``convkern.save`` / ``convkern.load``: state dicts (nested dicts of arrays, Tensors and plain
values) as a NumPy ``.npz`` file, no pickled code.

Each leaf is one array in the archive under its key path joined by "/"; a JSON index stored
beside them (as a string array) records the nesting and each leaf's Python kind, so numbers,
strings, tuples and None come back as what they were. The file is written to a temporary file
in the same directory, flushed to disk and renamed over ``path``: an interrupted save leaves the
previous file intact.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from convkern.autograd import Tensor

INDEX_KEY = "__convkern_index__"
FORMAT = 1


def _flatten(obj, path, arrays, where):
    if isinstance(obj, dict):
        node = {}
        for key, value in obj.items():
            if not isinstance(key, str) or "/" in key or not key or key == INDEX_KEY:
                raise ValueError(f"save: keys must be non-empty strings without '/', got {key!r} at {where or 'top level'}")
            node[key] = _flatten(value, f"{path}/{key}" if path else key, arrays, f"{where}[{key!r}]")
        return {"dict": node}
    if isinstance(obj, Tensor):
        obj = obj.numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufcU":
            raise TypeError(f"save: {where or 'the object'} is an array of dtype {obj.dtype}; only numeric and "
                            "string arrays can be saved without pickle")
        arrays[path] = obj
        return {"array": path}
    if obj is None:
        return {"none": None}
    if isinstance(obj, (bool, int, float, str, np.generic)):
        value = obj.item() if isinstance(obj, np.generic) else obj
        return {"value": value}
    if isinstance(obj, (tuple, list)):
        items = [_flatten(v, f"{path}/{i}", arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {"tuple" if isinstance(obj, tuple) else "list": items}
    raise TypeError(f"save: {where or 'the object'} has unsupported type {type(obj).__name__}; expected dicts, "
                    "lists, tuples, arrays, Tensors, numbers, strings or None")


def _unflatten(node, arrays, path):
    (kind, payload), = node.items()
    if kind == "dict":
        return {k: _unflatten(v, arrays, path) for k, v in payload.items()}
    if kind == "array":
        if payload not in arrays:
            raise ValueError(f"load: {path} is damaged: array {payload!r} named in its index is missing")
        return arrays[payload]
    if kind == "none":
        return None
    if kind == "value":
        return payload
    if kind in ("tuple", "list"):
        items = [_unflatten(v, arrays, path) for v in payload]
        return tuple(items) if kind == "tuple" else items
    raise ValueError(f"load: {path} is damaged: unknown entry kind {kind!r}")


def save(obj, path):
    """Write ``obj`` (e.g. ``model.state_dict()``) to ``path`` atomically (temporary file + rename)."""
    path = os.fspath(path)
    arrays = {}
    index = _flatten(obj, "", arrays, "")
    arrays[INDEX_KEY] = np.array(json.dumps({"format": FORMAT, "root": index}))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_npz(f, arrays):
    """What ``np.savez`` writes (one ``name.npy`` member per array), without its keyword arguments
    (an array named "file" would collide with them) and never pickling."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load(path):
    """Read what ``save`` wrote; arrays come back as NumPy arrays."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array (.npy), not an archive")
        with archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"load: {path!r} is not a convkern save file (a NumPy .npz archive): {exc}") from exc
    if INDEX_KEY not in arrays:
        raise ValueError(f"load: {path!r} is an .npz archive but not a convkern save file (no {INDEX_KEY} entry)")
    index = json.loads(str(arrays.pop(INDEX_KEY)))
    if index.get("format") != FORMAT:
        raise ValueError(f"load: {path!r} has format {index.get('format')!r}, expected {FORMAT}")
    return _unflatten(index["root"], arrays, path)
