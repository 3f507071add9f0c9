import numpy as np
import pytest
from numba import cuda

from convkern import cuda as runtime
from convkern.kernels import softmax as sm
from convkern.kernels.cuda_util import DeviceCheckError, is_device_array
from tests.reference import tolerance

DTYPES = [np.float16, np.float32, np.float64]
# (outer, C, inner); C = 17 and 300 are longer than a simulated (8) and a real (256) row block
VIEWS = [(1, 1, 1), (2, 5, 3), (3, 17, 1), (1, 4, 6), (2, 300, 1)]
IGNORE = -100


def put(x, device):
    return cuda.to_device(x) if device == "cuda" else x.copy()


def host(x):
    return x.copy_to_host() if is_device_array(x) else x


def garbage(shape, dtype, device):
    return put(np.full(shape, np.nan, dtype), device)


def acc_dtype(dtype):
    """The dtype of the per-row arrays (loss, stats, counted, g, hits) for logits of ``dtype``."""
    return np.float32 if dtype == np.float16 else dtype


def softmax_ref(x):
    """Softmax over axis 1 of (outer, C, inner), one row at a time, in float64."""
    x = x.astype(np.float64)
    y = np.empty_like(x)
    for o in range(x.shape[0]):
        for i in range(x.shape[2]):
            row = x[o, :, i]
            e = np.exp(row - row.max())
            y[o, :, i] = e / e.sum()
    return y


def softmax_bwd_ref(mode, y, g):
    """dx = J^T g with the row's Jacobian written out from the stored forward output ``y``:
    softmax J = diag(s) - s s^T, log-softmax J = I - 1 s^T (s = y, resp. exp(y), the softmax)."""
    y = y.astype(np.float64)
    y = y if mode == "softmax" else np.exp(y)
    g = g.astype(np.float64)
    dx = np.empty_like(y)
    for o in range(y.shape[0]):
        for i in range(y.shape[2]):
            s = y[o, :, i]
            J = np.diag(s) - np.outer(s, s) if mode == "softmax" else np.eye(len(s)) - np.outer(np.ones(len(s)), s)
            dx[o, :, i] = J.T @ g[o, :, i]
    return dx


@pytest.mark.parametrize("view", VIEWS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["softmax", "log_softmax"])
def test_softmax_fwd(mode, dtype, view, device, rng):
    x = (rng.standard_normal(view) * 3).astype(dtype)
    y = garbage(view, dtype, device)
    sm.softmax_fwd(mode, put(x, device), y)
    want = softmax_ref(x)
    rtol, atol = tolerance(dtype)
    assert y.dtype == dtype
    np.testing.assert_allclose(host(y), want if mode == "softmax" else np.log(want), rtol=rtol, atol=atol)


@pytest.mark.parametrize("view", VIEWS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["softmax", "log_softmax"])
def test_softmax_bwd(mode, dtype, view, device, rng):
    x = (rng.standard_normal(view) * 3).astype(dtype)
    g = rng.standard_normal(view).astype(dtype)
    y = softmax_ref(x)
    y = (y if mode == "softmax" else np.log(y)).astype(dtype)
    dx = garbage(view, dtype, device)
    sm.softmax_bwd(mode, put(y, device), put(g, device), dx)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(dx), softmax_bwd_ref(mode, y, g), rtol=rtol, atol=atol)


@pytest.mark.parametrize("mode", ["softmax", "log_softmax"])
def test_softmax_is_stable_for_huge_logits(mode, device):
    x = np.array([[1000.0, 999.0, -1000.0], [-1000.0, -1001.0, -1000.0]], np.float32)[:, :, None]
    y = garbage(x.shape, np.float32, device)
    sm.softmax_fwd(mode, put(x, device), y)
    want = softmax_ref(x)
    with np.errstate(divide="ignore"):
        want = want if mode == "softmax" else np.log(want)
    want[0, 2] = 0.0 if mode == "softmax" else -2000.0 - np.log1p(np.exp(-1.0))
    assert np.isfinite(host(y)).all()
    np.testing.assert_allclose(host(y), want, rtol=1e-5, atol=1e-6)


def ce_ref(x, labels):
    """Per-row loss -log(softmax(x)[label]) and the row statistics (max, log(sum exp(x - max))),
    in float64."""
    x = x.astype(np.float64)
    loss, stats = np.zeros(len(x)), np.zeros((len(x), 2))
    for n, row in enumerate(x):
        m = row.max()
        stats[n] = m, np.log(np.exp(row - m).sum())
        if labels[n] != IGNORE:
            loss[n] = -((row[labels[n]] - m) - stats[n, 1])
    return loss, stats


def ce_case(rng, N, C, dtype, scale=3.0):
    x = (rng.standard_normal((N, C)) * scale).astype(dtype)
    labels = rng.integers(0, C, N).astype(np.int64)
    labels[N // 2] = IGNORE
    return x, labels


@pytest.mark.parametrize("N, C", [(1, 1), (3, 5), (4, 17), (2, 300)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_fwd(N, C, dtype, device, rng):
    x, labels = ce_case(rng, N, C, dtype)
    acc = acc_dtype(dtype)
    loss, stats, counted = garbage(N, acc, device), garbage((N, 2), acc, device), garbage(N, acc, device)
    sm.cross_entropy_fwd(put(x, device), put(labels, device), IGNORE, loss, stats, counted)
    want_loss, want_stats = ce_ref(x, labels)
    rtol, atol = tolerance(acc)                      # float16 logits: float32 math, float32 results
    assert host(loss).dtype == acc
    np.testing.assert_allclose(host(loss), want_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(host(stats), want_stats, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(host(counted), (labels != IGNORE).astype(acc))


def test_cross_entropy_bad_label_raises_on_the_cpu_at_once_and_lazily_on_cuda(device):
    x = np.zeros((3, 4), np.float32)
    labels = np.array([0, 4, IGNORE], np.int64)
    loss, stats, counted = garbage(3, np.float32, device), garbage((3, 2), np.float32, device), \
        garbage(3, np.float32, device)
    message = r"cross_entropy: target values must be class indices in \[0, 3\] \(C = 4\) or ignore_index=-100"
    if device == "cpu":
        with pytest.raises(ValueError, match=message):
            sm.cross_entropy_fwd(x, labels, IGNORE, loss, stats, counted)
        return
    sm.cross_entropy_fwd(put(x, device), put(labels, device), IGNORE, loss, stats, counted)  # no host read here
    assert np.isnan(host(loss)[1])
    with pytest.raises(DeviceCheckError, match=message + ".*reported at the first host read"):
        runtime.synchronize()
    runtime.synchronize()                               # reported once, then the flag is clear


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_hits(dtype, device):
    x = np.array([[0.0, 2.0, 1.0], [3.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, -1.0, 0.0]], dtype)
    labels = np.array([1, 1, 2, 2], np.int64)          # row 1 ties: the first maximum (0) wins
    hits = garbage(4, acc_dtype(dtype), device)
    sm.argmax_hits(put(x, device), put(labels, device), hits)
    np.testing.assert_array_equal(host(hits), [1, 0, 1, 0])


@pytest.mark.parametrize("per_row", [True, False], ids=["g-per-row", "g-shared"])
@pytest.mark.parametrize("N, C", [(1, 1), (3, 5), (4, 17)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_bwd(N, C, dtype, per_row, device, rng):
    x, labels = ce_case(rng, N, C, dtype)
    acc = acc_dtype(dtype)
    g = rng.standard_normal(N if per_row else 1).astype(acc)
    _, stats = ce_ref(x, labels)
    dx = garbage((N, C), dtype, device)
    sm.cross_entropy_bwd(put(x, device), put(stats.astype(acc), device), put(labels, device), IGNORE,
                         put(g, device), 0.25, dx)
    want = np.zeros((N, C))
    for n in range(N):
        if labels[n] != IGNORE:
            p = np.exp(x[n].astype(np.float64) - x[n].max()) / np.exp(x[n].astype(np.float64) - x[n].max()).sum()
            p[labels[n]] -= 1
            want[n] = p * g[n if per_row else 0] * 0.25
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(dx), want, rtol=rtol, atol=atol)


def test_cross_entropy_is_stable_for_huge_logits(device):
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -999.0, -1000.0]], np.float32)
    labels = np.array([1, 1], np.int64)
    loss, stats = garbage(2, np.float32, device), garbage((2, 2), np.float32, device)
    sm.cross_entropy_fwd(put(x, device), put(labels, device), IGNORE, loss, stats, garbage(2, np.float32, device))
    want_loss, _ = ce_ref(x, labels)                   # 2000 and 0.5514...: no cancellation in float32
    np.testing.assert_allclose(host(loss), want_loss, rtol=1e-6)
    dx = garbage(x.shape, np.float32, device)
    sm.cross_entropy_bwd(put(x, device), stats, put(labels, device), IGNORE, put(np.ones(1, np.float32), device),
                         1.0, dx)
    p1 = 1 / (1 + 2 * np.exp(-1.0))                    # softmax of the -999 entry in row 1
    np.testing.assert_allclose(host(dx), [[1, -1, 0], [p1 * np.exp(-1.0), p1 - 1, p1 * np.exp(-1.0)]],
                               rtol=1e-6, atol=1e-30)


def test_reductions_are_bitwise_deterministic(device, rng):
    x = (rng.standard_normal((3, 40, 2)) * 5).astype(np.float32)
    runs = []
    for _ in range(2):
        y = garbage(x.shape, np.float32, device)
        sm.softmax_fwd("softmax", put(x, device), y)
        runs.append(host(y).tobytes())
    assert runs[0] == runs[1]


def test_softmax_bad_arguments():
    a = np.ones((2, 3, 1), np.float32)
    labels = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="unknown mode 'softmin'"):
        sm.softmax_fwd("softmin", a, a)
    with pytest.raises(ValueError, match="one shape"):
        sm.softmax_fwd("softmax", a, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="must not be empty"):
        sm.softmax_fwd("softmax", np.ones((2, 0, 1), np.float32), np.ones((2, 0, 1), np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        sm.softmax_bwd("softmax", a, np.ones((2, 3, 1)), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        sm.softmax_fwd("softmax", np.ones((2, 3, 2), np.float32)[:, :, :1], a)
    stats = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match="int64"):
        sm.cross_entropy_fwd(a[:, :, 0], labels.astype(np.int32), IGNORE, np.ones(2, np.float32), stats,
                             np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"labels, loss and counted \(N,\) and stats \(N, 2\)"):
        sm.cross_entropy_fwd(a[:, :, 0], np.zeros(3, np.int64), IGNORE, np.ones(2, np.float32), stats,
                             np.ones(2, np.float32))
    with pytest.raises(ValueError, match="argmax_hits: expected logits"):
        sm.argmax_hits(a[:, :, 0], labels, np.ones(3, np.float32))
    h = a[:, :, 0].astype(np.float16)
    with pytest.raises(TypeError, match="per-row ones of dtype float32 for float16 data, got one of dtype float16"):
        sm.cross_entropy_fwd(h, labels, IGNORE, np.ones(2, np.float16), stats, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="data ones of dtype float16 for float16 data, got one of dtype float32"):
        sm.softmax_fwd("softmax", a.astype(np.float16), a)
    with pytest.raises(TypeError, match="per-row ones of dtype float32"):
        sm.argmax_hits(h, labels, np.ones(2, np.float16))
    with pytest.raises(TypeError, match="expected float16, float32 or float64 arrays, got int32"):
        sm.softmax_fwd("softmax", a.astype(np.int32), a.astype(np.int32))
    with pytest.raises(ValueError, match="g shape"):
        sm.cross_entropy_bwd(a[:, :, 0], stats, labels, IGNORE, np.ones(3, np.float32), 1.0,
                             np.ones((2, 3), np.float32))
