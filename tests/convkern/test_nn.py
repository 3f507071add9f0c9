"""convkern.nn: a LeNet-style network built from modules and the same one from functional ops
match a plain NumPy float64 network (loss and every gradient, forward and backward written out
below) and, when installed, PyTorch — also through several SGD/Adam steps; Module bookkeeping
(parameters, state_dict, load_state_dict errors, train/eval, to) and initialisation."""
from collections import OrderedDict

import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern import nn, optim
from tests.reference import conv2d_bwd_data_ref, conv2d_bwd_filter_ref, conv2d_fwd_ref

BATCH, CLASSES = 3, 5


def small_lenet(dtype=np.float64):
    return nn.Sequential(OrderedDict([
        ("c1", nn.Conv2d(1, 3, 3, padding=1, dtype=dtype)), ("t1", nn.Tanh()), ("s2", nn.AvgPool2d(2)),
        ("c3", nn.Conv2d(3, 4, 3, dtype=dtype)), ("r3", nn.ReLU()), ("s4", nn.MaxPool2d(2)),
        ("flat", nn.Flatten()), ("f5", nn.Linear(4, 6, dtype=dtype)), ("t5", nn.Sigmoid()),
        ("out", nn.Linear(6, CLASSES, dtype=dtype)),
    ]))


def functional_lenet(x, p):
    y = F.avg_pool2d(F.tanh(F.conv2d(x, p["c1.weight"], p["c1.bias"], padding=1)), 2)
    y = F.max_pool2d(F.relu(F.conv2d(y, p["c3.weight"], p["c3.bias"])), 2)
    y = F.sigmoid(F.linear(F.flatten(y), p["f5.weight"], p["f5.bias"]))
    return F.linear(y, p["out.weight"], p["out.bias"])


def numpy_lenet(x, labels, p):
    """Forward and backward of the same network in float64 NumPy; returns (loss, {name: grad})."""
    a1 = conv2d_fwd_ref(x, p["c1.weight"], pad=(1, 1, 1, 1)) + p["c1.bias"][None, :, None, None]
    h1 = np.tanh(a1)
    n, c, hh, ww = h1.shape
    s2 = h1.reshape(n, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))
    a3 = conv2d_fwd_ref(s2, p["c3.weight"]) + p["c3.bias"][None, :, None, None]
    h3 = np.maximum(a3, 0)
    n, c, hh, ww = h3.shape
    win = h3.reshape(n, c, hh // 2, 2, ww // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, hh // 2, ww // 2, 4)
    arg = win.argmax(axis=-1)
    s4 = win.max(axis=-1)
    f = s4.reshape(n, -1)
    z5 = f @ p["f5.weight"].T + p["f5.bias"]
    h5 = 1 / (1 + np.exp(-z5))
    logits = h5 @ p["out.weight"].T + p["out.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(n), labels].mean()

    g = {}
    dlogits = np.exp(logp)
    dlogits[np.arange(n), labels] -= 1
    dlogits /= n
    g["out.weight"], g["out.bias"] = dlogits.T @ h5, dlogits.sum(0)
    dz5 = (dlogits @ p["out.weight"]) * h5 * (1 - h5)
    g["f5.weight"], g["f5.bias"] = dz5.T @ f, dz5.sum(0)
    ds4 = (dz5 @ p["f5.weight"]).reshape(s4.shape)
    dwin = np.zeros(win.shape)
    np.put_along_axis(dwin, arg[..., None], ds4[..., None], axis=-1)
    dh3 = dwin.reshape(n, c, hh // 2, ww // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(h3.shape)
    da3 = dh3 * (a3 > 0)
    g["c3.weight"] = conv2d_bwd_filter_ref(da3, s2, p["c3.weight"].shape)
    g["c3.bias"] = da3.sum(axis=(0, 2, 3))
    ds2 = conv2d_bwd_data_ref(da3, p["c3.weight"], s2.shape)
    dh1 = np.repeat(np.repeat(ds2, 2, axis=2), 2, axis=3) / 4
    da1 = dh1 * (1 - h1 ** 2)
    g["c1.weight"] = conv2d_bwd_filter_ref(da1, x, p["c1.weight"].shape, pad=(1, 1, 1, 1))
    g["c1.bias"] = da1.sum(axis=(0, 2, 3))
    return loss, g


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 1, 8, 8)), rng.integers(0, CLASSES, BATCH)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_module_and_functional_networks_match_numpy(device):
    ck.manual_seed(0)
    model = small_lenet().to(device)
    x, labels = _batch()
    params = {k: v.copy() for k, v in model.state_dict().items()}
    want_loss, want_grads = numpy_lenet(x, labels, params)

    loss = F.cross_entropy(model(ck.tensor(x, device=device)), ck.tensor(labels, device=device))
    loss.backward()
    np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-10)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), want_grads[name], rtol=1e-8, atol=1e-12, err_msg=name)

    leaves = {k: ck.tensor(v, requires_grad=True, device=device) for k, v in params.items()}
    loss_f = F.cross_entropy(functional_lenet(ck.tensor(x, device=device), leaves), ck.tensor(labels, device=device))
    loss_f.backward()
    np.testing.assert_allclose(loss_f.item(), want_loss, rtol=1e-10)
    for name, t in leaves.items():
        np.testing.assert_allclose(t.grad.numpy(), want_grads[name], rtol=1e-8, atol=1e-12, err_msg=name)


def _torch_lenet(torch, state):
    tnn = torch.nn
    net = tnn.Sequential(OrderedDict([
        ("c1", tnn.Conv2d(1, 3, 3, padding=1)), ("t1", tnn.Tanh()), ("s2", tnn.AvgPool2d(2)),
        ("c3", tnn.Conv2d(3, 4, 3)), ("r3", tnn.ReLU()), ("s4", tnn.MaxPool2d(2)),
        ("flat", tnn.Flatten()), ("f5", tnn.Linear(4, 6)), ("t5", tnn.Sigmoid()), ("out", tnn.Linear(6, CLASSES)),
    ])).double()
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return net


@pytest.mark.parametrize("make_opt", [
    lambda m, p: m.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda m, p: m.SGD(p, lr=0.05, momentum=0.5, dampening=0.1),
    lambda m, p: m.Adam(p, lr=0.01, weight_decay=1e-4),
], ids=["sgd-nesterov-wd", "sgd-dampening", "adam"])
def test_training_steps_match_pytorch(make_opt):
    torch = pytest.importorskip("torch")
    ck.manual_seed(1)
    model = small_lenet()
    tnet = _torch_lenet(torch, model.state_dict())
    opt, topt = make_opt(optim, list(model.parameters())), make_opt(torch.optim, list(tnet.parameters()))
    for step in range(4):
        x, labels = _batch(step)
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tloss = torch.nn.functional.cross_entropy(tnet(torch.tensor(x)), torch.tensor(labels))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-9)
    theirs = tnet.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, theirs[name].numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


def test_named_parameters_state_dict_and_round_trip(tmp_path):
    ck.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    state = model.state_dict()
    assert list(state) == names + ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    ck.save(state, tmp_path / "m.npz")
    ck.manual_seed(5)
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    assert not np.array_equal(other.state_dict()["0.weight"], state["0.weight"])
    other.load_state_dict(ck.load(tmp_path / "m.npz"))
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("0.bias"), "missing key '0.bias'"),
    (lambda s: s.update(extra=np.ones(1)), "unexpected key 'extra'"),
    (lambda s: s.update({"1.weight": np.ones((2, 2))}), r"1.weight: expected shape \(3, 2\), got \(2, 2\)"),
])
def test_load_state_dict_strict_errors_change_nothing(edit, message):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    edit(state)
    with pytest.raises(RuntimeError, match=message):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict_reports_keys():
    model = nn.Linear(2, 2)
    missing, unexpected = model.load_state_dict({"weight": np.zeros((2, 2)), "junk": np.ones(1)}, strict=False)
    assert missing == ["bias"] and unexpected == ["junk"]
    np.testing.assert_array_equal(model.weight.numpy(), 0)


def test_train_eval_zero_grad_and_dropout_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    assert model.training and model[1].training
    model.eval()
    assert not model.training and not model[1].training
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(model(x).numpy(), model[0](x).numpy())
    model.train()
    model(x).sum().backward()
    assert model[0].weight.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_moves_and_casts_parameters_and_buffers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.to("cuda")
    assert all(p.device == "cuda" for p in model.parameters())
    assert model[1].running_mean.device == "cuda"
    model.to("cpu").to(np.float64)
    assert all(p.dtype == np.float64 and p.device == "cpu" for p in model.parameters())
    assert model[1].num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_half_float_double_cast_parameters_gradients_and_float_buffers(device):
    """As torch.nn.Module.half(): every float parameter, its gradient and every float buffer
    (BatchNorm's running statistics) is cast in place, on its device; integer buffers stay."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(4, 3)).to(device)
    model[2].weight.grad = ck.tensor(np.full((3, 4), 0.1, np.float32), device=device)
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    assert model.half() is model
    for name, p in model.named_parameters():
        assert p.dtype == np.float16 and p.device == device and p.requires_grad and p.is_leaf
        np.testing.assert_array_equal(p.numpy(), before[name].astype(np.float16))
    assert model[2].weight.grad.dtype == np.float16
    bn = model[1]
    assert bn.running_mean.dtype == bn.running_var.dtype == np.float16 and bn.running_var.device == device
    assert bn.num_batches_tracked.dtype == np.int64
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters()) and bn.running_var.dtype == np.float32
    np.testing.assert_array_equal(model[0].weight.numpy(), before["0.weight"].astype(np.float16).astype(np.float32))
    assert model.double()[0].bias.dtype == np.float64


def test_default_initialisation_bounds_and_seed():
    ck.manual_seed(3)
    a = nn.Conv2d(4, 8, 3, groups=2)
    bound = 1 / np.sqrt(2 * 3 * 3)
    assert np.abs(a.weight.numpy()).max() <= bound and np.abs(a.bias.numpy()).max() <= bound
    assert np.abs(a.weight.numpy()).max() > 0.8 * bound
    ck.manual_seed(3)
    b = nn.Conv2d(4, 8, 3, groups=2)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    lin = nn.Linear(100, 3)
    assert np.abs(lin.weight.numpy()).max() <= 0.1
    bn = nn.BatchNorm2d(3)
    np.testing.assert_array_equal(bn.weight.numpy(), 1)
    np.testing.assert_array_equal(bn.running_var.numpy(), 1)


# (module, input shape, the functional call it makes, PyTorch's weight shape, fan_in)
CONV_MODULES = [
    (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9),
     lambda m, x: F.conv1d(x, m.weight, m.bias, 2, 1, 1, 2), (6, 2, 3), 2 * 3),
    (lambda: nn.Conv3d(2, 4, (2, 3, 3), padding="same"), (1, 2, 4, 5, 5),
     lambda m, x: F.conv3d(x, m.weight, m.bias, padding="same"), (4, 2, 2, 3, 3), 2 * 18),
    (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1, groups=2), (2, 4, 5),
     lambda m, x: F.conv_transpose1d(x, m.weight, m.bias, 2, 0, 1, 2), (4, 3, 3), 3 * 3),
    (lambda: nn.ConvTranspose2d(3, 5, (3, 2), stride=(2, 1), padding=1, bias=False), (1, 3, 4, 4),
     lambda m, x: F.conv_transpose2d(x, m.weight, None, (2, 1), 1), (3, 5, 3, 2), 5 * 6),
    (lambda: nn.ConvTranspose3d(2, 3, 2, dilation=2), (1, 2, 3, 3, 3),
     lambda m, x: F.conv_transpose3d(x, m.weight, m.bias, dilation=2), (2, 3, 2, 2, 2), 3 * 8),
]


@pytest.mark.parametrize("make,x_shape,call,w_shape,fan_in", CONV_MODULES,
                         ids=["Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"])
def test_conv_modules_shapes_init_and_forward(make, x_shape, call, w_shape, fan_in):
    ck.manual_seed(0)
    m = make()
    assert m.weight.shape == w_shape
    bound = 1 / np.sqrt(fan_in)
    for p in m.parameters():
        assert np.abs(p.numpy()).max() <= bound and np.abs(p.numpy()).max() > 0.5 * bound
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    np.testing.assert_array_equal(m(x).numpy(), call(m, x).numpy())
    assert type(m).__name__ in repr(m)


def test_conv_module_weight_shapes_match_pytorch():
    torch = pytest.importorskip("torch")
    pairs = [(nn.Conv1d(4, 6, 3, groups=2), torch.nn.Conv1d(4, 6, 3, groups=2)),
             (nn.Conv3d(2, 4, (2, 3, 1)), torch.nn.Conv3d(2, 4, (2, 3, 1))),
             (nn.ConvTranspose1d(4, 6, 3, groups=2), torch.nn.ConvTranspose1d(4, 6, 3, groups=2)),
             (nn.ConvTranspose2d(3, 5, (3, 2)), torch.nn.ConvTranspose2d(3, 5, (3, 2))),
             (nn.ConvTranspose3d(2, 3, 2, bias=False), torch.nn.ConvTranspose3d(2, 3, 2, bias=False))]
    for mine, theirs in pairs:
        assert {k: v.shape for k, v in mine.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_separable_conv2d_module():
    ck.manual_seed(1)
    m = nn.SeparableConv2d(3, 8, 3, stride=2, padding=1, depth_multiplier=2)
    assert m.depthwise_weight.shape == (6, 1, 3, 3) and m.pointwise_weight.shape == (8, 6, 1, 1)
    assert m.bias.shape == (8,)
    assert np.abs(m.depthwise_weight.numpy()).max() <= 1 / 3
    assert np.abs(m.pointwise_weight.numpy()).max() <= 1 / np.sqrt(6)
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7))
    m.double()
    want = F.separable_conv2d(x, m.depthwise_weight, m.pointwise_weight, m.bias, 2, 1)
    np.testing.assert_array_equal(m(x).numpy(), want.numpy())
    assert [n for n, _ in m.named_parameters()] == ["depthwise_weight", "pointwise_weight", "bias"]


def test_batchnorm_module_updates_running_stats_like_pytorch():
    torch = pytest.importorskip("torch")
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    tbn = torch.nn.BatchNorm2d(3).double()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 5))
        np.testing.assert_allclose(bn(x).numpy(), tbn(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    for k, v in bn.state_dict().items():
        np.testing.assert_allclose(v, tbn.state_dict()[k].numpy(), rtol=1e-10, err_msg=k)
    bn.eval(), tbn.eval()
    x = rng.standard_normal((2, 3, 5, 5))
    np.testing.assert_allclose(bn(x).numpy(), tbn(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_l2_weight_loss_is_half_squared_norm():
    w = nn.Parameter(ck.tensor(np.array([1.0, 2.0, 3.0])))
    v = nn.Parameter(ck.tensor(np.array([[1.0, -1.0]])))
    loss = nn.l2_weight_loss([w, v], 0.004)
    np.testing.assert_allclose(loss.item(), 0.004 * (14 + 2) / 2)
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), 0.004 * np.array([1.0, 2.0, 3.0]))


def test_repr_lists_children():
    text = repr(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    assert "(0): Conv2d(1, 2, kernel_size=(3, 3)" in text and "(1): ReLU()" in text


@pytest.mark.parametrize("make, exc, message", [
    (lambda: nn.Conv2d(0, 2, 3), ValueError, "Conv2d: in_channels must be a positive int"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "groups=2 must divide in_channels=3"),
    (lambda: nn.Linear(2, 3, dtype=np.int32), TypeError, "Linear: dtype must be float32 or float64"),
    (lambda: nn.Dropout(1.0), ValueError, r"Dropout: p must be a number in \[0, 1\)"),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "Sequential: element 1 must be a Module"),
    (lambda: nn.MaxPool2d(2, foo=1), TypeError, "unexpected or repeated argument 'foo'"),
    (lambda: nn.Linear(2, 2).to("tpu"), ValueError, "device must be 'cpu' or 'cuda'"),
    (lambda: nn.Linear(2, 2).load_state_dict([1, 2]), TypeError, "state_dict must be a dict"),
    (lambda: nn.Linear(3, 2)(np.ones((4, 5), np.float32)), ValueError, "linear"),
])
def test_bad_module_arguments(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_load_state_dict_copies_instead_of_aliasing():
    model = nn.Linear(2, 2, dtype=np.float64)
    best = model.state_dict()
    model.load_state_dict(best)
    before = best["weight"].copy()
    model(np.ones((1, 2))).sum().backward()
    optim.SGD(model.parameters(), lr=1.0).step()
    np.testing.assert_array_equal(best["weight"], before)
    assert not np.shares_memory(np.array(model.weight, copy=True), model.weight.data)


def test_setattr_keeps_registry_order_and_refuses_plain_tensors():
    lin = nn.Linear(2, 2)
    lin.weight = nn.Parameter(ck.tensor(np.zeros((2, 2), np.float32)))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    with pytest.raises(TypeError, match="cannot assign Tensor to parameter 'weight'"):
        lin.weight = lin.weight * 2.0
    bn = nn.BatchNorm2d(2)
    bn.running_mean = ck.tensor(np.ones(2, np.float32))
    np.testing.assert_array_equal(bn.state_dict()["running_mean"], 1)
    lin.bias = None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]


def test_batchnorm_momentum_none_in_eval_and_without_tracking():
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    nn.BatchNorm2d(2, momentum=None).eval()(x)
    nn.BatchNorm2d(2, momentum=None, track_running_stats=False)(x)


def test_sequential_slice_is_a_sequential():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert head(np.ones((1, 2), np.float32)).shape == (1, 3)


def test_summary_with_a_shared_module_and_mixed_modes():
    from convkern.layer_summary import summary
    act = nn.ReLU()
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), act, nn.Conv2d(2, 2, 1), act, nn.BatchNorm2d(2))
    conv[4].eval()
    s = summary(conv, (1, 1, 5, 5))
    assert [layer.name for layer in s.layers] == ["0", "1", "2", "1", "4"]
    assert conv.training and not conv[4].training and "forward" not in act.__dict__


def _fusion_net():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=np.float64), nn.ReLU(),
                         nn.BatchNorm2d(4, dtype=np.float64), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, dtype=np.float64), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5, dtype=np.float64), nn.Sigmoid(), nn.Linear(5, 3, dtype=np.float64))


def _run_fusion_net(fuse, x, seed=0):
    previous = nn.fuse_activations(fuse)
    try:
        ck.manual_seed(seed)
        net = _fusion_net()
        y = net(ck.tensor(x))
        y.backward(np.ones(y.shape))
        return y, [p.grad.numpy() for p in net.parameters()], net.state_dict()
    finally:
        nn.fuse_activations(previous)


def test_sequential_fuses_layers_with_their_activations_and_matches_unfused():
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6))
    fused, unfused = _run_fusion_net(True, x), _run_fusion_net(False, x)
    assert type(fused[0].grad_fn).__name__ == "Linear"
    np.testing.assert_allclose(fused[0].numpy(), unfused[0].numpy(), rtol=1e-12)
    for a, b in zip(fused[1], unfused[1]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    for key in fused[2]:                          # running statistics updated alike
        np.testing.assert_allclose(np.asarray(fused[2][key]), np.asarray(unfused[2][key]), rtol=1e-12)


def test_fusion_is_recorded_in_the_graph_and_can_be_switched_off():
    net = nn.Sequential(nn.Linear(3, 2, dtype=np.float64), nn.ReLU())
    x = ck.tensor(np.ones((1, 3)), requires_grad=True)
    assert type(net(x).grad_fn).__name__ == "Linear"
    previous = nn.fuse_activations(False)
    try:
        assert nn.fuse_activations() is False
        assert type(net(x).grad_fn).__name__ == "Activation"
    finally:
        nn.fuse_activations(previous)
    with pytest.raises(TypeError, match="fuse_activations: enabled must be True, False or None"):
        nn.fuse_activations("yes")


def test_a_subclass_that_overrides_forward_is_not_fused():
    class Doubled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

    layer = Doubled(2, 2, dtype=np.float64)
    assert nn.fusable_activation(layer, nn.ReLU()) is None
    assert nn.fusable_activation(nn.BatchNorm2d(2), nn.Tanh()) is None     # BN fuses ReLU only
    assert nn.fusable_activation(nn.Linear(2, 2), nn.Sigmoid()) == "sigmoid"
    x = ck.tensor(np.array([[1.0, -3.0]]))
    y = nn.Sequential(layer, nn.ReLU())(x)
    np.testing.assert_allclose(y.numpy(), np.maximum(layer(x).numpy(), 0))


def test_resnet_block_fuses_batch_norm_and_relu():
    from convkern.models import BasicBlock
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    runs = []
    for fuse in (True, False):
        previous = nn.fuse_activations(fuse)
        try:
            ck.manual_seed(0)
            block = BasicBlock(3, 4, stride=2, dtype=np.float64)
            y = block(ck.tensor(x))
            y.backward(np.ones(y.shape))
            runs.append([y.numpy()] + [p.grad.numpy() for p in block.parameters()])
        finally:
            nn.fuse_activations(previous)
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
