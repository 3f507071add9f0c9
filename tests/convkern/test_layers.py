"""linear, flatten, relu/tanh/sigmoid, dropout, softmax/log_softmax and cross_entropy through the
autograd graph, CPU and CUDA: forward and gradients against PyTorch (when installed), finite
differences, numerical stability, dropout's reproducibility, and bad input."""
import numpy as np
import pytest

import convkern as ck
import convkern.functional as F
from tests.convkern.half_check import check_half
from tests.reference import tolerance

DTYPES = [np.float32, np.float64]


def _torch():
    return pytest.importorskip("torch")


def _labels(rng, N, C, ignore=None):
    labels = rng.integers(0, C, N)
    if ignore is not None:
        labels[N // 2] = ignore
    return labels


# id -> (convkern fn, torch fn given the torch module, input shapes, smooth: keep inputs off relu's kink)
OPS = {
    "linear": (lambda x, w, b: F.linear(x, w, b), lambda t, x, w, b: t.nn.functional.linear(x, w, b),
               [(4, 5), (3, 5), (3,)]),
    "linear-3d-nobias": (lambda x, w: F.linear(x, w), lambda t, x, w: t.nn.functional.linear(x, w),
                         [(2, 3, 5), (4, 5)]),
    "linear-1d": (lambda x, w, b: F.linear(x, w, b), lambda t, x, w, b: t.nn.functional.linear(x, w, b),
                  [(5,), (2, 5), (2,)]),
    "relu": (F.relu, lambda t, x: t.relu(x), [(2, 3, 5)]),
    "tanh": (F.tanh, lambda t, x: t.tanh(x), [(2, 3, 5)]),
    "sigmoid": (F.sigmoid, lambda t, x: t.sigmoid(x), [(2, 3, 5)]),
    "softmax-dim0": (lambda x: F.softmax(x, 0), lambda t, x: t.softmax(x, 0), [(3, 4, 2)]),
    "softmax-dim1": (lambda x: F.softmax(x, 1), lambda t, x: t.softmax(x, 1), [(3, 4, 2)]),
    "softmax-last": (lambda x: F.softmax(x, -1), lambda t, x: t.softmax(x, -1), [(5, 11)]),
    "softmax-1d": (lambda x: F.softmax(x, 0), lambda t, x: t.softmax(x, 0), [(7,)]),
    "log_softmax-dim1": (lambda x: F.log_softmax(x, 1), lambda t, x: t.log_softmax(x, 1), [(2, 4, 3, 2)]),
    "log_softmax-last": (lambda x: F.log_softmax(x, -1), lambda t, x: t.log_softmax(x, -1), [(5, 11)]),
    "flatten": (F.flatten, lambda t, x: t.flatten(x, 1), [(2, 3, 5)]),
    "flatten-0-2": (lambda x: F.flatten(x, 0, 2), lambda t, x: t.flatten(x, 0, 2), [(2, 3, 5)]),
}


def _inputs(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in shapes:
        a = rng.uniform(0.2, 2.0, shape) * rng.choice([-1, 1], shape)     # away from relu's kink at 0
        arrays.append(a.astype(dtype))
    return arrays


def check_op(fn, torch_fn, arrays, device, dtype, seed=1):
    """Forward and every input's gradient (for a random output gradient) against PyTorch in float64."""
    torch = _torch()
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in arrays]
    y = fn(*ts)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    if y.ndim:
        y.backward(g)
    else:                                   # ck.tensor() of a 0-d array gives shape (1,)
        (y * float(g)).backward()
    refs = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
    yr = torch_fn(torch, *refs)
    yr.backward(torch.tensor(g.astype(np.float64)))
    rtol, atol = tolerance(dtype)
    assert y.dtype == dtype and y.device == device and y.shape == tuple(yr.shape)
    np.testing.assert_allclose(y.numpy(), yr.detach().numpy(), rtol=rtol, atol=atol)
    for t, r in zip(ts, refs):
        assert t.grad.dtype == dtype and t.grad.device == device
        np.testing.assert_allclose(t.grad.numpy(), r.grad.numpy(), rtol=rtol, atol=atol)


# float64 on the (simulated) CUDA path is covered by test_gradcheck
@pytest.mark.parametrize("device, dtype", [("cpu", np.float32), ("cpu", np.float64), ("cuda", np.float32)])
@pytest.mark.parametrize("name", list(OPS))
def test_op_matches_pytorch(name, dtype, device):
    fn, torch_fn, shapes = OPS[name]
    check_op(fn, torch_fn, _inputs(shapes, dtype, seed=len(name)), device, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_pytorch(reduction, dtype, device):
    torch = _torch()
    rng = np.random.default_rng(2)
    labels = _labels(rng, 6, 5, ignore=-100)
    target = ck.tensor(labels, device=device)

    def torch_fn(t, x):
        return t.nn.functional.cross_entropy(x, t.tensor(labels), reduction=reduction)
    check_op(lambda x: F.cross_entropy(x, target, reduction=reduction), torch_fn,
             [(rng.standard_normal((6, 5)) * 3).astype(dtype)], device, dtype)
    x = rng.standard_normal((6, 5))
    labels[labels == -100] = 2
    mine = F.cross_entropy(ck.tensor(x, device=device), ck.tensor(labels, device=device), reduction=reduction,
                           ignore_index=2)
    theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(labels), reduction=reduction,
                                               ignore_index=2)
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-12)


def _gradcheck(fn, shapes, device, seed=0):
    arrays = _inputs(shapes, np.float64, seed)
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in arrays]
    assert ck.gradcheck(fn, ts, max_checks=None if device == "cpu" else 2)


@pytest.mark.parametrize("name", [n for n in OPS if not n.startswith(("flatten", "softmax-dim0"))])
def test_gradcheck(name, device):
    fn, _, shapes = OPS[name]
    _gradcheck(fn, shapes, device)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(reduction, device):
    labels = ck.tensor(_labels(np.random.default_rng(4), 5, 4, ignore=-100), device=device)
    # reshape(-1): gradcheck's probe goes through ck.tensor(), which turns a 0-d array into shape (1,)
    _gradcheck(lambda x: F.cross_entropy(x, labels, reduction=reduction).reshape(-1), [(5, 4)], device)


def test_dropout_and_flatten_gradcheck(device):
    _gradcheck(lambda x: F.flatten(F.dropout(x, 0.4, seed=11), 1), [(3, 4, 5)], device)


def test_cross_entropy_and_softmax_are_stable_for_huge_logits(device):
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -999.0, -1000.0], [1000.0, 1000.0, 1000.0]], np.float32)
    labels = np.array([1, 1, 0])
    target = ck.tensor(labels, device=device)
    xt = ck.tensor(x, requires_grad=True, device=device)
    loss = F.cross_entropy(xt, target, reduction="none")
    loss.sum().backward()
    x64 = x.astype(np.float64)
    log_p = x64 - x64.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    assert np.isfinite(loss.numpy()).all() and np.isfinite(xt.grad.numpy()).all()
    np.testing.assert_allclose(loss.numpy(), -log_p[np.arange(3), labels], rtol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), np.exp(log_p) - np.eye(3)[labels], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(F.log_softmax(ck.tensor(x, device=device), 1).numpy(), log_p, rtol=1e-6)
    np.testing.assert_allclose(F.softmax(ck.tensor(x, device=device), 1).numpy(), np.exp(log_p), atol=1e-7)


def test_cross_entropy_mean_is_deterministic_and_ignores_rows():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3000, 10)) * 10).astype(np.float32)
    labels = _labels(rng, 3000, 10)
    labels[::7] = -1
    runs = [F.cross_entropy(x, labels, ignore_index=-1).numpy().tobytes() for _ in range(2)]
    assert runs[0] == runs[1]
    x64 = x.astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1)) + x64.max(1)
    used = labels != -1
    want = (lse[used] - x64[used, labels[used]]).mean()
    np.testing.assert_allclose(F.cross_entropy(x, labels, ignore_index=-1).item(), want, rtol=1e-5)
    all_ignored = F.cross_entropy(x[:2], np.array([-1, -1]), ignore_index=-1)
    assert np.isnan(all_ignored.item())


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
def test_cross_entropy_accepts_any_integer_target(dtype, device):
    x = np.random.default_rng(6).standard_normal((3, 4))
    want = F.cross_entropy(x, np.array([3, 0, 1])).item()
    target = ck.tensor(np.array([3, 0, 1], dtype), device=device)
    assert F.cross_entropy(ck.tensor(x, device=device), target).item() == pytest.approx(want, rel=1e-12)


def test_dropout_is_reproducible_and_device_independent(device):
    x = np.ones((10, 20))
    ck.manual_seed(3)
    a = F.dropout(ck.tensor(x, device=device), 0.5).numpy()
    b = F.dropout(ck.tensor(x, device=device), 0.5).numpy()
    ck.manual_seed(3)
    a_again = F.dropout(ck.tensor(x, device=device), 0.5).numpy()
    assert (a == a_again).all() and (a != b).any()
    assert set(np.unique(a)) == {0.0, 2.0}
    on_cpu = F.dropout(x.astype(np.float32), 0.3, seed=8).numpy()
    here = F.dropout(ck.tensor(x, device=device), 0.3, seed=8).numpy()
    np.testing.assert_array_equal(on_cpu != 0, here != 0)


def test_dropout_gradient_uses_the_forward_mask(device, rng):
    x = ck.tensor(rng.uniform(1, 2, (6, 7)), requires_grad=True, device=device)
    y = F.dropout(x, 0.25, seed=21)
    y.backward(np.ones((6, 7)))
    np.testing.assert_allclose(x.grad.numpy(), np.where(y.numpy() != 0, 1 / 0.75, 0.0), rtol=1e-15)
    assert y.grad_fn.saved == ()


@pytest.mark.parametrize("name, fn", [
    ("relu", F.relu), ("tanh", F.tanh), ("sigmoid", F.sigmoid),
    ("dropout", lambda x: F.dropout(x, 0.4, seed=5)),          # one seed: one mask in every dtype
    ("flatten", lambda x: F.flatten(x, 1) * 1.0),
])
def test_float16_pointwise_layers_match_float64(name, fn, device, rng):
    x = rng.uniform(-4, 4, (3, 5, 7)).astype(np.float16)
    x.reshape(-1)[0] = 0.0                                     # relu's kink
    y16, _ = check_half(fn, [x], device)
    if name == "dropout":
        np.testing.assert_array_equal(y16 != 0, F.dropout(x.astype(np.float64), 0.4, seed=5).numpy() != 0)


def test_dropout_off_is_identity(device):
    x = ck.tensor(np.ones((2, 3), np.float32), device=device)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x


def test_only_what_backward_needs_is_saved():
    x = ck.tensor(np.ones((2, 3)), requires_grad=False)
    w = ck.tensor(np.ones((4, 3)), requires_grad=True)
    y = F.linear(x, w)
    saved_x, saved_w, saved_y = y.grad_fn.saved
    assert saved_x is not None and saved_w is None and saved_y is None     # y only for an activation
    assert F.linear(x, w, activation="relu").grad_fn.saved[2] is not None
    assert F.relu(x).grad_fn is None
    y.sum().backward()
    assert x.grad is None and w.grad.shape == (4, 3)


def test_flatten_and_linear_keep_shapes():
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert F.flatten(x).shape == (2, 60)
    assert F.flatten(x, 2).shape == (2, 3, 20)
    assert F.flatten(x, -3, -2).shape == (2, 12, 5)
    assert F.flatten(np.zeros(3), 0).shape == (3,)
    assert F.flatten(ck.tensor(np.ones(3)).sum()).shape == (1,)           # a 0-d tensor
    assert F.linear(np.zeros((0, 5)), np.zeros((2, 5))).shape == (0, 2)
    assert F.flatten(np.zeros((2, 3), np.int64)).dtype == np.int64


def _bad(case):
    x = np.zeros(case.get("x", (2, 3)), case.get("dtype", np.float32))
    if x.ndim == 0:
        x = ck.tensor(np.zeros(1, x.dtype)).sum()
    op = case["op"]
    if op == "linear":
        return F.linear(x, np.zeros(case.get("w", (4, 3)), case.get("w_dtype", np.float32)),
                        None if "b" not in case else np.zeros(case["b"], np.float32))
    if op == "cross_entropy":
        t = case.get("target", np.array([0, 1]))
        return F.cross_entropy(x, t, **case.get("kw", {}))
    return getattr(F, op)(x, **case.get("kw", {}))


BAD_INPUTS = [
    (dict(op="linear", w=(4, 5)), ValueError,
     "in_features mismatch: input of shape (2, 3) has 3 features in its last dimension but weight of shape (4, 5)"),
    (dict(op="linear", w=(4, 3, 1)), ValueError, "weight must be 2-D (out_features, in_features)"),
    (dict(op="linear", x=()), ValueError, "input must have at least 1 dimension"),
    (dict(op="linear", b=(3,)), ValueError, "bias must have shape (out_features,) = (4,)"),
    (dict(op="linear", w_dtype=np.float64), TypeError, "weight has dtype float64 but input has dtype float32"),
    (dict(op="relu", dtype=np.int32), TypeError, "relu: input must be float16, float32 or float64"),
    (dict(op="relu", kw=dict(inplace=True)), ValueError, "inplace=True is not supported"),
    (dict(op="dropout", kw=dict(p=1.0)), ValueError, "dropout: p must be in [0, 1)"),
    (dict(op="dropout", kw=dict(p=-0.5)), ValueError, "dropout: p must be in [0, 1)"),
    (dict(op="dropout", kw=dict(p="0.5")), TypeError, "dropout: p must be a number"),
    (dict(op="dropout", kw=dict(seed=-3)), ValueError, "seed must be None or a non-negative int"),
    (dict(op="softmax", kw=dict(dim=2)), ValueError, "softmax: dim out of range: expected one of [-2, 1]"),
    (dict(op="log_softmax", kw=dict(dim=None)), TypeError, "log_softmax: dim must be an int"),
    (dict(op="flatten", kw=dict(start_dim=1, end_dim=0)), ValueError, "start_dim (1) must not come after end_dim"),
    (dict(op="flatten", kw=dict(start_dim=3)), ValueError, "flatten: start_dim out of range"),
    (dict(op="cross_entropy", x=(2, 3, 4)), ValueError, "input must be 2-D logits (N, C)"),
    (dict(op="cross_entropy", target=np.array([0, 3])), ValueError,
     "target values must be class indices in [0, 2] (C = 3) or ignore_index=-100; got target[1] = 3"),
    (dict(op="cross_entropy", target=np.array([-1, 0])), ValueError, "got target[0] = -1"),
    (dict(op="cross_entropy", target=np.array([0.0, np.nan])), TypeError,
     "target must hold integer class indices (any integer dtype), got dtype float64"),
    (dict(op="cross_entropy", target=np.array([0, 1, 2])), ValueError, "target must have shape (N,) = (2,)"),
    (dict(op="cross_entropy", target=[0, 1]), TypeError, "target must be a convkern Tensor"),
    (dict(op="cross_entropy", kw=dict(reduction="avg")), ValueError, "reduction must be one of"),
    (dict(op="cross_entropy", kw=dict(ignore_index=0.5)), TypeError, "ignore_index must be an int"),
]


@pytest.mark.parametrize("case,exc,message", BAD_INPUTS, ids=[m[:50] for _, _, m in BAD_INPUTS])
def test_bad_input(case, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        _bad(case)


def test_device_mismatch():
    x = ck.tensor(np.zeros((2, 3), np.float32), device="cuda")
    with pytest.raises(ValueError, match="weight is on device 'cpu' but input is on 'cuda'"):
        F.linear(x, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="target is on device 'cpu' but input is on 'cuda'"):
        F.cross_entropy(x, np.array([0, 1]))


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_activation_is_the_fused_composition(act, bias, device):
    from tests.convkern.test_conv import ACTIVATIONS, assert_fused_equals_composed
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((2, 3, 7)), rng.standard_normal((5, 7))] + ([rng.standard_normal(5)] if bias else [])
    assert_fused_equals_composed(lambda *t: F.linear(*t, activation=act),
                                 lambda *t: ACTIVATIONS[act](F.linear(*t)), arrays, device, np.float64)


def test_linear_activation_bad_input():
    with pytest.raises(ValueError, match="linear: activation must be None or one of"):
        F.linear(np.ones((2, 3)), np.ones((4, 3)), activation="softmax")
