"""pytest-benchmark suite for the conv kernels: every algorithm x pass on a few reference layers
(float32, CPU). Run with ``pytest bench/ --benchmark-only``; ``convkern bench`` is the full tool."""
import numpy as np
import pytest

from convkern.kernels.conv_registry import BY_NAME
from convkern.ops.conv import PASSES, conv_algorithms, launcher
from convkern.bench import _geometry, _Operands
from convkern.suites import load_suite

LAYERS = ["lenet5.c1", "cifar10.conv1", "cifar10.conv2", "alexnet.conv3", "resnet34.layer2"]
SUITE = {layer["name"]: layer for layer in load_suite("reference")}


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("algorithm", conv_algorithms("cpu") + ["auto"])
@pytest.mark.parametrize("layer", LAYERS)
def test_conv(benchmark, layer, algorithm, pass_):
    g = _geometry(SUITE[layer])
    if algorithm != "auto" and not BY_NAME[algorithm].supports(g, "cpu", pass_)[0]:
        pytest.skip(BY_NAME[algorithm].supports(g, "cpu", pass_)[1])
    ops = _Operands(g, np.float32, "cpu")
    out = np.empty(ops.out_shape(pass_), np.float32)
    fn = launcher(algorithm, g, "cpu", pass_)
    a, b = ops.args(pass_)
    fn(a, b, out, g)                      # JIT compile outside the timing
    benchmark.extra_info["gflops_per_call"] = g.flops / 1e9
    benchmark(fn, a, b, out, g)
    err = np.max(np.abs(out - ops.ref(pass_))) / np.max(np.abs(ops.ref(pass_)))
    assert err < 1e-3
