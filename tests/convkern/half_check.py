"""One check for an op on float16 tensors: its float16 forward and backward against the same op in
float64 on the same float16 values (upcast), with float16's tolerance (tests/reference.py).

    check_half(lambda x: F.relu(x), [x16], device)

``fn`` takes Tensors and returns one Tensor; the output gradient is a fixed random float16 array,
given to both runs. Returns the float16 run's output and input gradients (host arrays) for
further checks."""
import numpy as np

import convkern as ck
from tests.reference import tolerance


def check_half(fn, arrays, device, rtol=None, atol=None, seed=0):
    """Check ``fn`` on float16 against float64; ``arrays`` are float16 NumPy arrays (all get
    gradients). ``rtol``/``atol`` default to ``tolerance(np.float16)``; pass larger ones, with
    the reason, where the op chains several roundings."""
    default_rtol, default_atol = tolerance(np.float16)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    runs = []
    for dtype in (np.float16, np.float64):
        inputs = [ck.tensor(a.astype(dtype), requires_grad=True, device=device) for a in arrays]
        y = fn(*inputs)
        assert y.dtype == dtype and y.device == device
        g = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float16).astype(dtype)
        y.backward(ck.tensor(g, device=device))
        for t in inputs:
            assert t.grad.dtype == dtype and t.grad.device == device
        runs.append((y.numpy(), [t.grad.numpy() for t in inputs]))
    (y16, g16), (y64, g64) = runs
    np.testing.assert_allclose(y16.astype(np.float64), y64, rtol=rtol, atol=atol)
    for a, b in zip(g16, g64):
        np.testing.assert_allclose(a.astype(np.float64), b, rtol=rtol, atol=atol)
    return y16, g16
