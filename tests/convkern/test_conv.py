"""The convolution family through the autograd graph: conv1d/2d/3d, conv_transpose1d/2d/3d,
depthwise/separable/atrous, with every algorithm that supports each configuration, on CPU and on
the CUDA path, against the plain float64 references, PyTorch (when installed) and finite
differences; refusals and bad input."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from convkern.kernels.conv_registry import BY_NAME
from convkern.kernels.shapes import same_padding
from tests.reference import (conv2d_bwd_data_ref, conv2d_bwd_filter_ref, conv2d_fwd_ref, conv_bwd_data_ref,
                             conv_bwd_filter_ref, conv_fwd_ref, conv_transpose_ref, tolerance)

DEVICES = ["cpu", "cuda"]
# The simulator runs one Python thread per CUDA thread, so the op-level tests run CUDA in float32 and
# (for the family) through "auto" only: every algorithm x pass x dtype is checked on the simulator at
# kernel level by tests/kernels/test_conv_algorithms.py; what is checked here is the op layer above it.
CUDA_DTYPES = [np.float32]


def _tolerance(algorithm, dtype):
    """(rtol, atol) for ``algorithm``'s results in ``dtype``: its own when it computes ``dtype`` in
    reduced precision (TF32), else the float dtype's (tests/reference.py)."""
    own = BY_NAME[algorithm].tolerance(dtype) if algorithm in BY_NAME else None
    return own or tolerance(dtype)


def _supported(device, geometry):
    """'auto' and every algorithm that can run all three passes of ``geometry`` on ``device``."""
    return ck.conv_algorithms(device, geometry) + ["auto"]

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


def _config_id(c):
    return f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}"


def _conv2d_params():
    return [pytest.param(config, alg, device, dtype, id=f"{alg}-{device}-{_config_id(config)}-{dtype.__name__}")
            for config in CONFIGS for device in DEVICES
            for alg in _supported(device, ck.conv_geometry(config[0], config[1], *config[2:]))
            for dtype in ([np.float32, np.float64] if device == "cpu" else CUDA_DTYPES)]


@pytest.mark.parametrize("config,algorithm,device,dtype", _conv2d_params())
def test_conv2d_matches_reference(config, algorithm, device, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = config
    (x, w, b, dy), (y, dx, dw, db) = _run(config, algorithm, device, dtype)
    st = (stride, stride) if isinstance(stride, int) else stride
    dil = (dilation, dilation) if isinstance(dilation, int) else dilation
    kw = dict(stride=st, pad=_pads(x_shape, w_shape, stride, padding, dilation), dilation=dil, groups=groups)
    rtol, atol = _tolerance(algorithm, dtype)
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
    """Random configurations; half of them stride 1 and dilation 1, and half of those 3x3, so that
    the algorithms specialised to such shapes get their share."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        groups = int(rng.choice([1, 2, 3]))
        C, K = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        R, S = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        st = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        if rng.random() < 0.5:
            st = dil = (1, 1)
            if rng.random() < 0.5:
                R = S = 3
        pad = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        H, W = int(rng.integers(4, 10)), int(rng.integers(4, 10))
        if (H + 2 * pad[0] - dil[0] * (R - 1) - 1) < 0 or (W + 2 * pad[1] - dil[1] * (S - 1) - 1) < 0:
            continue
        configs.append(((int(rng.integers(1, 3)), C, H, W), (K, C // groups, R, S), st, pad, dil, groups))
    return configs


@pytest.mark.parametrize("algorithm", ck.conv_algorithms())
def test_conv2d_matches_pytorch(algorithm, device):
    torch = pytest.importorskip("torch")
    configs = [c for c in _random_torch_configs(40, seed=sum(map(ord, algorithm)))
               if algorithm in ck.conv_algorithms(device, ck.conv_geometry(*c))]
    assert configs, f"no random configuration suits {algorithm}"
    for config in configs[:2 if device == "cuda" else 10]:
        x_shape, w_shape, stride, padding, dilation, groups = config
        (x, w, b, dy), (y, dx, dw, db) = _run(config, algorithm, device, np.float32, seed=1)
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation,
                                        groups=groups)
        yt.backward(torch.tensor(dy))
        rtol, atol = (max(t, 1e-4) for t in _tolerance(algorithm, np.float32))
        for mine, theirs in [(y, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)]:
            np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=rtol, atol=atol, err_msg=str(config))


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
def test_conv2d_finite_differences_float64(algorithm, device):
    _finite_difference_check(device, algorithm, indices_per_tensor=None if device == "cpu" else 3)


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
    (dict(x_dtype=np.int32, w_dtype=np.int32), TypeError, "input must be float16, float32 or float64"),
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


def test_conv_algorithms_lists_the_registry_and_filters_by_geometry():
    from convkern.kernels.conv_registry import ALGORITHMS
    names = [a.name for a in ALGORITHMS]
    assert ck.conv_algorithms("cpu") == names and ck.conv_algorithms("cuda") == names
    assert {"direct", "im2col", "implicit_gemm"} <= set(names)
    g3 = ck.conv_geometry((1, 2, 5, 5, 5), (2, 2, 3, 3, 3))
    assert "im2col" not in ck.conv_algorithms("cpu", g3)
    g2 = ck.conv_geometry((1, 2, 5, 5), (2, 2, 3, 3), padding=1)
    for device in DEVICES:
        listed = ck.conv_algorithms(device, g2)
        assert listed == [a.name for a in ALGORITHMS if all(a.supports(g2, device, p)[0] for p in
                                                             ("fwd", "bwd_data", "bwd_filter"))]
        assert {"direct", "im2col", "implicit_gemm"} <= set(listed)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        ck.conv_algorithms("tpu")


def test_conv2d_saves_only_what_backward_needs():
    x = ck.tensor(np.ones((1, 2, 5, 5), np.float32), requires_grad=False)
    w = ck.tensor(np.ones((3, 2, 3, 3), np.float32), requires_grad=True)
    y = F.conv2d(x, w)
    saved_x, saved_w, saved_y = y.grad_fn.saved
    assert saved_x is not None and saved_w is None and saved_y is None      # y only for an activation
    assert F.conv2d(x, w, activation="relu").grad_fn.saved[2] is not None
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


# --- conv1d / conv3d / transposed --------------------------------------------------------------

# (op, x shape, w shape, keyword arguments)
FAMILY = [
    ("conv1d", (2, 3, 9), (4, 3, 3), dict(padding=1)),
    ("conv1d", (1, 4, 11), (6, 2, 4), dict(stride=2, padding="same", groups=2)),
    ("conv1d", (2, 2, 8), (3, 2, 3), dict(padding="valid", dilation=2)),
    ("conv1d", (1, 4, 7), (4, 1, 3), dict(padding=(2,), groups=4)),
    ("conv3d", (1, 2, 5, 6, 4), (3, 2, 3, 3, 2), dict(padding=1)),
    ("conv3d", (2, 4, 6, 5, 5), (4, 2, 2, 3, 3), dict(stride=(2, 1, 2), padding="same", dilation=(1, 2, 1), groups=2)),
    ("conv_transpose1d", (2, 3, 5), (3, 4, 3), dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose1d", (1, 4, 6), (4, 1, 4), dict(stride=3, output_padding=2, groups=2)),
    ("conv_transpose2d", (2, 4, 5, 4), (4, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2)),
    ("conv_transpose2d", (1, 2, 4, 4), (2, 2, 3, 3), dict(dilation=2, output_padding=1)),   # output_padding < dilation
    ("conv_transpose2d", (1, 3, 3, 5), (3, 2, 4, 3), dict(stride=2, padding=2)),
    ("conv_transpose3d", (1, 2, 3, 4, 3), (2, 2, 2, 3, 2),
     dict(stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 1), dilation=(1, 2, 1))),
]


def _family_id(case):
    op, xs, ws, kw = case
    return f"{op}-{'x'.join(map(str, xs))}-{'x'.join(map(str, ws))}-" + "-".join(f"{k}{v}" for k, v in kw.items())


def _geometry_of(case):
    op, xs, ws, kw = case
    if op.startswith("conv_transpose"):
        return ck.conv_transpose_geometry(xs, ws, kw.get("stride", 1), kw.get("padding", 0),
                                          kw.get("output_padding", 0), kw.get("groups", 1), kw.get("dilation", 1))
    return ck.conv_geometry(xs, ws, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                            kw.get("groups", 1))


def _family_params():
    return [pytest.param(case, alg, device, dtype, id=f"{alg}-{device}-{_family_id(case)}-{dtype.__name__}")
            for case in FAMILY for device in DEVICES
            for alg in (_supported(device, _geometry_of(case)) if device == "cpu" else ["auto"])
            for dtype in ([np.float32, np.float64] if device == "cpu" else CUDA_DTYPES)]


def _run_family(case, algorithm, device, dtype, seed=0):
    op, xs, ws, kw = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    g = _geometry_of(case)
    transposed = op.startswith("conv_transpose")
    b = rng.standard_normal(g.C if transposed else g.K).astype(dtype)
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    y = getattr(F, op)(*ts, algorithm=algorithm, **kw)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    return (x, w, b, dy), (y.numpy(), *(t.grad.numpy() for t in ts)), g


def _family_reference(case, x, w, b, dy, g):
    """Forward and gradients from the float64 references (tests/reference.py)."""
    op = case[0]
    pads = tuple(zip(g.pad_before, g.pad_after))
    spatial = tuple(range(2, dy.ndim))
    db = dy.astype(np.float64).sum(axis=(0,) + spatial)
    bias = b.reshape((1, -1) + (1,) * len(spatial))
    if op.startswith("conv_transpose"):
        y = conv_transpose_ref(x, w, g.stride, g.pad_before, g.output_padding, g.dilation, g.groups) + bias
        dx = conv_fwd_ref(dy, w, g.stride, pads, g.dilation, g.groups)
        dw = conv_bwd_filter_ref(x, dy, w.shape, g.stride, pads, g.dilation, g.groups)
        return y, dx, dw, db
    y = conv_fwd_ref(x, w, g.stride, pads, g.dilation, g.groups) + bias
    return (y, conv_bwd_data_ref(dy, w, x.shape, g.stride, pads, g.dilation, g.groups),
            conv_bwd_filter_ref(dy, x, w.shape, g.stride, pads, g.dilation, g.groups), db)


@pytest.mark.parametrize("case,algorithm,device,dtype", _family_params())
def test_family_matches_reference(case, algorithm, device, dtype):
    inputs, got, g = _run_family(case, algorithm, device, dtype)
    want = _family_reference(case, *inputs, g)
    for name, mine, ref in zip(("y", "dx", "dw", "db"), got, want):
        assert mine.dtype == dtype and mine.shape == ref.shape, (name, mine.shape, ref.shape)
        np.testing.assert_allclose(mine, ref, *_tolerance(algorithm, dtype), err_msg=name)


def test_every_family_op_runs_somewhere():
    ops = {p.values[0][0] for p in _family_params()}
    assert ops == {c[0] for c in FAMILY}


@pytest.mark.parametrize("case", FAMILY, ids=_family_id)
def test_family_matches_pytorch(case, device):
    torch = pytest.importorskip("torch")
    inputs, got, g = _run_family(case, "auto", device, np.float32, seed=1)
    x, w, b, dy = (torch.tensor(a, requires_grad=True) for a in inputs)
    kw, xin = dict(case[3]), x
    if kw.get("padding") == "same":     # PyTorch has no strided "same": pad explicitly (TensorFlow's split)
        kw["padding"] = 0
        xin = torch.nn.functional.pad(x, [p for pair in zip(g.pad_before[::-1], g.pad_after[::-1]) for p in pair])
    y = getattr(torch.nn.functional, case[0])(xin, w, b, **kw)
    y.backward(dy.detach())
    for mine, theirs in zip(got, (y, x.grad, w.grad, b.grad)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-4, atol=1e-4, err_msg=_family_id(case))


@pytest.mark.parametrize("case", FAMILY, ids=_family_id)
def test_family_gradcheck_float64(case, device):
    op, xs, ws, kw = case
    if device == "cuda" and case is not FAMILY[0]:
        pytest.skip("on the simulator one case (several seconds each); the others' gradients are checked "
                    "against the float64 references above, and gradcheck of the op layer runs on the CPU")
    rng = np.random.default_rng(5)
    g = _geometry_of(case)
    arrays = (rng.standard_normal(xs), rng.standard_normal(ws),
              rng.standard_normal(g.C if op.startswith("conv_transpose") else g.K))
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in arrays]
    assert ck.gradcheck(lambda x, w, b: getattr(F, op)(x, w, b, **kw), ts,
                        max_checks=None if device == "cpu" else 2)


def test_transposed_conv_is_the_adjoint_of_conv():
    """<conv(x), y> == <x, conv_transpose(y)> for the same weight and arguments."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    kw = dict(stride=(2, 3), padding=(1, 0), dilation=(1, 2))
    y = F.conv2d(x, w, **kw).numpy()
    v = rng.standard_normal(y.shape)
    back = F.conv_transpose2d(v, w, output_padding=(0, 2), **kw).numpy()
    assert back.shape == x.shape
    np.testing.assert_allclose((y * v).sum(), (x * back).sum(), rtol=1e-12)


# --- TensorFlow-named layers, against their compositions ---------------------------------------

@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv2d_is_grouped_conv(multiplier, device):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((3 * multiplier, 1, 3, 3))
    b = rng.standard_normal(3 * multiplier)
    kw = dict(stride=(1, 2), padding="same", dilation=(2, 1))
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    us = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    y = F.depthwise_conv2d(*ts, **kw)
    ref = F.conv2d(*us, groups=3, **kw)
    dy = rng.standard_normal(y.shape)
    y.backward(dy)
    ref.backward(dy)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    for t, u in zip(ts, us):
        np.testing.assert_allclose(t.grad.numpy(), u.grad.numpy(), rtol=1e-12, atol=1e-12)
    if device == "cpu":     # on CUDA the gradients are those of the grouped conv, compared above
        assert ck.gradcheck(lambda *a: F.depthwise_conv2d(*a, **kw), ts)


def test_separable_conv2d_is_depthwise_then_pointwise(device):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 6, 7))
    dw = rng.standard_normal((4, 1, 3, 3))        # depth multiplier 2
    pw = rng.standard_normal((5, 4, 1, 1))
    b = rng.standard_normal(5)
    kw = dict(stride=2, padding=1)
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, dw, pw, b)]
    y = F.separable_conv2d(*ts, **kw)
    mid = conv_fwd_ref(x, dw, (2, 2), ((1, 1), (1, 1)), (1, 1), groups=2)
    want = conv_fwd_ref(mid, pw, (1, 1), ((0, 0), (0, 0)), (1, 1)) + b[None, :, None, None]
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)
    assert ck.gradcheck(lambda *a: F.separable_conv2d(*a, **kw), ts, max_checks=None if device == "cpu" else 1)


@pytest.mark.parametrize("padding", ["same", "VALID"])
def test_atrous_conv2d_is_dilated_stride_1_conv(padding, device):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 9, 8))
    w = rng.standard_normal((3, 2, 3, 3))
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w)]
    y = F.atrous_conv2d(*ts, rate=2, padding=padding)
    pads = ((2, 2), (2, 2)) if padding == "same" else ((0, 0), (0, 0))
    np.testing.assert_allclose(y.numpy(), conv_fwd_ref(x, w, (1, 1), pads, (2, 2)), rtol=1e-10, atol=1e-10)
    if padding == "same":
        assert y.shape[2:] == x.shape[2:]
    if device == "cpu":     # atrous_conv2d is conv2d with dilation: its CUDA gradients are conv2d's
        assert ck.gradcheck(lambda *a: F.atrous_conv2d(*a, rate=2, padding=padding), ts)


# --- refusals and bad input --------------------------------------------------------------------

def test_named_algorithm_refusal_carries_the_reason():
    x = np.zeros((1, 2, 5, 5, 5), np.float32)
    w = np.zeros((2, 2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv3d: algorithm 'im2col' cannot run the fwd pass .*"
                                         r"im2col runs 2-D convolutions only; this one is 3-D"):
        F.conv3d(x, w, algorithm="im2col")
    with pytest.raises(ValueError, match=r"conv_transpose3d: algorithm 'im2col' cannot run the bwd_data pass"):
        F.conv_transpose3d(x, w, algorithm="im2col")


def test_named_algorithm_is_checked_for_the_backward_passes_it_will_need(monkeypatch):
    from convkern.kernels.conv_registry import BY_NAME
    direct = BY_NAME["direct"]
    monkeypatch.setattr(direct, "_limits", lambda g, device, pass_: (pass_ != "bwd_filter", "direct: no dw today"))
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    assert F.conv2d(x, w, algorithm="direct").shape == (1, 1, 2, 2)       # no gradient needed
    with pytest.raises(ValueError, match="cannot run the bwd_filter pass .*direct: no dw today"):
        F.conv2d(x, ck.tensor(w, requires_grad=True), algorithm="direct")
    with ck.no_grad():
        F.conv2d(x, ck.tensor(w, requires_grad=True), algorithm="direct")


FAMILY_BAD = [
    (F.conv1d, (2, 3, 7, 7), (4, 3, 3), {}, ValueError, "conv1d: input must be 3-D (N, C, L)"),
    (F.conv1d, (2, 3, 7), (4, 3, 3, 3), {}, ValueError, "conv1d: weight must be 3-D (K, C/groups, kL)"),
    (F.conv3d, (2, 3, 7, 7), (4, 3, 3, 3, 3), {}, ValueError, "conv3d: input must be 5-D (N, C, D, H, W)"),
    (F.conv3d, (1, 4, 5, 5, 5), (2, 3, 3, 3, 3), {}, ValueError, "conv3d: channel mismatch"),
    (F.conv3d, (1, 4, 5, 5, 5), (2, 4, 3, 3, 3), dict(padding=(1, 1)), TypeError,
     "conv3d: padding must be an int or a tuple of 3 ints"),
    (F.conv3d, (1, 4, 5, 5, 5), (2, 4, 3, 3, 3), dict(padding=-1), ValueError, "conv3d: padding must be >= 0"),
    (F.conv3d, (1, 4, 5, 5, 5), (2, 4, 3, 3, 3), dict(padding="full"), ValueError,
     "conv3d: padding must be an int, 3 ints, 'same' or 'valid'"),
    (F.conv1d, (1, 2, 4), (1, 2, 7), {}, ValueError, "conv1d: kernel (dilated extent 7) is larger than the padded"),
    (F.conv_transpose2d, (1, 2, 4, 4), (3, 2, 3, 3), {}, ValueError, "conv_transpose2d: channel mismatch"),
    (F.conv_transpose2d, (1, 4, 4, 4), (4, 2, 3, 3), dict(groups=3), ValueError,
     "conv_transpose2d: groups=3 must divide the input channels C_in=4"),
    (F.conv_transpose2d, (1, 2, 4, 4), (2, 2, 3, 3), dict(stride=2, output_padding=2), ValueError,
     "conv_transpose2d: output_padding (2, 2) must be smaller than max(stride, dilation)"),
    (F.conv_transpose1d, (1, 2, 4), (2, 2, 3), dict(output_padding=1), ValueError,
     "conv_transpose1d: output_padding (1,) must be smaller"),
    (F.conv_transpose2d, (1, 2, 2, 2), (2, 2, 3, 3), dict(padding=3), ValueError,
     "conv_transpose2d: output size (-2, -2) would be empty"),
    (F.conv_transpose2d, (1, 2, 4, 4), (2, 2, 3, 3), dict(padding="same"), ValueError,
     "conv_transpose2d: padding must be an int or one int per axis"),
    (F.conv_transpose3d, (1, 2, 4, 4), (2, 2, 3, 3), {}, ValueError, "conv_transpose3d: input must be 5-D"),
    (F.conv_transpose2d, (1, 2, 4, 4), (2, 2, 3, 3), dict(bias=np.zeros(3, np.float32), groups=1), ValueError,
     r"conv_transpose2d: bias must have shape (C_out,) = (2,)"),
    (F.conv_transpose2d, (1, 2, 4, 4), (2, 2, 3, 3), dict(algorithm="nope"), ValueError, "unknown algorithm 'nope'"),
]


@pytest.mark.parametrize("fn,xs,ws,kw,exc,message", FAMILY_BAD, ids=[m for *_, m in FAMILY_BAD])
def test_family_bad_input(fn, xs, ws, kw, exc, message):
    import re
    with pytest.raises(exc, match=re.escape(message)):
        fn(np.zeros(xs, np.float32), np.zeros(ws, np.float32), **kw)


TF_BAD = [
    (lambda x: F.depthwise_conv2d(x, np.zeros((5, 1, 3, 3), np.float32)), ValueError,
     "depthwise_conv2d: weight must have shape (C*M, 1, R, S) with C=2 input channels, got (5, 1, 3, 3)"),
    (lambda x: F.depthwise_conv2d(x, np.zeros((4, 2, 3, 3), np.float32)), ValueError,
     "depthwise_conv2d: weight must have shape (C*M, 1, R, S)"),
    (lambda x: F.separable_conv2d(x, np.zeros((4, 1, 3, 3), np.float32), np.zeros((3, 5, 1, 1), np.float32)),
     ValueError, "separable_conv2d: pointwise_weight must have shape (K, C*M, 1, 1) = (K, 4, 1, 1)"),
    (lambda x: F.separable_conv2d(x, np.zeros((3, 1, 3, 3), np.float32), np.zeros((3, 3, 1, 1), np.float32)),
     ValueError, "separable_conv2d: depthwise_weight must have shape (C*M, 1, R, S)"),
    (lambda x: F.separable_conv2d(x, np.zeros((4, 1, 3, 3), np.float32), np.zeros((3, 4, 3, 3), np.float32)),
     ValueError, "separable_conv2d: pointwise_weight must have shape (K, C*M, 1, 1)"),
    (lambda x: F.atrous_conv2d(x, np.zeros((3, 2, 3, 3), np.float32), rate=0, padding="same"), ValueError,
     "atrous_conv2d: rate must be a positive int, got 0"),
    (lambda x: F.atrous_conv2d(x, np.zeros((3, 2, 3, 3), np.float32), rate=2, padding=1), ValueError,
     "atrous_conv2d: padding must be 'same' or 'valid', got 1"),
    (lambda x: F.atrous_conv2d(x, np.zeros((3, 3, 3, 3), np.float32), rate=2, padding="valid"), ValueError,
     "atrous_conv2d: channel mismatch"),
]


@pytest.mark.parametrize("call,exc,message", TF_BAD, ids=[m for _, _, m in TF_BAD])
def test_tf_named_layers_bad_input(call, exc, message):
    import re
    with pytest.raises(exc, match=re.escape(message)):
        call(np.zeros((1, 2, 6, 6), np.float32))


# --- float16 -----------------------------------------------------------------------------------

HALF_ALGORITHMS = ["direct", "implicit_gemm_tc", "auto"]


def _half_reference(x, w, b, dy, stride, pads, dilation, groups):
    """y, dx, dw, db in float64 from the float16 operands themselves (what a float16 convolution
    with fp32 accumulation is within tolerance(float16) of)."""
    y = conv_fwd_ref(x, w, stride, pads, dilation, groups) + b.astype(np.float64)[None, :, None, None]
    dx = conv_bwd_data_ref(dy, w, x.shape, stride, pads, dilation, groups)
    dw = conv_bwd_filter_ref(dy, x, w.shape, stride, pads, dilation, groups)
    return y, dx, dw, dy.astype(np.float64).sum(axis=(0, 2, 3))


@pytest.mark.parametrize("algorithm", HALF_ALGORITHMS)
def test_conv2d_float16_forward_and_gradients(algorithm, device):
    rng = np.random.default_rng(7)
    x, w, b = (rng.standard_normal(s).astype(np.float16) for s in ((2, 4, 7, 6), (6, 2, 3, 3), (6,)))
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    y = F.conv2d(*ts, stride=(1, 2), padding=1, groups=2, algorithm=algorithm)
    dy = rng.standard_normal(y.shape).astype(np.float16)
    y.backward(ck.tensor(dy, device=device))
    want = _half_reference(x, w, b, dy, (1, 2), ((1, 1), (1, 1)), (1, 1), 2)
    for name, mine, ref in zip(("y", "dx", "dw", "db"), (y, *(t.grad for t in ts)), want):
        assert mine.dtype == np.float16, name
        np.testing.assert_allclose(mine.numpy(), ref, *tolerance(np.float16), err_msg=name)


# conv1d and the transposed convolutions reach the same 2-D launchers, so they take float16 too
# (on the simulator one case and algorithm: the launchers are the same)
HALF_FAMILY = [(c, "cpu", a) for c in (FAMILY[1], FAMILY[7], FAMILY[8]) for a in ("direct", "implicit_gemm_tc")] + \
    [(FAMILY[8], "cuda", "implicit_gemm_tc")]


@pytest.mark.parametrize("case,device,algorithm", HALF_FAMILY,
                         ids=[f"{a}-{d}-{_family_id(c)}" for c, d, a in HALF_FAMILY])
def test_family_float16_through_the_same_launchers(case, device, algorithm):
    inputs, got, g = _run_family(case, algorithm, device, np.float16)
    want = _family_reference(case, *inputs, g)
    for name, mine, ref in zip(("y", "dx", "dw", "db"), got, want):
        assert mine.dtype == np.float16 and mine.shape == ref.shape, name
        np.testing.assert_allclose(mine, ref, *tolerance(np.float16), err_msg=name)


def test_conv_algorithms_filters_by_dtype():
    g = ck.conv_geometry((1, 2, 6, 6), (3, 2, 3, 3), padding=1)
    for device in DEVICES:
        assert ck.conv_algorithms(device, dtype=np.float16) == ["direct", "implicit_gemm_tc"]
        assert ck.conv_algorithms(device, g, dtype="float16") == ["direct", "implicit_gemm_tc"]
        assert ck.conv_algorithms(device, g, dtype=np.float32) == ck.conv_algorithms(device, g)


def test_auto_on_float16_chooses_among_the_algorithms_that_take_it(device, monkeypatch):
    """What ``algorithm="auto"`` hands the autotuner for float16, and what the heuristic picks."""
    from convkern import autotune
    from convkern.ops.conv import heuristic_algorithm
    offered = []

    def choose(g, device, dtype, pass_, run_candidate, candidates, default):
        offered.append((np.dtype(dtype).name, pass_, list(candidates), default))
        return default
    monkeypatch.setattr(autotune, "choose", choose)
    x = ck.tensor(np.ones((1, 2, 6, 6), np.float16), requires_grad=True, device=device)
    w = ck.tensor(np.ones((3, 2, 3, 3), np.float16), requires_grad=True, device=device)
    F.conv2d(x, w, padding=1).backward(ck.tensor(np.ones((1, 3, 6, 6), np.float16), device=device))
    assert {p for _, p, _, _ in offered} == {"fwd", "bwd_data", "bwd_filter"}
    assert all(d == "float16" and c == ["direct", "implicit_gemm_tc"] and default in c for d, _, c, default in offered)
    big = ck.conv_geometry((8, 64, 28, 28), (64, 64, 3, 3), padding=1)
    assert heuristic_algorithm(big, "cuda", "fwd", np.float16) == "implicit_gemm_tc"   # not reduced: no consent needed
    assert heuristic_algorithm(big, "cpu", "fwd", np.float16) == "direct"


FLOAT16_REFUSALS = [
    (lambda x, w: F.conv2d(x, w, algorithm="winograd"), (1, 2, 6, 6), (3, 2, 3, 3),
     "conv2d: algorithm 'winograd' cannot run this convolution: winograd takes float32 and float64 arrays, not "
     "float16; the algorithms that take float16 are ['direct', 'implicit_gemm_tc']"),
    (lambda x, w: F.conv3d(x, w, algorithm="direct"), (1, 2, 4, 4, 4), (3, 2, 3, 3, 3),
     "conv3d: algorithm 'direct' cannot run this convolution: direct takes float16 for 2-D convolutions only; "
     "this one is 3-D"),
    (lambda x, w: F.conv3d(x, w), (1, 2, 4, 4, 4), (3, 2, 3, 3, 3),
     "conv3d: no algorithm takes this 3-D float16 convolution's fwd pass on cpu: direct takes float16 for 2-D "
     "convolutions only; this one is 3-D; implicit_gemm_tc runs 2-D convolutions only; this one is 3-D"),
    (lambda x, w: F.conv2d(x, w.astype(np.float32)), (1, 2, 6, 6), (3, 2, 3, 3),
     "conv2d: weight has dtype float32 but input has dtype float16"),
]


@pytest.mark.parametrize("fn,xs,ws,message", FLOAT16_REFUSALS, ids=["winograd", "direct-3d", "auto-3d", "weight"])
def test_float16_refusals_name_the_algorithm(fn, xs, ws, message):
    import re
    with pytest.raises(TypeError, match=re.escape(message)):
        fn(np.zeros(xs, np.float16), np.zeros(ws, np.float16))


def test_registry_declares_the_dtypes_each_algorithm_takes():
    from convkern.kernels.conv_registry import ALGORITHMS
    g = ck.conv_geometry((1, 2, 6, 6), (3, 2, 3, 3), padding=1)
    for a in ALGORITHMS:
        assert set(a.dtypes) >= {"float32", "float64"}, a.name
        for device in DEVICES:
            ok, why = a.supports(g, device, "fwd", np.float16)
            assert ok == (a.name in ("direct", "implicit_gemm_tc")), a.name
            assert ok or why == f"{a.name} takes float32 and float64 arrays, not float16"
            assert a.supports(g, device, "fwd", np.float32) == a.supports(g, device, "fwd")


ACTIVATIONS = {"relu": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid}


def assert_fused_equals_composed(fused, composed, arrays, device, dtype, rtol=1e-10, atol=1e-12):
    """``fused(*tensors)`` and ``composed(*tensors)``: the same output and input gradients."""
    results = []
    for fn in (fused, composed):
        ts = [ck.tensor(a, requires_grad=True, device=device) for a in arrays]
        y = fn(*ts)
        y.backward(ck.tensor(np.random.default_rng(9).standard_normal(y.shape).astype(dtype), device=device))
        results.append([y.numpy()] + [t.grad.numpy() for t in ts])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("rank,act,device", [(r, a, "cpu") for r in (1, 2, 3) for a in ACTIVATIONS]
                         + [(r, "tanh", "cuda") for r in (1, 2, 3)])
def test_conv_activation_is_the_fused_composition(rank, act, device):
    """conv{rank}d(..., activation=act) = act(conv{rank}d(...)), forward and every gradient (the
    activation's gradient and the bias gradient in one pass), through "auto" (on the simulator
    one activation and tiny maps: the kernel tests cover the rest)."""
    rng = np.random.default_rng(rank)
    size = ((9, 8, 5) if device == "cpu" else (4, 3, 3))[:rank]
    x = rng.standard_normal((2, 4) + size)
    w = rng.standard_normal((6, 2) + (3,) * rank)
    b = rng.standard_normal(6)
    conv = getattr(F, f"conv{rank}d")
    assert_fused_equals_composed(lambda x, w, b: conv(x, w, b, padding=1, groups=2, activation=act),
                                 lambda x, w, b: ACTIVATIONS[act](conv(x, w, b, padding=1, groups=2)),
                                 [x, w, b], device, np.float64)


@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "direct", "fft", "winograd"])
def test_conv2d_activation_with_each_cpu_algorithm_matches_pytorch(algorithm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 8, 7)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    ts = [ck.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b)]
    y = F.conv2d(*ts, padding=1, algorithm=algorithm, activation="relu")
    g = rng.standard_normal(y.shape)
    y.backward(g.astype(np.float32))
    rs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    yr = torch.relu(torch.nn.functional.conv2d(*rs, padding=1))
    yr.backward(torch.tensor(g))
    rtol, atol = _tolerance(algorithm, np.float32)
    np.testing.assert_allclose(y.numpy(), yr.detach().numpy(), rtol=rtol, atol=atol)
    for t, r in zip(ts, rs):
        np.testing.assert_allclose(t.grad.numpy(), r.grad.numpy(), rtol=rtol, atol=atol * 10)


def test_conv_activation_without_bias_and_with_frozen_inputs(device):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    xt = ck.tensor(x, device=device)                        # no gradient for x: dx is not computed
    wt = ck.tensor(w, requires_grad=True, device=device)
    y = F.conv2d(xt, wt, activation="tanh")
    y.backward(ck.tensor(np.ones(y.shape), device=device))
    yr = np.tanh(conv2d_fwd_ref(x, w))
    np.testing.assert_allclose(y.numpy(), yr, rtol=1e-10)
    np.testing.assert_allclose(wt.grad.numpy(), conv2d_bwd_filter_ref(1 - yr ** 2, x, w.shape), rtol=1e-9)


def test_conv_activation_bad_input():
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="conv2d: activation must be None or one of"):
        F.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="conv1d: activation must be None or one of"):
        F.conv1d(np.ones((1, 2, 5)), np.ones((3, 2, 3)), activation=True)
