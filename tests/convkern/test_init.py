"""What ``import convkern`` sets up for the process: malloc keeps freed activations (no page fault
per 4 KiB of each reallocated array), unless CONVKERN_MALLOC_TUNING=0."""
import os
import subprocess
import sys

import pytest

PAGE_FAULTS = """
import resource
import numpy as np
import convkern  # noqa: F401
def steps():
    for _ in range(10):     # a training step's activations: 27 MiB written while alive, then freed
        live = []
        for mib in (1, 3, 2, 6, 1, 4, 8, 2):
            a = np.empty(mib << 18, np.float32)
            a.fill(1.0)
            live.append(a)
        del live
steps()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(tuning):
    env = dict(os.environ, CONVKERN_MALLOC_TUNING=tuning)
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the malloc tuning is glibc's mallopt")
def test_freed_activations_are_reused_without_page_faults():
    untuned = _page_faults("0")     # 10 steps of 6912 pages: tens of thousands of faults by default
    if untuned < 10000:
        pytest.skip(f"this malloc reuses freed memory by itself ({untuned} page faults untuned)")
    assert _page_faults("1") < 2000
