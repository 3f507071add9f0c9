"""The CUDA runtime (convkern.cuda): the caching allocator and its counters, the lazy device-side
checks, host transfers counted, and CUDA graphs (real GPU only; a clear refusal under the
simulator). The counters mean the same under the simulator, so the suite checks them there."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern import cuda as runtime
from convkern import models, nn, optim
from convkern.kernels.cuda_util import SIMULATOR

real_gpu = pytest.mark.skipif(SIMULATOR, reason="needs a real GPU: the simulator cannot capture CUDA graphs")


def delta(before, after, *keys):
    return {k: after[k] - before[k] for k in keys}


@pytest.mark.parametrize("nbytes, size", [(0, 512), (1, 512), (512, 512), (513, 1024), (1 << 20, 1 << 20),
                                          ((1 << 20) + 1, 1310720), (1310720, 1310720), (3 << 20, 3 << 20),
                                          ((3 << 20) + 1, 3670016)])
def test_size_classes(nbytes, size):
    assert runtime.size_class(nbytes) == size
    assert size >= nbytes
    if nbytes > runtime.SMALL_SIZE:                      # large requests waste under 25 %
        assert (size - nbytes) / size < 0.25


def test_freed_blocks_are_reused_without_the_driver():
    runtime.empty_cache()                               # no idle block left over from other tests
    a = runtime.empty((1000,), np.float32)
    before = runtime.memory_stats()
    del a
    b = runtime.empty((1000,), np.float32)              # same size class: served from the cache
    c = runtime.empty((250, 4), np.float32)             # no idle block of that class left: the driver
    after = runtime.memory_stats()
    assert delta(before, after, "alloc_calls", "cache_hits", "requests") == {"alloc_calls": 1, "cache_hits": 1,
                                                                             "requests": 2}
    assert after["bytes_in_use"] == before["bytes_in_use"] + 4096       # a (4 KiB) went, b and c came
    assert after["peak_bytes"] >= after["bytes_in_use"]
    del b, c


def test_a_view_keeps_its_block_in_use():
    a = runtime.empty((4096,), np.float64)
    view = a[10:20]
    in_use = runtime.memory_stats()["bytes_in_use"]
    del a
    assert runtime.memory_stats()["bytes_in_use"] == in_use
    view.copy_to_device(np.arange(10.0))
    np.testing.assert_array_equal(runtime.to_host(view), np.arange(10.0))
    del view
    assert runtime.memory_stats()["bytes_in_use"] == in_use - 4096 * 8


def test_empty_cache_returns_idle_blocks_to_the_driver():
    a = runtime.empty((3000,), np.float32)
    del a
    before = runtime.memory_stats()
    assert before["bytes_cached"] > 0
    runtime.empty_cache()
    after = runtime.memory_stats()
    assert after["bytes_cached"] == 0 and after["free_calls"] > before["free_calls"]
    assert after["bytes_in_use"] == before["bytes_in_use"]


def test_host_reads_are_counted():
    x = ck.tensor(np.arange(6, dtype=np.float32), device="cuda")
    before = runtime.memory_stats()["host_transfers"]
    np.testing.assert_array_equal(x.numpy(), np.arange(6))
    assert (x * 2).sum().item() == 30
    assert runtime.memory_stats()["host_transfers"] == before + 2


def test_upload_into_checks_the_destination():
    out = runtime.empty((3,), np.float32)
    runtime.upload(np.ones(3, np.float32), out=out)
    np.testing.assert_array_equal(runtime.to_host(out), np.ones(3))
    with pytest.raises(ValueError, match=r"upload: out is \(3,\) float32, the host array \(4,\) float32"):
        runtime.upload(np.ones(4, np.float32), out=out)


def test_a_bad_cuda_label_raises_at_the_next_host_read():
    logits = ck.tensor(np.zeros((3, 4), np.float32), device="cuda", requires_grad=True)
    target = ck.tensor(np.array([1, 9, 2]), device="cuda")
    loss = F.cross_entropy(logits, target)              # no host read: nothing is raised yet
    loss.backward()
    with pytest.raises(runtime.DeviceCheckError, match=r"cross_entropy: target values must be class indices in "
                                                       r"\[0, 3\] \(C = 4\) or ignore_index=-100.*first host read"):
        loss.item()
    assert isinstance(runtime.DeviceCheckError("x"), ValueError)
    assert np.isnan(loss.item())                        # reported once; the poisoned loss stays NaN


def test_a_bad_unpool_index_raises_at_the_next_host_read():
    """max_unpool2d checks its indices on the device: the call and its backward return at once,
    the next host read names the kernel that saw the bad index, and later reads are clean."""
    x = ck.tensor(np.ones((1, 1, 2, 2), np.float32), device="cuda", requires_grad=True)
    indices = ck.tensor(np.array([[[[0, 3], [16, 5]]]]), device="cuda")       # 16 is past the 4x4 plane
    before = runtime.memory_stats()["host_transfers"]
    y = F.max_unpool2d(x, indices, 2)
    assert runtime.memory_stats()["host_transfers"] == before              # no flag read in the call
    with pytest.raises(runtime.DeviceCheckError, match=r"maxunpool2d_fwd: indices must lie in \[0, 16\).*"
                                                       r"first host read"):
        y.numpy()
    y.sum().backward()
    with pytest.raises(runtime.DeviceCheckError, match=r"maxunpool2d_bwd: indices must lie in \[0, 16\)"):
        x.grad.numpy()
    good = F.max_unpool2d(x, ck.tensor(np.array([[[[0, 3], [12, 15]]]]), device="cuda"), 2)
    np.testing.assert_array_equal(good.numpy().ravel()[[0, 3, 12, 15]], 1.0)


def test_cross_entropy_mean_counts_rows_on_the_device():
    x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    target = np.array([0, -100, 1])
    got = F.cross_entropy(ck.tensor(x, device="cuda"), ck.tensor(target, device="cuda")).item()
    want = (np.log1p(np.exp(-2.0)) + np.log(2.0)) / 2
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _lenet_like():
    """LeNet-5's layers (5x5 convs, tanh, 2x2 average pools, three linear layers) at a size the
    simulator runs in seconds; a real GPU runs LeNet-5 itself."""
    if not SIMULATOR:
        return models.lenet5(), (8, 1, 32, 32)
    return nn.Sequential(nn.Conv2d(1, 2, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(2, 3, 3), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 4)), (2, 1, 16, 16)


@pytest.mark.parametrize("make_optimizer, warm_steps", [(lambda p: optim.SGD(p, lr=0.1), 1),
                                                         (lambda p: optim.Adam(p, lr=1e-3), 2)], ids=["sgd", "adam"])
def test_training_steps_allocate_nothing_and_read_nothing_after_warming_up(make_optimizer, warm_steps):
    """After the first step no step calls the driver's allocator or copies to the host (Adam
    creates its state in step 1 from blocks the backward pass had freed, so its step 2 still
    allocates those once). Gradients are dropped before the forward pass, as convkern train
    does: dropped after it, the last step's gradients stay alive through the forward and the
    second step needs a few more blocks."""
    ck.manual_seed(0)
    net, shape = _lenet_like()
    net = net.to("cuda")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.algorithm = "im2col"
    opt = make_optimizer(net.parameters())
    rng = np.random.default_rng(0)
    images = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, 4, shape[0])

    def step():
        opt.zero_grad()
        logits = net(ck.tensor(images, device="cuda"))
        loss = F.cross_entropy(logits, ck.tensor(labels, device="cuda"))
        loss.backward()
        opt.step()
    for _ in range(warm_steps):
        step()
    before = runtime.memory_stats()
    step()
    step()
    after = runtime.memory_stats()
    assert delta(before, after, "alloc_calls", "host_transfers") == {"alloc_calls": 0, "host_transfers": 0}
    assert after["cache_hits"] > before["cache_hits"]


@pytest.mark.skipif(not SIMULATOR, reason="checks the refusal under the simulator")
def test_capture_refuses_under_the_simulator():
    with pytest.raises(RuntimeError, match="convkern.cuda.capture: CUDA graphs need a real GPU"):
        runtime.capture(lambda: None)


@real_gpu
def test_caching_memory_manager_serves_numba_allocations():
    from numba import cuda
    before = runtime.memory_stats()["requests"]
    cuda.device_array(1000, np.float32)
    assert runtime.memory_stats()["requests"] == before + 1


@real_gpu
def test_a_replayed_graph_repeats_the_captured_step():
    x = ck.tensor(np.arange(8, dtype=np.float32), device="cuda")

    def step():
        return (x * 3.0 + 1.0).sum()
    step()                                              # warm-up: kernels compiled, blocks cached
    graph = runtime.capture(step)
    (total,) = (graph.outputs,)
    runtime.upload(np.ones(8, np.float32), out=x.data)
    graph.replay()
    assert total.item() == 32.0
    runtime.upload(np.full(8, 2.0, np.float32), out=x.data)
    graph.replay()
    assert total.item() == 56.0
    graph.close()
    with pytest.raises(RuntimeError, match="the graph was closed"):
        graph.replay()


@real_gpu
def test_host_reads_are_refused_while_capturing():
    x = ck.tensor(np.ones(4, np.float32), device="cuda")
    (x * 2.0).sum()
    with pytest.raises(RuntimeError, match="called while a CUDA graph is being captured"):
        runtime.capture(lambda: (x * 2.0).sum().item())
