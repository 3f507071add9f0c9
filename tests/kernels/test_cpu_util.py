"""The serial and thread-pool builds of the small-array CPU kernels compute the same bits, and
``cpu_kernel`` picks between them by the amount of work."""
import os
import subprocess
import sys

import numpy as np
import pytest

from convkern.kernels import activation, cpu_util, elementwise, optim, softmax


def test_cpu_kernel_picks_serial_below_the_threshold():
    assert cpu_util.cpu_kernel("pool", "serial", cpu_util.SERIAL_BELOW - 1) == "serial"
    assert cpu_util.cpu_kernel("pool", "serial", cpu_util.SERIAL_BELOW) == "pool"


def test_threshold_from_the_environment():
    code = "from convkern.kernels import cpu_util; print(cpu_util.SERIAL_BELOW)"
    env = dict(os.environ, CONVKERN_SERIAL_BELOW="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    env["CONVKERN_SERIAL_BELOW"] = "many"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "CONVKERN_SERIAL_BELOW must be a non-negative integer" in bad.stderr


def _ops(rng, dtype):
    """name -> function(arrays) running one op in place on fresh copies of fixed inputs."""
    a, b = (rng.uniform(0.5, 2.0, (4, 3, 50)).astype(dtype) for _ in range(2))
    bias = rng.uniform(-1, 1, 3).astype(dtype)
    logits, labels = rng.standard_normal((40, 7)).astype(dtype), rng.integers(0, 7, 40)

    def loss():
        acc = np.float32 if dtype == np.float16 else dtype
        out = [np.empty(40, acc), np.empty((40, 2), acc), np.empty(40, acc), np.empty((40, 7), dtype)]
        softmax.cross_entropy_fwd(logits, labels, -100, out[0], out[1], out[2])
        softmax.cross_entropy_bwd(logits, out[1], labels, -100, np.ones(1, acc), 0.5, out[3])
        return out

    def sgd():
        p, buf = a.copy(), b.copy()
        optim.sgd_step(p.reshape(-1), b.reshape(-1), buf.reshape(-1), 0.1, 0.9, 0.1, 0.01, False, False)
        return [p, buf]

    def adam():
        p, m, v = a.copy(), b.copy(), (b * b).copy()
        optim.adam_step(p.reshape(-1), b.reshape(-1), m.reshape(-1), v.reshape(-1), 1e-3, 0.9, 0.999, 1e-8, 0.01, 3)
        return [p, m, v]

    def out_of(fn):
        def run():
            out = np.empty_like(a)
            fn(out)
            return [out]
        return run

    def in_place(fn):
        def run():
            y = a.copy()
            fn(y)
            return [y]
        return run

    def total(scale):
        def run():
            out = np.empty(1, dtype)
            elementwise.sum_all(np.tile(a, 200), out, scale)       # 120 000 values: several chunks
            return [out]
        return run

    def grads(op):
        def run():
            dx, db = np.empty_like(a), np.empty(3, dtype)
            activation.activation_bias_grad(op, np.tanh(a).astype(dtype), b, dx, db)
            return [dx, db]
        return run

    def bias_grad():
        db = np.empty(3, dtype)
        elementwise.bias_grad_nchw(a.reshape(4, 3, 5, 10), db)
        return [db]

    return {
        "binary": out_of(lambda o: elementwise.binary("div", a, b, o)),
        "scalar": out_of(lambda o: elementwise.scalar("pow", a, 1.5, o)),
        "unary": out_of(lambda o: elementwise.unary("log", a, o)),
        "fill": out_of(lambda o: elementwise.fill(o, 0.3)),
        "broadcast_scalar": out_of(lambda o: elementwise.broadcast_scalar(a.reshape(-1)[:1], o)),
        "cast": out_of(lambda o: elementwise.cast(a.astype(np.float64), o)),
        "sum_all": total(0.25),
        "bias_add_nchw": in_place(lambda y: elementwise.bias_add_nchw(y.reshape(4, 3, 5, 10), bias)),
        "bias_grad_nchw": bias_grad,
        "activation_fwd": out_of(lambda o: activation.activation_fwd("tanh", a, o)),
        "activation_bwd": out_of(lambda o: activation.activation_bwd("sigmoid", a / 4, b, o)),
        "bias_activation": in_place(lambda y: activation.bias_activation("tanh", y, bias)),
        "activation_bias_grad": grads("tanh"),
        "cross_entropy": loss,
        "sgd_step": sgd,
        "adam_step": adam,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("name", sorted(_ops(np.random.default_rng(0), np.float32)))
def test_serial_and_pool_builds_agree_bitwise(name, dtype, monkeypatch):
    runs = []
    for threshold in (0, 1 << 40):                       # everything on the pool; everything serial
        monkeypatch.setattr(cpu_util, "SERIAL_BELOW", threshold)
        runs.append(_ops(np.random.default_rng(0), dtype)[name]())
    for pool, serial in zip(*runs):
        assert np.isfinite(pool.astype(np.float64)).all()
        np.testing.assert_array_equal(pool, serial)
