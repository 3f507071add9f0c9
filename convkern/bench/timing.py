"""Timing shared by the benchmarks: the median of repeated calls, and the machine's GEMM rate."""
import statistics
import time

import numpy as np
from numba import cuda


def _sync(device):
    if device == "cuda":
        cuda.synchronize()


def time_call(fn, device, min_runs=3, min_seconds=0.3, max_runs=50, sync=None):
    """(first_call_seconds, median_seconds) of ``fn()``; ``sync()`` (default: Numba's
    ``cuda.synchronize()`` on cuda) waits for the device after each call."""
    sync = sync or (lambda: _sync(device))
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_seconds and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def measure_peak_gflops(device, n=2048):
    """GFLOP/s of a large float32 GEMM: NumPy/BLAS on CPU, convkern's tiled GEMM on CUDA."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    if device == "cpu":
        c = np.empty_like(a)
        _, t = time_call(lambda: np.matmul(a, b, out=c), device)
    else:
        from convkern.kernels.gemm import gemm
        da, db = cuda.to_device(a), cuda.to_device(b)
        dc = cuda.device_array_like(da)
        _, t = time_call(lambda: gemm(da, db, dc), device)
    return 2.0 * n ** 3 / t / 1e9
