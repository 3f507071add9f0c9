"""pytest-benchmark suite for pooling: ``max_pool2d(3, stride=2, return_indices=True)`` and
``avg_pool2d(3, stride=2)``, forward + backward through each framework's autograd, float32 CPU,
on AlexNet's conv1 and conv2 outputs (batch 16); PyTorch CPU runs in the same session when
installed. Run with ``pytest bench/test_pool.py --benchmark-only``; results group by op and shape."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F

SHAPES = {"alexnet.conv1": (16, 96, 55, 55), "alexnet.conv2": (16, 256, 27, 27)}
OPS = ["max_pool2d", "avg_pool2d"]


def convkern_step(op, x, dy):
    xt = ck.tensor(x, requires_grad=True)

    def step():
        xt.grad = None
        y = F.max_pool2d(xt, 3, 2, return_indices=True)[0] if op == "max_pool2d" else F.avg_pool2d(xt, 3, 2)
        y.backward(dy)
        return xt.grad.numpy()
    return step


def pytorch_step(op, x, dy):
    torch = pytest.importorskip("torch")
    xt, dy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def step():
        xt.grad = None
        if op == "max_pool2d":
            y = torch.nn.functional.max_pool2d(xt, 3, 2, return_indices=True)[0]
        else:
            y = torch.nn.functional.avg_pool2d(xt, 3, 2)
        y.backward(dy)
        return xt.grad.numpy()
    return step


@pytest.mark.parametrize("framework", ["convkern", "pytorch"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layer", list(SHAPES))
def test_pool_fwd_bwd(benchmark, layer, op, framework):
    shape = SHAPES[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    P = (shape[2] - 3) // 2 + 1
    dy = rng.standard_normal(shape[:2] + (P, P), dtype=np.float32)
    step = (convkern_step if framework == "convkern" else pytorch_step)(op, x, dy)
    benchmark.group = f"{op} fwd+bwd {layer} {'x'.join(map(str, shape))}"
    dx = step()                           # JIT compile outside the timing
    benchmark(step)
    # no padding: both ops hand every output's gradient to the input exactly once in total
    assert np.isclose(dx.sum(dtype=np.float64), dy.sum(dtype=np.float64), rtol=1e-3, atol=1e-2)
