"""GF/s of the CPU GEMM micro-kernel alone (kernels/simd.py), against NumPy's BLAS SGEMM.

    python bench/micro_kernel.py [float32|float64]

Every thread multiplies its own packed A (64 rows x 256 steps, L2-resident) by its own B
micro-panels (256 x 8*NR, one in L1 at a time) into a 64 x 8*NR tile, 400 times: the loop that
the implicit GEMMs spend their time in, without gathering or packing. Run it on a quiet machine.
"""
import sys
import time

import numba
import numpy as np
from numba import njit, prange

from convkern.kernels import simd

ROWS, PANELS, KC, REPS = 64, 8, 256, 400


@njit(parallel=True, cache=True)
def _run(ap, bp, ct, reps):
    for t in prange(ct.shape[0]):
        for _ in range(reps):
            simd.panel_gemm(KC, ap[t], 0, KC * simd.MR, bp[t], PANELS, ct[t])


def main(dtype="float32"):
    if dtype not in ("float32", "float64"):
        raise SystemExit(f"micro_kernel: dtype must be float32 or float64, got {dtype!r}")
    dt = np.dtype(dtype)
    threads = numba.get_num_threads()
    nr = simd.panel_width(dt)
    rng = np.random.default_rng(0)
    ap = np.stack([simd.pack_rows(rng.standard_normal((1, ROWS, KC)).astype(dt)) for _ in range(threads)])
    bp = rng.standard_normal((threads, PANELS * KC * nr)).astype(dt)
    ct = np.zeros((threads, ROWS, PANELS * nr), dt)
    _run(ap, bp, ct, 1)
    best = min(_timed(_run, ap, bp, ct) for _ in range(5))
    flops = 2 * threads * ROWS * PANELS * nr * KC * REPS
    a = rng.standard_normal((2048, 2048)).astype(dt)
    a @ a
    blas = min(_timed(np.matmul, a, a) for _ in range(3))
    print(f"{dtype}: micro-kernel {flops / best / 1e9:.1f} GF/s on {threads} threads "
          f"(MR {simd.MR}, NR {nr}, {simd.VECTOR_BYTES}-byte vectors); NumPy GEMM 2048^2 "
          f"{2 * 2048 ** 3 / blas / 1e9:.1f} GF/s")


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args, *((REPS,) if fn is _run else ()))
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "float32")
