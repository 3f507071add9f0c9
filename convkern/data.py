"""Data sets and batches: the idx format (MNIST, Fashion-MNIST), the CIFAR-10 binary format, the
embedded default set, a seeded ``DataLoader`` and the TensorFlow CIFAR-10 tutorial's augmentation.

Nothing here downloads. Data comes from the package itself (``"default"``: the MNIST test split,
first 8,000 images for training and the last 2,000 for testing), from the system package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or from a directory the user names.
Images are float32 ``(N, C, H, W)`` scaled to [0, 1]; labels are int64 ``(N,)``.
"""
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from convkern import random as ck_random

EMBEDDED_DIR = Path(__file__).resolve().parent / "datasets" / "mnist-t10k"
EMBEDDED_TRAIN = 8000
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")
NAMES = ("default", "fashion-mnist", "mnist", "cifar10")

IDX_FORMAT = ("idx file: magic bytes 0x00 0x00 <dtype code> <ndim>, ndim big-endian uint32 sizes, "
              "then the data (raw or gzip-compressed)")
CIFAR10_FORMAT = ("CIFAR-10 binary batch: records of 1 label byte (0..9) + 3072 pixel bytes "
                  "(32x32 red, then green, then blue, row-major)")
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_RECORD = 1 + 3 * 32 * 32
_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def _read_bytes(path, expected):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a {expected})")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: truncated or corrupt gzip data ({e}); expected a {expected}") from None
    return raw


def read_idx(path, ndim=None):
    """Read an idx file (gzip or raw, told apart by the gzip magic bytes, not by the extension).

    The header is checked against the file: magic ``00 00 <dtype> <ndim>`` (MNIST images are
    0x0803, labels 0x0801), and the product of the sizes times the item size must match the data
    exactly. ``ndim`` asks for that number of dimensions. Returns a native-endian NumPy array."""
    path = Path(path)
    raw = _read_bytes(path, IDX_FORMAT)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: bad magic bytes {raw[:4].hex(' ')!r}; expected an {IDX_FORMAT}")
    code, nd = raw[2], raw[3]
    if ndim is not None and nd != ndim:
        raise ValueError(f"{path}: idx file has {nd} dimensions (magic 0x{code:02x}{nd:02x}), "
                         f"expected {ndim} (magic 0x08{ndim:02x})")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, {header} needed); expected an {IDX_FORMAT}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", nd, 4))
    dtype = np.dtype(_IDX_DTYPES[code])
    need = header + math.prod(dims) * dtype.itemsize
    if len(raw) != need:
        raise ValueError(f"{path}: {len(raw)} bytes of idx data but the header's sizes {dims} of {dtype.name} "
                         f"need {need}: truncated or not an idx file")
    return np.frombuffer(raw, dtype, offset=header).astype(dtype.newbyteorder("=")).reshape(dims)


def read_cifar10_batch(path):
    """Read one CIFAR-10 binary batch; returns (uint8 images (N, 3, 32, 32), uint8 labels (N,))."""
    path = Path(path)
    raw = _read_bytes(path, CIFAR10_FORMAT)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a positive multiple of {_CIFAR_RECORD}; "
                         f"expected a {CIFAR10_FORMAT}")
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {int(labels.max())} out of range; expected a {CIFAR10_FORMAT}")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


class Dataset:
    """Images float32 (N, C, H, W) in [0, 1] and labels int64 (N,); indexing gives (images, labels)."""

    def __init__(self, images, labels, name=""):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"Dataset: images must be (N, C, H, W) and labels (N,), got {images.shape} "
                             f"and {labels.shape}")
        self.images = np.ascontiguousarray(images, np.float32)
        self.labels = labels.astype(np.int64, copy=False)
        self.name = name

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def subset(self, index, name=None):
        return Dataset(self.images[index], self.labels[index], self.name if name is None else name)

    def __repr__(self):
        return f"Dataset({self.name!r}, images={self.images.shape}, labels={self.labels.shape})"


def _scaled(images_u8):
    return np.true_divide(images_u8, np.float32(255), dtype=np.float32)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _check_dir(path, what):
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (expected {what})")
    return path


def _locate(directory, names):
    """The first of ``names`` in ``directory`` or one of its immediate subdirectories, else None."""
    for folder in [directory] + sorted(p for p in directory.iterdir() if p.is_dir()):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _mnist_names(split, kind):
    prefix = _MNIST_PREFIX[split]
    plain, dotted = f"{prefix}-{kind}-ubyte", f"{prefix}-{kind.replace('-', '.')}-ubyte"
    return [plain, plain + ".gz", dotted, dotted + ".gz"]


def load_mnist(path, split="train", name=None):
    """MNIST-style idx pair of ``split`` from directory ``path`` (or a subdirectory of it):
    ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` for "train", ``t10k-...`` for
    "test", each raw or ``.gz``. Returns a ``Dataset`` of (N, 1, 28, 28) images."""
    split = _check_split(split)
    directory = _check_dir(path, "a directory with MNIST-style idx files")
    found = {}
    for kind in ("images-idx3", "labels-idx1"):
        names = _mnist_names(split, kind)
        found[kind] = _locate(directory, names)
        if found[kind] is None:
            raise FileNotFoundError(f"{directory / names[0]}: no such file (nor {', '.join(names[1:])}); "
                                    f"expected the {split} split as an {IDX_FORMAT}")
    images = read_idx(found["images-idx3"], ndim=3)
    labels = read_idx(found["labels-idx1"], ndim=1)
    for path_, array in ((found["images-idx3"], images), (found["labels-idx1"], labels)):
        if array.dtype != np.uint8:
            raise ValueError(f"{path_}: idx data type {array.dtype.name}, expected unsigned bytes (code 0x08)")
    if len(images) != len(labels):
        raise ValueError(f"{found['images-idx3']}: {len(images)} images but {found['labels-idx1']} "
                         f"holds {len(labels)} labels")
    return Dataset(_scaled(images[:, None]), labels, name or f"{directory.name}:{split}")


def load_cifar10(path, split="train"):
    """CIFAR-10 binary version from directory ``path`` (or its ``cifar-10-batches-bin/``):
    ``data_batch_1.bin`` .. ``data_batch_5.bin`` for "train", ``test_batch.bin`` for "test"."""
    split = _check_split(split)
    directory = _check_dir(path, "a directory with the CIFAR-10 binary batches")
    parts = []
    for name in _CIFAR_FILES[split]:
        file = _locate(directory, [name])
        if file is None:
            raise FileNotFoundError(f"{directory / name}: no such file (also looked in its subdirectories); "
                                    f"expected a {CIFAR10_FORMAT}")
        parts.append(read_cifar10_batch(file))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset(_scaled(images), labels, f"cifar10:{split}")


def load_default(split="train"):
    """The embedded MNIST test split: its first 8,000 images are "train", the last 2,000 "test"."""
    split = _check_split(split)
    full = load_mnist(EMBEDDED_DIR, "test")
    index = slice(0, EMBEDDED_TRAIN) if split == "train" else slice(EMBEDDED_TRAIN, None)
    return full.subset(index, f"default:{split}")


def _detect(directory):
    for name in ("data_batch_1.bin", "test_batch.bin"):
        if _locate(directory, [name]):
            return "cifar10"
    for split in SPLITS:
        if _locate(directory, _mnist_names(split, "images-idx3")):
            return "mnist"
    raise ValueError(f"{directory}: neither MNIST-style idx files (train-images-idx3-ubyte[.gz], t10k-...) "
                     "nor CIFAR-10 binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) "
                     "found in it or its subdirectories")


def load_dataset(name_or_path="default", split="train", path=None, pad_to=None):
    """Load a data set by name or from a directory; never downloads.

    ``"default"``: the embedded MNIST test split (8,000 train / 2,000 test). ``"fashion-mnist"``:
    ``/usr/share/datasets/fashion-mnist`` (or ``path``). ``"mnist"`` and ``"cifar10"``: read from
    ``path``. Anything else is a directory whose format (idx or CIFAR-10 binary) is detected.
    ``pad_to`` zero-pads the images to ``pad_to`` x ``pad_to``, centred (28 -> 32 for LeNet-5)."""
    _check_split(split)
    name = os.fspath(name_or_path)
    if name == "default":
        data = load_default(split)
    elif name == "fashion-mnist":
        directory = Path(path) if path is not None else FASHION_MNIST_DIR
        if path is None and not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such directory; Fashion-MNIST comes from the system package: "
                                    "apt-get install -y dataset-fashion-mnist (or pass path= to a directory "
                                    "holding its idx files)")
        data = load_mnist(directory, split, f"fashion-mnist:{split}")
    elif name in ("mnist", "cifar10"):
        if path is None:
            raise ValueError(f"load_dataset: {name!r} is not shipped and never downloaded; pass path= to a "
                             f"directory holding its files ({'idx' if name == 'mnist' else 'CIFAR-10 binary'} format)")
        data = load_mnist(path, split) if name == "mnist" else load_cifar10(path, split)
    elif isinstance(name_or_path, os.PathLike) or os.sep in name or name.startswith((".", "~")) or Path(name).exists():
        directory = _check_dir(name, "a directory with MNIST-style idx files or CIFAR-10 binary batches")
        data = load_cifar10(directory, split) if _detect(directory) == "cifar10" else load_mnist(directory, split)
    else:
        raise ValueError(f"load_dataset: unknown data set {name!r}; expected one of {', '.join(NAMES)} "
                         "or a directory path")
    if pad_to is not None:
        data = Dataset(pad_images(data.images, pad_to), data.labels, data.name)
    return data


def pad_images(images, size):
    """Zero-pad (N, C, H, W) images to (N, C, size, size), centred (the extra pixel, if odd, goes last)."""
    images = _check_batch(images, "pad_images")
    h, w = images.shape[2:]
    if size < h or size < w:
        raise ValueError(f"pad_images: size {size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (0, 0), (top, size - h - top), (left, size - w - left)))


def pad_to(size):
    """Transform: ``pad_images(images, size)``."""
    return lambda images: pad_images(images, size)


class DataLoader:
    """Batches ``(images, labels)`` of a ``Dataset`` as NumPy arrays.

    With ``shuffle`` the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, so a
    resumed run reproduces it. Each ``iter(loader)`` runs the current epoch and advances it by one;
    ``set_epoch(e)`` makes the next pass epoch ``e``; ``iter_epoch(e)`` runs epoch ``e`` without
    touching the counter. ``transform(images)`` maps each image batch; a transform whose
    ``takes_rng`` attribute is true is called as ``transform(images, rng=...)`` with a Generator
    also drawn from ``(seed, e)``, so random augmentation reproduces too.

    Data parallelism: with ``world_size`` W > 1, ``batch_size`` is the *global* batch (a multiple
    of W) and this loader yields rank ``rank``'s share of it: global batch b holds the samples
    ``order[b*batch_size : (b+1)*batch_size]`` of the epoch's order (the same on every rank) and
    rank r takes every W-th of them starting at r, so the shares are disjoint, cover the batch,
    and differ in size by at most one (a final partial batch can leave a rank an empty share).
    Every rank yields ``len(loader)`` batches. A random transform runs on the whole global batch
    on every rank before the share is taken, so each sample is augmented exactly as it would be
    at world size 1 (its cost is that of the global batch)."""

    def __init__(self, dataset, batch_size, shuffle=False, seed=0, drop_last=False, transform=None, rank=0,
                 world_size=1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative int, got {seed!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
            raise ValueError(f"DataLoader: world_size must be a positive int, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(f"DataLoader: rank must be an int in 0..{world_size - 1}, got {rank!r}")
        if batch_size % world_size:
            raise ValueError(f"DataLoader: batch_size (the global batch) must be a multiple of world_size "
                             f"{world_size}, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), shuffle
        self.seed, self.drop_last, self.transform = int(seed), drop_last, transform
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def order(self, epoch):
        """Sample indices in the order epoch ``epoch`` visits them (the same on every rank)."""
        n = len(self.dataset)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def global_size(self, batch):
        """The number of samples in global batch ``batch`` (all ranks' shares together)."""
        return min(self.batch_size, len(self.dataset) - batch * self.batch_size)

    def iter_epoch(self, epoch):
        order = self.order(epoch)
        rng = np.random.default_rng([self.seed, epoch, 1])
        takes_rng = getattr(self.transform, "takes_rng", False)
        share = slice(self.rank, None, self.world_size)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if not takes_rng:
                index = index[share]
            images, labels = self.dataset.images[index], self.dataset.labels[index]
            if self.transform is not None:
                images = self.transform(images, rng=rng) if takes_rng else self.transform(images)
            if takes_rng and self.world_size > 1:
                images, labels = np.ascontiguousarray(images[share]), labels[share]
            yield images, labels

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iter_epoch(epoch)


def _check_batch(images, op):
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype.kind != "f":
        raise ValueError(f"{op}: images must be a floating NumPy array (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images).__name__)} {getattr(images, 'dtype', '')}")
    return images


def _generator(rng):
    if rng is None:
        return ck_random.generator()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def _check_crop(images, size, op):
    h, w = _check_batch(images, op).shape[2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"{op}: size must be in 1..{min(h, w)} for {h}x{w} images, got {size}")
    return h, w


def random_crop(images, size=24, rng=None):
    """A size x size window at an independent uniform random position for each image."""
    h, w = _check_crop(images, size, "random_crop")
    rng = _generator(rng)
    top = rng.integers(0, h - size + 1, len(images))
    left = rng.integers(0, w - size + 1, len(images))
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(2, 3))
    return np.ascontiguousarray(windows[np.arange(len(images)), :, top, left])


def random_flip(images, rng=None):
    """Mirror each image left-right with probability 1/2."""
    _check_batch(images, "random_flip")
    flip = _generator(rng).random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[..., ::-1], images)


def random_brightness(images, max_delta=63 / 255, rng=None):
    """Add one delta ~ U[-max_delta, max_delta) per image (no clipping, as tf.image.random_brightness)."""
    _check_batch(images, "random_brightness")
    if max_delta < 0:
        raise ValueError(f"random_brightness: max_delta must be >= 0, got {max_delta}")
    delta = _generator(rng).uniform(-max_delta, max_delta, len(images)).astype(images.dtype)
    return images + delta[:, None, None, None]


def random_contrast(images, lower=0.2, upper=1.8, rng=None):
    """Per image, factor f ~ U[lower, upper): (x - mean) * f + mean, the mean taken per channel over
    the pixels (tf.image.random_contrast; no clipping)."""
    _check_batch(images, "random_contrast")
    if not 0 <= lower < upper:
        raise ValueError(f"random_contrast: need 0 <= lower < upper, got lower={lower}, upper={upper}")
    factor = _generator(rng).uniform(lower, upper, len(images)).astype(images.dtype)[:, None, None, None]
    mean = images.mean(axis=(2, 3), keepdims=True)
    return (images - mean) * factor + mean


def per_image_standardization(images):
    """(x - mean) / max(std, 1 / sqrt(C*H*W)) per image, as tf.image.per_image_standardization."""
    _check_batch(images, "per_image_standardization")
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    std = images.std(axis=(1, 2, 3), keepdims=True)
    floor = images.dtype.type(1 / math.sqrt(math.prod(images.shape[1:])))
    return (images - mean) / np.maximum(std, floor)


def center_crop(images, size=24):
    """The central size x size window (offset (H - size) // 2), as tf.image.resize_image_with_crop_or_pad."""
    h, w = _check_crop(images, size, "center_crop")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(images[:, :, top:top + size, left:left + size])


def random_shift(images, max_shift=2, rng=None):
    """Translate each image by a random (dy, dx) in [-max_shift, max_shift], filling with zeros:
    a random crop of the zero-padded image back to its own size."""
    images = _check_batch(images, "random_shift")
    h, w = images.shape[2:]
    padded = np.pad(images, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    if h != w:
        raise ValueError(f"random_shift: images must be square, got {h}x{w}")
    return random_crop(padded, h, rng)


def shift_transform(max_shift=2):
    """Transform for a DataLoader: ``random_shift`` with the loader's per-epoch Generator."""
    def transform(images, rng=None):
        return random_shift(images, max_shift, rng)
    transform.takes_rng = True
    return transform


def cifar_train_transform(rng=None, size=24):
    """The TF CIFAR-10 tutorial's training distortion: random crop, random left-right flip, random
    brightness (max_delta 63/255) then random contrast (0.2..1.8), then per-image standardization.
    Uses the Generator passed at call time (the DataLoader passes one), else ``rng``, else the
    global one."""
    def transform(images, rng=None, _own=rng):
        g = _generator(rng if rng is not None else _own)
        images = random_flip(random_crop(images, size, g), g)
        images = random_contrast(random_brightness(images, 63 / 255, g), 0.2, 1.8, g)
        return per_image_standardization(images)
    transform.takes_rng = True
    return transform


def cifar_eval_transform(size=24):
    """The TF CIFAR-10 tutorial's evaluation input: centre crop, then per-image standardization."""
    return lambda images: per_image_standardization(center_crop(images, size))


__all__ = ["CIFAR10_FORMAT", "DataLoader", "Dataset", "EMBEDDED_DIR", "FASHION_MNIST_DIR", "IDX_FORMAT",
           "center_crop", "cifar_eval_transform", "cifar_train_transform", "load_cifar10", "load_dataset",
           "load_default", "load_mnist", "pad_images", "pad_to", "per_image_standardization", "random_brightness",
           "random_contrast", "random_crop", "random_flip", "random_shift", "shift_transform", "read_cifar10_batch", "read_idx"]
