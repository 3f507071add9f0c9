"""Checks of convkern.distributed that need a real world of two: run by test_distributed.py as
``mpiexec -n 2 python mpi_checks.py``. Each check asserts on every rank and prints "PASS name rank";
a failing assertion raises, and the uncaught exception aborts both ranks (non-zero exit)."""
import hashlib

import numpy as np

import convkern as ck
from convkern import distributed as dist
from convkern import nn
from convkern.kernels.cuda_util import is_device_array

ODD_SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 3, 5)]
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.uint64, np.complex64,
          np.complex128]


def passed(name):
    print(f"PASS {name} {dist.rank()}", flush=True)


def local_values(shape, dtype, r):
    """Small integers (exact in every dtype, also when summed) that differ between ranks."""
    n = int(np.prod(shape, dtype=np.int64))
    return ((np.arange(n) % 7 + 3 * r + 1).reshape(shape)).astype(dtype)


def check_world():
    assert dist.size() == 2 and dist.rank() in (0, 1) and dist.where() == f"rank {dist.rank()} of 2"
    table = dist.processes()
    assert len(table) == 2 and len({pid for pid, _ in table}) == 2
    assert dist.broadcast_object({"from": dist.rank()}, root=1) == {"from": 1}
    dist.barrier()
    passed("world")


def check_allreduce_host():
    r = dist.rank()
    for dtype in DTYPES:
        for shape in ODD_SHAPES:
            expected = local_values(shape, dtype, 0) + local_values(shape, dtype, 1)
            total = dist.allreduce(local_values(shape, dtype, r))
            assert total.dtype == np.dtype(dtype) and total.shape == shape, (dtype, shape)
            np.testing.assert_array_equal(total, expected)
            if np.dtype(dtype).kind in "fc":
                np.testing.assert_array_equal(dist.allreduce(local_values(shape, dtype, r), op="mean"),
                                              expected / np.dtype(dtype).type(2))
    strided = local_values((4, 6), np.float32, r)[:, ::2]
    np.testing.assert_array_equal(dist.allreduce(strided), local_values((4, 6), np.float32, 0)[:, ::2]
                                  + local_values((4, 6), np.float32, 1)[:, ::2])
    assert dist.allreduce(3 + r).item() == 7
    t = dist.allreduce(ck.tensor(local_values((5,), np.float64, r)), op="mean")
    assert isinstance(t, ck.Tensor) and t.device == "cpu"
    both = local_values((5,), np.float64, 0) + local_values((5,), np.float64, 1)
    np.testing.assert_array_equal(t.numpy(), both / 2)
    for bad, exc, text in ((lambda: dist.allreduce(np.ones(3), op="max"), ValueError, "op must be 'sum' or 'mean'"),
                           (lambda: dist.allreduce(np.ones(3, np.int64), op="mean"), TypeError, "needs a floating"),
                           (lambda: dist.allreduce(np.ones(3, bool)), TypeError, "native numeric dtype")):
        try:
            bad()
        except exc as e:
            assert text in str(e), e
        else:
            raise AssertionError(f"no {exc.__name__} for {text}")
    passed("allreduce_host")


def check_allreduce_device():
    r = dist.rank()
    for shape in [(0,), (1,), (7,), (3, 5)]:
        for dtype in (np.float32, np.float64, np.int64):
            device = ck.tensor(local_values(shape, dtype, r), device="cuda").data
            total = dist.allreduce(device)
            assert is_device_array(total) and total.shape == shape and total.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(total.copy_to_host(),
                                          local_values(shape, dtype, 0) + local_values(shape, dtype, 1))
    mean = dist.allreduce(ck.tensor(local_values((6,), np.float32, r), device="cuda"), op="mean")
    assert mean.device == "cuda"
    np.testing.assert_array_equal(mean.numpy(), (local_values((6,), np.float32, 0)
                                                 + local_values((6,), np.float32, 1)) / np.float32(2))
    passed("allreduce_device")


def model_digest(model):
    h = hashlib.sha256()
    for _, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()


def small_net(device="cpu"):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3)).to(device)


def gather_text(text):
    """Every rank's ``text``, in rank order."""
    return [dist.broadcast_object(text, root=k) for k in range(dist.size())]


def check_broadcast(device):
    ck.manual_seed(100 + dist.rank())  # every rank starts from different weights and buffers
    net = small_net(device)
    net[1].running_mean.data = ck.tensor(np.full(4, dist.rank(), np.float32), device=device).data
    net[1].num_batches_tracked.data = np.array(5 + dist.rank(), np.int64)
    before = gather_text(model_digest(net))
    assert before[0] != before[1]
    dist.broadcast_parameters(net, root=1)
    assert gather_text(model_digest(net)) == [before[1], before[1]]
    assert net[1].num_batches_tracked.numpy() == 6
    other = nn.Sequential(nn.Linear(3, 4 if dist.rank() == 0 else 5))
    try:
        dist.broadcast_parameters(other)
    except ValueError as e:
        assert "rank 1's tensors differ from rank 0's: ('0.weight', (5, 3), 'float32') vs ('0.weight', (4, 3)" \
            in str(e), e
    else:
        raise AssertionError("broadcast_parameters accepted different models")
    passed(f"broadcast_{device}")


def check_optimizer(device):
    """Gradients become their mean over ranks, bucket by bucket; a gradient present on one rank
    only counts as zero on the other; a parameter with no gradient anywhere is left alone."""
    r = dist.rank()
    shapes = [(5, 3), (7,), (2,), (40,), (4,)]
    ck.manual_seed(3)
    params = [nn.Parameter(ck.tensor(np.random.default_rng(i).random(s), device=device)) for i, s in
              enumerate(shapes)]
    grads = [local_values(s, np.float64, r) * (i + 1) for i, s in enumerate(shapes)]
    start = [p.numpy().copy() for p in params]
    opt = dist.DistributedOptimizer(ck.optim.SGD(params, lr=1.0), bucket_bytes=64)  # forces several buckets
    for i, (p, g) in enumerate(zip(params, grads)):
        if (i == 2 and r == 1) or i == 4:
            continue
        p.grad = ck.tensor(g.copy(), device=device)  # synchronize() overwrites the gradient in place
    opt.step()
    for i, (p, g) in enumerate(zip(params, grads)):
        other = local_values(shapes[i], np.float64, 1 - r) * (i + 1)
        if i == 4:
            assert p.grad is None
            np.testing.assert_array_equal(p.numpy(), start[i])
            continue
        mine, theirs = (g, other) if i != 2 else ((g, 0 * other) if r == 0 else (0 * g, other))
        mean = (mine + theirs) / 2
        np.testing.assert_array_equal(p.grad.numpy(), mean)
        np.testing.assert_array_equal(p.numpy(), start[i] - mean)
    assert opt.allreduce_seconds > 0 and opt.param_groups is opt.optimizer.param_groups
    passed(f"optimizer_{device}")


def check_sync_batchnorm():
    """Two ranks' SyncBatchNorm on halves of a batch = one BatchNorm on the whole batch."""
    r = dist.rank()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 3, 4, 5)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    full = nn.BatchNorm2d(3, dtype=np.float64)
    full.weight.data[:] = [1.5, -0.5, 2.0]
    xt = ck.tensor(x, requires_grad=True)
    y = full(xt)
    y.backward(dy)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3, dtype=np.float64)))
    sync = model[0]
    assert type(sync) is nn.SyncBatchNorm
    sync.weight.data[:] = [1.5, -0.5, 2.0]
    mine = ck.tensor(x[r::2], requires_grad=True)
    ys = model(mine)
    ys.backward(dy[r::2])
    np.testing.assert_allclose(ys.numpy(), y.numpy()[r::2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mine.grad.numpy(), xt.grad.numpy()[r::2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dist.allreduce(sync.weight.grad.numpy()), full.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dist.allreduce(sync.bias.grad.numpy()), full.bias.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(sync.running_mean.numpy(), full.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(sync.running_var.numpy(), full.running_var.numpy(), rtol=1e-12)
    model.eval()
    np.testing.assert_allclose(model(x[r::2]).numpy(), full.eval()(x).numpy()[r::2], rtol=1e-12, atol=1e-12)
    passed("sync_batchnorm")


def main():
    dist.init()
    check_world()
    check_allreduce_host()
    check_broadcast("cpu")
    check_optimizer("cpu")
    check_sync_batchnorm()
    if ck.cuda_available():  # the simulator in CI: device arrays reach MPI through host buffers
        check_allreduce_device()
        check_broadcast("cuda")
        check_optimizer("cuda")
    passed("all")


if __name__ == "__main__":
    main()
