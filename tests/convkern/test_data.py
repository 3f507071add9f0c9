"""convkern.data: idx and CIFAR-10 readers on synthetic files, the embedded default set, clear
errors for missing and malformed files, the seeded DataLoader and the CIFAR tutorial transforms."""
import gzip
import hashlib
import struct

import numpy as np
import pytest

from convkern import data as D


def write_idx(path, array, compress=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    payload = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_mnist(directory, split, n, rng, compress=True):
    prefix = {"train": "train", "test": "t10k"}[split]
    ext = ".gz" if compress else ""
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
    return images, labels


def write_cifar(path, n, rng):
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    path.write_bytes(records.tobytes())
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (3, 4, 5)), (np.uint8, (7,)), (">i4", (2, 3)), (">f8", (4,))])
def test_read_idx_round_trip(tmp_path, rng, compress, dtype, shape):
    array = (rng.random(shape) * 100).astype(dtype)
    path = write_idx(tmp_path / "x.idx", array, compress)
    back = D.read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_gzip_is_told_by_magic_not_by_extension(tmp_path, rng):
    array = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    raw_named_gz = write_idx(tmp_path / "raw.gz", array, compress=False)
    gz_named_raw = write_idx(tmp_path / "compressed-idx3-ubyte", array, compress=True)
    np.testing.assert_array_equal(D.read_idx(raw_named_gz), array)
    np.testing.assert_array_equal(D.read_idx(gz_named_raw), array)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_directory(tmp_path, rng, compress):
    images, labels = write_mnist(tmp_path, "train", 5, rng, compress)
    test_images, _ = write_mnist(tmp_path, "test", 3, rng, compress)
    train = D.load_mnist(tmp_path, "train")
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images[:, 0], images / np.float32(255))
    np.testing.assert_array_equal(train.labels, labels)
    via_path = D.load_dataset(str(tmp_path), "test")
    np.testing.assert_array_equal(via_path.images[:, 0], test_images / np.float32(255))
    fashion = D.load_dataset("fashion-mnist", "train", path=tmp_path)
    np.testing.assert_array_equal(fashion.labels, labels)


def test_load_cifar10_directory_and_subdirectory(tmp_path, rng):
    batches = tmp_path / "cifar-10-batches-bin"
    batches.mkdir()
    train = [write_cifar(batches / f"data_batch_{i}.bin", 2, rng) for i in range(1, 6)]
    test_images, test_labels = write_cifar(batches / "test_batch.bin", 3, rng)
    images, labels = D.read_cifar10_batch(batches / "data_batch_1.bin")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, train[0][0])
    data = D.load_dataset(tmp_path, "train")
    assert data.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(data.images, np.concatenate([t[0] for t in train]) / np.float32(255))
    np.testing.assert_array_equal(data.labels, np.concatenate([t[1] for t in train]))
    test = D.load_dataset("cifar10", "test", path=batches)
    np.testing.assert_array_equal(test.images, test_images / np.float32(255))
    np.testing.assert_array_equal(test.labels, test_labels)


def test_embedded_default_split():
    md5 = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
           "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    for name, digest in md5.items():
        assert hashlib.md5((D.EMBEDDED_DIR / name).read_bytes()).hexdigest() == digest
    train, test = D.load_dataset("default", "train"), D.load_dataset("default", "test")
    assert train.images.shape == (8000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    for part in (train, test):
        assert set(np.unique(part.labels)) == set(range(10))
        assert part.images.min() == 0.0 and part.images.max() == 1.0
    assert train.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the MNIST test split's first labels
    padded = D.load_dataset("default", "test", pad_to=32)
    np.testing.assert_array_equal(padded.images[:, :, 2:30, 2:30], test.images)
    assert padded.images[:, :, :2].max() == 0 and padded.images[:, :, :, 30:].max() == 0


def _idx_header(code, dims):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("content,match", [
    (b"\x00\x01\x08\x03" + bytes(12), "bad magic bytes"),
    (b"\x00\x00\x07\x01" + bytes(8), "bad magic bytes"),
    (b"\x00\x00", "bad magic bytes"),
    (_idx_header(0x08, (4, 2, 2)) + bytes(15), "need 32: truncated"),
    (_idx_header(0x08, (4,)) + bytes(5), "need 12: truncated"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated idx header"),
    (gzip.compress(_idx_header(0x08, (3,)) + bytes(3), mtime=0)[:-9], "truncated or corrupt gzip"),
])
def test_malformed_idx_names_the_file(tmp_path, content, match):
    path = tmp_path / "broken-idx-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        D.read_idx(path)
    assert str(path) in str(err.value)


def test_idx_of_the_wrong_rank_or_type_in_an_mnist_directory(tmp_path, rng):
    write_mnist(tmp_path, "train", 2, rng, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: idx file has 2 dimensions.*expected 1"):
        D.load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="2 images but .*train-labels-idx1-ubyte holds 3 labels"):
        D.load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, ">i4"))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: idx data type int32, expected unsigned bytes"):
        D.load_mnist(tmp_path)


@pytest.mark.parametrize("size,match", [(0, "0 bytes is not a positive multiple of 3073"),
                                        (3073 * 2 - 1, "6145 bytes is not a positive multiple of 3073")])
def test_malformed_cifar_batch_names_the_file(tmp_path, size, match):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(ValueError, match=match) as err:
        D.read_cifar10_batch(path)
    assert str(path) in str(err.value) and "records of 1 label byte (0..9) + 3072 pixel bytes" in str(err.value)


def test_cifar_label_out_of_range(tmp_path):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="test_batch.bin: label byte 10 out of range"):
        D.read_cifar10_batch(path)


def test_missing_files_and_directories(tmp_path, rng, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothere.idx: no such file"):
        D.read_idx(tmp_path / "nothere.idx")
    with pytest.raises(FileNotFoundError, match="nodir: no such directory"):
        D.load_dataset(tmp_path / "nodir")
    with pytest.raises(FileNotFoundError, match="nodir: no such directory"):
        D.load_mnist(tmp_path / "nodir")
    write_mnist(tmp_path, "test", 2, rng)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte: no such file .*train-images-idx3-ubyte.gz"):
        D.load_dataset(tmp_path, "train")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte: no such file"):
        D.load_mnist(tmp_path, "test")
    (tmp_path / "test_batch.bin").write_bytes(bytes(3073))
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin: no such file"):
        D.load_dataset(tmp_path, "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: neither MNIST-style idx files .* nor CIFAR-10 binary batches"):
        D.load_dataset(empty)
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        D.load_dataset("fashion-mnist")


@pytest.mark.parametrize("call,error,match", [
    (lambda: D.load_dataset("cifar10"), ValueError, "'cifar10' is not shipped and never downloaded; pass path="),
    (lambda: D.load_dataset("mnist"), ValueError, "'mnist' is not shipped"),
    (lambda: D.load_dataset("imagenet"), ValueError, "unknown data set 'imagenet'"),
    (lambda: D.load_dataset("default", "val"), ValueError, "split must be 'train' or 'test'"),
    (lambda: D.DataLoader(D.Dataset(np.zeros((2, 1, 2, 2)), np.zeros(2)), 0), ValueError, "batch_size"),
    (lambda: D.DataLoader(D.Dataset(np.zeros((2, 1, 2, 2)), np.zeros(2)), 1, seed=-1), ValueError, "seed"),
    (lambda: D.DataLoader(D.Dataset(np.zeros((2, 1, 2, 2)), np.zeros(2)), 4, world_size=0), ValueError,
     "world_size must be a positive int"),
    (lambda: D.DataLoader(D.Dataset(np.zeros((2, 1, 2, 2)), np.zeros(2)), 4, rank=2, world_size=2), ValueError,
     r"rank must be an int in 0..1, got 2"),
    (lambda: D.DataLoader(D.Dataset(np.zeros((2, 1, 2, 2)), np.zeros(2)), 6, world_size=4), ValueError,
     "batch_size .the global batch. must be a multiple of world_size 4, got 6"),
    (lambda: D.Dataset(np.zeros((2, 2, 2)), np.zeros(2)), ValueError, r"images must be \(N, C, H, W\)"),
    (lambda: D.random_crop(np.zeros((1, 1, 4, 4)), 5), ValueError, "random_crop: size must be in 1..4"),
    (lambda: D.center_crop(np.zeros((1, 4, 4)), 2), ValueError, "center_crop: images must be"),
    (lambda: D.random_contrast(np.zeros((1, 1, 2, 2)), 1.5, 1.0), ValueError, "lower < upper"),
    (lambda: D.random_flip(np.zeros((1, 1, 2, 2)), rng=3), TypeError, "numpy.random.Generator"),
    (lambda: D.pad_images(np.zeros((1, 1, 4, 4)), 3), ValueError, "pad_images: size 3 is smaller"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def small_dataset(n=10):
    return D.Dataset(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.arange(n))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_covers_every_sample_once(shuffle, drop_last):
    loader = D.DataLoader(small_dataset(10), 4, shuffle=shuffle, drop_last=drop_last)
    batches = list(loader)
    assert len(batches) == len(loader) == (2 if drop_last else 3)
    assert [len(y) for _, y in batches] == ([4, 4] if drop_last else [4, 4, 2])
    seen = np.concatenate([y for _, y in batches])
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    if drop_last:
        assert len(set(seen.tolist())) == 8
    else:
        assert sorted(seen.tolist()) == list(range(10))
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(len(seen)))


def test_loader_order_depends_on_seed_and_epoch_only():
    def epoch_labels(loader, epoch):
        return np.concatenate([y for _, y in loader.iter_epoch(epoch)])
    a = D.DataLoader(small_dataset(50), 8, shuffle=True, seed=3)
    b = D.DataLoader(small_dataset(50), 8, shuffle=True, seed=3)
    np.testing.assert_array_equal(epoch_labels(a, 2), epoch_labels(b, 2))
    assert not np.array_equal(epoch_labels(a, 2), epoch_labels(a, 3))
    c = D.DataLoader(small_dataset(50), 8, shuffle=True, seed=4)
    assert not np.array_equal(epoch_labels(a, 2), epoch_labels(c, 2))
    first, second = [np.concatenate([y for _, y in a]) for _ in range(2)]
    assert a.epoch == 2 and not np.array_equal(first, second)
    resumed = D.DataLoader(small_dataset(50), 8, shuffle=True, seed=3)
    resumed.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([y for _, y in resumed]), second)


def test_loader_random_transform_reproduces_per_epoch():
    images = np.random.default_rng(1).random((6, 3, 8, 8), dtype=np.float32)
    dataset = D.Dataset(images, np.arange(6))
    loader = D.DataLoader(dataset, 3, shuffle=True, seed=7, transform=D.cifar_train_transform(size=5))
    again = D.DataLoader(dataset, 3, shuffle=True, seed=7, transform=D.cifar_train_transform(size=5))
    one, two = list(loader.iter_epoch(4)), list(again.iter_epoch(4))
    assert one[0][0].shape == (3, 3, 5, 5)
    for (x1, y1), (x2, y2) in zip(one, two):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(one[0][0], next(loader.iter_epoch(5))[0])
    padded = next(iter(D.DataLoader(small_dataset(3), 3, transform=D.pad_to(5))))[0]
    assert padded.shape == (3, 1, 5, 5) and padded[:, 0, 2, 2].tolist() == [0, 1, 2]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharded_loader_splits_each_global_batch(world, drop_last):
    """Shards are disjoint, cover each global batch of the world-of-one order, come from the same
    seeded order on every rank, and keep every rank at len(loader) batches."""
    dataset = small_dataset(29)
    single = D.DataLoader(dataset, 6, shuffle=True, seed=5, drop_last=drop_last)
    shards = [D.DataLoader(dataset, 6, shuffle=True, seed=5, drop_last=drop_last, rank=r, world_size=world)
              for r in range(world)]
    expected = [y for _, y in single.iter_epoch(3)]
    per_rank = [[y for _, y in loader.iter_epoch(3)] for loader in shards]
    assert all(len(batches) == len(single) for batches in per_rank)
    for b, batch in enumerate(expected):
        parts = [per_rank[r][b] for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == sorted(batch.tolist())
        assert sum(len(p) for p in parts) == shards[0].global_size(b) == len(batch)
        for r, part in enumerate(parts):
            np.testing.assert_array_equal(part, batch[r::world])
    if not drop_last:
        assert [len(p) for p in (per_rank[r][-1] for r in range(world))] == [len(expected[-1][r::world])
                                                                           for r in range(world)]


def test_sharded_random_transform_matches_world_of_one():
    images = np.random.default_rng(2).random((10, 3, 8, 8), dtype=np.float32)
    dataset = D.Dataset(images, np.arange(10))
    single = D.DataLoader(dataset, 4, shuffle=True, seed=1, transform=D.cifar_train_transform(size=5))
    shards = [D.DataLoader(dataset, 4, shuffle=True, seed=1, transform=D.cifar_train_transform(size=5), rank=r,
                           world_size=2) for r in range(2)]
    for (x, y), *parts in zip(single.iter_epoch(2), *(s.iter_epoch(2) for s in shards)):
        for r, (xr, yr) in enumerate(parts):
            np.testing.assert_array_equal(yr, y[r::2])
            np.testing.assert_array_equal(xr, x[r::2])
            assert xr.flags.c_contiguous


def test_crops_are_windows_of_the_input(rng):
    images = rng.random((20, 3, 9, 7)).astype(np.float32)
    out = D.random_crop(images, 4, np.random.default_rng(0))
    assert out.shape == (20, 3, 4, 4) and out.dtype == np.float32
    positions = set()
    for img, crop in zip(images, out):
        hits = [(i, j) for i in range(6) for j in range(4) if np.array_equal(img[:, i:i + 4, j:j + 4], crop)]
        assert len(hits) == 1
        positions.add(hits[0])
    assert len(positions) > 1
    np.testing.assert_array_equal(D.center_crop(images, 4), images[:, :, 2:6, 1:5])
    np.testing.assert_array_equal(D.center_crop(rng.random((1, 3, 32, 32)), 24).shape, (1, 3, 24, 24))


def test_flip_is_a_mirror(rng):
    images = rng.random((40, 2, 3, 5))
    out = D.random_flip(images, np.random.default_rng(0))
    flipped = [not np.array_equal(o, i) for o, i in zip(out, images)]
    for o, i, f in zip(out, images, flipped):
        np.testing.assert_array_equal(o, i[:, :, ::-1] if f else i)
    assert 0 < sum(flipped) < 40


def test_brightness_and_contrast(rng):
    images = rng.random((30, 3, 4, 4)).astype(np.float32)
    bright = D.random_brightness(images, 0.25, np.random.default_rng(0))
    delta = (bright - images).reshape(30, -1)
    np.testing.assert_allclose(delta, delta[:, :1].repeat(48, axis=1), atol=1e-6)
    assert np.abs(delta).max() <= 0.25 and bright.dtype == np.float32
    contrast = D.random_contrast(images, 0.2, 1.8, np.random.default_rng(0))
    mean = images.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(contrast.mean(axis=(2, 3), keepdims=True), mean, atol=1e-6)
    factor = (contrast - mean)[:, :, 0, 0] / (images - mean)[:, :, 0, 0]
    np.testing.assert_allclose(factor, factor[:, :1].repeat(3, axis=1), rtol=1e-4)
    assert factor.min() >= 0.2 - 1e-4 and factor.max() <= 1.8 + 1e-4


def test_per_image_standardization(rng):
    images = rng.random((5, 3, 6, 6)).astype(np.float32) * 4 + 2
    out = D.per_image_standardization(images)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-5)
    flat = D.per_image_standardization(np.full((1, 3, 6, 6), 0.5))
    np.testing.assert_array_equal(flat, 0)
    near_flat = np.full((1, 1, 2, 2), 1.0)
    near_flat[0, 0, 0, 0] = 1.01
    expected = (near_flat - near_flat.mean()) / 0.5  # std 0.0043 < 1/sqrt(4): the floor applies
    np.testing.assert_allclose(D.per_image_standardization(near_flat), expected)


def test_cifar_transforms_compose_as_the_tutorial(rng):
    images = rng.random((4, 3, 32, 32)).astype(np.float32)
    train = D.cifar_train_transform(np.random.default_rng(5))(images)
    g = np.random.default_rng(5)
    by_hand = D.random_flip(D.random_crop(images, 24, g), g)
    by_hand = D.per_image_standardization(D.random_contrast(D.random_brightness(by_hand, 63 / 255, g), 0.2, 1.8, g))
    np.testing.assert_array_equal(train, by_hand)
    evaluation = D.cifar_eval_transform()(images)
    np.testing.assert_array_equal(evaluation, D.per_image_standardization(images[:, :, 4:28, 4:28]))
