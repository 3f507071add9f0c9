"""pytest-benchmark suite for cross-channel LRN: forward + backward through autograd, float32, CPU,
on the outputs of AlexNet's conv1 and conv2 (its two LRN layers), convkern next to PyTorch's
``local_response_norm`` (when installed) in the same run. Run with
``pytest bench/test_lrn.py --benchmark-only --benchmark-columns=min,median,max``; within each
group, the factor after each median is the speed-up of the fastest entry over the others.

AlexNet's LRN is k=2, n=5, alpha=1e-4, beta=0.75 in the paper's (TensorFlow's) form, which is
``F.lrn(x, depth_radius=2, bias=2, alpha=1e-4, beta=0.75)`` and PyTorch's
``local_response_norm(x, size=5, alpha=5e-4, beta=0.75, k=2)``.
"""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F

LAYERS = {"alexnet.conv1": (16, 96, 55, 55), "alexnet.conv2": (16, 256, 27, 27)}
ROUNDS = 15


def _operands(shape):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(shape, dtype=np.float32) * 20, 0)   # post-ReLU activations
    dy = rng.standard_normal(shape, dtype=np.float32)
    return x, dy


def _reference_forward(x):
    x = x.astype(np.float64)
    C = x.shape[1]
    sq = np.pad(x * x, ((0, 0), (2, 2), (0, 0), (0, 0)))
    return x / (2.0 + 1e-4 * sum(sq[:, i:i + C] for i in range(5))) ** 0.75


def _convkern_step(x, dy):
    xt = ck.tensor(x, requires_grad=True)

    def step():
        xt.grad = None
        y = F.lrn(xt, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
        y.backward(dy)
        return y.numpy(), xt.grad.numpy()
    return step


def _torch_step(x, dy):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    g = torch.tensor(dy)

    def step():
        xt.grad = None
        y = torch.nn.functional.local_response_norm(xt, 5, alpha=5e-4, beta=0.75, k=2.0)
        y.backward(g)
        return y.detach().numpy(), xt.grad.numpy()
    return step


@pytest.mark.parametrize("impl", ["convkern", "torch"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_lrn_forward_backward(benchmark, layer, impl):
    x, dy = _operands(LAYERS[layer])
    step = (_convkern_step if impl == "convkern" else _torch_step)(x, dy)
    benchmark.group = f"lrn fwd+bwd {layer} {LAYERS[layer]}"
    y, dx = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=2)
    np.testing.assert_allclose(y, _reference_forward(x), rtol=1e-5, atol=1e-6)
    assert np.isfinite(dx).all()
