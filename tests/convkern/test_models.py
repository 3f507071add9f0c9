"""The reference CNNs: exact parameter counts, forward shapes (small batch, small inputs where
the architecture allows), GoogLeNet's auxiliary heads, the bottleneck ResNets against NumPy and
PyTorch, and convkern.summary."""
import numpy as np
import pytest

import convkern as ck
from convkern import models, train
from convkern import nn as cnn
from convkern.layer_summary import summary
from convkern.suites import load_suite
from tests.reference import conv2d_fwd_ref

COUNTS = [
    (models.lenet5, {}, 61_706),
    (models.lenet5, dict(trainable_subsampling=True), 61_750),
    (models.tf_mnist_cnn, {}, 3_274_634),
    (models.cifar10_cnn, {}, 1_068_298),
    (models.alexnet, {}, 60_965_224),
    (lambda **kw: models.vgg("A", **kw), {}, 132_863_336),
    (lambda **kw: models.vgg("A-LRN", **kw), {}, 132_863_336),
    (lambda **kw: models.vgg("B", **kw), {}, 133_047_848),
    (lambda **kw: models.vgg("C", **kw), {}, 133_638_952),
    (lambda **kw: models.vgg("D", **kw), {}, 138_357_544),
    (lambda **kw: models.vgg("E", **kw), {}, 143_667_240),
    (models.googlenet, {}, 6_998_552),
    (models.resnet18, {}, 11_689_512),
    (models.resnet34, {}, 21_797_672),
    (models.resnet50, {}, 25_557_032),
    (models.resnet101, {}, 44_549_160),
    (models.resnet152, {}, 60_192_808),
]


@pytest.mark.parametrize("factory, kwargs, count", COUNTS, ids=[str(c[2]) for c in COUNTS])
def test_parameter_counts(factory, kwargs, count):
    assert models.count_parameters(factory(**kwargs)) == count


FORWARD = [
    (models.lenet5, {}, (2, 1, 32, 32), (2, 10)),
    (models.tf_mnist_cnn, {}, (2, 1, 28, 28), (2, 10)),
    (models.cifar10_cnn, {}, (2, 3, 24, 24), (2, 10)),
    (models.alexnet, dict(num_classes=7), (1, 3, 67, 67), (1, 7)),
    (lambda **kw: models.vgg("C", **kw), dict(num_classes=5), (1, 3, 32, 32), (1, 5)),
    (models.googlenet, dict(num_classes=6), (1, 3, 64, 64), (1, 6)),
    (models.resnet18, dict(num_classes=4, in_channels=1), (2, 1, 32, 32), (2, 4)),
    (models.resnet50, dict(num_classes=5), (1, 3, 64, 64), (1, 5)),
    (models.resnet101, dict(num_classes=3, in_channels=1), (1, 1, 32, 32), (1, 3)),
    (models.resnet152, dict(num_classes=6), (1, 3, 64, 64), (1, 6)),
]


@pytest.mark.parametrize("factory, kwargs, x_shape, y_shape", FORWARD, ids=[str(f[2]) for f in FORWARD])
def test_forward_shapes(factory, kwargs, x_shape, y_shape):
    ck.manual_seed(0)
    model = factory(**kwargs).eval()
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    with ck.no_grad():
        y = model(x)
    assert y.shape == y_shape and np.isfinite(y.numpy()).all()


def test_alexnet_full_size_and_cifar_same_pooling():
    """AlexNet at 227x227 reaches its 6x6x256 feature map without the adaptive pool doing anything;
    the CIFAR-10 net's ceil-mode pools give TensorFlow's SAME sizes 24 -> 12 -> 6."""
    ck.manual_seed(0)
    net = models.alexnet()
    s = summary(net, (1, 3, 227, 227))
    shapes = {layer.name: layer.output_shape for layer in s.layers}
    assert shapes["conv1"] == (1, 96, 55, 55) and shapes["pool5"] == (1, 256, 6, 6)
    assert shapes["avgpool"] == (1, 256, 6, 6) and shapes["fc8"] == (1, 1000)
    s = summary(models.cifar10_cnn(), (1, 3, 24, 24))
    shapes = {layer.name: layer.output_shape for layer in s.layers}
    assert shapes["pool1"] == (1, 64, 12, 12) and shapes["pool2"] == (1, 64, 6, 6)


def test_googlenet_aux_heads_in_training_only():
    ck.manual_seed(0)
    net = models.googlenet(num_classes=3, aux_logits=True)
    assert models.count_parameters(net) > 6_998_552
    x = np.zeros((1, 3, 64, 64), np.float32)
    with ck.no_grad():
        out = net(x)
        assert isinstance(out, tuple) and [o.shape for o in out] == [(1, 3)] * 3
        assert net.eval()(x).shape == (1, 3)


def test_resnet_trains_through_batchnorm_and_residuals():
    ck.manual_seed(0)
    net = models.resnet18(num_classes=3, in_channels=1)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    ck.functional.cross_entropy(net(x), ck.tensor(np.array([0, 2]))).backward()
    assert all(p.grad is not None and np.isfinite(p.grad.numpy()).all() for p in net.parameters())


def _randomise_batch_norms(net, rng):
    """Random BN scale, shift and running statistics, so that tests see every BN term."""
    state = net.state_dict()
    for name, module in net.named_modules():
        if isinstance(module, cnn.BatchNorm2d):
            C = module.num_features
            state[f"{name}.weight"] = rng.uniform(0.5, 1.5, C)
            state[f"{name}.bias"] = rng.uniform(-0.2, 0.2, C)
            state[f"{name}.running_mean"] = rng.uniform(-0.2, 0.2, C)
            state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, C)
    net.load_state_dict(state)
    return net.state_dict()


def test_bottleneck_block_is_reduce_3x3_expand_plus_projection():
    """One strided bottleneck unit (eval mode) against a float64 NumPy composition: 1x1 to width,
    3x3 stride 2 (the stride on the 3x3, as torchvision), 1x1 to 4*width, projection shortcut."""
    ck.manual_seed(0)
    rng = np.random.default_rng(0)
    block = models.Bottleneck(8, 4, stride=2, dtype=np.float64).eval()
    assert [n for n, _ in block.named_children()] == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu",
                                                      "shortcut"]
    p = _randomise_batch_norms(block, rng)
    assert p["conv1.weight"].shape == (4, 8, 1, 1) and p["conv2.weight"].shape == (4, 4, 3, 3)
    assert p["conv3.weight"].shape == (16, 4, 1, 1) and p["shortcut.0.weight"].shape == (16, 8, 1, 1)
    x = rng.standard_normal((2, 8, 7, 7))

    def bn(y, name):
        scale = p[f"{name}.weight"] / np.sqrt(p[f"{name}.running_var"] + 1e-5)
        shift = p[f"{name}.bias"] - p[f"{name}.running_mean"] * scale
        return y * scale[:, None, None] + shift[:, None, None]

    relu = lambda y: np.maximum(y, 0.0)  # noqa: E731
    out = relu(bn(conv2d_fwd_ref(x, p["conv1.weight"]), "bn1"))
    out = relu(bn(conv2d_fwd_ref(out, p["conv2.weight"], (2, 2), (1, 1, 1, 1)), "bn2"))
    out = bn(conv2d_fwd_ref(out, p["conv3.weight"]), "bn3")
    want = relu(out + bn(conv2d_fwd_ref(x, p["shortcut.0.weight"], (2, 2)), "shortcut.1"))
    with ck.no_grad():
        got = block(x).numpy()
    assert got.shape == (2, 16, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert isinstance(models.Bottleneck(16, 4).shortcut, cnn.Identity)


def _torch_resnet50(torch, num_classes):
    """ResNet-50 in plain PyTorch, module names as convkern's, so state dicts load by name."""
    tnn = torch.nn

    class Bottleneck(tnn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(cin, width, 1, bias=False), tnn.BatchNorm2d(width)
            self.conv2 = tnn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(width)
            self.conv3, self.bn3 = tnn.Conv2d(width, 4 * width, 1, bias=False), tnn.BatchNorm2d(4 * width)
            self.shortcut = tnn.Identity()
            if stride != 1 or cin != 4 * width:
                self.shortcut = tnn.Sequential(tnn.Conv2d(cin, 4 * width, 1, stride=stride, bias=False),
                                               tnn.BatchNorm2d(4 * width))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))

    class ResNet50(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), tnn.BatchNorm2d(64)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (width, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
                blocks = []
                for j in range(count):
                    blocks.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
                    cin = 4 * width
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.fc = tnn.Linear(2048, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(x.mean((2, 3)), 1))

    return ResNet50().double()


def test_resnet50_forward_backward_matches_pytorch(monkeypatch):
    """ResNet-50 in float64 at 2x3x64x64, same weights loaded by name: training-mode logits, loss,
    every parameter's gradient, the input's gradient and the updated BN running statistics, then
    eval-mode logits."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")  # the heuristic's choice; timing is not under test
    ck.manual_seed(0)
    rng = np.random.default_rng(1)
    net = models.resnet50(num_classes=10, dtype=np.float64)
    state = _randomise_batch_norms(net, rng)
    tnet = _torch_resnet50(torch, 10)
    tnet.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    x, labels = rng.standard_normal((2, 3, 64, 64)), np.array([3, 7])

    xt = ck.tensor(x, requires_grad=True)
    logits = net(xt)
    loss = ck.functional.cross_entropy(logits, ck.tensor(labels))
    loss.backward()
    X = torch.tensor(x, requires_grad=True)
    tlogits = tnet(X)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.tensor(labels))
    tloss.backward()

    np.testing.assert_allclose(logits.numpy(), tlogits.detach().numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-10)
    np.testing.assert_allclose(xt.grad.numpy(), X.grad.numpy(), rtol=1e-8, atol=1e-12)
    theirs = dict(tnet.named_parameters())
    for name, p in net.named_parameters():
        want = theirs[name].grad.numpy()
        # the absolute floor scales with the tensor: sums of many terms in a different order
        np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-8, atol=1e-11 * max(1.0, np.abs(want).max()),
                                   err_msg=name)
    theirs = tnet.state_dict()
    for name, value in net.state_dict().items():
        np.testing.assert_allclose(value, theirs[name].numpy(), rtol=1e-10, atol=1e-12, err_msg=name)

    net.eval(), tnet.eval()
    with ck.no_grad(), torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), tnet(torch.tensor(x)).numpy(), rtol=1e-9, atol=1e-10)


def test_reference_bench_suite_holds_every_resnet50_conv(monkeypatch):
    """Each conv of ResNet-50 at 224x224 has a row in the `reference` suite (ResNet-101/152 repeat
    the same shapes), and each resnet50 row is one of its convs."""
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")
    suite = {(l["C"], l["H"], l["W"], l["K"], l["R"], l["S"], tuple(l["stride"]), tuple(l["pad"])): l["name"]
             for l in load_suite("reference") if l["name"].startswith("resnet")}
    net = models.resnet50().eval()
    shapes = []
    for module in net.modules():
        if isinstance(module, cnn.Conv2d):
            def traced(x, _m=module, _forward=module.forward):
                pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
                shapes.append(x.shape[1:] + (_m.out_channels,) + tuple(_m.kernel_size) + (pair(_m.stride),
                                                                                         pair(_m.padding)))
                return _forward(x)
            object.__setattr__(module, "forward", traced)
    with ck.no_grad():
        net(np.zeros((1, 3, 224, 224), np.float32))
    assert len(shapes) == 53
    assert [s for s in shapes if s not in suite] == []
    rows = {suite[s] for s in shapes}
    assert {n for n in suite.values() if n.startswith("resnet50.")} <= rows


def test_deep_resnets_train_a_step_on_the_embedded_data(monkeypatch):
    """`convkern train resnet50` on the embedded MNIST split (one channel, padded to 32x32) takes a
    finite step; ResNet-101/152 are registered the same way (train, summary, bench)."""
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")
    result = train.train("resnet50", train_size=2, test_size=2, batch_size=2, epochs=1, progress=False, log=None)
    assert result["model"] == "resnet50" and np.isfinite(result["history"][0]["loss"])
    assert {"resnet50", "resnet101", "resnet152"} <= set(train.MODELS) & set(models.REGISTRY)


def test_resnet_bad_configuration():
    with pytest.raises(ValueError, match="blocks_per_stage must be 4 positive ints"):
        models.ResNet((3, 4, 6))
    with pytest.raises(ValueError, match="blocks_per_stage must be 4 positive ints"):
        models.ResNet((3, 0, 6, 3), block=models.Bottleneck)
    with pytest.raises(TypeError, match="block must be a block class with an int 'expansion'"):
        models.ResNet((1, 1, 1, 1), block=cnn.ReLU)


def test_summary_of_lenet5():
    ck.manual_seed(0)
    s = summary(models.lenet5(), (1, 1, 32, 32), name="lenet5")
    assert s.params == 61_706
    rows = {layer.name: layer for layer in s.layers}
    assert rows["c1"].output_shape == (1, 6, 28, 28) and rows["c1"].params == 156
    assert rows["c1"].flops == 2 * 6 * 28 * 28 * 25 + 6 * 28 * 28
    assert rows["f5"].flops == 2 * 400 * 120 + 120
    assert s.param_bytes == 61_706 * 4
    assert s.training_bytes == 2 * s.param_bytes + s.activation_bytes
    text = str(s)
    assert "61,706" in text and "training step memory" in text


def test_summary_bad_input():
    with pytest.raises(TypeError, match="model must be a convkern.nn.Module"):
        summary(lambda x: x, (1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, H, W\)"):
        summary(models.lenet5(), (1, 32, 32))
    with pytest.raises(ValueError, match="vgg: cfg must be one of"):
        models.vgg("Z")
