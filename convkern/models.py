"""The classic CNNs, built from convkern's own ops, with the parameter counts of their papers.

| factory | parameters (default arguments) |
|---|---|
| ``lenet5()`` | 61,706 |
| ``tf_mnist_cnn()`` | 3,274,634 |
| ``cifar10_cnn()`` | 1,068,298 |
| ``alexnet()`` | 60,965,224 |
| ``vgg("A")``, ``vgg("D")``, ``vgg("E")`` | 132,863,336 · 138,357,544 · 143,667,240 |
| ``googlenet()`` | 6,998,552 (aux heads off) |
| ``resnet18()``, ``resnet34()`` | 11,689,512 · 21,797,672 |
| ``resnet50()``, ``resnet101()``, ``resnet152()`` | 25,557,032 · 44,549,160 · 60,192,808 |

Where a classifier expects a fixed feature-map size (AlexNet 6×6, VGG 7×7) an adaptive average
pool to that size sits before it, as in torchvision: it is the identity at the paper's input
size and lets the same model run on smaller images (tests do).
"""
from collections import OrderedDict

import numpy as np

from convkern import nn
from convkern.ops.shape import cat



def _act(name):
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"activation must be 'relu' or 'tanh', got {name!r}")


def lenet5(num_classes=10, in_channels=1, activation="tanh", trainable_subsampling=False, dtype=np.float32):
    """LeNet-5 (LeCun et al. 1998) on 32×32 inputs: C1 6@5×5 → S2 2×2 → C3 16@5×5 → S4 2×2 → C5/F5 120
    → F6 84 → 10. C3 is fully connected to S2's maps (the paper's sparse table saves 900 weights) and
    S2/S4 are plain 2×2 average pools, which gives the 61,706 parameters usually quoted;
    ``trainable_subsampling=True`` uses the paper's per-map coefficient and bias instead (+44)."""
    def sub(c):
        return nn.Subsample2d(c, 2, dtype=dtype) if trainable_subsampling else nn.AvgPool2d(2)
    return nn.Sequential(OrderedDict([
        ("c1", nn.Conv2d(in_channels, 6, 5, dtype=dtype)), ("act1", _act(activation)), ("s2", sub(6)),
        ("c3", nn.Conv2d(6, 16, 5, dtype=dtype)), ("act3", _act(activation)), ("s4", sub(16)),
        ("flatten", nn.Flatten()),
        ("f5", nn.Linear(16 * 5 * 5, 120, dtype=dtype)), ("act5", _act(activation)),
        ("f6", nn.Linear(120, 84, dtype=dtype)), ("act6", _act(activation)),
        ("out", nn.Linear(84, num_classes, dtype=dtype)),
    ]))


def tf_mnist_cnn(num_classes=10, in_channels=1, dropout=0.5, dtype=np.float32):
    """The TensorFlow "Deep MNIST" tutorial net on 28×28: conv5×5-32 SAME → max2 → conv5×5-64 SAME →
    max2 → fc1024 → dropout → fc10."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 32, 5, padding="same", dtype=dtype)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(32, 64, 5, padding="same", dtype=dtype)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(7 * 7 * 64, 1024, dtype=dtype)), ("relu3", nn.ReLU()), ("dropout", nn.Dropout(dropout)),
        ("fc2", nn.Linear(1024, num_classes, dtype=dtype)),
    ]))


def cifar10_cnn(num_classes=10, in_channels=3, dtype=np.float32):
    """The TensorFlow CIFAR-10 tutorial net on 24×24 crops: conv5×5-64 SAME → max3×3/2 SAME → LRN →
    conv5×5-64 SAME → LRN → max3×3/2 SAME → fc384 → fc192 → fc10, LRN in TensorFlow's form
    (depth_radius 4, bias 1, alpha 0.001/9, beta 0.75).

    TensorFlow's SAME 3×3/2 pooling of an even-sized map pads one row/column at the bottom/right
    only; ``ceil_mode=True`` without padding selects exactly the same windows."""
    def lrn():
        return nn.LRN(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 64, 5, padding="same", dtype=dtype)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)), ("norm1", lrn()),
        ("conv2", nn.Conv2d(64, 64, 5, padding="same", dtype=dtype)), ("relu2", nn.ReLU()), ("norm2", lrn()),
        ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("flatten", nn.Flatten()),
        ("local3", nn.Linear(6 * 6 * 64, 384, dtype=dtype)), ("relu3", nn.ReLU()),
        ("local4", nn.Linear(384, 192, dtype=dtype)), ("relu4", nn.ReLU()),
        ("softmax_linear", nn.Linear(192, num_classes, dtype=dtype)),
    ]))


def alexnet(num_classes=1000, in_channels=3, dropout=0.5, dtype=np.float32):
    """AlexNet (Krizhevsky et al. 2012) on 227×227: 96-256-384-384-256 convolutions, two groups on
    conv2/4/5 (the paper's two GPUs), LRN after conv1 and conv2 (k=2, n=5, α=1e-4, β=0.75 in the
    paper's — TensorFlow's — form, depth_radius 2), overlapping 3×3/2 max pools, fc4096-4096-1000
    with dropout."""
    def lrn():
        return nn.LRN(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 96, 11, stride=4, dtype=dtype)), ("relu1", nn.ReLU()), ("norm1", lrn()),
        ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=2, dtype=dtype)), ("relu2", nn.ReLU()), ("norm2", lrn()),
        ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1, dtype=dtype)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=2, dtype=dtype)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=2, dtype=dtype)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)), ("avgpool", nn.AdaptiveAvgPool2d(6)),
        ("flatten", nn.Flatten()),
        ("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(256 * 6 * 6, 4096, dtype=dtype)), ("relu6", nn.ReLU()),
        ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(4096, 4096, dtype=dtype)), ("relu7", nn.ReLU()),
        ("fc8", nn.Linear(4096, num_classes, dtype=dtype)),
    ]))


# VGG configurations (Simonyan & Zisserman, Table 1): ints are 3×3 conv widths, (w, 1) a 1×1 conv,
# "M" a 2×2 max pool, "LRN" local response normalisation.
VGG_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def vgg(cfg="D", num_classes=1000, in_channels=3, dropout=0.5, dtype=np.float32):
    """VGG configuration ``cfg`` in A, A-LRN, B, C, D, E (D is VGG-16, E VGG-19) on 224×224; LRN in
    A-LRN is AlexNet's (k=2, n=5, α=1e-4, β=0.75 in the TensorFlow form, depth_radius 2)."""
    if cfg not in VGG_CONFIGS:
        raise ValueError(f"vgg: cfg must be one of {sorted(VGG_CONFIGS)}, got {cfg!r}")
    layers, c, n_conv = OrderedDict(), in_channels, 0
    for item in VGG_CONFIGS[cfg]:
        if item == "M":
            layers[f"pool{len(layers)}"] = nn.MaxPool2d(2)
        elif item == "LRN":
            layers[f"lrn{len(layers)}"] = nn.LRN(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
        else:
            width, k = item if isinstance(item, tuple) else (item, 3)
            n_conv += 1
            layers[f"conv{n_conv}"] = nn.Conv2d(c, width, k, padding=k // 2, dtype=dtype)
            layers[f"relu{n_conv}"] = nn.ReLU()
            c = width
    layers["avgpool"] = nn.AdaptiveAvgPool2d(7)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(512 * 7 * 7, 4096, dtype=dtype)
    layers["relu_fc1"] = nn.ReLU()
    layers["drop1"] = nn.Dropout(dropout)
    layers["fc2"] = nn.Linear(4096, 4096, dtype=dtype)
    layers["relu_fc2"] = nn.ReLU()
    layers["drop2"] = nn.Dropout(dropout)
    layers["fc3"] = nn.Linear(4096, num_classes, dtype=dtype)
    return nn.Sequential(layers)


class ConvReLU(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, padding=0, dtype=np.float32):
        super().__init__(nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dtype=dtype), nn.ReLU())


class Inception(nn.Module):
    """GoogLeNet's inception module: 1×1 | 1×1→3×3 | 1×1→5×5 | 3×3 max pool→1×1, concatenated on channels."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj, dtype=np.float32):
        super().__init__()
        self.branch1 = ConvReLU(cin, c1, 1, dtype=dtype)
        self.branch3 = nn.Sequential(ConvReLU(cin, c3r, 1, dtype=dtype), ConvReLU(c3r, c3, 3, padding=1, dtype=dtype))
        self.branch5 = nn.Sequential(ConvReLU(cin, c5r, 1, dtype=dtype), ConvReLU(c5r, c5, 5, padding=2, dtype=dtype))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvReLU(cin, pool_proj, 1, dtype=dtype))

    def forward(self, x):
        return cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: average pool to 4×4 → 1×1 conv 128 → fc1024 → dropout 0.7 → fc. The paper's
    5×5/3 pool also gives 4×4 from the 14×14 maps of a 224×224 input; the adaptive pool averages
    4×4 windows there instead of 5×5 ones, and lets the model run on smaller inputs too."""

    def __init__(self, cin, num_classes, dtype=np.float32):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = ConvReLU(cin, 128, 1, dtype=dtype)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024, dtype=dtype)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes, dtype=dtype)
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.fc2(self.drop(self.relu(self.fc1(self.flatten(self.conv(self.pool(x)))))))


GOOGLENET_TABLE = OrderedDict([  # Szegedy et al. 2015, Table 1: in, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj
    ("3a", (192, 64, 96, 128, 16, 32, 32)), ("3b", (256, 128, 128, 192, 32, 96, 64)),
    ("4a", (480, 192, 96, 208, 16, 48, 64)), ("4b", (512, 160, 112, 224, 24, 64, 64)),
    ("4c", (512, 128, 128, 256, 24, 64, 64)), ("4d", (512, 112, 144, 288, 32, 64, 64)),
    ("4e", (528, 256, 160, 320, 32, 128, 128)), ("5a", (832, 256, 160, 320, 32, 128, 128)),
    ("5b", (832, 384, 192, 384, 48, 128, 128)),
])


class GoogLeNet(nn.Module):
    """Inception v1 (Szegedy et al. 2015) on 224×224, with the paper's LRN in the stem, 3×3/2 max pools
    (``ceil_mode``, as torchvision) between stages, global average pooling, dropout 0.4, fc1000. With
    ``aux_logits`` the two auxiliary heads on 4a and 4d are built and, in training mode, ``forward``
    returns ``(logits, aux1, aux2)``."""

    def __init__(self, num_classes=1000, in_channels=3, aux_logits=False, dtype=np.float32):
        super().__init__()
        self.aux_logits = aux_logits
        self.stem = nn.Sequential(OrderedDict([
            ("conv1", ConvReLU(in_channels, 64, 7, stride=2, padding=3, dtype=dtype)),
            ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
            ("norm1", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)),
            ("conv2", ConvReLU(64, 64, 1, dtype=dtype)),
            ("conv3", ConvReLU(64, 192, 3, padding=1, dtype=dtype)),
            ("norm2", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)),
            ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ]))
        self.inception = nn.ModuleList(Inception(*cfg, dtype=dtype) for cfg in GOOGLENET_TABLE.values())
        self.pool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.pool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(1024, num_classes, dtype=dtype)
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dtype=dtype)
            self.aux2 = InceptionAux(528, num_classes, dtype=dtype)

    def forward(self, x):
        x = self.stem(x)
        aux = []
        for name, block in zip(GOOGLENET_TABLE, self.inception):
            x = block(x)
            if name == "3b":
                x = self.pool3(x)
            elif name == "4e":
                x = self.pool4(x)
            if self.aux_logits and self.training and name in ("4a", "4d"):
                aux.append((self.aux1 if name == "4a" else self.aux2)(x))
        logits = self.fc(self.dropout(self.flatten(self.avgpool(x))))
        return (logits, *aux) if aux else logits


def googlenet(num_classes=1000, in_channels=3, aux_logits=False, dtype=np.float32):
    """Inception v1; see ``GoogLeNet``."""
    return GoogLeNet(num_classes, in_channels, aux_logits, dtype)


class BasicBlock(nn.Module):
    """ResNet basic block: 3×3 conv-BN-ReLU → 3×3 conv-BN, plus the shortcut (identity, or a 1×1
    stride-2 projection with BN when the shape changes), then ReLU. ``expansion = 1``: the block
    outputs ``width`` maps."""
    expansion = 1

    def __init__(self, cin, width, stride=1, dtype=np.float32):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride=stride, padding=1, bias=False, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(width, dtype=dtype)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False, dtype=dtype)
        self.bn2 = nn.BatchNorm2d(width, dtype=dtype)
        self.shortcut = _shortcut(cin, width, stride, dtype)

    def forward(self, x):
        out = self.bn2(self.conv2(nn.fused(self.bn1, self.relu, self.conv1(x))))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1×1 conv to ``width`` maps-BN-ReLU → 3×3 conv (stride ``stride``)-BN-ReLU
    → 1×1 conv to ``4·width`` maps-BN, plus the shortcut (identity, or a 1×1 projection with BN when
    the shape changes), then ReLU. ``expansion = 4``: a unit of a 256-map stage reduces to 64 maps,
    and ``width`` is the reduced width.

    The stride sits on the 3×3 convolution, as in torchvision ("ResNet v1.5"); the paper (He et al.
    2016) put it on the first 1×1, which then skips three of every four input pixels. Strides carry
    no weights, so the parameter count is the same; only FLOPs differ: the first 1×1 of a strided
    unit runs on the full-size map, 4× its paper cost (ResNet-50 at 224×224: 8.18 instead of 7.72
    GFLOPs of conv + fc)."""
    expansion = 4

    def __init__(self, cin, width, stride=1, dtype=np.float32):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(width, dtype=dtype)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False, dtype=dtype)
        self.bn2 = nn.BatchNorm2d(width, dtype=dtype)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False, dtype=dtype)
        self.bn3 = nn.BatchNorm2d(cout, dtype=dtype)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(cin, cout, stride, dtype)

    def forward(self, x):
        out = nn.fused(self.bn1, self.relu, self.conv1(x))
        out = nn.fused(self.bn2, self.relu, self.conv2(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(cin, cout, stride, dtype):
    """Identity when the block keeps the shape, else a 1×1 strided projection with BN."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False, dtype=dtype),
                         nn.BatchNorm2d(cout, dtype=dtype))


class ResNet(nn.Module):
    """ResNet (He et al. 2016): 7×7/2 conv-BN-ReLU, 3×3/2 max pool, four stages of ``block`` units
    (``BasicBlock`` or ``Bottleneck``) of widths 64/128/256/512, the first unit of stages 2-4 with
    stride 2, global average pool, fc from ``512·block.expansion`` features."""

    def __init__(self, blocks_per_stage, num_classes=1000, in_channels=3, dtype=np.float32, block=BasicBlock):
        super().__init__()
        counts = tuple(blocks_per_stage)
        if len(counts) != 4 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                                   for n in counts):
            raise ValueError(f"ResNet: blocks_per_stage must be 4 positive ints, got {blocks_per_stage!r}")
        if not isinstance(getattr(block, "expansion", None), int):
            raise TypeError(f"ResNet: block must be a block class with an int 'expansion' (BasicBlock, Bottleneck), "
                            f"got {block!r}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(64, dtype=dtype)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, (width, count) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, width, 2 if (i > 0 and j == 0) else 1, dtype=dtype))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes, dtype=dtype)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes=1000, in_channels=3, dtype=np.float32):
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, dtype)


def resnet34(num_classes=1000, in_channels=3, dtype=np.float32):
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, dtype)


def resnet50(num_classes=1000, in_channels=3, dtype=np.float32):
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), stages of 256/512/1024/2048 output maps."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, dtype, block=Bottleneck)


def resnet101(num_classes=1000, in_channels=3, dtype=np.float32):
    """ResNet-101: bottleneck blocks (3, 4, 23, 3)."""
    return ResNet((3, 4, 23, 3), num_classes, in_channels, dtype, block=Bottleneck)


def resnet152(num_classes=1000, in_channels=3, dtype=np.float32):
    """ResNet-152: bottleneck blocks (3, 8, 36, 3) — 3 units that output 256 maps, 8 of 512, 36 of
    1024 and 3 of 2048, each 1×1 (reduce 4×) → 3×3 → 1×1 (expand 4×)."""
    return ResNet((3, 8, 36, 3), num_classes, in_channels, dtype, block=Bottleneck)


def count_parameters(model):
    """Number of trainable scalars in ``model``."""
    return sum(p.size for p in model.parameters())


# name -> (factory, input shape (C, H, W) it was designed for)
REGISTRY = OrderedDict([
    ("lenet5", (lenet5, (1, 32, 32))), ("tf_mnist_cnn", (tf_mnist_cnn, (1, 28, 28))),
    ("cifar10_cnn", (cifar10_cnn, (3, 24, 24))), ("alexnet", (alexnet, (3, 227, 227))),
    ("vgg16", (lambda **kw: vgg("D", **kw), (3, 224, 224))), ("googlenet", (googlenet, (3, 224, 224))),
    ("resnet18", (resnet18, (3, 224, 224))), ("resnet34", (resnet34, (3, 224, 224))),
    ("resnet50", (resnet50, (3, 224, 224))), ("resnet101", (resnet101, (3, 224, 224))),
    ("resnet152", (resnet152, (3, 224, 224))),
])
