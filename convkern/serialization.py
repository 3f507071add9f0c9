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


# Each index entry is {kind: payload}; the payload each kind holds.
PAYLOADS = {"dict": (dict, "an object"), "array": (str, "a member name"), "none": (type(None), "null"),
            "value": ((bool, int, float, str), "a number or a string"), "tuple": (list, "a list"),
            "list": (list, "a list")}
KINDS = tuple(PAYLOADS)


def _unflatten(node, read, where):
    """The object an index ``node`` describes; ``read(name)`` gives the array member ``name``.
    Every node is checked first: a damaged index raises ValueError saying what is wrong and where."""
    if not isinstance(node, dict) or len(node) != 1 or next(iter(node)) not in KINDS:
        raise ValueError(f"the index entry at {where} is {node!r}, not one of {{kind: payload}} with kind in {KINDS}")
    (kind, payload), = node.items()
    expected, what = PAYLOADS[kind]
    if not isinstance(payload, expected):
        raise ValueError(f"the {kind!r} entry at {where} must hold {what}, got {payload!r}")
    if kind == "dict":
        return {k: _unflatten(v, read, f"{where}[{k!r}]") for k, v in payload.items()}
    if kind == "array":
        return read(payload)
    if kind in ("tuple", "list"):
        items = [_unflatten(v, read, f"{where}[{i}]") for i, v in enumerate(payload)]
        return tuple(items) if kind == "tuple" else items
    return payload


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


NPY_MAGIC = b"\x93NUMPY"
SAVED_KINDS = "biufcU"   # the dtype kinds save() writes
DEFLATE_MAX_RATIO = 1032  # deflate's largest expansion: a member cannot hold more than this x its stored size


def load(path):
    """Read what ``save`` wrote; arrays come back as (writable) NumPy arrays.

    The file is checked before anything is allocated: a zip archive whose index parses as
    convkern's and names only members that exist, each member's ``.npy`` header declaring a
    numeric dtype and a shape whose bytes are exactly what the member holds (so a damaged
    header cannot make ``load`` allocate more than the file contains). Anything else raises
    ValueError naming the file and what is damaged."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"load: {path!r} is a directory, not a convkern save file")
    try:
        with open(path, "rb") as f:
            if f.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise ValueError("it holds a single array (.npy), not an archive")
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if INDEX_KEY + ".npy" not in members:
                raise _NotOurs(f"an archive but not a convkern save file (no {INDEX_KEY} entry)")
            return _load_archive(archive, members, os.path.getsize(path))
    except _NotOurs as e:
        raise ValueError(f"load: {path!r} is {e}") from None
    except _Damaged as e:
        raise ValueError(f"load: {path!r} is a damaged file: {e}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"load: {path!r} is not a convkern save file (a NumPy .npz archive): {e}") from e


class _NotOurs(Exception):
    """A readable archive that convkern did not write."""


class _Damaged(Exception):
    """A convkern save file that is damaged (the message says what)."""


def _load_archive(archive, members, file_size):
    index = _read_member(archive, members[INDEX_KEY + ".npy"], file_size)
    if index.shape != () or index.dtype.kind != "U":
        raise _Damaged(f"its index is a {index.dtype} array of shape {index.shape}, not a string")
    try:
        index = json.loads(str(index))
    except ValueError as e:
        raise _Damaged(f"its index is not valid JSON ({e})") from None
    if not isinstance(index, dict) or set(index) != {"format", "root"}:
        raise _Damaged("its index is not an object with 'format' and 'root'")
    if index["format"] != FORMAT:
        raise _NotOurs(f"in save-file format {index['format']!r}; this convkern reads format {FORMAT}")

    def read(name):
        info = members.get(name + ".npy")
        if info is None:
            raise _Damaged(f"array {name!r} named in its index is missing")
        return _read_member(archive, info, file_size)
    try:
        return _unflatten(index["root"], read, "the top level")
    except ValueError as e:
        raise _Damaged(e) from None


def _read_member(archive, info, file_size):
    """The array in member ``info``, after checking its header against the member's size."""
    name = info.filename
    limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO)
    if info.header_offset + info.compress_size > file_size or info.file_size > limit:
        raise _Damaged(f"member {name!r} claims {info.file_size} bytes, more than the file holds")
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            data = info.file_size - f.tell()
        if dtype.kind not in SAVED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise _Damaged(f"member {name!r} declares dtype {dtype}, which save() never writes")
        if any(n < 0 for n in shape):
            raise _Damaged(f"member {name!r} declares a negative shape {shape}")
        nbytes = dtype.itemsize
        for n in shape:
            nbytes *= n
        if nbytes != data:
            raise _Damaged(f"member {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                           f"{data} bytes")
        with archive.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _Damaged(f"member {name!r}: {e}") from None
