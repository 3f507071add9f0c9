"""Pooling through the autograd graph: max_pool2d, avg_pool2d, adaptive_avg_pool2d,
max_unpool2d and subsample2d against PyTorch (when installed) and finite differences on CPU
and the CUDA path; the TensorFlow index converters against the plain formula; bad input."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F


def tie_free(shape, seed=0, dtype=np.float32):
    size = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(np.linspace(-2, 2, size)).reshape(shape).astype(dtype)


def random_configs(n, seed, dilation=True):
    """(shape, kernel, stride or None, padding, dilation, ceil_mode) that PyTorch accepts."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        s = None if rng.random() < 0.2 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if dilation else (1, 1)
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(4, 10)), int(rng.integers(4, 10)))
        if any(shape[2 + i] + 2 * p[i] < d[i] * (k[i] - 1) + 1 for i in range(2)):
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


def test_max_pool2d_matches_pytorch(device):
    torch = pytest.importorskip("torch")
    for i, (shape, k, s, p, d, ceil) in enumerate(random_configs(5 if device == "cuda" else 25, seed=1)):
        x = tie_free(shape, seed=i)
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        (y, idx), dy, dx = run(F.max_pool2d, x, i, device, return_indices=True, **kw)
        xt = torch.tensor(x, requires_grad=True)
        yt, it = torch.nn.functional.max_pool2d(xt, return_indices=True, **kw)
        yt.backward(torch.tensor(dy))
        msg = str((shape, kw))
        assert y.shape == tuple(yt.shape), msg
        assert idx.dtype == np.int64 and idx.device == device and not idx.requires_grad
        np.testing.assert_array_equal(y.numpy(), yt.detach().numpy(), err_msg=msg)
        np.testing.assert_array_equal(idx.numpy(), it.numpy(), err_msg=msg)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6, err_msg=msg)


def test_avg_pool2d_matches_pytorch(device):
    torch = pytest.importorskip("torch")
    for i, (shape, k, s, p, _, ceil) in enumerate(random_configs(4 if device == "cuda" else 25, seed=2,
                                                                 dilation=False)):
        cip = bool(i % 2)
        x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)
        y, dy, dx = run(F.avg_pool2d, x, i, device, **kw)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.avg_pool2d(xt, **kw)
        yt.backward(torch.tensor(dy))
        msg = str((shape, kw))
        assert y.shape == tuple(yt.shape), msg
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=msg)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=msg)


@pytest.mark.parametrize("shape, output_size", [((2, 3, 7, 5), (3, 2)), ((1, 2, 6, 6), 1), ((2, 2, 5, 7), (None, 3)),
                                                ((1, 2, 4, 5), (6, 7))], ids=str)
def test_adaptive_avg_pool2d_matches_pytorch(shape, output_size, device):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    y, dy, dx = run(F.adaptive_avg_pool2d, x, 4, device, output_size=output_size)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_gradcheck(count_include_pad, device):
    x = np.random.default_rng(7).standard_normal((2, 2, 5, 6))
    _gradcheck(lambda a: F.avg_pool2d(a, (3, 2), 2, 1, ceil_mode=True, count_include_pad=count_include_pad),
               [x], device)


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
    (F.max_pool2d, dict(x=(3, 7, 7), kernel_size=2), ValueError, r"input must be 4-D \(N, C, H, W\)"),
    (F.avg_pool2d, dict(x=(2, 0, 7, 7), kernel_size=2), ValueError, "no zero-size dimension"),
    (F.max_pool2d, dict(x_dtype=np.int32, kernel_size=2), TypeError, "input must be float32 or float64"),
    (F.max_pool2d, dict(x_type=list, kernel_size=2), TypeError, "input must be a convkern Tensor"),
    (F.adaptive_avg_pool2d, dict(output_size=0), ValueError, "output_size must be >= 1"),
    (F.adaptive_avg_pool2d, dict(output_size=(2, 3, 4)), TypeError, "output_size must be an int or a pair"),
]


@pytest.mark.parametrize("fn, kw, exc, message", BAD_INPUTS, ids=[m for *_, m in BAD_INPUTS])
def test_pool_bad_input(fn, kw, exc, message):
    kw = dict(kw)
    x = np.zeros(kw.pop("x", (2, 3, 7, 7)), kw.pop("x_dtype", np.float32))
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
