"""Benchmark shape suites. Each layer is a dict with name, N, C, H, W, K, R, S, stride, pad,
dilation, groups (stride/pad/dilation as [h, w])."""
import json
from importlib import resources

from convkern import cli_args

# The conv layers of the reference CNNs at training batch sizes (pad as PyTorch's symmetric pad;
# TensorFlow "same" layers with odd kernels pad (k-1)/2 on every side, which is the same thing).
REFERENCE = [
    # name               N   C    H    W    K    R   S  stride pad groups
    ("lenet5.c1",       64,   1,  32,  32,   6,  5,  5, 1, 0, 1),
    ("lenet5.c3",       64,   6,  14,  14,  16,  5,  5, 1, 0, 1),
    ("tf_mnist.conv1",  64,   1,  28,  28,  32,  5,  5, 1, 2, 1),
    ("tf_mnist.conv2",  64,  32,  14,  14,  64,  5,  5, 1, 2, 1),
    ("cifar10.conv1",   64,   3,  24,  24,  64,  5,  5, 1, 2, 1),
    ("cifar10.conv2",   64,  64,  12,  12,  64,  5,  5, 1, 2, 1),
    ("alexnet.conv1",   16,   3, 227, 227,  96, 11, 11, 4, 0, 1),
    ("alexnet.conv2",   16,  96,  27,  27, 256,  5,  5, 1, 2, 2),
    ("alexnet.conv3",   16, 256,  13,  13, 384,  3,  3, 1, 1, 1),
    ("alexnet.conv4",   16, 384,  13,  13, 384,  3,  3, 1, 1, 2),
    ("alexnet.conv5",   16, 384,  13,  13, 256,  3,  3, 1, 1, 2),
    ("vgg16.conv1_1",    4,   3, 224, 224,  64,  3,  3, 1, 1, 1),
    ("vgg16.conv2_1",    4,  64, 112, 112, 128,  3,  3, 1, 1, 1),
    ("vgg16.conv3_2",    4, 256,  56,  56, 256,  3,  3, 1, 1, 1),
    ("vgg16.conv4_2",    4, 512,  28,  28, 512,  3,  3, 1, 1, 1),
    ("vgg16.conv5_2",    4, 512,  14,  14, 512,  3,  3, 1, 1, 1),
    ("resnet34.conv1",   4,   3, 224, 224,  64,  7,  7, 2, 3, 1),
    ("resnet34.layer1",  4,  64,  56,  56,  64,  3,  3, 1, 1, 1),
    ("resnet34.layer2",  4, 128,  28,  28, 128,  3,  3, 1, 1, 1),
    ("resnet34.down3",   4, 128,  28,  28, 256,  1,  1, 2, 0, 1),
    ("resnet34.layer3",  4, 256,  14,  14, 256,  3,  3, 1, 1, 1),
    ("resnet34.layer4",  4, 512,   7,   7, 512,  3,  3, 1, 1, 1),
    # ResNet-50's bottleneck layers that ResNet-34 lacks, named by module path (`convkern summary
    # resnet50`): per stage the first unit's 1x1 reduce, strided 3x3 (stride on the 3x3, as
    # torchvision), 1x1 expand and strided 1x1 projection, then the later units' 1x1 reduce. Its stem
    # and stride-1 3x3s are resnet34.conv1/layer1-4; layer1.0.shortcut is layer1.0.conv3's shape;
    # later units' 1x1 expands are the first unit's. ResNet-101/152 only repeat these shapes.
    # name                        N     C    H    W     K  R  S  stride pad groups
    ("resnet50.layer1.0.conv1",    4,   64, 56, 56,   64, 1, 1, 1, 0, 1),
    ("resnet50.layer1.0.conv3",    4,   64, 56, 56,  256, 1, 1, 1, 0, 1),
    ("resnet50.layer1.1.conv1",    4,  256, 56, 56,   64, 1, 1, 1, 0, 1),
    ("resnet50.layer2.0.conv1",    4,  256, 56, 56,  128, 1, 1, 1, 0, 1),
    ("resnet50.layer2.0.conv2",    4,  128, 56, 56,  128, 3, 3, 2, 1, 1),
    ("resnet50.layer2.0.conv3",    4,  128, 28, 28,  512, 1, 1, 1, 0, 1),
    ("resnet50.layer2.0.shortcut", 4,  256, 56, 56,  512, 1, 1, 2, 0, 1),
    ("resnet50.layer2.1.conv1",    4,  512, 28, 28,  128, 1, 1, 1, 0, 1),
    ("resnet50.layer3.0.conv1",    4,  512, 28, 28,  256, 1, 1, 1, 0, 1),
    ("resnet50.layer3.0.conv2",    4,  256, 28, 28,  256, 3, 3, 2, 1, 1),
    ("resnet50.layer3.0.conv3",    4,  256, 14, 14, 1024, 1, 1, 1, 0, 1),
    ("resnet50.layer3.0.shortcut", 4,  512, 28, 28, 1024, 1, 1, 2, 0, 1),
    ("resnet50.layer3.1.conv1",    4, 1024, 14, 14,  256, 1, 1, 1, 0, 1),
    ("resnet50.layer4.0.conv1",    4, 1024, 14, 14,  512, 1, 1, 1, 0, 1),
    ("resnet50.layer4.0.conv2",    4,  512, 14, 14,  512, 3, 3, 2, 1, 1),
    ("resnet50.layer4.0.conv3",    4,  512,  7,  7, 2048, 1, 1, 1, 0, 1),
    ("resnet50.layer4.0.shortcut", 4, 1024, 14, 14, 2048, 1, 1, 2, 0, 1),
    ("resnet50.layer4.1.conv1",    4, 2048,  7,  7,  512, 1, 1, 1, 0, 1),
]

SUITES = ("reference", "deepbench", "convnet")


def _layer(name, N, C, H, W, K, R, S, stride, pad, dilation=(1, 1), groups=1):
    pair = lambda v: list(v) if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
    return dict(name=name, N=N, C=C, H=H, W=W, K=K, R=R, S=S, stride=pair(stride), pad=pair(pad),
                dilation=pair(dilation), groups=groups)


def _read(filename):
    return json.loads(resources.files(__package__).joinpath(filename).read_text())


def load_suite(name):
    """The layers of a named suite, or of a user JSON file (a list of layer dicts, or
    {"layers": [...]}, keys as above; stride/pad/dilation default 1/0/1, groups 1)."""
    if name == "reference":
        return [_layer(n, N, C, H, W, K, R, S, st, p, groups=g) for n, N, C, H, W, K, R, S, st, p, g in REFERENCE]
    if name == "deepbench":
        data = _read("deepbench_conv.json")
        cols = data["columns"]
        layers = []
        for i, row in enumerate(data["training"]):
            v = dict(zip(cols, row))
            layers.append(_layer(f"{v['app'].lower().replace(' ', '_')}.{i}", v["N"], v["C"], v["H"], v["W"], v["K"],
                                 v["R_filter_h"], v["S_filter_w"], (v["stride_h"], v["stride_w"]),
                                 (v["pad_h"], v["pad_w"])))
        return layers
    if name == "convnet":
        return [_layer(l["name"], l["N"], l["C"], l["H"], l["W"], l["K"], l["R"], l["S"], l["stride"], l["pad"])
                for l in _read("convnet_benchmarks_layers.json")["layers"]]
    try:
        with open(name) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--suite: {name!r} is neither a suite name {SUITES} nor an existing JSON file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--suite: {name} is not valid JSON ({e})") from None
    rows = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"--suite: {name} must hold a non-empty list of layers or {{\"layers\": [...]}}")
    return [_user_layer(row, i, name) for i, row in enumerate(rows)]


REQUIRED = ("N", "C", "H", "W", "K", "R", "S")
OPTIONAL = {"name": None, "stride": 1, "pad": 0, "dilation": 1, "groups": 1}


def _user_layer(row, i, filename):
    """Layer ``i`` of a user suite file, every value checked: sizes and groups positive ints,
    stride/dilation positive and pad non-negative (an int or an [h, w] pair), no unknown keys."""
    where = f"--suite: layer {i} of {filename}"
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with keys {list(REQUIRED)}, got {type(row).__name__} {row!r}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"{where} lacks keys {missing} (each layer needs {list(REQUIRED)})")
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; a layer has {list(REQUIRED) + list(OPTIONAL)}")
    name = row.get("name", f"layer{i}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"--suite: layer {i} ({name}) of {filename}:"
    sizes = [cli_args.positive_int(row[k], f"{where} {k}") for k in REQUIRED]
    geometry = {}
    for key, check in (("stride", cli_args.positive_int), ("pad", cli_args.nonneg_int),
                       ("dilation", cli_args.positive_int)):
        value = row.get(key, OPTIONAL[key])
        if isinstance(value, list) and len(value) == 2:
            geometry[key] = [check(v, f"{where} {key}") for v in value]
        elif isinstance(value, list):
            raise ValueError(f"{where} {key} must be an int or an [h, w] pair, got {value!r}")
        else:
            geometry[key] = check(value, f"{where} {key}")
    groups = cli_args.positive_int(row.get("groups", 1), f"{where} groups")
    return _layer(name, *sizes, geometry["stride"], geometry["pad"], geometry["dilation"], groups)


def quick(layer, simulated=False):
    """A CI-sized version of a layer: batch <= 2, spatial size <= 16 (but at least the kernel),
    channels <= 16 (kept divisible by groups). ``simulated``: for Numba's CUDA simulator, which
    runs one Python thread per CUDA thread, batch 1 and sizes <= 8."""
    g = layer["groups"]
    n, size = (1, 8) if simulated else (2, 16)
    q = dict(layer)
    q["N"] = min(layer["N"], n)
    q["C"] = max(g, min(layer["C"], size) // g * g)
    q["K"] = max(g, min(layer["K"], size) // g * g)
    span_h = layer["dilation"][0] * (layer["R"] - 1) + 1
    span_w = layer["dilation"][1] * (layer["S"] - 1) + 1
    q["H"] = min(layer["H"], max(size, span_h))
    q["W"] = min(layer["W"], max(size, span_w))
    return q
