"""convkern.optim: SGD and Adam follow PyTorch's update rules step for step (a plain NumPy
transcription of the rules, and PyTorch itself when installed), on both devices; parameter
groups, schedulers, optimizer state round trips and bad options."""
import numpy as np
import pytest

import convkern as ck
from convkern import optim

SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
               dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), dict(lr=0.02, weight_decay=0.1)]
ADAM_CONFIGS = [dict(), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), dict(lr=0.005, weight_decay=0.05)]
STEPS = 4


def _grads(shape, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def _sgd_reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def _adam_reference(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        d = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * d
        v = betas[1] * v + (1 - betas[1]) * d * d
        p = p - lr / (1 - betas[0] ** t) * m / (np.sqrt(v) / np.sqrt(1 - betas[1] ** t) + eps)
    return p


def _run(opt_cls, config, p0, grads, device, dtype=np.float64):
    p = ck.tensor(p0.astype(dtype), requires_grad=True, device=device)
    opt = opt_cls([p], **config)
    for g in grads:
        p.grad = ck.tensor(g.astype(dtype), device=device)
        opt.step()
    return p.numpy()


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_matches_reference_rule(config, device):
    p0 = np.random.default_rng(0).standard_normal((3, 5))
    grads = _grads(p0.shape, STEPS)
    np.testing.assert_allclose(_run(optim.SGD, config, p0, grads, device), _sgd_reference(p0, grads, **config),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=str)
def test_adam_matches_reference_rule(config, device):
    p0 = np.random.default_rng(0).standard_normal((3, 5))
    grads = _grads(p0.shape, STEPS)
    np.testing.assert_allclose(_run(optim.Adam, config, p0, grads, device), _adam_reference(p0, grads, **config),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, config", [("SGD", SGD_CONFIGS[3]), ("Adam", ADAM_CONFIGS[1])], ids=str)
def test_float16_parameters_are_updated_in_float32_with_float16_state(name, config, device):
    """One step: the float64 rule on the same float16 values, rounded once. Four steps: the state
    and parameter are stored as float16 after each (PyTorch keeps the state in the parameter's
    dtype), so the error grows by one rounding of p (|p| < 4: 2^-9) per step."""
    p0 = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)
    grads = [g.astype(np.float16) for g in _grads(p0.shape, STEPS)]
    opt_cls, reference = (optim.SGD, _sgd_reference) if name == "SGD" else (optim.Adam, _adam_reference)
    p = ck.tensor(p0.copy(), requires_grad=True, device=device)      # a CPU tensor shares its array
    opt = opt_cls([p], **config)
    for step, g in enumerate(grads, 1):
        p.grad = ck.tensor(g, device=device)
        opt.step()
        assert p.dtype == np.float16
        want = reference(p0.astype(np.float64), [x.astype(np.float64) for x in grads[:step]], **config)
        tol = 2e-3 if step == 1 else 2e-3 * step
        np.testing.assert_allclose(p.numpy().astype(np.float64), want, rtol=tol, atol=tol)
    state = opt.state_dict()["state"]["0"]
    assert all(v.dtype == np.float16 for v in state.values() if hasattr(v, "dtype"))


@pytest.mark.parametrize("name, config", [("SGD", c) for c in SGD_CONFIGS] + [("Adam", c) for c in ADAM_CONFIGS],
                         ids=str)
def test_optimizers_match_pytorch_float32(name, config):
    torch = pytest.importorskip("torch")
    p0 = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    grads = [g.astype(np.float32) for g in _grads(p0.shape, STEPS)]
    mine = _run(getattr(optim, name), config, p0, grads, "cpu", np.float32)
    tp = torch.tensor(p0, requires_grad=True)
    topt = getattr(torch.optim, name)([tp], **config)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(mine, tp.detach().numpy(), rtol=2e-6, atol=2e-7)


def test_parameter_groups_use_their_own_options():
    a = ck.tensor(np.ones(3), requires_grad=True)
    b = ck.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = ck.tensor(np.ones(3)), ck.tensor(np.ones(2))
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.9)
    np.testing.assert_allclose(b.numpy(), 0.5)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_parameters_without_grad_are_skipped():
    a = ck.tensor(np.ones(3), requires_grad=True)
    optim.Adam([a]).step()
    np.testing.assert_array_equal(a.numpy(), 1.0)


@pytest.mark.parametrize("cls, kwargs, expected", [
    (optim.lr_scheduler.StepLR, dict(step_size=2, gamma=0.5), [1.0, 1.0, 0.5, 0.5, 0.25]),
    (optim.lr_scheduler.ExponentialLR, dict(gamma=0.5), [1.0, 0.5, 0.25, 0.125, 0.0625]),
])
def test_schedulers(cls, kwargs, expected):
    a = ck.tensor(np.ones(1), requires_grad=True)
    opt = optim.SGD([{"params": [a]}], lr=1.0)
    sched = cls(opt, **kwargs)
    seen = []
    for _ in expected:
        seen.append(sched.get_last_lr()[0])
        sched.step()
    np.testing.assert_allclose(seen, expected)
    torch = pytest.importorskip("torch")
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=1.0)
    tsched = getattr(torch.optim.lr_scheduler, cls.__name__)(topt, **kwargs)
    theirs = []
    for _ in expected:
        theirs.append(tsched.get_last_lr()[0])
        topt.step()
        tsched.step()
    np.testing.assert_allclose(seen, theirs)


def test_optimizer_state_round_trip_continues_exactly(tmp_path, device):
    p0 = np.random.default_rng(0).standard_normal(5)
    grads = _grads(p0.shape, 6)
    full = _run(optim.Adam, dict(lr=0.01), p0, grads, device)
    p = ck.tensor(p0, requires_grad=True, device=device)
    opt = optim.Adam([p], lr=0.01)
    for g in grads[:3]:
        p.grad = ck.tensor(g, device=device)
        opt.step()
    ck.save({"param": p, "optim": opt.state_dict()}, tmp_path / "ckpt.npz")
    saved = ck.load(tmp_path / "ckpt.npz")
    q = ck.tensor(saved["param"], requires_grad=True, device=device)
    opt2 = optim.Adam([q], lr=0.5)
    opt2.load_state_dict(saved["optim"])
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    for g in grads[3:]:
        q.grad = ck.tensor(g, device=device)
        opt2.step()
    np.testing.assert_array_equal(q.numpy(), full)


def _param():
    return ck.tensor(np.ones(2), requires_grad=True)


@pytest.mark.parametrize("make, exc, message", [
    (lambda: optim.SGD([], lr=0.1), ValueError, "empty parameter list"),
    (lambda: optim.SGD(_param(), lr=0.1), TypeError, "single Tensor"),
    (lambda: optim.SGD([np.ones(2)], lr=0.1), TypeError, r"params\[0\] must be a convkern Tensor"),
    (lambda: optim.SGD([ck.tensor(np.ones(2))], lr=0.1), ValueError, "requires_grad=True"),
    (lambda: optim.SGD([_param()], lr=-1.0), ValueError, "lr must be >= 0"),
    (lambda: optim.SGD([_param()], lr="fast"), TypeError, "lr must be a number"),
    (lambda: optim.SGD([_param()], lr=0.1, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (lambda: optim.Adam([_param()], betas=(0.9, 1.0)), ValueError, "betas must be >= 0 and < 1"),
    (lambda: optim.Adam([_param()], betas=0.9), TypeError, "betas must be a pair"),
    (lambda: optim.SGD([{"params": [_param()], "momentun": 0.9}], lr=0.1), ValueError, "unknown option"),
    (lambda: optim.lr_scheduler.StepLR(optim.SGD([_param()], lr=0.1), step_size=0), ValueError,
     "step_size must be a positive int"),
])
def test_bad_options(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_same_parameter_in_two_groups_is_refused():
    p = _param()
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


def test_state_follows_the_parameter_to_another_device():
    p0 = np.random.default_rng(0).standard_normal(4)
    grads = _grads(p0.shape, 4)
    want = _run(optim.Adam, dict(lr=0.01), p0, grads, "cpu")
    p = ck.tensor(p0, requires_grad=True)
    opt = optim.Adam([p], lr=0.01)
    for i, g in enumerate(grads):
        if i == 2:
            p.data = ck.backend.to_device(p.data, "cuda")
        p.grad = ck.tensor(g, device=p.device)
        opt.step()
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-12)


SHAPES = [(3, 5), (4,), (2, 3, 2)]


def _params(device, dtype=np.float64):
    rng = np.random.default_rng(2)
    return [ck.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True, device=device) for s in SHAPES]


@pytest.mark.parametrize("name, config", [("SGD", SGD_CONFIGS[1]), ("SGD", SGD_CONFIGS[3]), ("SGD", SGD_CONFIGS[4]),
                                          ("Adam", ADAM_CONFIGS[2])], ids=str)
def test_flat_groups_update_every_parameter_in_one_kernel_call(name, config, device, monkeypatch):
    """flat=True: the same values as the per-parameter path, bit for bit, from one kernel call per step."""
    grads = [_grads(s, STEPS, seed=i) for i, s in enumerate(SHAPES)]
    results = {}
    for flat in (False, True):
        calls = []
        step_kernel = getattr(optim.kernels, f"{name.lower()}_step")
        monkeypatch.setattr(optim.kernels, f"{name.lower()}_step", lambda *a, **k: (calls.append(1), step_kernel(*a, **k)))
        params = _params(device)
        opt = getattr(optim, name)(params, flat=flat, **config)
        for step in range(STEPS):
            for p, g in zip(params, grads):
                p.grad = ck.tensor(g[step], device=device)
            opt.step()
        assert len(calls) == (STEPS if flat else STEPS * len(SHAPES))
        results[flat] = [p.numpy() for p in params]
        monkeypatch.undo()
    reference = _sgd_reference if name == "SGD" else _adam_reference
    for p0, g, mine in zip(_params("cpu"), grads, results[True]):
        np.testing.assert_allclose(mine, reference(p0.numpy(), g, **config), rtol=1e-12, atol=1e-12)
    for a, b in zip(results[False], results[True]):
        np.testing.assert_array_equal(a, b)


def test_flat_group_gradients_are_written_into_the_flat_buffer_by_backward(device):
    params = _params(device)
    opt = optim.SGD(params, lr=0.1, momentum=0.9, flat=True)
    want = [p.numpy().copy() for p in params]
    bufs = [np.zeros_like(w) for w in want]
    for step in range(3):
        loss = (params[0] * params[0]).sum()
        for p in params[1:]:
            loss = loss + (p * p).sum()
        loss.backward()
        flat = opt._flat_groups.get(0)
        if flat is not None:         # built at the first step; backward has written into it since
            assert all(p.grad.data is home for p, home in zip(params, flat.grad_views))
        opt.step()
        opt.zero_grad()
        for i, w in enumerate(want):
            g = 2 * w
            bufs[i] = g if step == 0 else 0.9 * bufs[i] + g
            want[i] = w - 0.1 * bufs[i]
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.numpy(), w, rtol=1e-12)


def test_flat_group_follows_new_data_missing_grads_and_state_loads():
    params = _params("cpu")
    opt = optim.SGD(params, lr=0.5, momentum=0.9, flat=True)
    for p in params:
        p.grad = ck.tensor(np.ones(p.shape))
    opt.step()
    saved = opt.state_dict()
    params[1].data = np.full(params[1].shape, 3.0)          # e.g. Module.load_state_dict
    for p in params:
        p.grad = ck.tensor(np.ones(p.shape))
    opt.step()
    np.testing.assert_allclose(params[1].numpy(), 3.0 - 0.5 * 1.9)
    params[0].grad = None                                    # skipped, the others still stepped
    before = params[0].numpy().copy()
    opt.step()
    np.testing.assert_array_equal(params[0].numpy(), before)
    np.testing.assert_allclose(params[1].numpy(), 3.0 - 0.5 * 1.9 - 0.5 * (0.9 * 1.9 + 1))
    opt.load_state_dict(saved)                               # momentum 1.0 again for every parameter
    for p in params:
        p.grad = ck.tensor(np.ones(p.shape))
    start = [p.numpy().copy() for p in params]
    opt.step()
    for p, s in zip(params, start):
        np.testing.assert_allclose(p.numpy(), s - 0.5 * 1.9)


def test_flat_group_of_mixed_dtypes_updates_each_parameter():
    a = ck.tensor(np.ones(3), requires_grad=True)
    b = ck.tensor(np.ones(2, np.float32), requires_grad=True)
    opt = optim.SGD([a, b], lr=0.5, flat=True)
    a.grad, b.grad = ck.tensor(np.ones(3)), ck.tensor(np.ones(2, np.float32))
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.5)
    np.testing.assert_allclose(b.numpy(), 0.5)
    assert b.dtype == np.float32


def test_flat_must_be_a_bool():
    with pytest.raises(TypeError, match="flat must be True or False"):
        optim.SGD([_param()], lr=0.1, flat=1)
