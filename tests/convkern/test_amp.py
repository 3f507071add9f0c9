"""convkern.amp: autocast's casting rules, GradScaler's dynamic loss scaling (skip, backoff and
growth against hand-computed scales, call order, state dicts) and short mixed-precision training
runs: LeNet-5 on the CPU through ``convkern train --amp`` and a scaled-down LeNet on the CUDA path."""
import threading

import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern import amp, nn, optim, train
from convkern.kernels.cuda_util import SIMULATOR

H, S, D = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def randn(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# float16 softmax and cross-entropy through the ops (float32 math), without autocast
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cross_entropy_on_float16_logits(device, reduction):
    """The loss comes back float16 (PyTorch's dtype rule), computed in float32: equal to the
    float64 loss of the same float16 logits rounded once; the gradient is float16."""
    x = randn(5, 7, dtype=np.float16, seed=3) * np.float16(4)
    target = np.array([0, 6, 3, -100, 2])
    xt = ck.tensor(x, requires_grad=True, device=device)
    loss = F.cross_entropy(xt, ck.tensor(target, device=device), reduction=reduction)
    x64 = ck.tensor(x.astype(np.float64), requires_grad=True)
    ref = F.cross_entropy(x64, target, reduction=reduction)
    assert loss.dtype == H
    np.testing.assert_allclose(loss.numpy().astype(np.float64), ref.numpy(), rtol=1e-3, atol=1e-3)
    g = np.linspace(0.5, 1.5, 5).astype(np.float16) if reduction == "none" else None
    loss.backward(None if g is None else ck.tensor(g, device=device))
    ref.backward(None if g is None else g.astype(np.float64))
    assert xt.grad.dtype == H
    np.testing.assert_allclose(xt.grad.numpy().astype(np.float64), x64.grad.numpy(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_softmax_on_float16(op, device):
    x = randn(3, 4, 5, dtype=np.float16, seed=4) * np.float16(3)
    g = randn(3, 4, 5, dtype=np.float16, seed=5)
    xt = ck.tensor(x, requires_grad=True, device=device)
    y = op(xt, 1)
    y.backward(ck.tensor(g, device=device))
    x64 = ck.tensor(x.astype(np.float64), requires_grad=True)
    y64 = op(x64, 1)
    y64.backward(g.astype(np.float64))
    assert y.dtype == H and xt.grad.dtype == H
    np.testing.assert_allclose(y.numpy().astype(np.float64), y64.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(xt.grad.numpy().astype(np.float64), x64.grad.numpy(), rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# autocast
# ---------------------------------------------------------------------------------------------

def test_outside_autocast_nothing_is_cast():
    assert F.linear(randn(2, 3), randn(4, 3)).dtype == S
    with pytest.raises(TypeError, match="has dtype float32 but the tensor has dtype float16"):
        ck.tensor(randn(3, dtype=np.float16)) + ck.tensor(randn(3))
    with amp.autocast(enabled=False):
        assert F.linear(randn(2, 3), randn(4, 3)).dtype == S


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_conv_and_linear_run_in_float16_and_float32_parameters_get_float32_gradients(device):
    x = ck.tensor(randn(2, 3, 6, 6), requires_grad=True, device=device)
    w = ck.tensor(randn(4, 3, 3, 3, seed=1) * 0.3, requires_grad=True, device=device)
    b = ck.tensor(randn(4, seed=2), requires_grad=True, device=device)
    lw = ck.tensor(randn(5, 4 * 4 * 4, seed=3) * 0.1, requires_grad=True, device=device)
    with amp.autocast():
        y = F.conv2d(x, w, b)
        z = F.linear(y.reshape(2, -1), lw)
        loss = F.cross_entropy(z, ck.tensor(np.array([1, 3]), device=device))
    assert (y.dtype, z.dtype, loss.dtype) == (H, H, S)
    loss.backward()
    for t in (x, w, b, lw):
        assert t.grad.dtype == S and t.grad.device == device
    # the same graph in float64 from the float16-rounded values: float16 math, float16 tolerance
    x64, w64, b64, lw64 = (ck.tensor(t.numpy().astype(np.float16).astype(np.float64), requires_grad=True)
                           for t in (x, w, b, lw))
    ref = F.cross_entropy(F.linear(F.conv2d(x64, w64, b64).reshape(2, -1), lw64), np.array([1, 3]))
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-2)
    for mine, theirs in ((x, x64), (w, w64), (b, b64), (lw, lw64)):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=2e-2,
                                   atol=2e-2 * np.abs(theirs.grad.numpy()).max())


def test_softmax_log_softmax_and_cross_entropy_run_in_float32():
    x = ck.tensor(randn(3, 5, dtype=np.float16), requires_grad=True)
    with amp.autocast():
        outs = [F.softmax(x, 1), F.log_softmax(x, -1), F.cross_entropy(x, np.array([0, 4, 2]))]
    assert [o.dtype for o in outs] == [S, S, S]
    outs[2].backward()
    assert x.grad.dtype == H                    # the gradient comes back through the cast
    assert F.softmax(x, 1).dtype == H           # outside: float16 in, float16 out


def test_binary_ops_with_float16_and_float32_promote_to_float32():
    a = ck.tensor(randn(4, dtype=np.float16), requires_grad=True)
    b = ck.tensor(randn(4, seed=1), requires_grad=True)
    with amp.autocast():
        outs = [a + b, b * a, a - b, b / a]
        same = a * a
    assert [o.dtype for o in outs] == [S] * 4 and same.dtype == H
    outs[0].sum().backward()
    assert a.grad.dtype == H and b.grad.dtype == S
    np.testing.assert_array_equal(outs[0].numpy(), a.numpy().astype(np.float32) + b.numpy())


def test_float64_is_never_cast_and_other_ops_keep_their_input_dtype():
    x64, w64 = randn(2, 3, dtype=np.float64), randn(4, 3, dtype=np.float64)
    with amp.autocast():
        assert F.linear(x64, w64).dtype == D
        assert ck.tensor(randn(3, dtype=np.float16)).sum().dtype == S     # a loss: float32
        assert F.conv3d(randn(1, 1, 3, 3, 3), randn(1, 1, 2, 2, 2)).dtype == S    # no float16 conv3d
        assert F.relu(ck.tensor(randn(3))).dtype == S
        assert F.avg_pool2d(ck.tensor(randn(1, 1, 4, 4)), 2).dtype == S
        bn = nn.BatchNorm2d(3)
        y = bn(ck.tensor(randn(2, 3, 4, 4, dtype=np.float16)))      # float16 input, float32 parameters
    assert y.dtype == H and bn.weight.dtype == S and bn.running_mean.dtype == S


def test_autocast_nests_restores_and_is_per_thread():
    seen = {}

    def other_thread():
        seen["other"] = amp.is_autocast_enabled()
    assert not amp.is_autocast_enabled()
    with amp.autocast():
        assert amp.is_autocast_enabled()
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        with amp.autocast(enabled=False):
            assert not amp.is_autocast_enabled()
            assert F.linear(randn(2, 3), randn(4, 3)).dtype == S
        assert amp.is_autocast_enabled()
    assert not amp.is_autocast_enabled() and seen["other"] is False
    with pytest.raises(KeyError):
        with amp.autocast():
            raise KeyError("an exception leaves the region too")
    assert not amp.is_autocast_enabled()


def test_autocast_as_a_decorator():
    @amp.autocast()
    def forward(x, w):
        """docstring kept"""
        return F.linear(x, w)
    assert forward(randn(2, 3), randn(4, 3)).dtype == H
    assert forward.__doc__ == "docstring kept" and not amp.is_autocast_enabled()


def test_autocast_bad_arguments():
    with pytest.raises(TypeError, match="dtype must be float16"):
        amp.autocast(dtype=np.float32)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        amp.autocast(enabled="yes")
    with pytest.raises(ValueError, match="op must be one of"):
        amp.autocast_inputs("conv4d", ck.tensor(randn(2)))


# ---------------------------------------------------------------------------------------------
# GradScaler
# ---------------------------------------------------------------------------------------------

def _param(values, device="cpu"):
    p = ck.tensor(np.array(values, np.float32), requires_grad=True, device=device)
    return p, optim.SGD([p], lr=1.0)


def _set_grad(p, values):
    p.grad = ck.tensor(np.array(values, np.float32), device=p.device)


def test_scale_multiplies_the_loss_and_its_gradient():
    p, _ = _param([1.0, 2.0])
    scaler = amp.GradScaler(init_scale=1024.0)
    loss = (p * ck.tensor(np.array([3.0, -0.5], np.float32))).sum()
    scaled = scaler.scale(loss)
    assert scaled.item() == 1024 * 2.0
    scaled.backward()
    np.testing.assert_array_equal(p.grad.numpy(), [3072.0, -512.0])
    a, b = scaler.scale([loss, (loss, loss)])[1]
    assert a.item() == b.item() == 2048.0
    half = scaler.scale(ck.tensor(np.float16(3.0)))        # 2**16 is not a float16: scaled in float32
    assert half.dtype == S and half.item() == 3.0 * 1024
    with pytest.raises(TypeError, match="outputs must be a Tensor or a list/tuple of Tensors, got float"):
        scaler.scale(2.0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_step_unscales_then_steps(device):
    p, opt = _param([1.0, 2.0], device)
    scaler = amp.GradScaler()                    # 2**16
    _set_grad(p, [2.0 ** 16 * 0.5, -(2.0 ** 16) * 0.25])
    assert scaler.step(opt) is None              # SGD.step returns None too
    np.testing.assert_array_equal(p.numpy(), [0.5, 2.25])      # p - lr * (scaled grad / 2**16)
    np.testing.assert_array_equal(p.grad.numpy(), [0.5, -0.25])
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 16 and scaler.state_dict()["_growth_tracker"] == 1


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_non_finite_gradient_skips_the_step_and_backs_off(device, bad):
    p, opt = _param([1.0, 2.0], device)
    scaler = amp.GradScaler(init_scale=1024.0, backoff_factor=0.25)
    _set_grad(p, [1.0, bad])
    scaler.step(opt)
    np.testing.assert_array_equal(p.numpy(), [1.0, 2.0])      # skipped
    scaler.update()
    assert scaler.get_scale() == 256.0 and scaler.state_dict()["_growth_tracker"] == 0


def test_the_scale_grows_after_growth_interval_finite_steps_and_backs_off_on_overflow():
    """init 4, interval 3: finite, finite, finite -> 8 (tracker 1, 2, 0); finite, inf -> 4 (tracker
    1, then 0); three more finite -> 8."""
    p, opt = _param([0.0])
    scaler = amp.GradScaler(init_scale=4.0, growth_interval=3)
    history = []
    for bad in [False, False, False, False, True, False, False, False]:
        _set_grad(p, [np.inf if bad else 1.0])
        scaler.step(opt)
        scaler.update()
        history.append((scaler.get_scale(), scaler.state_dict()["_growth_tracker"]))
    assert history == [(4, 1), (4, 2), (8, 0), (8, 1), (4, 0), (4, 1), (4, 2), (8, 0)]
    # each finite step moved p by -1/S: the raw gradient 1 divided by that step's scale
    np.testing.assert_allclose(p.numpy(), [-(1 / 4 + 1 / 4 + 1 / 4 + 1 / 8 + 1 / 4 + 1 / 4 + 1 / 4)])


def test_the_scale_does_not_grow_past_float32():
    p, opt = _param([0.0])
    scaler = amp.GradScaler(init_scale=2.0 ** 127, growth_interval=1)
    _set_grad(p, [1.0])
    scaler.step(opt)
    scaler.update()                                # 2**128 is inf in float32: kept at 2**127
    assert scaler.get_scale() == 2.0 ** 127 and scaler.state_dict()["_growth_tracker"] == 0


def test_unscale_before_step_unscales_once():
    p, opt = _param([0.0, 0.0])
    scaler = amp.GradScaler(init_scale=8.0)
    _set_grad(p, [8.0, 16.0])
    scaler.unscale_(opt)
    np.testing.assert_array_equal(p.grad.numpy(), [1.0, 2.0])  # the true gradients, e.g. to clip them
    scaler.step(opt)
    np.testing.assert_array_equal(p.numpy(), [-1.0, -2.0])


def test_call_order_is_checked():
    p, opt = _param([0.0])
    scaler = amp.GradScaler()
    with pytest.raises(RuntimeError, match="no inf checks were recorded"):
        scaler.update()
    _set_grad(p, [1.0])
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) is being called after step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="closure"):
        scaler.step(opt, closure=lambda: None)
    scaler.update()
    scaler.step(opt)                              # a new iteration
    with pytest.raises(TypeError, match="optimizer must be a convkern.optim optimizer"):
        scaler.step(object())


def test_float16_gradients_are_refused():
    p = ck.tensor(np.zeros(2, np.float16), requires_grad=True)
    opt = optim.SGD([p], lr=1.0)
    p.grad = ck.tensor(np.ones(2, np.float16))
    with pytest.raises(ValueError, match="attempting to unscale float16 gradients"):
        amp.GradScaler().step(opt)


def test_each_optimizer_skips_on_its_own_gradients_and_update_backs_off_for_any():
    p1, opt1 = _param([0.0])
    p2, opt2 = _param([0.0])
    scaler = amp.GradScaler(init_scale=2.0)
    _set_grad(p1, [np.nan])
    _set_grad(p2, [2.0])
    scaler.step(opt1)
    scaler.step(opt2)
    scaler.update()
    assert p1.item() == 0.0 and p2.item() == -1.0 and scaler.get_scale() == 1.0


def test_a_disabled_scaler_is_a_pass_through():
    p, opt = _param([1.0])
    scaler = amp.GradScaler(enabled=False)
    loss = p.sum()
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0 and not scaler.is_enabled()
    _set_grad(p, [np.inf])
    scaler.unscale_(opt)
    scaler.step(opt)                              # no check: the plain optimizer step
    scaler.update()
    assert p.item() == -np.inf
    assert scaler.state_dict() == {}
    scaler.load_state_dict({})


def test_state_dict_round_trips_through_a_checkpoint(tmp_path):
    p, opt = _param([0.0])
    scaler = amp.GradScaler(init_scale=64.0, growth_factor=4.0, backoff_factor=0.125, growth_interval=5)
    _set_grad(p, [1.0])
    scaler.step(opt)
    scaler.update()
    ck.save({"scaler": scaler.state_dict()}, tmp_path / "s.npz")
    other = amp.GradScaler()
    other.load_state_dict(ck.load(tmp_path / "s.npz")["scaler"])
    assert other.state_dict() == {"scale": 64.0, "growth_factor": 4.0, "backoff_factor": 0.125,
                                  "growth_interval": 5, "_growth_tracker": 1}
    loss = other.scale(p.sum())                  # the loaded scale is the one scale() uses
    assert loss.item() == 64.0 * p.item()


GOOD = {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 10, "_growth_tracker": 3}


@pytest.mark.parametrize("change, message", [
    (dict(scale=None), r"missing \['scale'\]"),
    (dict(extra=1), r"unknown \['extra'\]"),
    (dict(scale=-1.0), "scale must be a finite number > 0"),
    (dict(scale=1e39), "positive float32 number"),
    (dict(growth_factor=1.0), "growth_factor must be a finite number > 1"),
    (dict(backoff_factor=1.0), r"backoff_factor must be a number in \(0, 1\)"),
    (dict(growth_interval=0), "growth_interval must be an int >= 1"),
    (dict(growth_interval=2.5), "growth_interval must be an int >= 1"),
    (dict(_growth_tracker=10), r"_growth_tracker must be below growth_interval \(10\)"),
    (dict(_growth_tracker=True), "_growth_tracker must be an int >= 0"),
])
def test_load_state_dict_validates_everything_first(change, message):
    state = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    scaler = amp.GradScaler(init_scale=2.0)
    before = scaler.state_dict()
    with pytest.raises(ValueError, match=message):
        scaler.load_state_dict(state)
    assert scaler.state_dict() == before


def test_load_state_dict_refuses_an_empty_or_foreign_state():
    with pytest.raises(RuntimeError, match="saved from a disabled GradScaler"):
        amp.GradScaler().load_state_dict({})
    with pytest.raises(TypeError, match="expected a dict"):
        amp.GradScaler().load_state_dict([1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(init_scale=0.0), "init_scale must be a finite number > 0"),
    (dict(init_scale=float("nan")), "init_scale must be a finite number > 0"),
    (dict(growth_factor=0.5), "growth_factor must be a finite number > 1"),
    (dict(backoff_factor=0.0), r"backoff_factor must be a number in \(0, 1\)"),
    (dict(growth_interval=0), "growth_interval must be an int >= 1"),
])
def test_constructor_checks_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        amp.GradScaler(**kwargs)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        amp.GradScaler(enabled=1)


# ---------------------------------------------------------------------------------------------
# short mixed-precision training runs
# ---------------------------------------------------------------------------------------------

def test_lenet5_trains_with_amp_on_the_cpu_as_well_as_in_float32():
    """``convkern train lenet5 --amp`` on 2,048 embedded images, 2 epochs (128 steps): float16
    activations, float32 parameters; the loss falls, the accuracy is far above chance (0.1) and
    within 3 points of the same run in float32, the losses within 2 %. The full run (>= 97 %) is
    in docs/results.md."""
    kw = dict(epochs=2, train_size=2048, test_size=512, batch_size=32, progress=False, log=None)
    mixed = train.train("lenet5", amp=True, **kw)
    single = train.train("lenet5", **kw)
    losses = [h["loss"] for h in mixed["history"]]
    assert losses[1] < 0.7 * losses[0]
    assert mixed["test_accuracy"] > 0.75
    assert abs(mixed["test_accuracy"] - single["test_accuracy"]) <= 0.03
    np.testing.assert_allclose(losses, [h["loss"] for h in single["history"]], rtol=0.02)
    # S starts at 2**16 and can only have backed off (growth needs 2000 finite steps)
    assert mixed["loss_scale"] <= 2.0 ** 16 and np.log2(mixed["loss_scale"]).is_integer()


def test_amp_checkpoints_resume_exactly_and_refuse_a_mismatch(tmp_path):
    kw = dict(train_size=96, test_size=32, batch_size=32, progress=False, log=None)
    straight = train.train("lenet5", epochs=2, amp=True, **kw)
    train.train("lenet5", epochs=1, amp=True, checkpoint=tmp_path / "amp.npz", **kw)
    assert ck.load(tmp_path / "amp.npz")["scaler"]["scale"] == 2.0 ** 16
    resumed = train.train("lenet5", epochs=2, amp=True, resume=tmp_path / "amp.npz", **kw)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    with pytest.raises(ValueError, match="was trained with --amp; resume with it"):
        train.train("lenet5", epochs=2, resume=tmp_path / "amp.npz", **kw)


def _small_lenet():
    """LeNet-5's layers (5x5 and 3x3 convs, tanh, 2x2 average pools, two linear layers) on 12x12
    inputs: a size the simulator runs in seconds."""
    return nn.Sequential(nn.Conv2d(1, 2, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(2, 3, 3), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))


@pytest.mark.skipif(not SIMULATOR, reason="sized for the simulator; a real GPU runs the CPU test's LeNet-5")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",     # the simulator's NumPy
                            "ignore:invalid value encountered:RuntimeWarning")  # on step 1's inf
def test_scaled_down_lenet_trains_with_amp_on_the_cuda_path():
    """Three AMP steps on the simulated GPU. Step 1 scales the loss by 2**40: the logits' gradient
    (|softmax - onehot| / 2 times S, up to 2**39) overflows float16 on its way back through the
    float16 linear layer, so the step is skipped and S backs off to 2**12, where every gradient
    is finite; S then grows by 2 per finite step (growth_interval 1). float16 activations, float32
    parameters and gradients; the one real step lowers the loss."""
    ck.manual_seed(0)
    net = _small_lenet().to("cuda")
    opt = optim.Adam(net.parameters(), lr=0.1)
    scaler = amp.GradScaler(init_scale=2.0 ** 40, backoff_factor=2.0 ** -28, growth_interval=1)
    rng = np.random.default_rng(0)
    images = ck.tensor(rng.random((2, 1, 12, 12), dtype=np.float32), device="cuda")
    labels = ck.tensor(np.array([0, 3]), device="cuda")
    losses, scales = [], []
    for _ in range(3):
        opt.zero_grad()
        with amp.autocast():
            logits = net(images)
            loss = F.cross_entropy(logits, labels)
        assert logits.dtype == H and loss.dtype == S
        scaler.scale(loss).backward()
        assert all(p.grad.dtype == S and p.grad.device == "cuda" for p in net.parameters())
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
        scales.append(scaler.get_scale())
    assert scales == [2.0 ** 12, 2.0 ** 13, 2.0 ** 14]
    assert losses[1] == losses[0]                 # step 1 was skipped: the same parameters
    assert losses[2] < 0.9 * losses[0]
    assert all(p.dtype == S for p in net.parameters())
