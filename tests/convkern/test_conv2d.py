"""conv2d through the autograd graph: every algorithm on CPU and on the CUDA path, against the
plain float64 reference, PyTorch (when installed) and finite differences; plus bad input."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern.kernels.shapes import same_padding
from tests.reference import (conv2d_bwd_data_ref, conv2d_bwd_filter_ref, conv2d_fwd_ref,
                             tolerance)

ALGORITHMS = ck.conv_algorithms() + ["auto"]

# (x shape, w shape, stride, padding as given to conv2d, dilation, groups)
CONFIGS = [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 8, 9), (4, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((2, 4, 7, 7), (4, 1, 3, 3), 2, "same", 1, 4),
    ((1, 2, 9, 8), (3, 2, 4, 4), 3, "same", 1, 1),
    ((2, 3, 6, 7), (2, 3, 2, 5), 1, "valid", (2, 1), 1),
    ((1, 2, 5, 5), (2, 2, 1, 1), 2, 0, 1, 1),
]


def _pads(x_shape, w_shape, stride, padding, dilation):
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        return same_padding(x_shape[2], w_shape[2], sh, dh) + same_padding(x_shape[3], w_shape[3], sw, dw)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph, pw, pw)


def _run(config, algorithm, device, dtype, seed=0):
    x_shape, w_shape, stride, padding, dilation, groups = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    xt = ck.tensor(x, requires_grad=True, device=device)
    wt = ck.tensor(w, requires_grad=True, device=device)
    bt = ck.tensor(b, requires_grad=True, device=device)
    y = F.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 algorithm=algorithm)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    return (x, w, b, dy), (y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
def test_conv2d_matches_reference(config, algorithm, device, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = config
    (x, w, b, dy), (y, dx, dw, db) = _run(config, algorithm, device, dtype)
    st = (stride, stride) if isinstance(stride, int) else stride
    dil = (dilation, dilation) if isinstance(dilation, int) else dilation
    kw = dict(stride=st, pad=_pads(x_shape, w_shape, stride, padding, dilation), dilation=dil, groups=groups)
    rtol, atol = tolerance(dtype)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    np.testing.assert_allclose(y, conv2d_fwd_ref(x, w, **kw) + b[None, :, None, None], rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, conv2d_bwd_data_ref(dy, w, x.shape, **kw), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dw, conv2d_bwd_filter_ref(dy, x, w.shape, **kw), rtol=rtol, atol=atol)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=rtol, atol=atol)


def test_same_padding_output_size_is_ceil():
    for H, R, s, d in [(7, 3, 2, 1), (8, 4, 3, 1), (9, 3, 1, 2), (5, 1, 2, 1), (6, 5, 4, 1)]:
        x = np.zeros((1, 1, H, H), np.float32)
        w = np.zeros((1, 1, R, R), np.float32)
        y = F.conv2d(x, w, stride=s, padding="same", dilation=d)
        assert y.shape[2:] == (-(-H // s), -(-H // s))


def _random_torch_configs(n, seed):
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        groups = int(rng.choice([1, 2, 3]))
        C, K = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        R, S = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        st = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pad = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        H, W = int(rng.integers(4, 10)), int(rng.integers(4, 10))
        if (H + 2 * pad[0] - dil[0] * (R - 1) - 1) < 0 or (W + 2 * pad[1] - dil[1] * (S - 1) - 1) < 0:
            continue
        configs.append(((int(rng.integers(1, 3)), C, H, W), (K, C // groups, R, S), st, pad, dil, groups))
    return configs


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "implicit_gemm"])
def test_conv2d_matches_pytorch(algorithm, device):
    torch = pytest.importorskip("torch")
    for config in _random_torch_configs(4 if device == "cuda" else 10, seed=hash(algorithm) % 1000):
        x_shape, w_shape, stride, padding, dilation, groups = config
        (x, w, b, dy), (y, dx, dw, db) = _run(config, algorithm, device, np.float32, seed=1)
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation,
                                        groups=groups)
        yt.backward(torch.tensor(dy))
        for mine, theirs in [(y, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)]:
            np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-4, atol=1e-4, err_msg=str(config))


def _finite_difference_check(device, algorithm, indices_per_tensor=None):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 5, 4))
    w = rng.standard_normal((4, 1, 3, 2))
    b = rng.standard_normal(4)
    kw = dict(stride=(2, 1), padding="same", dilation=(1, 2), groups=2, algorithm=algorithm)
    probe = rng.standard_normal(F.conv2d(x, w, b, **kw).shape)

    def loss(x_, w_, b_):
        with ck.no_grad():
            y = F.conv2d(ck.tensor(x_, device=device), ck.tensor(w_, device=device),
                         ck.tensor(b_, device=device), **kw)
        return float((y.numpy() * probe).sum())

    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    (F.conv2d(*ts, **kw) * ck.tensor(probe, device=device)).sum().backward()
    eps = 1e-6
    arrays = [x, w, b]
    for i, t in enumerate(ts):
        grad = t.grad.numpy()
        flat_idx = range(arrays[i].size) if indices_per_tensor is None else \
            rng.choice(arrays[i].size, size=min(indices_per_tensor, arrays[i].size), replace=False)
        for j in flat_idx:
            idx = np.unravel_index(j, arrays[i].shape)
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(fd - grad[idx]) < 1e-6 * max(1.0, abs(fd)), (i, idx, fd, grad[idx])


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "implicit_gemm"])
def test_conv2d_gradcheck_float64(algorithm, device):
    _finite_difference_check(device, algorithm, indices_per_tensor=None if device == "cpu" else 6)


BAD_INPUTS = [
    (dict(x=(3, 7, 7)), ValueError, "input must be 4-D"),
    (dict(w=(4, 3, 3)), ValueError, "weight must be 4-D"),
    (dict(w=(4, 2, 3, 3)), ValueError, "channel mismatch"),
    (dict(groups=2), ValueError, "groups=2 must divide the input channels C=3"),
    (dict(x=(2, 4, 7, 7), w=(3, 2, 3, 3), groups=2), ValueError, "must divide the output channels"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(w=(4, 3, 9, 9)), ValueError, "larger than the padded input"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=(1, -2)), ValueError, "stride must be >= 1"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(padding="full"), ValueError, "padding must be an int, a pair of ints, 'same' or 'valid'"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair of ints"),
    (dict(algorithm="nope"), ValueError, "unknown algorithm 'nope'"),
    (dict(w_dtype=np.float64), TypeError, "weight has dtype float64 but input has dtype float32"),
    (dict(x_dtype=np.int32, w_dtype=np.int32), TypeError, "input must be float32 or float64"),
    (dict(bias=(3,)), ValueError, "bias must have shape (K,) = (4,)"),
    (dict(x_type=list), TypeError, "input must be a convkern Tensor, a NumPy array or a CUDA array"),
]


@pytest.mark.parametrize("case,exc,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_conv2d_bad_input(case, exc, message):
    x = np.zeros(case.get("x", (2, 3, 7, 7)), case.get("x_dtype", np.float32))
    w = np.zeros(case.get("w", (4, 3, 3, 3)), case.get("w_dtype", np.float32))
    bias = np.zeros(case["bias"], np.float32) if "bias" in case else None
    if case.get("x_type") is list:
        x = x.tolist()
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups", "algorithm") if k in case}
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        F.conv2d(x, w, bias, **kw)


def test_conv2d_device_mismatch():
    x = ck.tensor(np.zeros((1, 1, 4, 4), np.float32), device="cuda")
    w = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="weight is on device 'cpu' but input is on 'cuda'"):
        F.conv2d(x, w)


def test_conv_algorithms_lists_names():
    assert ck.conv_algorithms("cpu") == ["direct", "im2col", "implicit_gemm"]
    assert ck.conv_algorithms("cuda") == ["direct", "im2col", "implicit_gemm"]
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        ck.conv_algorithms("tpu")


def test_conv2d_saves_only_what_backward_needs():
    x = ck.tensor(np.ones((1, 2, 5, 5), np.float32), requires_grad=False)
    w = ck.tensor(np.ones((3, 2, 3, 3), np.float32), requires_grad=True)
    y = F.conv2d(x, w)
    saved_x, saved_w = y.grad_fn.saved
    assert saved_x is not None and saved_w is None
    y.sum().backward()
    assert x.grad is None and w.grad.shape == (3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="a second time"):
        y.sum().backward()


def test_auto_heuristic_choices():
    from convkern.ops.conv import conv_geometry, heuristic_algorithm

    def pick(x_shape, w_shape, groups=1, device="cpu", padding=0):
        return heuristic_algorithm(conv_geometry(x_shape, w_shape, 1, padding, 1, groups), device, "fwd")
    assert pick((2, 8, 9, 9), (8, 1, 3, 3), groups=8) == "direct"            # depthwise
    assert pick((2, 8, 9, 9), (8, 1, 3, 3), groups=8, device="cuda") == "direct"
    assert pick((2, 1, 32, 32), (6, 1, 5, 5)) == "direct"                    # LeNet C1
    assert pick((2, 64, 8, 8), (32, 64, 1, 1)) == "im2col"                   # 1x1 on CPU
    assert pick((2, 64, 8, 8), (32, 64, 3, 3), padding=1) == "implicit_gemm"
    assert pick((2, 64, 8, 8), (32, 64, 1, 1), device="cuda") == "implicit_gemm"
