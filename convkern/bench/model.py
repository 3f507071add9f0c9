"""``convkern bench --model NAME``: a reference CNN layer by layer, and whole.

Per leaf module (conv, pool, LRN, batch norm, ReLU, linear, ...): forward and backward time of
one training step, GF/s and share of the step; ops a block runs itself (a residual add, the
inception concatenation) are a row "<block> (own ops)", the loss a row "loss". PyTorch's full
backward hooks fire when a module's input gradients are ready; the first layer's input needs
none, so its hook fires on its output gradient and the peer's backward time for that one layer
misses its weight gradient. Then the training
step (forward, cross-entropy, backward, SGD with momentum) and inference (eval mode, no graph) in
images/s, each the median of ``steps`` runs after two warm-up steps, timed without the per-layer
instrumentation.

How the layers are timed: each leaf module's forward is wrapped (device drained before and
after); every autograd node made while a module runs is tagged with that module, and its
backward is timed when the graph is walked. The per-layer profile is a separate step from the
timed ones; in it every layer runs on its own (a wrapped module is never fused with its
activation, see ``nn.fusable_activation``), while the timed steps run the model as users do,
fused.

Peers (``peers=True``): the same model mirrored in PyTorch (same layers, hyper-parameters and
initial weights, the blocks' own ``forward`` code run on torch modules), timed the same way in a
separate worker process (forward hooks; full backward hooks), and its training step and inference
images/s.
"""
import io
import multiprocessing
import os
import statistics
import sys
import time
import warnings

import numpy as np

from convkern import backend, models
from convkern.autograd import Function, no_grad, tensor
from convkern.bench.timing import _sync

STEPS = 5


def _leaf(module):
    return next(module.children(), None) is None


def _batch(name, batch_size, dtype, input_size=None, seed=0):
    """The model factory and a random batch; ``input_size`` (H, W) replaces the model's own."""
    factory, shape = models.REGISTRY[name]
    if input_size is not None:
        shape = shape[:1] + tuple(input_size)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + shape).astype(dtype)
    return factory, x


def _flops_forward(module, x_shape, y_shape):
    from convkern.layer_summary import _flops
    return _flops(module, x_shape, y_shape)


def _backward_flops(kind, fwd):
    """Backward of a conv or linear is two products of the forward's size (data and weight
    gradients); of anything else, about the forward's work."""
    return 2 * fwd if kind in ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d") else fwd


class _Profile:
    """Per-layer forward/backward seconds of one step, by module name."""

    def __init__(self, device):
        self.device = device
        self.rows = {}            # name -> dict(kind, shape, fwd_s, bwd_s, flops)
        self.stack = []

    def row(self, name, kind):
        return self.rows.setdefault(name, dict(kind=kind, shape=None, fwd_s=0.0, bwd_s=0.0, flops=0))


def _profile_convkern(model, x, labels, device):
    """Per-layer rows of one instrumented training step."""
    from convkern import functional as F
    prof = _Profile(device)
    patched = []
    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    for name, module in model.named_modules():
        def traced(*args, _m=module, _name=names[id(module)], _forward=module.forward, **kw):
            prof.stack.append((_name, _m))
            try:
                if not _leaf(_m):
                    return _forward(*args, **kw)
                _sync(device)
                t0 = time.perf_counter()
                y = _forward(*args, **kw)
                _sync(device)
                r = prof.row(_name, type(_m).__name__)
                r["fwd_s"] += time.perf_counter() - t0
                out = y[0] if isinstance(y, tuple) else y
                r["shape"] = tuple(out.shape)
                r["flops"] = _flops_forward(_m, args[0].shape, out.shape)
                return y
            finally:
                prof.stack.pop()
        object.__setattr__(module, "forward", traced)
        patched.append(module)
    apply = Function.apply.__func__

    def tagged_apply(cls, *inputs, **params):
        name, module = prof.stack[-1] if prof.stack else ("loss", None)
        own = module is None or not _leaf(module)       # an op the block (or the loss) runs itself
        if module is not None and own:
            name = f"{name} (own ops)"
        kind = type(module).__name__ if module is not None else "loss"
        if own:
            _sync(device)
            t0 = time.perf_counter()
        out = apply(cls, *inputs, **params)
        if own:
            _sync(device)
            prof.row(name, kind)["fwd_s"] += time.perf_counter() - t0
        node = out._ctx
        if node is not None:
            backward = node.backward

            def timed_backward(g, _b=backward, _name=name, _kind=kind):
                _sync(device)
                t0 = time.perf_counter()
                result = _b(g)
                _sync(device)
                prof.row(_name, _kind)["bwd_s"] += time.perf_counter() - t0
                return result
            node.backward = timed_backward
        return out
    Function.apply = classmethod(tagged_apply)
    try:
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
    finally:
        Function.apply = classmethod(apply)
        for module in patched:
            module.__dict__.pop("forward", None)
    model.zero_grad()
    return prof.rows


def _median_time(fn, device, steps):
    fn()
    fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _convkern_run(name, batch_size, device, dtype, steps, input_size):
    """(rows, step seconds, inference seconds, parameter count) of the convkern model."""
    from convkern import functional as F
    from convkern import optim
    from convkern.random import manual_seed
    manual_seed(0)
    factory, xh = _batch(name, batch_size, dtype, input_size)
    model = factory(dtype=dtype).to(device)
    classes = model.fc.out_features if hasattr(model, "fc") else 10
    labels_h = np.random.default_rng(1).integers(0, classes, batch_size)
    x = tensor(xh, device=device)
    labels = tensor(labels_h, device=device)
    opt = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, flat=True)

    def step():
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train()
    step()                                       # compile and autotune before anything is timed
    # the traced step runs every layer unfused: once untimed, so that no row pays a first call
    _profile_convkern(model, x, labels, device)
    rows = _profile_convkern(model, x, labels, device)
    step_s = _median_time(step, device, steps)
    model.eval()
    with no_grad():
        infer_s = _median_time(lambda: model(x), device, steps)
    return rows, step_s, infer_s


# ---------------------------------------------------------------------------------------------
# The PyTorch mirror (built and run only in the peer worker process)
# ---------------------------------------------------------------------------------------------

def _torch_mirror(module, torch):
    """The torch module computing what convkern ``module`` computes, with its weights."""
    from convkern import nn
    tnn = torch.nn
    kind = type(module).__name__
    h = getattr(module, "hparams", {})

    def t(p):
        return tnn.Parameter(torch.from_numpy(np.array(p.numpy())))

    if isinstance(module, nn.Conv2d):
        if module.padding == "same" and module.stride not in (1, (1, 1)):
            raise ValueError(f"{kind}: the PyTorch mirror has no strided 'same' padding")
        m = tnn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                       module.dilation, module.groups, module.bias is not None)
        m.weight = t(module.weight)
        if module.bias is not None:
            m.bias = t(module.bias)
        return m
    if isinstance(module, nn.Linear):
        m = tnn.Linear(module.weight.shape[1], module.weight.shape[0], module.bias is not None)
        m.weight = t(module.weight)
        if module.bias is not None:
            m.bias = t(module.bias)
        return m
    if kind in ("BatchNorm2d", "BatchNorm1d"):
        m = getattr(tnn, kind)(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            m.weight, m.bias = t(module.weight), t(module.bias)
        return m
    simple = {"ReLU": lambda: tnn.ReLU(), "Tanh": lambda: tnn.Tanh(), "Sigmoid": lambda: tnn.Sigmoid(),
              "Flatten": lambda: tnn.Flatten(), "Identity": lambda: tnn.Identity(),
              "Dropout": lambda: tnn.Dropout(module.p),
              "MaxPool2d": lambda: tnn.MaxPool2d(h["kernel_size"], h.get("stride"), h.get("padding", 0),
                                                 h.get("dilation", 1), ceil_mode=h.get("ceil_mode", False)),
              "AvgPool2d": lambda: tnn.AvgPool2d(h["kernel_size"], h.get("stride"), h.get("padding", 0),
                                                 h.get("ceil_mode", False), h.get("count_include_pad", True)),
              "AdaptiveAvgPool2d": lambda: tnn.AdaptiveAvgPool2d(h["output_size"]),
              "LocalResponseNorm": lambda: tnn.LocalResponseNorm(h["size"], h.get("alpha", 1e-4), h.get("beta", 0.75),
                                                                 h.get("k", 1.0)),
              # TensorFlow's form: window 2r+1, alpha not divided by it
              "LRN": lambda: tnn.LocalResponseNorm(2 * h.get("depth_radius", 5) + 1,
                                                   h.get("alpha", 1.0) * (2 * h.get("depth_radius", 5) + 1),
                                                   h.get("beta", 0.5), h.get("bias", 1.0))}
    if kind in simple:
        return simple[kind]()
    if kind == "Subsample2d":
        return _TorchSubsample(module, torch, t)
    if kind == "Sequential":
        from collections import OrderedDict
        return tnn.Sequential(OrderedDict((n, _torch_mirror(c, torch)) for n, c in module.named_children()))
    if kind == "ModuleList":
        return tnn.ModuleList(_torch_mirror(c, torch) for c in module.children())
    return _TorchBlock(module, torch)


class _TorchSubsample:
    """LeNet-5's trainable subsampling in torch: weight[c] * avg_pool(x)[:, c] + bias[c]."""

    def __new__(cls, module, torch, t):
        class Subsample(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight, self.bias = t(module.weight), t(module.bias)
                self.k, self.s = module.kernel_size, module.stride

            def forward(self, x):
                y = torch.nn.functional.avg_pool2d(x, self.k, self.s)
                return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return Subsample()


class _TorchBlock:
    """A convkern block with its own ``forward`` (ResNet blocks, Inception, the nets): the same
    code run on torch children of the same names; plain attributes (flags) copied."""

    def __new__(cls, module, torch):
        forward = type(module).forward

        class Block(torch.nn.Module):
            def forward(self, x):
                return forward(self, x)
        Block.__name__ = type(module).__name__
        block = Block()
        for name, child in module.named_children():
            setattr(block, name, _torch_mirror(child, torch))
        for k, v in vars(module).items():
            if isinstance(v, (bool, int, float, str)) and not k.startswith("_") and k != "training":
                setattr(block, k, v)
        return block


def _profile_torch(model, x, labels, torch):
    rows = {}
    handles = []
    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    clock = {}
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        name = names[id(module)]
        rows[name] = dict(kind=type(module).__name__, fwd_s=0.0, bwd_s=0.0)

        def pre(m, args, _n=name):
            clock[("f", _n)] = time.perf_counter()

        def post(m, args, out, _n=name):
            rows[_n]["fwd_s"] += time.perf_counter() - clock.pop(("f", _n))

        def bpre(m, grad_out, _n=name):
            clock[("b", _n)] = time.perf_counter()

        def bpost(m, grad_in, grad_out, _n=name):
            if ("b", _n) in clock:
                rows[_n]["bwd_s"] += time.perf_counter() - clock.pop(("b", _n))
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        if not isinstance(module, (torch.nn.ReLU,)) or not getattr(module, "inplace", False):
            handles += [module.register_full_backward_pre_hook(bpre), module.register_full_backward_hook(bpost)]
    try:
        logits = model(x)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(logits, labels)
        rows["loss"] = dict(kind="loss", fwd_s=time.perf_counter() - t0, bwd_s=0.0)
        with warnings.catch_warnings():
            # the first layer's input needs no gradient: its hook fires on the output's, as intended here
            warnings.simplefilter("ignore", UserWarning)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad()
    return rows


def _torch_worker(conn, name, batch_size, dtype, steps, input_size):
    """Peer worker: mirror the model in PyTorch, profile it, time its step and inference."""
    try:
        import torch
    except ImportError:
        conn.send({"skipped": "PyTorch is not installed"})
        return
    try:
        from convkern.random import manual_seed
        torch.set_num_threads(int(os.environ.get("CONVKERN_PEER_THREADS", torch.get_num_threads())))
        models.cat = lambda xs, dim: torch.cat(list(xs), dim)   # the inception concatenation, in this process only
        manual_seed(0)
        factory, xh = _batch(name, batch_size, dtype, input_size)
        ck_model = factory(dtype=dtype)
        model = _torch_mirror(ck_model, torch).to(getattr(torch, dtype))
        classes = ck_model.fc.out_features if hasattr(ck_model, "fc") else 10
        x = torch.from_numpy(xh)
        labels = torch.from_numpy(np.random.default_rng(1).integers(0, classes, batch_size))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.train()
        step()
        rows = _profile_torch(model, x, labels, torch)
        step_s = _median_time(step, "cpu", steps)
        model.eval()
        with torch.no_grad():
            infer_s = _median_time(lambda: model(x), "cpu", steps)
        conn.send({"label": f"PyTorch {torch.__version__} on cpu", "rows": rows, "step_s": step_s,
                   "infer_s": infer_s})
    except Exception as e:  # a peer's own limits must not stop the bench
        conn.send({"skipped": f"{type(e).__name__}: {e}"})


def _torch_peer(name, batch_size, device, dtype, steps, input_size):
    if device != "cpu":
        return {"skipped": "the model peer runs PyTorch on the CPU only"}
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = ctx.Process(target=_torch_worker, args=(child, name, batch_size, dtype, steps, input_size), daemon=True)
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"skipped": f"the PyTorch worker died (exit code {proc.exitcode})"}
    proc.join(timeout=60)
    return result


def profile_model(name, batch_size, device="cpu", dtype="float32", peers=False, steps=STEPS, log=sys.stderr,
                  input_size=None):
    """The whole-model profile as a dict: ``layers`` (per-layer rows), ``train_images_per_s``,
    ``inference_images_per_s`` and, with ``peers``, the PyTorch mirror's numbers (``peer``).
    ``input_size``: (H, W) instead of the model's own input (ResNet at 64x64, say)."""
    if name not in models.REGISTRY:
        raise ValueError(f"--model: unknown model {name!r}; expected one of {', '.join(models.REGISTRY)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive int, got {batch_size!r}")
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise ValueError(f"--input-size must be H or HxW with positive sizes, got {input_size!r}")
    if np.dtype(dtype) not in backend.FLOAT_DTYPES:
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    backend.check_device(device)
    log = log or io.StringIO()
    # the peer first: its process exits before convkern is timed
    peer = _torch_peer(name, batch_size, device, str(np.dtype(dtype)), steps, input_size) if peers else None
    if peer is not None:
        print(f"# peer: {peer.get('label') or 'PyTorch skipped: ' + peer['skipped']}", file=log)
    rows, step_s, infer_s = _convkern_run(name, batch_size, device, str(np.dtype(dtype)), steps, input_size)
    total = sum(r["fwd_s"] + r["bwd_s"] for r in rows.values())
    layers = []
    for lname, r in rows.items():
        fwd_flops = r["flops"]
        bwd_flops = _backward_flops(r["kind"], fwd_flops)
        entry = dict(layer=lname, kind=r["kind"], output_shape=list(r["shape"]) if r["shape"] else None,
                     fwd_ms=r["fwd_s"] * 1e3, bwd_ms=r["bwd_s"] * 1e3,
                     fwd_gflops=fwd_flops / r["fwd_s"] / 1e9 if r["fwd_s"] > 0 and fwd_flops else None,
                     bwd_gflops=bwd_flops / r["bwd_s"] / 1e9 if r["bwd_s"] > 0 and bwd_flops else None,
                     share=(r["fwd_s"] + r["bwd_s"]) / total if total else 0.0)
        theirs = (peer or {}).get("rows", {}).get(lname)
        if theirs is not None:
            entry.update(peer_fwd_ms=theirs["fwd_s"] * 1e3, peer_bwd_ms=theirs["bwd_s"] * 1e3)
        layers.append(entry)
    shape = models.REGISTRY[name][1]
    result = dict(model=name, batch_size=batch_size, input_shape=list(shape[:1] + tuple(input_size or shape[1:])),
                  device=device, dtype=str(np.dtype(dtype)), steps=steps,
                  layers=layers, profiled_step_ms=total * 1e3, train_step_ms=step_s * 1e3,
                  train_images_per_s=batch_size / step_s, inference_ms=infer_s * 1e3,
                  inference_images_per_s=batch_size / infer_s,
                  peer_timing="PyTorch mirror in a separate worker process, run before convkern" if peers else None)
    if peer is not None and "rows" in peer:
        result.update(peer=peer["label"], peer_train_images_per_s=batch_size / peer["step_s"],
                      peer_inference_images_per_s=batch_size / peer["infer_s"],
                      train_ratio_vs_peer=peer["step_s"] / step_s, inference_ratio_vs_peer=peer["infer_s"] / infer_s)
    elif peer is not None:
        result.update(peer=None, peer_skipped=peer["skipped"])
    return result


def format_profile(p):
    """The profile as an aligned text table plus the whole-model lines."""
    has_peer = any("peer_fwd_ms" in r for r in p["layers"])
    head = ["layer", "kind", "output", "fwd ms", "bwd ms", "fwd GF/s", "bwd GF/s", "share"]
    if has_peer:
        head += ["torch fwd ms", "torch bwd ms"]
    rows = []
    for r in p["layers"]:
        cells = [r["layer"], r["kind"], "x".join(map(str, r["output_shape"] or [])) or "-", f"{r['fwd_ms']:.3f}",
                 f"{r['bwd_ms']:.3f}", "-" if r["fwd_gflops"] is None else f"{r['fwd_gflops']:.1f}",
                 "-" if r["bwd_gflops"] is None else f"{r['bwd_gflops']:.1f}", f"{100 * r['share']:.1f}%"]
        if has_peer:
            cells += [f"{r['peer_fwd_ms']:.3f}" if "peer_fwd_ms" in r else "-",
                      f"{r['peer_bwd_ms']:.3f}" if "peer_bwd_ms" in r else "-"]
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(f"model {p['model']}, batch {p['batch_size']} x {'x'.join(map(str, p['input_shape']))}, "
               f"{p['device']}, {p['dtype']}: profiled step "
               f"{p['profiled_step_ms']:.1f} ms (layers, device drained around each); training step "
               f"{p['train_step_ms']:.1f} ms = {p['train_images_per_s']:.1f} images/s; inference "
               f"{p['inference_ms']:.1f} ms = {p['inference_images_per_s']:.1f} images/s (median of {p['steps']})")
    if p.get("peer"):
        out.append(f"{p['peer']}: training {p['peer_train_images_per_s']:.1f} images/s "
                   f"(convkern {p['train_ratio_vs_peer']:.2f}x), inference {p['peer_inference_images_per_s']:.1f} "
                   f"images/s (convkern {p['inference_ratio_vs_peer']:.2f}x)")
    elif p.get("peer_skipped"):
        out.append(f"peer skipped: {p['peer_skipped']}")
    return "\n".join(out)
