"""When a CPU kernel runs on the thread pool, and when in the calling thread.

A ``parallel=True`` kernel wakes Numba's OpenMP workers on every call. convkern makes them wait
passively (``OMP_WAIT_POLICY=PASSIVE``, set in ``convkern/__init__.py``: spinning workers starve
OpenBLAS's), and waking a sleeping worker costs far more than a small kernel's work: measured on
the 2-vCPU development VM (AMD EPYC, 2026-12-03), 65-95 µs per call for arrays of 10 to 200k
float32 values, where one thread updates 48k values in 4.5 µs and 200k in 27 µs; a LeNet-5
training step at batch 64 ran faster with one thread (12.3 ms) than with two (15.7 ms).

So the kernels that often see small arrays (elementwise ops, activations, bias epilogues, the
loss, optimizer updates) are built twice from one body: ``<name>_cpu`` (parallel) and
``<name>_serial_cpu``, two wrappers around an ``inline="always"`` body whose ``prange`` runs as a
plain loop in the serial build. Both compute exactly the same (the same loop, the same partition
of any reduction), and ``cpu_kernel`` picks one by the amount of work. The wrappers are written
out, not made by a factory: Numba's on-disk cache keys a function by its qualified name, source
line and bytecode, not by its compile flags, so two builds of one Python function, or wrappers
made at one line of a factory, would load each other's cached code. ``CONVKERN_SERIAL_BELOW``
(read at import) changes the threshold: 0 runs every kernel on the pool.
"""
import os


def _threshold():
    value = os.environ.get("CONVKERN_SERIAL_BELOW", "")
    if not value:
        return 1 << 16        # elements: a serial pass over them costs about one worker wake-up
    if not value.isdigit():
        raise ValueError(f"CONVKERN_SERIAL_BELOW must be a non-negative integer (elements), got {value!r}")
    return int(value)


SERIAL_BELOW = _threshold()


def cpu_kernel(parallel, serial, work):
    """``serial`` for fewer than SERIAL_BELOW elements of ``work``, else ``parallel``."""
    return serial if work < SERIAL_BELOW else parallel
