"""The reference CNNs: exact parameter counts, forward shapes (small batch, small inputs where
the architecture allows), GoogLeNet's auxiliary heads, and convkern.summary."""
import numpy as np
import pytest

import convkern as ck
from convkern import models
from convkern.layer_summary import summary

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
