"""Framework overhead of a training step: step time against the sum of its kernels' times.

    python bench/step_overhead.py [MODEL] [BATCH]      (default: lenet5 64)

Times SGD-with-momentum training steps of a reference CNN on random data, then runs the same
steps under cProfile and sums the time spent inside the CPU kernels: the ``*_cpu`` functions of
kernels/, whose own time is the compiled njit code (which cProfile does not slow down) or, for
``gemm.matmul_cpu``, NumPy's BLAS call (a ufunc, which cProfile does not list apart). The ratio
step / kernels is what issue 11's overhead target (<= 1.3x for a LeNet-5 step at batch 64)
measures. Run it on a quiet machine.
"""
import cProfile
import pstats
import sys
import time

from model_step import training_step


def main(model="lenet5", batch=64, steps=50):
    _, _, step = training_step("step_overhead", model, batch)
    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(steps):
        step()
    profile.disable()
    kernels = sum(own for (path, _, name), (_, _, own, _, _) in pstats.Stats(profile).stats.items()
                  if "/kernels/" in path and name.endswith("_cpu"))
    kernel_ms = kernels / steps * 1e3
    print(f"{model}, batch {batch}: step {step_ms:.2f} ms, kernels {kernel_ms:.2f} ms, "
          f"step / kernels = {step_ms / kernel_ms:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lenet5", int(sys.argv[2]) if len(sys.argv) > 2 else 64)
