"""Pooling through the autograd graph, on CPU and the CUDA path: max/avg/adaptive pooling of
rank 1-3, max_unpool2d and subsample2d against PyTorch (when installed) and finite differences;
TensorFlow's padding ("same", "valid", explicit pairs) against TensorFlow's own hand-written test
values and the float64 reference; max_pool_with_argmax against TensorFlow's values and
hand-computed NHWC layouts; the TensorFlow index converters against the plain formula; the
seed nets' SAME pools; bad input."""
import itertools

import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern import models, nn
from convkern.kernels.shapes import PoolGeometry
from tests.convkern.half_check import check_half
from tests.kernels.test_pool import avgpool_bwd_ref, avgpool_ref, maxpool_bwd_ref, maxpool_ref

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
ADAPTIVE = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
SIZES = {1: (4, 12), 2: (4, 10), 3: (4, 6)}


def tie_free(shape, seed=0, dtype=np.float32):
    size = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(np.linspace(-2, 2, size)).reshape(shape).astype(dtype)


def random_configs(n, seed, rank=2, dilation=True):
    """(shape, kernel, stride or None, padding, dilation, ceil_mode) that PyTorch accepts."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        k = tuple(int(rng.integers(1, 5)) for _ in range(rank))
        s = None if rng.random() < 0.2 else tuple(int(rng.integers(1, 4)) for _ in range(rank))
        p = tuple(int(rng.integers(0, k[i] // 2 + 1)) for i in range(rank))
        d = tuple(int(rng.integers(1, 3)) for _ in range(rank)) if dilation else (1,) * rank
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4))) + tuple(int(rng.integers(*SIZES[rank]))
                                                                           for _ in range(rank))
        if any(shape[2 + i] + 2 * p[i] < d[i] * (k[i] - 1) + 1 for i in range(rank)):
            continue  # no output (sizes >= 4 and dilation <= 2 leave no window inside the padding)
        configs.append((shape, k, s, p, d, bool(rng.integers(0, 2))))
    return configs


def run(fn, x, dy_seed, device, **kw):
    xt = ck.tensor(x, requires_grad=True, device=device)
    out = fn(xt, **kw)
    y = out[0] if isinstance(out, tuple) else out
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype)
    y.backward(dy)
    return out, dy, xt.grad.numpy()


def _torch_fn(name):
    torch = pytest.importorskip("torch")
    return torch, getattr(torch.nn.functional, name)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_max_pool_matches_pytorch(rank, device):
    torch, torch_pool = _torch_fn(f"max_pool{rank}d")
    n = {"cpu": {1: 15, 2: 25, 3: 10}, "cuda": {1: 3, 2: 5, 3: 2}}[device][rank]
    for i, (shape, k, s, p, d, ceil) in enumerate(random_configs(n, seed=1, rank=rank)):
        x = tie_free(shape, seed=i)
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        (y, idx), dy, dx = run(MAX_POOL[rank], x, i, device, return_indices=True, **kw)
        xt = torch.tensor(x, requires_grad=True)
        yt, it = torch_pool(xt, return_indices=True, **kw)
        yt.backward(torch.tensor(dy))
        msg = str((shape, kw))
        assert y.shape == tuple(yt.shape), msg
        assert idx.dtype == np.int64 and idx.device == device and not idx.requires_grad
        np.testing.assert_array_equal(y.numpy(), yt.detach().numpy(), err_msg=msg)
        np.testing.assert_array_equal(idx.numpy(), it.numpy(), err_msg=msg)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6, err_msg=msg)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_avg_pool_matches_pytorch(rank, device):
    torch, torch_pool = _torch_fn(f"avg_pool{rank}d")
    n = {"cpu": {1: 15, 2: 25, 3: 10}, "cuda": {1: 3, 2: 4, 3: 2}}[device][rank]
    for i, (shape, k, s, p, _, ceil) in enumerate(random_configs(n, seed=2, rank=rank, dilation=False)):
        cip = bool(i % 2)
        x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)
        y, dy, dx = run(AVG_POOL[rank], x, i, device, **kw)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch_pool(xt, **kw)
        yt.backward(torch.tensor(dy))
        msg = str((shape, kw))
        assert y.shape == tuple(yt.shape), msg
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=msg)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=msg)


@pytest.mark.parametrize("shape, output_size", [((2, 3, 7, 5), (3, 2)), ((1, 2, 6, 6), 1), ((2, 2, 5, 7), (None, 3)),
                                                ((1, 2, 4, 5), (6, 7)), ((2, 3, 9), 4), ((1, 2, 5), (7,)),
                                                ((1, 2, 4, 5, 3), (2, None, 2)), ((2, 1, 3, 4, 5), 1)], ids=str)
def test_adaptive_avg_pool_matches_pytorch(shape, output_size, device):
    rank = len(shape) - 2
    torch, torch_pool = _torch_fn(f"adaptive_avg_pool{rank}d")
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    y, dy, dx = run(ADAPTIVE[rank], x, 4, device, output_size=output_size)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_pool(xt, output_size)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---- TensorFlow's padding: its own hand-written test values

def tf_input(nhwc_shape, negative=False):
    """TensorFlow's pooling test input: 1, 2, 3, ... in NHWC order, wrapping to -127 after 127."""
    total = int(np.prod(nhwc_shape))
    x = np.array([((f + 128) % 255) - 127 for f in range(total)], np.float64).reshape(nhwc_shape)
    return -x if negative else x


# From tensorflow/python/kernel_tests/nn_ops/pooling_ops_test.py: (op, NHWC or NWC input shape,
# window, strides, padding as TF writes it ("SAME", "VALID" or explicit [[top, bottom], [left,
# right]] for H and W), negative input, expected output in NHWC order)
TF_CASES = [
    ("max", (1, 3, 3, 3), (2, 2), (2, 2), "VALID", False, [13, 14, 15]),
    ("max", (1, 2, 3, 3), (2, 2), (2, 2), "SAME", False, [13, 14, 15, 16, 17, 18]),
    ("max", (1, 2, 2, 1), (1, 2), (1, 1), "SAME", False, [2, 2, 4, 4]),
    ("max", (1, 4, 4, 1), (2, 2), (1, 2), "VALID", False, [6, 8, 10, 12, 14, 16]),
    ("max", (1, 4, 4, 1), (2, 2), (2, 1), "VALID", False, [6, 7, 8, 14, 15, 16]),
    ("max", (1, 4, 4, 4), (2, 2), (2, 2), "SAME", False,
     [21, 22, 23, 24, 29, 30, 31, 32, 53, 54, 55, 56, 61, 62, 63, 64]),
    ("max", (1, 8, 8, 8), (3, 3), (2, 2), "SAME", False,
     list(range(81, 89)) + list(range(97, 105)) + list(range(113, 121)) + list(range(121, 128)) + [120] +
     list(range(18, 26)) + list(range(34, 42)) + list(range(50, 58)) + list(range(58, 66)) +
     list(range(82, 90)) + list(range(98, 106)) + list(range(114, 122)) + list(range(122, 128)) + [120, 121] +
     list(range(-45, -37)) + list(range(-29, -21)) + list(range(-13, -5)) + list(range(-5, 3))),
    ("max", (1, 7, 7, 1), (2, 2), (3, 3), "VALID", False, [9, 12, 30, 33]),
    ("max", (1, 3, 3, 1), (3, 3), (2, 2), [[0, 0], [0, 0]], False, [9]),
    ("max", (1, 3, 3, 1), (3, 3), (2, 2), [[2, 1], [2, 1]], True, [-1, -1, -1, -1]),
    ("max", (1, 3, 3, 1), (3, 3), (2, 2), [[0, 2], [0, 1]], False, [9, 9]),
    ("max", (1, 6, 6, 1), (3, 3), (2, 2), [[1, 2], [2, 1]], False,
     [7, 9, 11, 12, 19, 21, 23, 24, 31, 33, 35, 36, 31, 33, 35, 36]),
    ("max", (1, 6, 6, 1), (3, 3), (2, 2), [[1, 2], [2, 1]], True,
     [-1, -1, -3, -5, -7, -7, -9, -11, -19, -19, -21, -23, -31, -31, -33, -35]),
    ("max", (1, 3, 1), (2,), (2,), [[0, 1]], False, [2, 3]),
    ("avg", (1, 3, 3, 3), (2, 2), (2, 2), "VALID", False, [7, 8, 9]),
    ("avg", (1, 2, 4, 3), (2, 2), (2, 2), "SAME", False, [8.5, 9.5, 10.5, 14.5, 15.5, 16.5]),
    ("avg", (1, 2, 2, 1), (1, 2), (1, 1), "SAME", False, [1.5, 2, 3.5, 4]),
    ("avg", (1, 2, 2, 1), (2, 1), (1, 1), "SAME", False, [2, 3, 3, 4]),
    ("avg", (2, 2, 2, 2), (1, 2), (1, 1), "SAME", False, [2, 3, 3, 4, 6, 7, 7, 8, 10, 11, 11, 12, 14, 15, 15, 16]),
    ("avg", (2, 2, 2, 2), (2, 1), (1, 1), "SAME", False, [3, 4, 5, 6, 5, 6, 7, 8, 11, 12, 13, 14, 13, 14, 15, 16]),
    ("avg", (1, 3, 3, 3), (2, 2), (1, 2), "VALID", False, [7, 8, 9, 16, 17, 18]),
    ("avg", (1, 3, 3, 3), (2, 2), (2, 1), "VALID", False, [7, 8, 9, 10, 11, 12]),
    ("avg", (1, 4, 4, 4), (2, 2), (2, 2), "SAME", False,
     [11, 12, 13, 14, 19, 20, 21, 22, 43, 44, 45, 46, 51, 52, 53, 54]),
    ("avg", (1, 4, 4, 4), (3, 3), (2, 2), "SAME", False,
     [21, 22, 23, 24, 27, 28, 29, 30, 45, 46, 47, 48, 51, 52, 53, 54]),
    ("avg", (1, 8, 8, 8), (3, 3), (2, 2), "SAME", False,
     list(range(-12, -4)) + list(range(4, 12)) + list(range(20, 28)) + list(range(32, 39)) + [-3.5] +
     list(range(-54, -46)) + list(range(-38, -30)) + list(range(-22, -14)) + list(range(-10, -2)) +
     list(range(-11, -3)) + list(range(5, 13)) + list(range(21, 29)) + list(range(33, 39)) + [-3.5, -2.5] +
     list(range(-85, -77)) + list(range(-69, -61)) + list(range(-53, -45)) + list(range(-41, -33))),
    ("avg", (1, 7, 7, 1), (2, 2), (3, 3), "VALID", False, [5, 8, 26, 29]),
    ("max", (1, 3, 3, 1), (1, 1), (2, 2), "SAME", False, [1, 3, 7, 9]),
    ("avg", (1, 4, 4, 1), (1, 1), (2, 2), "SAME", False, [1, 3, 9, 11]),
]


def tf_case_id(case):
    op, shape, k, s, padding, negative, _ = case
    pad = padding if isinstance(padding, str) else "x".join(f"{a}{b}" for a, b in padding)
    return f"{op}-{'x'.join(map(str, shape))}-k{'x'.join(map(str, k))}-s{'x'.join(map(str, s))}-{pad}" + \
        ("-neg" if negative else "")


def convkern_padding(padding):
    """TensorFlow's padding for H and W as convkern writes it."""
    if isinstance(padding, str):
        return padding.lower()
    return tuple(tuple(p) for p in padding)


@pytest.mark.parametrize("case", TF_CASES, ids=tf_case_id)
def test_tensorflow_pooling_values(case, device):
    op, shape, k, s, padding, negative, expected = case
    rank = len(shape) - 2
    x = np.moveaxis(tf_input(shape, negative), -1, 1)            # NHWC -> NCHW
    kw = dict(count_include_pad=False) if op == "avg" else {}
    fn = (MAX_POOL if op == "max" else AVG_POOL)[rank]
    y = fn(ck.tensor(x, device=device), k, s, convkern_padding(padding), **kw)
    np.testing.assert_allclose(np.moveaxis(y.numpy(), 1, -1).ravel(), expected, rtol=1e-12)
    if op == "max" and isinstance(padding, str) and rank == 2:
        out, _ = F.max_pool_with_argmax(ck.tensor(tf_input(shape, negative), device=device), k, s, padding)
        np.testing.assert_array_equal(out.numpy().ravel(), expected)


def _tf_grid():
    """TensorFlow-style pooling configurations: even and odd windows, strides 1-3, dilation, and
    "same", "valid" and uneven explicit pairs; (shape, kernel, stride, padding, dilation)."""
    grid = []
    for (k, s, d), padding in itertools.product([((2, 3), (1, 2), (1, 1)), ((3, 2), (3, 1), (1, 1)),
                                                 ((2, 2), (2, 3), (2, 1)), ((3, 3), (1, 1), (1, 2))],
                                                ["same", "valid", ((0, 1), (1, 0)), ((2, 0), (1, 1))]):
        if isinstance(padding, tuple) and any(max(p) > kk - 1 for p, kk in zip(padding, k)):
            continue
        grid.append(((2, 2, 7, 6), k, s, padding, d))
    return grid


GRID = _tf_grid()
GRID_RUNS = [(case, "cpu") for case in GRID] + [(case, "cuda") for case in GRID[::3]]   # tiny simulator share


def _grid_geometry(shape, k, s, padding, d):
    if padding == "valid":
        before = after = (0, 0)
    elif padding == "same":
        before, after = zip(*[(t // 2, t - t // 2) for t in (max(0, (-(-n // ss) - 1) * ss + dd * (kk - 1) + 1 - n)
                                                             for n, kk, ss, dd in zip(shape[2:], k, s, d))])
    else:
        before, after = zip(*padding)
    return PoolGeometry.make(shape[0], shape[1], shape[2:], k, s, before, after, d)


@pytest.mark.parametrize("case, device", GRID_RUNS, ids=[f"{d}-{c}" for c, d in GRID_RUNS])
def test_tf_padding_grid_matches_the_reference(case, device):
    shape, k, s, padding, d = case
    g = _grid_geometry(*case)
    x = tie_free(shape, seed=5, dtype=np.float64)
    (y, idx), dy, dx = run(F.max_pool2d, x, 6, device, kernel_size=k, stride=s, padding=padding, dilation=d,
                           return_indices=True)
    y_ref, idx_ref = maxpool_ref(x, g)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_array_equal(idx.numpy(), idx_ref)
    np.testing.assert_allclose(dx, maxpool_bwd_ref(dy, idx_ref, g), rtol=1e-12, atol=1e-12)
    if d == (1, 1):
        for cip in (True, False):
            y, dy, dx = run(F.avg_pool2d, x, 7, device, kernel_size=k, stride=s, padding=padding,
                            count_include_pad=cip)
            np.testing.assert_allclose(y.numpy(), avgpool_ref(x, g, cip), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dx, avgpool_bwd_ref(dy, g, cip), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 3])
def test_tf_padding_in_1d_and_3d_matches_the_reference(rank, device):
    shape = (1, 2) + ((9,) if rank == 1 else (4, 5, 4))
    cases = [((2,) * rank, (1,) * rank, "same"), ((3,) * rank, (2,) * rank, "same"),
             ((3,) * rank, (2,) * rank, ((2, 1),) + ((0, 2),) * (rank - 1))]
    x = tie_free(shape, seed=8, dtype=np.float64)
    for k, s, padding in cases:
        g = _grid_geometry(shape, k, s, padding, (1,) * rank)
        (y, idx), dy, dx = run(MAX_POOL[rank], x, 9, device, kernel_size=k, stride=s, padding=padding,
                               return_indices=True)
        y_ref, idx_ref = maxpool_ref(x, g)
        np.testing.assert_array_equal(idx.numpy(), idx_ref)
        np.testing.assert_array_equal(y.numpy(), y_ref)
        np.testing.assert_allclose(dx, maxpool_bwd_ref(dy, idx_ref, g), rtol=1e-12)
        y, dy, dx = run(AVG_POOL[rank], x, 10, device, kernel_size=k, stride=s, padding=padding,
                        count_include_pad=False)
        np.testing.assert_allclose(y.numpy(), avgpool_ref(x, g, False), rtol=1e-12)
        np.testing.assert_allclose(dx, avgpool_bwd_ref(dy, g, False), rtol=1e-12)


def test_same_padding_with_dilation_follows_tensorflow_rule():
    # out = ceil(in / stride) = 5 per axis; pad_total = (out - 1)*stride + d*(k - 1) + 1 - in:
    # H 8 + 4 + 1 - 10 = 3 -> (1, 2), W 8 + 6 + 1 - 9 = 6 -> (3, 3)
    x = tie_free((1, 1, 10, 9), seed=11, dtype=np.float64)
    _, idx = F.max_pool2d(x, 3, 2, "same", dilation=(2, 3), return_indices=True)
    g = PoolGeometry.make(1, 1, (10, 9), (3, 3), (2, 2), (1, 3), (2, 3), (2, 3))
    assert idx.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(idx.numpy(), maxpool_ref(x, g)[1])


# ---- max_pool_with_argmax

def test_max_pool_with_argmax_tensorflow_values(device):
    # tensorflow/python/kernel_tests/nn_ops/pooling_ops_test.py, testMaxPoolingWithArgmax and
    # testMaxPoolingGradWithArgmax: ties go to the first maximum in row-major window order
    x = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1], np.float64).reshape(2, 3, 3, 1)
    dy = np.array([11, 12, 13, 14, 21, 22, 23, 24], np.float64).reshape(2, 2, 2, 1)
    for batch, want in [(False, [0, 1, 3, 5, 0, 2, 6, 8]), (True, [0, 1, 3, 5, 9, 11, 15, 17])]:
        xt = ck.tensor(x, requires_grad=True, device=device)
        out, argmax = F.max_pool_with_argmax(xt, ksize=[1, 2, 2, 1], strides=[1, 1, 1, 1], padding="VALID",
                                             include_batch_in_index=batch)
        assert out.shape == argmax.shape == (2, 2, 2, 1) and argmax.dtype == np.int64 and argmax.device == device
        np.testing.assert_array_equal(out.numpy().ravel(), np.ones(8))
        np.testing.assert_array_equal(argmax.numpy().ravel(), want)
        out.backward(dy)
        np.testing.assert_array_equal(xt.grad.numpy().ravel(),
                                      [11, 12, 0, 13, 0, 14, 0, 0, 0, 21, 0, 22, 0, 0, 0, 23, 0, 24])


def nhwc_max_pool_reference(x, k, s, padding, include_batch):
    """TensorFlow's max_pool_with_argmax written out: NHWC, -inf padding, first maximum wins."""
    N, H, W, C = x.shape
    pads = []
    for n, kk, ss in zip((H, W), k, s):
        out = -(-n // ss) if padding == "SAME" else (n - kk) // ss + 1
        total = max(0, (out - 1) * ss + kk - n) if padding == "SAME" else 0
        pads.append((out, total // 2))
    (P, top), (Q, left) = pads
    y = np.full((N, P, Q, C), -np.inf)
    arg = np.zeros((N, P, Q, C), np.int64)
    for b, p, q, c in np.ndindex(N, P, Q, C):
        for r, t in itertools.product(range(k[0]), range(k[1])):
            h, w = p * s[0] - top + r, q * s[1] - left + t
            if 0 <= h < H and 0 <= w < W and x[b, h, w, c] > y[b, p, q, c]:
                y[b, p, q, c] = x[b, h, w, c]
                arg[b, p, q, c] = ((b * H + h) * W + w) * C + c if include_batch else (h * W + w) * C + c
    return y, arg


@pytest.mark.parametrize("ksize, strides, padding", [(2, 2, "SAME"), ([3, 2], [2, 1], "SAME"),
                                                     ([1, 3, 3, 1], [1, 2, 2, 1], "VALID"), ([2], [1], "same"),
                                                     ([3, 3], [3, 2], "valid")], ids=str)
def test_max_pool_with_argmax_hand_computed_layout(ksize, strides, padding, device):
    x = tie_free((2, 5, 6, 3), seed=12, dtype=np.float64)

    def pair(v):
        v = [v] if isinstance(v, int) else v
        return tuple(v[1:3]) if len(v) == 4 else (v[0], v[0]) if len(v) == 1 else tuple(v)
    for batch in (False, True):
        out, argmax = F.max_pool_with_argmax(ck.tensor(x, device=device), ksize, strides, padding,
                                             include_batch_in_index=batch)
        y_ref, arg_ref = nhwc_max_pool_reference(x, pair(ksize), pair(strides), padding.upper(), batch)
        np.testing.assert_array_equal(out.numpy(), y_ref)
        np.testing.assert_array_equal(argmax.numpy(), arg_ref)
        # the same windows through max_pool2d on NCHW and the index converter
        _, idx = F.max_pool2d(np.moveaxis(x, -1, 1), pair(ksize), pair(strides), padding.lower(),
                              return_indices=True)
        np.testing.assert_array_equal(F.max_pool_indices_to_tf(idx, (2, 3, 5, 6), batch).numpy(), arg_ref)


def test_max_pool_with_argmax_gradcheck(device):
    x = tie_free((2, 5, 4, 3), seed=13, dtype=np.float64)
    for batch in (False, True):
        _gradcheck(lambda a: F.max_pool_with_argmax(a, 3, 2, "SAME", include_batch_in_index=batch)[0], [x], device)


# ---- the seed nets: TensorFlow's SAME pools

def test_seed_pools_with_same_padding_equal_the_ceil_mode_formulation(device):
    # Deep MNIST: 2x2/2 SAME on 28 and 14 (no padding); CIFAR-10: 3x3/2 SAME on 24 and 12 (one
    # row/column after), which ceil_mode=True without padding selects too
    for shape, k, today in [((2, 2, 28, 28), 2, {}), ((2, 2, 14, 14), 2, {}),
                            ((2, 2, 24, 24), 3, dict(stride=2, ceil_mode=True)),
                            ((2, 2, 12, 12), 3, dict(stride=2, ceil_mode=True))]:
        if device == "cuda":
            shape = (1, 1) + shape[2:]
        x = tie_free(shape, seed=14)
        stride = today.get("stride", k)
        (y_same, i_same), dy, dx_same = run(F.max_pool2d, x, 15, device, kernel_size=k, stride=stride,
                                            padding="same", return_indices=True)
        (y_today, i_today), _, dx_today = run(F.max_pool2d, x, 15, device, kernel_size=k, return_indices=True,
                                              **today)
        np.testing.assert_array_equal(y_same.numpy(), y_today.numpy())
        np.testing.assert_array_equal(i_same.numpy(), i_today.numpy())
        np.testing.assert_array_equal(dx_same, dx_today)


@pytest.mark.parametrize("factory, shape, pools", [
    (models.tf_mnist_cnn, (2, 1, 28, 28), {"pool1": (2, 2), "pool2": (2, 2)}),
    (models.cifar10_cnn, (2, 3, 24, 24), {"pool1": (3, 2), "pool2": (3, 2)}),
], ids=["tf_mnist_cnn", "cifar10_cnn"])
def test_seed_nets_with_same_pools_give_the_same_outputs(factory, shape, pools):
    ck.manual_seed(0)
    net = factory().eval()
    x = np.random.default_rng(16).standard_normal(shape).astype(np.float32)
    with ck.no_grad():
        today = net(x).numpy()
        for name, (k, s) in pools.items():
            setattr(net, name, nn.MaxPool2d(k, s, padding="same"))
        np.testing.assert_array_equal(net(x).numpy(), today)


@pytest.mark.parametrize("case", [
    ((2, 3, 7, 7), 3, 2, 1, None),
    ((1, 2, 6, 5), (2, 3), (2, 2), 0, None),
    ((2, 2, 7, 6), 2, 2, 0, (7, 7)),
    ((1, 1, 8, 8), 3, 3, 1, (1, 1, 7, 8)),
], ids=str)
def test_max_unpool2d_matches_pytorch(case, device):
    torch = pytest.importorskip("torch")
    shape, k, s, p, output_size = case
    x = tie_free(shape)
    y, idx = F.max_pool2d(ck.tensor(x, device=device), k, s, p, return_indices=True)
    yt = ck.tensor(y.numpy(), requires_grad=True, device=device)
    u = F.max_unpool2d(yt, idx, k, s, p, output_size=output_size)
    du = np.random.default_rng(5).standard_normal(u.shape).astype(np.float32)
    u.backward(du)
    tv = torch.tensor(y.numpy(), requires_grad=True)
    ut = torch.nn.functional.max_unpool2d(tv, torch.tensor(idx.numpy()), k, s, p, output_size=output_size)
    ut.backward(torch.tensor(du))
    np.testing.assert_array_equal(u.numpy(), ut.detach().numpy())
    np.testing.assert_array_equal(yt.grad.numpy(), tv.grad.numpy())


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_float16_pooling_matches_float64(rank, device):
    """Every pooling op on float16 input: float32 math, one rounding per output; the argmax of
    tie-free float16 values is the float64 one."""
    x = tie_free((2, 3) + ((5,) * rank if rank < 3 else (4, 4, 4)), seed=rank, dtype=np.float16)
    check_half(lambda t: MAX_POOL[rank](t, 3, 2, 1), [x], device)
    check_half(lambda t: MAX_POOL[rank](t, 2, 1, 0, dilation=2, ceil_mode=True), [x], device)
    check_half(lambda t: AVG_POOL[rank](t, 3, 2, 1, count_include_pad=False), [x], device)
    check_half(lambda t: AVG_POOL[rank](t, 2, padding="same"), [x], device)
    check_half(lambda t: ADAPTIVE[rank](t, 3), [x], device)
    _, i16 = MAX_POOL[rank](ck.tensor(x, device=device), 3, 2, 1, return_indices=True)
    _, i64 = MAX_POOL[rank](x.astype(np.float64), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(i16.numpy(), i64.numpy())
    if rank == 2:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        check_half(lambda t: F.max_pool_with_argmax(t, 2, 2, "SAME")[0], [nhwc], device)
        y, idx = F.max_pool2d(ck.tensor(x, device=device), 2, return_indices=True)
        check_half(lambda t: F.max_unpool2d(t, idx, 2, output_size=(5, 5)), [y.numpy()], device)
        w = np.array([1.5, -0.5, 2.0], np.float16)
        check_half(lambda t, wt, bt: F.subsample2d(t, wt, bt), [x, w, w[::-1].copy()], device)   # conv2d direct


def test_max_pool2d_tie_gradient_goes_to_first_maximum_only(device):
    x = np.array([[[[1, 3, 3, 0],
                    [3, 2, 1, 3],
                    [0, 0, 3, 3],
                    [1, 1, 1, 1]]]], np.float64)
    xt = ck.tensor(x, requires_grad=True, device=device)
    y, idx = F.max_pool2d(xt, 2, return_indices=True)
    y.backward(np.ones(y.shape))
    assert idx.numpy()[0, 0].tolist() == [[1, 2], [12, 10]]
    want = np.zeros((4, 4))
    want.flat[[1, 2, 12, 10]] = 1
    np.testing.assert_array_equal(xt.grad.numpy()[0, 0], want)


def _gradcheck(fn, inputs, device, cuda_checks=8):
    inputs = [ck.tensor(a, requires_grad=True, device=device) if isinstance(a, np.ndarray) else a for a in inputs]
    assert ck.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4,
                        max_checks=cuda_checks if device == "cuda" else None)


def test_max_pool2d_gradcheck(device):
    x = tie_free((2, 2, 6, 5), seed=6, dtype=np.float64)
    _gradcheck(lambda a: F.max_pool2d(a, 3, (2, 1), 1, dilation=(1, 2), ceil_mode=True), [x], device)
    _gradcheck(lambda a: F.max_pool2d(a, (2, 3), 1, ((1, 0), (2, 1))), [x], device)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_gradcheck(count_include_pad, device):
    x = np.random.default_rng(7).standard_normal((2, 2, 5, 6))
    _gradcheck(lambda a: F.avg_pool2d(a, (3, 2), 2, 1, ceil_mode=True, count_include_pad=count_include_pad),
               [x], device)
    _gradcheck(lambda a: F.avg_pool2d(a, (2, 3), (1, 2), "same", count_include_pad=count_include_pad), [x], device)


def test_pool_1d_3d_gradcheck(device):
    x1 = tie_free((2, 2, 9), seed=17, dtype=np.float64)
    x3 = tie_free((1, 2, 4, 3, 5), seed=18, dtype=np.float64)
    _gradcheck(lambda a: F.max_pool1d(a, 3, 2, 1, dilation=2, ceil_mode=True), [x1], device)
    _gradcheck(lambda a: F.avg_pool1d(a, 4, 3, "same", count_include_pad=False), [x1], device)
    _gradcheck(lambda a: F.adaptive_avg_pool1d(a, 4), [x1], device)
    _gradcheck(lambda a: F.max_pool3d(a, (2, 2, 3), (1, 2, 2), ((1, 0), (0, 1), (1, 1))), [x3], device)
    _gradcheck(lambda a: F.avg_pool3d(a, (3, 2, 2), (2, 1, 2), 1, ceil_mode=True), [x3], device)
    _gradcheck(lambda a: F.adaptive_avg_pool3d(a, (3, 2, 4)), [x3], device)


def test_adaptive_avg_pool2d_gradcheck(device):
    x = np.random.default_rng(8).standard_normal((2, 2, 5, 7))
    _gradcheck(lambda a: F.adaptive_avg_pool2d(a, (3, 4)), [x], device)


def test_max_unpool2d_gradcheck(device):
    _, idx = F.max_pool2d(tie_free((2, 2, 4, 6), seed=9, dtype=np.float64), 2, return_indices=True)
    v = np.random.default_rng(9).standard_normal(idx.shape)
    _gradcheck(lambda a: F.max_unpool2d(a, idx.to(device), 2), [v], device)


def test_subsample2d_gradcheck(device):
    rng = np.random.default_rng(10)
    x, w, b = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal(3), rng.standard_normal(3)
    _gradcheck(lambda a, ww, bb: F.subsample2d(a, ww, bb), [x, w, b], device, cuda_checks=3)


def test_subsample2d_is_lenet_trainable_subsampling(device):
    rng = np.random.default_rng(11)
    N, C, H = (2, 6, 28) if device == "cpu" else (1, 2, 6)     # LeNet's S2 input on the CPU
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    coef, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    # the paper: sum of the 2x2 inputs times a coefficient plus a bias
    sums = x.reshape(N, C, H // 2, 2, H // 2, 2).sum(axis=(3, 5))
    want = sums * coef[None, :, None, None] + b[None, :, None, None]
    w = ck.tensor(4 * coef, device=device)
    y = F.subsample2d(ck.tensor(x, device=device), w, ck.tensor(b, device=device))
    assert y.shape == (N, C, H // 2, H // 2)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5)
    y_stride = F.subsample2d(ck.tensor(x, device=device), w, None, kernel_size=3, stride=2)
    assert y_stride.shape == (N, C, (H - 3) // 2 + 1, (H - 3) // 2 + 1)


def tf_reference(idx, N, C, H, W, include_batch):
    """TensorFlow's max_pool_with_argmax layout for NHWC, element by element."""
    P, Q = idx.shape[2:]
    out = np.zeros((N, P, Q, C), np.int64)
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    ih, iw = divmod(int(idx[n, c, p, q]), W)
                    out[n, p, q, c] = ((n * H + ih) * W + iw) * C + c if include_batch else (ih * W + iw) * C + c
    return out


@pytest.mark.parametrize("include_batch", [True, False])
def test_tf_index_converter(include_batch, device):
    shape = (2, 3, 7, 6)
    _, idx = F.max_pool2d(ck.tensor(tie_free(shape), device=device), 3, 2, 1, return_indices=True)
    tf = F.max_pool_indices_to_tf(idx, shape, include_batch_in_index=include_batch)
    assert tf.shape == (2, 4, 3, 3) and tf.dtype == np.int64 and tf.device == device
    np.testing.assert_array_equal(tf.numpy(), tf_reference(idx.numpy(), *shape, include_batch))
    back = F.max_pool_indices_from_tf(tf, shape, include_batch_in_index=include_batch)
    assert back.device == device
    np.testing.assert_array_equal(back.numpy(), idx.numpy())


def test_tf_index_converter_rejects_foreign_indices():
    shape = (2, 3, 4, 4)
    idx = np.zeros((2, 3, 2, 2), np.int64)
    tf = F.max_pool_indices_to_tf(idx, shape).numpy()
    wrong_channel = tf.copy()
    wrong_channel[0, 0, 0, 1] += 1
    with pytest.raises(ValueError, match="not TensorFlow argmax positions"):
        F.max_pool_indices_from_tf(wrong_channel, shape)
    wrong_batch = tf.copy()
    wrong_batch[1] -= 16 * 3
    with pytest.raises(ValueError, match="not TensorFlow argmax positions"):
        F.max_pool_indices_from_tf(wrong_batch, shape)
    with pytest.raises(ValueError, match=r"must lie in \[0, H\*W\) = \[0, 16\)"):
        F.max_pool_indices_to_tf(idx + 16, shape)
    with pytest.raises(ValueError, match="do not match input_shape"):
        F.max_pool_indices_to_tf(idx, (2, 4, 4, 4))
    with pytest.raises(TypeError, match="indices must be int64"):
        F.max_pool_indices_to_tf(idx.astype(np.int32), shape)
    with pytest.raises(ValueError, match="input_shape must be the"):
        F.max_pool_indices_to_tf(idx, (2, 3, 4))


def test_max_pool2d_saves_indices_only_when_needed():
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    y = F.max_pool2d(ck.tensor(x), 2)
    assert y.grad_fn is None
    xt = ck.tensor(x, requires_grad=True)
    y, idx = F.max_pool2d(xt, 2, return_indices=True)
    (saved,) = y.grad_fn.saved
    assert saved.shape == idx.shape
    assert F.avg_pool2d(xt, 2).grad_fn.saved == ()


def test_ceil_mode_output_sizes_match_pytorch():
    torch = pytest.importorskip("torch")
    # (4, 2, 3, 1): the ceil rule drops a window starting in the right padding; (7, 8, 8, 0): one
    # window larger than the input
    for H, k, s, p in [(4, 2, 3, 1), (5, 2, 2, 0), (6, 3, 2, 1), (7, 3, 3, 1), (1, 2, 2, 1), (2, 3, 3, 1),
                       (7, 8, 8, 0), (5, 9, 9, 4)]:
        x = np.zeros((1, 1, H, H), np.float32)
        want = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=True).shape
        assert F.max_pool2d(x, k, s, p, ceil_mode=True).shape == tuple(want), (H, k, s, p)
        assert F.avg_pool2d(x, k, s, p, ceil_mode=True).shape == tuple(want), (H, k, s, p)


def test_valid_padding_is_zero_padding_and_keeps_ceil_mode():
    x = tie_free((1, 2, 7, 6))
    for ceil in (False, True):
        np.testing.assert_array_equal(F.max_pool2d(x, 3, 2, "valid", ceil_mode=ceil).numpy(),
                                      F.max_pool2d(x, 3, 2, 0, ceil_mode=ceil).numpy())


BAD_INPUTS = [
    (F.max_pool2d, dict(kernel_size=3, padding=2), ValueError, "padding should be at most half of kernel_size"),
    (F.avg_pool2d, dict(kernel_size=(2, 4), padding=(0, 3)), ValueError, "padding should be at most half"),
    (F.max_pool2d, dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (F.max_pool2d, dict(kernel_size=2, stride=0), ValueError, "stride must be >= 1"),
    (F.max_pool2d, dict(kernel_size=2, stride=(1, -1)), ValueError, "stride must be >= 1"),
    (F.max_pool2d, dict(kernel_size=2, padding=-1), ValueError, "padding must be >= 0"),
    (F.max_pool2d, dict(kernel_size=2, dilation=0), ValueError, "dilation must be >= 1"),
    (F.max_pool2d, dict(kernel_size=2.5), TypeError, "kernel_size must be an int or a pair of ints"),
    (F.max_pool2d, dict(kernel_size=9), ValueError, "output size is too small"),
    (F.avg_pool2d, dict(kernel_size=(9, 2), stride=2, ceil_mode=True), ValueError, "output size is too small"),
    (F.max_pool2d, dict(kernel_size=2, ceil_mode="yes"), TypeError, "ceil_mode must be True or False"),
    (F.max_pool2d, dict(kernel_size=2, return_indices=1), TypeError, "return_indices must be True or False"),
    (F.avg_pool2d, dict(kernel_size=2, count_include_pad=None), TypeError, "count_include_pad must be True or False"),
    (F.max_pool2d, dict(x=(1, 1, 2, 7), kernel_size=(2, 2), padding=1, dilation=(3, 1)), ValueError,
     "window 0 along H covers no input element"),
    (F.max_pool2d, dict(x=(1, 1, 1, 7), kernel_size=(2, 2), padding="same", dilation=(3, 1)), ValueError,
     "window 0 along H covers no input element"),
    (F.max_pool2d, dict(x=(3, 7, 7), kernel_size=2), ValueError, r"input must be 4-D \(N, C, H, W\)"),
    (F.avg_pool2d, dict(x=(2, 3, 0, 7), kernel_size=2), ValueError,
     "no zero-size dimension other than the batch and channel dimension"),
    (F.max_pool2d, dict(x_dtype=np.int32, kernel_size=2), TypeError, "input must be float16, float32 or float64"),
    (F.max_pool2d, dict(x_type=list, kernel_size=2), TypeError, "input must be a convkern Tensor"),
    (F.adaptive_avg_pool2d, dict(output_size=0), ValueError, "output_size must be >= 1"),
    (F.adaptive_avg_pool2d, dict(output_size=(2, 3, 4)), TypeError, "output_size must be an int or a pair"),
    # TensorFlow's padding forms
    (F.max_pool2d, dict(kernel_size=3, padding=((0, 3), (1, 1))), ValueError,
     r"explicit padding along H must be at most kernel_size - 1 = 2 per side \(TensorFlow's limit\), got \(0, 3\)"),
    (F.avg_pool2d, dict(kernel_size=(3, 2), padding=((1, 1), (2, 0))), ValueError,
     r"explicit padding along W must be at most kernel_size - 1 = 1"),
    (F.max_pool2d, dict(kernel_size=3, padding=((0, -1), (1, 1))), ValueError, "padding must be >= 0"),
    (F.max_pool2d, dict(kernel_size=3, padding=((0, 1), (1, 1, 0))), TypeError,
     r"explicit padding must be 2 \(before, after\) pairs of ints, one per spatial axis \(H, W\)"),
    (F.max_pool2d, dict(kernel_size=3, padding=((0, 1),)), TypeError, r"explicit padding must be 2 \(before, after\)"),
    (F.max_pool2d, dict(kernel_size=3, padding=(1, (0, 1))), TypeError, r"explicit padding must be 2"),
    (F.max_pool2d, dict(kernel_size=3, padding=((0, 1.5), (0, 1))), TypeError, r"explicit padding must be 2"),
    (F.max_pool2d, dict(kernel_size=3, stride=2, padding="same", ceil_mode=True), ValueError,
     "ceil_mode=True cannot be combined with padding='same'"),
    (F.avg_pool2d, dict(kernel_size=3, padding=((0, 1), (0, 1)), ceil_mode=True), ValueError,
     r"ceil_mode=True cannot be combined with explicit \(before, after\) padding pairs"),
    (F.max_pool2d, dict(kernel_size=3, padding="SAME"), ValueError,
     r"padding must be an int, a pair of ints, 'same', 'valid' or \(\(top, bottom\), \(left, right\)\), got 'SAME'"),
    (F.avg_pool2d, dict(kernel_size=3, padding="full"), ValueError, r"padding must be .*got 'full'"),
    (F.max_pool2d, dict(kernel_size=3, padding=None), TypeError, r"padding must be an int, a pair of ints, 'same'"),
    (F.max_pool1d, dict(x=(2, 3, 7), kernel_size=2, padding=((1, 2),)), ValueError,
     r"max_pool1d: explicit padding along L must be at most kernel_size - 1 = 1"),
    (F.max_pool3d, dict(x=(1, 2, 4, 4, 4), kernel_size=2, padding=((0, 1), (0, 1))), TypeError,
     r"max_pool3d: explicit padding must be 3 \(before, after\) pairs of ints, one per spatial axis \(D, H, W\)"),
    # the other ranks
    (F.max_pool1d, dict(kernel_size=2), ValueError, r"max_pool1d: input must be 3-D \(N, C, L\)"),
    (F.avg_pool3d, dict(kernel_size=2), ValueError, r"avg_pool3d: input must be 5-D \(N, C, D, H, W\)"),
    (F.max_pool3d, dict(x=(1, 2, 4, 4, 4), kernel_size=(2, 2)), TypeError,
     r"max_pool3d: kernel_size must be an int or a tuple of 3 ints"),
    (F.avg_pool1d, dict(x=(1, 2, 4), kernel_size=2, padding=(1, 1)), TypeError,
     r"avg_pool1d: padding must be an int, a tuple of 1 int, 'same', 'valid' or \(\(left, right\),\)"),
    (F.avg_pool3d, dict(x=(1, 2, 4, 4, 4), kernel_size=2, padding=2), ValueError, "padding should be at most half"),
    (F.adaptive_avg_pool3d, dict(x=(1, 2, 4, 4, 4), output_size=(2, 2)), TypeError,
     r"adaptive_avg_pool3d: output_size must be an int or a tuple of 3 ints"),
    (F.adaptive_avg_pool1d, dict(x=(1, 2, 4), output_size=0), ValueError,
     "adaptive_avg_pool1d: output_size must be >= 1"),
    # max_pool_with_argmax
    (F.max_pool_with_argmax, dict(x=(2, 5, 5), ksize=2, strides=2, padding="SAME"), ValueError,
     r"max_pool_with_argmax: input must be 4-D \(N, H, W, C\), got shape \(2, 5, 5\)"),
    (F.max_pool_with_argmax, dict(ksize=2, strides=2, padding="FULL"), ValueError,
     r"max_pool_with_argmax: padding must be 'VALID' or 'SAME', got 'FULL'"),
    (F.max_pool_with_argmax, dict(ksize=2, strides=2, padding=((0, 1), (0, 1))), ValueError,
     r"padding must be 'VALID' or 'SAME'"),
    (F.max_pool_with_argmax, dict(ksize=[2, 2, 2, 1], strides=2, padding="SAME"), ValueError,
     r"ksize pools over H and W only: its batch and channel entries must be 1"),
    (F.max_pool_with_argmax, dict(ksize=[2, 2, 2], strides=2, padding="SAME"), TypeError,
     r"ksize must be an int or a list of 1, 2 or 4 ints"),
    (F.max_pool_with_argmax, dict(ksize=2, strides=0, padding="SAME"), ValueError, r"strides must be >= 1"),
    (F.max_pool_with_argmax, dict(ksize=8, strides=1, padding="VALID"), ValueError,
     r"ksize 8x8 is larger than the input's H x W = 3x7"),
    (F.max_pool_with_argmax, dict(ksize=2, strides=2, padding="SAME", include_batch_in_index=1), TypeError,
     "include_batch_in_index must be True or False"),
    (F.max_pool_with_argmax, dict(x_dtype=np.int64, ksize=2, strides=2, padding="SAME"), TypeError,
     "max_pool_with_argmax: input must be float16, float32 or float64"),
]


@pytest.mark.parametrize("fn, kw, exc, message", BAD_INPUTS, ids=[m for *_, m in BAD_INPUTS])
def test_pool_bad_input(fn, kw, exc, message):
    kw = dict(kw)
    default = {F.max_pool_with_argmax: (2, 3, 7, 3)}.get(fn, (2, 3, 7, 7))
    x = np.zeros(kw.pop("x", default), kw.pop("x_dtype", np.float32))
    if kw.pop("x_type", None) is list:
        x = x.tolist()
    with pytest.raises(exc, match=message):
        fn(x, **kw)


UNPOOL_BAD = [
    (dict(idx_dtype=np.int32), TypeError, "indices must be int64"),
    (dict(idx_shape=(1, 2, 3, 2)), ValueError, r"indices must have the input's shape \(1, 2, 3, 3\)"),
    (dict(output_size=(9, 6)), ValueError, "output_size H=9 must lie strictly between 4 and 8"),
    (dict(output_size=(6,)), TypeError, r"output_size must be \(H, W\) or \(N, C, H, W\)"),
    (dict(idx_value=36), ValueError, r"indices must lie in \[0, 36\)"),
    (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
]


@pytest.mark.parametrize("case, exc, message", UNPOOL_BAD, ids=[m for _, _, m in UNPOOL_BAD])
def test_max_unpool2d_bad_input(case, exc, message):
    x = np.ones((1, 2, 3, 3), np.float32)
    idx = np.zeros(case.get("idx_shape", x.shape), case.get("idx_dtype", np.int64))
    if "idx_value" in case:
        idx[0, 1, 2, 2] = case["idx_value"]
    with pytest.raises(exc, match=message):
        F.max_unpool2d(x, idx, case.get("kernel_size", 2), output_size=case.get("output_size"))


def test_subsample2d_bad_input():
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\)"):
        F.subsample2d(x, np.ones(2, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(3,\)"):
        F.subsample2d(x, np.ones(3, np.float32), np.ones((3, 1), np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64 but input has dtype float32"):
        F.subsample2d(x, np.ones(3), None)


def test_pool_device_mismatch():
    x = ck.tensor(np.zeros((1, 1, 4, 4), np.float32), device="cuda")
    with pytest.raises(ValueError, match="indices is on device 'cpu' but input is on 'cuda'"):
        F.max_unpool2d(F.max_pool2d(x, 2), np.zeros((1, 1, 2, 2), np.int64), 2)
