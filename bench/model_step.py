"""What the bench scripts time: a reference CNN's training step on random data (forward,
cross-entropy, backward, SGD with momentum) and a median timer.

    from model_step import median_ms, training_step
"""
import time

import convkern as ck          # before NumPy: it sets OpenBLAS's thread timeout, read when NumPy loads
import convkern.functional as F
import numpy as np
from convkern import models, optim


def check_args(script, model, batch, input_size=None):
    """Exit with a message naming ``script`` unless the arguments name a reference CNN, a batch
    >= 1 and an input size (None or >= 1)."""
    if model not in models.REGISTRY:
        raise SystemExit(f"{script}: MODEL must be one of {', '.join(models.REGISTRY)}, got {model!r}")
    if batch < 1:
        raise SystemExit(f"{script}: BATCH must be a positive integer, got {batch}")
    if input_size is not None and input_size < 1:
        raise SystemExit(f"{script}: INPUT_SIZE must be a positive integer, got {input_size}")


def training_step(script, model, batch, input_size=None):
    """(net, x, step) for reference CNN ``model`` at ``batch`` (and ``input_size`` x ``input_size``
    instead of its own input), the arguments checked by ``check_args``."""
    check_args(script, model, batch, input_size)
    build, shape = models.REGISTRY[model]
    if input_size:
        shape = (shape[0], input_size, input_size)
    net = build()
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9, flat=True)
    x = ck.tensor(np.random.default_rng(0).random((batch,) + tuple(shape), dtype=np.float32))
    y = ck.tensor(np.random.default_rng(1).integers(0, 10, batch))

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net, x, step


def median_ms(fn, n, warmup=3):
    """Median milliseconds of ``n`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3
