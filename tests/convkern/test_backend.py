"""Backend selection: cpu always, cuda on a GPU or under the simulator, a clear error otherwise."""
import os
import subprocess
import sys

import numpy as np
import pytest

import convkern as ck
from convkern import backend


def test_cuda_path_is_available_in_the_test_session():
    assert ck.cuda_available()
    t = ck.tensor(np.arange(4.0), device="cuda")
    assert t.device == "cuda" and backend.device_of(t.data) == "cuda"
    np.testing.assert_array_equal(t.numpy(), np.arange(4.0))


def test_cuda_without_gpu_or_simulator_is_a_clear_error():
    if backend.cuda_kind() == "real":
        pytest.skip("this machine has a real GPU, so device='cuda' is legitimately available")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("import numpy as np, convkern as ck\n"
            "try:\n    ck.tensor(np.ones(2), device='cuda')\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERR device='cuda' needs an NVIDIA GPU" in out.stdout, out.stdout + out.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in out.stdout


def test_zeros_and_full_on_both_devices(device):
    z = backend.zeros((2, 3), np.float32, device)
    f = backend.full((5,), 2.5, np.float64, device)
    np.testing.assert_array_equal(backend.to_numpy(z), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(backend.to_numpy(f), np.full(5, 2.5))
