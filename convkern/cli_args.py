"""The command line's one argument validator: every subcommand declares each option's check here,
and the check runs while the command line is parsed, before any work starts.

    parser.add_argument("--lr", action=Checked, check=finite_positive_float)
    parser.add_argument("--json", action=Checked, check=output_path)

A check is ``check(value, name) -> value`` that raises ValueError with a message naming the
argument (``name``: the option as typed, e.g. "--lr"); ``Checked`` turns that into argparse's
usage error (the usage line, "convkern train: error: <message>", exit status 2). Library
functions call the same checks on their keyword arguments. The memory checks estimate what a
run will allocate and refuse it, naming the argument, when it exceeds the memory available.
"""
import argparse
import math
import operator
import os


class Checked(argparse.Action):
    """An option whose value ``check(value, option)`` validates (and converts) as it is parsed."""

    def __init__(self, option_strings, dest, check, **kwargs):
        self.check = check
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            value = self.check(values, option_string or self.metavar or self.dest)
        except ValueError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, value)


def _integer(value, name, low, what):
    text = value
    try:
        value = int(value.strip()) if isinstance(value, str) else operator.index(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}, got {text!r}") from None
    if isinstance(text, bool) or value < low:
        raise ValueError(f"{name} must be {what}, got {text!r}")
    return value


def positive_int(value, name):
    """An int >= 1 (a string is parsed; "2.5", "-3", "0" and True are refused)."""
    return _integer(value, name, 1, "a positive int")


def nonneg_int(value, name):
    """An int >= 0."""
    return _integer(value, name, 0, "a non-negative int")


def finite_positive_float(value, name):
    """A finite float > 0 ("nan", "inf", "0" and "-1" are refused)."""
    text = value
    try:
        value = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {text!r}") from None
    if isinstance(text, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {text!r}")
    return value


def size_hw(value, name):
    """"H" or "HxW" as a (H, W) pair of positive ints."""
    try:
        size = tuple(int(v) for v in str(value).lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise ValueError(f"{name} must be H or HxW with positive sizes, got {value!r}")
    return size * 2 if len(size) == 1 else size


def output_path(value, name):
    """A file that can be written: its directory exists and is writable, and the path itself is not
    a directory (nor an existing file this user cannot write)."""
    path = os.fspath(value)
    folder = os.path.dirname(os.path.abspath(path))
    if not path:
        why = "the path is empty"
    elif os.path.isdir(path):
        why = "it is a directory; name a file in it"
    elif not os.path.exists(folder):
        why = f"the directory {folder!r} does not exist"
    elif not os.path.isdir(folder):
        why = f"{folder!r} is not a directory"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"the directory {folder!r} is not writable"
    elif os.path.exists(path) and not os.access(path, os.W_OK):
        why = "the file exists and is not writable"
    else:
        return path
    raise ValueError(f"{name}: cannot write {path!r}: {why}")


def input_file(value, name):
    """An existing, readable regular file."""
    path = os.fspath(value)
    if not os.path.exists(path):
        why = "no such file"
    elif os.path.isdir(path):
        why = "it is a directory, not a file"
    elif not os.access(path, os.R_OK):
        why = "the file is not readable"
    else:
        return path
    raise ValueError(f"{name}: cannot read {path!r}: {why}")


def format_bytes(n):
    """``n`` bytes in the largest binary unit that keeps it >= 1 (e.g. "54.8 TiB")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def available_memory(device="cpu"):
    """Bytes that can be allocated now: free GPU memory on a real GPU, else the host's available
    memory (MemAvailable in /proc/meminfo, which counts reclaimable caches; else free pages)."""
    if device == "cuda":
        from convkern import backend
        if backend.cuda_kind() == "real":
            from numba import cuda
            return int(cuda.current_context().get_memory_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(nbytes, who, purpose, device="cpu", note=None):
    """Refuse a run whose estimated allocation ``nbytes`` exceeds the memory available on ``device``:
    "<who> needs about <nbytes> for <purpose>, more than the <free> of host memory available"
    (``who`` names the argument to change; ``note`` is added after a semicolon)."""
    free = available_memory(device)
    if nbytes > free:
        where = "GPU" if device == "cuda" else "host"
        raise ValueError(f"{who} needs about {format_bytes(nbytes)} for {purpose}, more than the {format_bytes(free)} "
                         f"of {where} memory available" + (f"; {note}" if note else ""))
