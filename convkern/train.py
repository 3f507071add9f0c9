"""``convkern train MODEL``: train a reference CNN on real data with convkern's own kernels.

Each epoch runs the shuffled training split (order drawn from (seed, epoch)), then evaluates on
the test split. A checkpoint (model, optimizer, global random state, progress) is written
atomically after every epoch when ``checkpoint`` is given; ``resume`` continues from one exactly
as if the run had not stopped.

Started by an MPI launcher (``mpiexec -n 4 convkern train ...``, or ``--nproc 4``), training is
data-parallel (``convkern.distributed``): ``batch_size`` stays the global batch, each rank takes
every W-th sample of it and the gradients are averaged over the ranks before each step, so the
hyper-parameters and the results do not depend on the number of processes (up to rounding).
BatchNorm normalises with each rank's own batch statistics unless ``sync_bn`` (SyncBatchNorm);
running statistics are averaged over the ranks after every epoch. Evaluation is sharded and its
counts summed. Rank 0 alone logs and writes checkpoints; nothing in one depends on the world
size (it is recorded, not checked), so a run resumes at any world size that divides the batch.

A training step reads nothing back from the device: the epoch's loss sum and correct count are
accumulated where the model runs and copied to the host only when the progress bar refreshes
(every REFRESH_SECONDS) and at the end of the epoch. With ``cuda_graph`` (``--cuda-graph``) the
forward, loss and backward of a batch are captured once as a CUDA graph and replayed
(``_GraphedSteps``).

With ``amp`` (``--amp``) every step runs under ``convkern.amp.autocast`` (convolutions and
linear layers in float16, the loss in float32, the parameters kept float32) with a
``GradScaler``: the loss is scaled before backward, the gradients are averaged over the ranks,
then unscaled and checked for inf/NaN (every rank sees the same averaged values, so every rank
skips the same steps), and the scale is adapted. Evaluation runs under autocast too. The
scaler's state is part of the checkpoint.
"""
import argparse
import json
import sys
import time

import numpy as np

import convkern as ck
from convkern import amp as ck_amp
from convkern import backend
from convkern import cli_args
from convkern import cuda as runtime
from convkern import data as ck_data
from convkern import distributed
from convkern import functional as F
from convkern import models, nn, optim
from convkern import random as ck_random
from convkern.kernels import elementwise, softmax as softmax_kernels

# Per-model defaults: data set, input padding, epochs, batch size, optimizer, learning rate, its
# per-epoch decay (ExponentialLR's gamma) and random translation of training images (pixels).
DEFAULTS = {
    "lenet5": dict(data="default", pad_to=32, epochs=10, batch_size=32, optimizer="adam", lr=2e-3, lr_decay=0.75,
                   shift=2),
    "tf_mnist_cnn": dict(data="default", pad_to=None, epochs=6, batch_size=50, optimizer="adam", lr=1e-3,
                         lr_decay=0.8),
    "cifar10_cnn": dict(data=None, pad_to=None, epochs=10, batch_size=128, optimizer="sgd", lr=0.05, lr_decay=0.9),
    "resnet18": dict(data="default", pad_to=32, epochs=3, batch_size=64, optimizer="adam", lr=1e-3, lr_decay=0.7),
    "resnet34": dict(data="default", pad_to=32, epochs=3, batch_size=64, optimizer="adam", lr=1e-3, lr_decay=0.7),
    "resnet50": dict(data="default", pad_to=32, epochs=3, batch_size=64, optimizer="adam", lr=1e-3, lr_decay=0.7),
    "resnet101": dict(data="default", pad_to=32, epochs=3, batch_size=64, optimizer="adam", lr=1e-3, lr_decay=0.7),
    "resnet152": dict(data="default", pad_to=32, epochs=3, batch_size=64, optimizer="adam", lr=1e-3, lr_decay=0.7),
}
MODELS = tuple(DEFAULTS)
RESULT_KEYS = ("model", "dataset", "epochs", "train_seconds", "images_per_second", "test_accuracy", "world_size",
               "final_train_loss")
EVAL_BATCH = 256  # per rank
REFRESH_SECONDS = 0.5   # the progress bar reads the running loss and accuracy from the device this often


def build_model(name, in_channels, num_classes):
    if name not in DEFAULTS:
        raise ValueError(f"train: model must be one of {', '.join(MODELS)}, got {name!r}")
    factory = models.REGISTRY[name][0]
    return factory(num_classes=num_classes, in_channels=in_channels)


def load_data(name, data, pad_to):
    """(train, test, train transform, test transform) for ``model`` on data set ``data``."""
    train = ck_data.load_dataset(data, "train", pad_to=pad_to)
    test = ck_data.load_dataset(data, "test", pad_to=pad_to)
    if name == "cifar10_cnn":
        if train.images.shape[1] != 3:
            raise ValueError(f"train: cifar10_cnn needs 3-channel 32x32 images (CIFAR-10 binary batches), but "
                             f"--data {data} has {train.images.shape[1]} channel(s)")
        return train, test, ck_data.cifar_train_transform(), ck_data.cifar_eval_transform()
    shift = DEFAULTS[name].get("shift")
    return train, test, (ck_data.shift_transform(shift) if shift else None), None


def make_optimizer(kind, params, lr):
    if kind == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, flat=True)
    if kind == "adam":
        return optim.Adam(params, lr=lr, flat=True)
    raise ValueError(f"train: optimizer must be 'sgd' or 'adam', got {kind!r}")


def evaluate(model, loader, device, amp=False):
    """Top-1 accuracy of ``model`` (eval mode, no graph; under autocast with ``amp``) over
    ``loader``; with a sharded loader each rank scores its share and the counts are summed over
    the ranks (collective)."""
    model.eval()
    correct = total = 0
    with ck.no_grad(), ck_amp.autocast(enabled=amp):
        for images, labels in loader.iter_epoch(0):
            if len(labels) == 0:
                continue
            logits = model(ck.tensor(images, device=device)).numpy()
            correct += int((logits.argmax(axis=1) == labels).sum())
            total += len(labels)
    model.train()
    correct, total = (int(v) for v in distributed.allreduce(np.array([correct, total], np.int64)))
    return correct / max(total, 1)


def _progress(total, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", disable=None if enabled else True, leave=False)


class _EpochTotals:
    """An epoch's loss sum (loss x batch size) and count of correct predictions, accumulated in one
    (2,) array where the model runs, so that a step needs no host read; ``read()`` copies both at
    once (in the model's dtype: float32 counts are exact up to 2**24 images)."""

    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype
        self.sums = backend.zeros((2,), dtype, device)
        self.seen = 0

    def add(self, logits, target, loss):
        n = target.shape[0]
        scaled = backend.empty((1,), self.dtype, self.device)
        elementwise.scalar("mul", loss.data.reshape((1,)), float(n), scaled)
        hits = backend.empty((n,), self.dtype, self.device)
        softmax_kernels.argmax_hits(logits.data, target.data, hits)
        correct = backend.empty((1,), self.dtype, self.device)
        elementwise.sum_all(hits, correct)
        for i, term in enumerate((scaled, correct)):
            elementwise.binary("add", self.sums[i:i + 1], term, self.sums[i:i + 1])
        self.seen += n

    def read(self):
        """(loss sum, correct, images seen) so far."""
        loss_sum, correct = backend.to_numpy(self.sums)
        return float(loss_sum), int(round(float(correct))), self.seen


def _optimizer_step(step_opt, scaler):
    """Average the gradients over the ranks, then step through the scaler (which unscales them
    and skips the step on inf/NaN; a disabled scaler just steps) and adapt its scale."""
    step_opt.synchronize()
    scaler.step(step_opt.optimizer)
    scaler.update()


def _eager_step(net, step_opt, scaler, images, labels, weight, device):
    """One training step; returns (logits, loss, target) cut from the graph, so that the step's
    graph and buffers go back to the allocator as soon as the caller drops them."""
    # Gradients dropped before the forward pass, not after it: every step then holds the same
    # arrays at every point, so from the second step on the allocator serves all of them from
    # its cache (the last step's gradients alive through the forward would need more blocks).
    step_opt.zero_grad()
    target = ck.tensor(labels, device=device)
    with ck_amp.autocast(enabled=scaler.is_enabled()):
        logits = net(ck.tensor(images, device=device))
        loss = F.cross_entropy(logits, target)
    # Each rank's loss is its share's mean; weighting it by share/average share makes the
    # mean over ranks of the gradients the gradient of the global batch's mean loss.
    scaler.scale(loss if weight == 1 else loss * weight).backward()
    _optimizer_step(step_opt, scaler)
    return logits.detach(), loss.detach(), target


class _GraphedSteps:
    """Training steps replayed from a CUDA graph (``--cuda-graph``). The first batch runs eagerly
    (autotuning, compiling, filling the allocator's cache), the second of its shape is captured
    into static input tensors, and every later one is copied into them and replayed. Forward,
    loss and backward are in the graph; the optimizer step runs after it, outside, because its
    scalars (the learning rate, Adam's step count) change from step to step. A batch of another
    shape or weight (a smaller last batch) runs eagerly: one graph, one copy of the activations."""

    def __init__(self, net, step_opt, scaler, device):
        if device != "cuda":
            raise ValueError(f"train: --cuda-graph needs --device cuda, got --device {device}")
        runtime.check_graphs("train --cuda-graph")
        dropout = [m for m in net.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        if dropout:
            raise ValueError("train: --cuda-graph replays the captured step exactly, so every step would "
                             "draw the same dropout masks; this model has dropout: train it without --cuda-graph")
        self.net, self.step_opt, self.scaler, self.device = net, step_opt, scaler, device
        self.params = [p for group in step_opt.param_groups for p in group["params"]]
        self.key = self.graph = None
        self.warm = False

    def step(self, images, labels, weight):
        key = (images.shape, labels.shape, weight)
        if self.key is None:
            self.key = key
        if key != self.key or (self.graph is None and not self.warm):
            self.warm = self.warm or key == self.key
            return _eager_step(self.net, self.step_opt, self.scaler, images, labels, weight, self.device)
        if self.graph is None:
            self._capture(images, labels, weight)
        runtime.upload(images, out=self.images.data)
        runtime.upload(labels, out=self.target.data)
        self.graph.replay()
        for p, g in zip(self.params, self.grads):     # an eager step in between dropped them
            p.grad = g
        _optimizer_step(self.step_opt, self.scaler)
        logits, loss = self.graph.outputs
        return logits, loss, self.target

    def _capture(self, images, labels, weight):
        self.images = ck.tensor(images, device=self.device)
        self.target = ck.tensor(labels, device=self.device)

        def forward_backward():
            # the scale is read from the scaler's device array, which update() rewrites in place
            with ck_amp.autocast(enabled=self.scaler.is_enabled()):
                logits = self.net(self.images)
                loss = F.cross_entropy(logits, self.target)
            self.step_opt.zero_grad()
            self.scaler.scale(loss if weight == 1 else loss * weight).backward()
            return logits.detach(), loss.detach()
        self.graph = runtime.capture(forward_backward)
        self.grads = [p.grad for p in self.params]


def _seed_rank_generator(seed, epoch, rank):
    """At world size > 1 each rank draws dropout masks from its own stream, seeded by (seed, epoch,
    rank) at the start of every epoch, so ranks never share masks and a resumed run is exact."""
    ck_random.generator().bit_generator.state = np.random.default_rng([seed, epoch, rank]).bit_generator.state


def _select_gpu(device):
    """One GPU per rank on a multi-GPU host (by the rank's number on its host)."""
    if device == "cuda" and distributed.size() > 1 and ck.backend.cuda_kind() == "real":
        from numba import cuda
        cuda.select_device(distributed.local_rank() % len(cuda.gpus))


def train(model="lenet5", data=None, epochs=None, batch_size=None, lr=None, optimizer=None, lr_decay=None,
          device="cpu", seed=0,
          checkpoint=None, resume=None, train_size=None, test_size=None, progress=True, log=print, sync_bn=False,
          cuda_graph=False, amp=False):
    """Train ``model`` and return ``{"model", "dataset", "epochs", "train_seconds", "images_per_second",
    "test_accuracy", "world_size", "final_train_loss", "history"}`` (plus ``"loss_scale"``, the
    GradScaler's final scale, with ``amp``); ``train_size``/``test_size`` use the first samples
    only (quick runs). Data-parallel over the ranks of ``convkern.distributed`` (see the module
    docstring); ``sync_bn`` turns every BatchNorm into a SyncBatchNorm; ``cuda_graph`` replays
    each step's forward and backward from a CUDA graph (a real GPU only); ``amp`` trains with
    mixed precision (autocast and a GradScaler)."""
    if model not in DEFAULTS:
        raise ValueError(f"train: model must be one of {', '.join(MODELS)}, got {model!r}")
    cfg = dict(DEFAULTS[model])
    for key, value in dict(data=data, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                           lr_decay=lr_decay).items():
        if value is not None:
            cfg[key] = value
    if cfg["data"] is None:
        raise ValueError(f"train: {model} has no embedded data set; pass --data PATH (a directory with the "
                         "CIFAR-10 binary batches)")
    _check_settings(cfg, train_size, test_size, seed)
    if not isinstance(amp, bool):
        raise TypeError(f"train: amp must be True or False, got {amp!r}")
    cfg["amp"] = True if amp else None      # absent from the checkpoints of runs without it
    ck.backend.check_device(device)
    world, rank = distributed.size(), distributed.rank()
    if cfg["batch_size"] % world:
        raise ValueError(f"train: --batch-size {cfg['batch_size']} is the global batch and must be divisible by the "
                         f"world size {world} (each of the {world} processes takes batch_size / {world} images)")
    lead = rank == 0
    if lead and checkpoint is not None:  # only rank 0's host writes checkpoints and reads the one to resume
        cli_args.output_path(checkpoint, "train: checkpoint")
    if lead and resume is not None:
        cli_args.input_file(resume, "train: resume")
    log = log if lead else None
    _select_gpu(device)

    cfg["seed"], cfg["train_size"] = seed, train_size
    train_set, test_set, train_tf, test_tf = load_data(model, cfg["data"], cfg["pad_to"])
    if train_size is not None:
        train_set = train_set.subset(slice(0, train_size))
    if test_size is not None:
        test_set = test_set.subset(slice(0, test_size))
    if len(train_set) < world:
        raise ValueError(f"train: {len(train_set)} training images cannot give each of the {world} processes one")
    train_loader = ck_data.DataLoader(train_set, cfg["batch_size"], shuffle=True, seed=seed, transform=train_tf,
                                      rank=rank, world_size=world)
    test_loader = ck_data.DataLoader(test_set, EVAL_BATCH * world, transform=test_tf, rank=rank, world_size=world)

    ck.manual_seed(seed)
    num_classes = int(max(train_set.labels.max(), test_set.labels.max())) + 1
    net = build_model(model, train_set.images.shape[1], max(num_classes, 10)).to(device)
    if sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    distributed.broadcast_parameters(net, root=0)
    opt = make_optimizer(cfg["optimizer"], net.parameters(), cfg["lr"])
    scheduler = optim.lr_scheduler.ExponentialLR(opt, cfg["lr_decay"])
    step_opt = distributed.DistributedOptimizer(opt)
    scaler = ck_amp.GradScaler(enabled=amp)
    graphed = _GraphedSteps(net, step_opt, scaler, device) if cuda_graph else None
    start_epoch, history, train_seconds, images_seen = 0, [], 0.0, 0
    if resume is not None:
        state = distributed.broadcast_object(ck.load(resume) if lead else None, root=0)
        start_epoch, history, train_seconds, images_seen = _restore(state, resume, model, cfg, net, opt, scheduler,
                                                                    scaler)
    if world > 1:
        table = distributed.processes()
        if log is not None:
            log(f"world of {world} ranks ({distributed.library_version()}): "
                + ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(table)))

    for epoch in range(start_epoch, cfg["epochs"]):
        net.train()
        if world > 1:
            _seed_rank_generator(seed, epoch, rank)
        bar = _progress(len(train_loader), f"epoch {epoch + 1}/{cfg['epochs']}", progress and lead)
        t0 = refreshed = time.perf_counter()
        totals = _EpochTotals(device, _net_dtype(net))
        for b, (images, labels) in enumerate(train_loader.iter_epoch(epoch)):
            in_batch = train_loader.global_size(b)
            if in_batch < world:  # a last batch too small to give every rank an image is skipped by all
                continue
            weight = len(labels) * world / in_batch
            if graphed is not None:
                logits, loss, target = graphed.step(images, labels, weight)
            else:
                logits, loss, target = _eager_step(net, step_opt, scaler, images, labels, weight, device)
            totals.add(logits, target, loss)
            del logits, loss, target
            if bar is not None:
                bar.update(1)
                if time.perf_counter() - refreshed >= REFRESH_SECONDS:
                    loss_sum, correct, seen = totals.read()
                    refreshed = time.perf_counter()
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                    img_s=f"{seen * world / (refreshed - t0):.0f}")
        if bar is not None:
            bar.close()
        scheduler.step()
        loss_sum, correct, seen = totals.read()
        loss_sum, correct, seen = distributed.allreduce(np.array([loss_sum, correct, seen], np.float64))
        correct, seen = int(correct), int(seen)
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        images_seen += seen
        distributed.average_buffers(net)
        accuracy = evaluate(net, test_loader, device, amp)
        history.append({"epoch": epoch + 1, "loss": float(loss_sum / seen), "train_accuracy": correct / seen,
                        "test_accuracy": accuracy, "seconds": epoch_seconds})
        if log is not None:
            log(f"epoch {epoch + 1}/{cfg['epochs']}: loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}  "
                f"test acc {accuracy:.4f}  {seen / epoch_seconds:.0f} img/s")
        if checkpoint is not None and lead:
            _save(checkpoint, model, cfg, net, opt, scheduler, scaler, epoch + 1, history, train_seconds, images_seen,
                  world)

    result = {"model": model, "dataset": str(cfg["data"]), "epochs": cfg["epochs"],
              "train_seconds": round(train_seconds, 3),
              "images_per_second": round(images_seen / train_seconds, 1) if train_seconds else 0.0,
              "test_accuracy": history[-1]["test_accuracy"] if history else None, "world_size": world,
              "final_train_loss": history[-1]["loss"] if history else None, "history": history}
    if amp:
        result["loss_scale"] = scaler.get_scale()
    return result


def _check_settings(cfg, train_size, test_size, seed):
    """Every setting of a run, checked before any work (the CLI checks the same while parsing)."""
    for key in ("epochs", "batch_size"):
        cli_args.positive_int(cfg[key], f"train: {key}")
    if cfg["optimizer"] not in ("sgd", "adam"):
        raise ValueError(f"train: optimizer must be 'sgd' or 'adam', got {cfg['optimizer']!r}")
    for key in ("lr", "lr_decay"):
        cli_args.finite_positive_float(cfg[key], f"train: {key}")
    for key, value in (("train_size", train_size), ("test_size", test_size)):
        if value is not None:
            cli_args.positive_int(value, f"train: {key}")
    cli_args.nonneg_int(seed, "train: seed")


def _rank0_path(check):
    """``check`` for a path only rank 0 uses: applied while parsing unless an MPI launcher started
    this process, whose rank is not known yet (then ``train`` applies it on rank 0)."""
    def checked(value, name):
        return value if distributed.launched_by_mpi() else check(value, name)
    return checked


def _net_dtype(net):
    """The dtype of the model's parameters (the dtype its logits come in)."""
    return next(iter(net.parameters())).dtype


def _save(path, model, cfg, net, opt, scheduler, scaler, epochs_done, history, train_seconds, images_seen, world):
    ck.save({"model_name": model, "config": {k: v for k, v in cfg.items() if v is not None}, "world_size": world,
             "model": dict(net.state_dict()), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(),
             "epochs_done": epochs_done,
             "history": json.dumps(history), "train_seconds": train_seconds, "images_seen": images_seen,
             "random_state": json.dumps(ck_random.generator().bit_generator.state)}, path)


# What a checkpoint written by ``_save`` holds: key -> the type its value must have ("scaler", the
# GradScaler's state, {} without --amp, is absent from checkpoints written before --amp existed).
CHECKPOINT_KEYS = {"model_name": str, "config": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                   "epochs_done": int, "history": str, "train_seconds": (int, float), "images_seen": int,
                   "random_state": str}


def _restore(state, path, model, cfg, net, opt, scheduler, scaler):
    if not isinstance(state, dict) or "model_name" not in state:
        raise ValueError(f"train: {path} is not a convkern train checkpoint")
    damaged = f"train: checkpoint {path} is damaged"
    for key, kind in CHECKPOINT_KEYS.items():
        if key not in state:
            raise ValueError(f"{damaged}: it has no {key!r} entry")
        if isinstance(state[key], bool) or not isinstance(state[key], kind):
            raise ValueError(f"{damaged}: {key!r} is a {type(state[key]).__name__}")
    if state["model_name"] != model:
        raise ValueError(f"train: checkpoint {path} is for model {state['model_name']!r}, not {model!r}")
    saved = state["config"]
    if bool(saved.get("amp")) != bool(cfg["amp"]):
        raise ValueError(f"train: checkpoint {path} was trained {'with' if saved.get('amp') else 'without'} --amp; "
                         f"resume {'with' if saved.get('amp') else 'without'} it")
    scaler_state = state.get("scaler", {})
    if not isinstance(scaler_state, dict) or bool(scaler_state) != bool(cfg["amp"]):
        raise ValueError(f"{damaged}: its 'scaler' entry does not match amp={bool(saved.get('amp'))}")
    for key in ("data", "batch_size", "optimizer", "lr", "lr_decay", "seed", "train_size"):
        if str(saved.get(key)) != str(cfg.get(key)):
            raise ValueError(f"train: checkpoint {path} was trained with {key}={saved.get(key)!r}, this run asks "
                             f"for {cfg[key]!r}; resume with the same settings")
    try:
        history, random_state = json.loads(state["history"]), json.loads(state["random_state"])
        if not isinstance(history, list) or not isinstance(random_state, dict):
            raise ValueError("its history must be a JSON list and its random state a JSON object")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(scaler_state)
        ck_random.generator().bit_generator.state = random_state
    except (ValueError, TypeError, KeyError, RuntimeError) as e:  # KeyError: NumPy's check of a generator state
        raise ValueError(f"{damaged}: {e}") from e
    return state["epochs_done"], history, state["train_seconds"], state["images_seen"]


def _defaults_table():
    """The per-model defaults as the text table that ``convkern train --help`` ends with."""
    cols = [("model", None), ("data", "data"), ("epochs", "epochs"), ("batch", "batch_size"),
            ("optimizer", "optimizer"), ("lr", "lr"), ("lr-decay", "lr_decay")]
    rows = [[head for head, _ in cols]]
    for name, cfg in DEFAULTS.items():
        rows.append([name] + [("--data needed" if cfg[key] is None else str(cfg[key])) for _, key in cols[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return ("defaults per model (what a bare `convkern train MODEL` uses; sgd has momentum 0.9):\n"
            + "\n".join(lines))


def add_arguments(parser):
    """The options of ``convkern train``, each checked as it is parsed (``convkern.cli_args``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _defaults_table()
    check = dict(action=cli_args.Checked)
    per_model = "default: per model, see below"
    parser.add_argument("model", choices=MODELS, metavar="MODEL", help=", ".join(MODELS))
    parser.add_argument("--data", help="default (embedded MNIST t10k split), fashion-mnist, or a directory "
                                       "(idx files or CIFAR-10 binary batches); " + per_model)
    parser.add_argument("--epochs", **check, check=cli_args.positive_int, metavar="N", help=per_model)
    parser.add_argument("--batch-size", **check, check=cli_args.positive_int, metavar="B",
                        help="the global batch; " + per_model)
    parser.add_argument("--lr", **check, check=cli_args.finite_positive_float,
                        metavar="LR", help="the learning rate; " + per_model)
    parser.add_argument("--optimizer", choices=("sgd", "adam"),
                        help=per_model)
    parser.add_argument("--lr-decay", **check, check=cli_args.finite_positive_float,
                        metavar="GAMMA",
                        help="multiply the learning rate by this after every epoch; " + per_model)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: %(default)s")
    parser.add_argument("--seed", **check, check=cli_args.nonneg_int, default=0, metavar="S",
                        help="default: %(default)s")
    parser.add_argument("--checkpoint", **check, check=_rank0_path(cli_args.output_path), metavar="PATH",
                        help="write a checkpoint here after every epoch (atomically)")
    parser.add_argument("--resume", **check, check=_rank0_path(cli_args.input_file), metavar="PATH",
                        help="continue from this checkpoint")
    parser.add_argument("--train-size", **check, check=cli_args.positive_int, metavar="N",
                        help="use only the first N training images (default: all)")
    parser.add_argument("--test-size", **check, check=cli_args.positive_int, metavar="N",
                        help="use only the first N test images (default: all)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    parser.add_argument("--nproc", **check, check=cli_args.positive_int, metavar="N",
                        help="start N local processes (mpiexec -n N) and train data-parallel; "
                             "--batch-size stays the global batch")
    parser.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over the global batch "
                                                               "(SyncBatchNorm) instead of each process's share")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture each step's forward and backward once as a CUDA graph and replay it "
                             "(--device cuda on a real GPU; not for models with dropout)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: convolutions and linear layers in float16 under autocast, a "
                             "GradScaler with dynamic loss scaling, float32 parameters")


def run(args):
    """The ``convkern train`` command. ``--nproc N`` re-runs this command line as N MPI ranks under
    ``mpiexec`` (``args.argv``, set by the CLI); a rank (started by any MPI launcher) runs under
    ``distributed.supervise`` so that its death is reported with its number."""
    if args.nproc is not None and not distributed.launched_by_mpi():
        return distributed.launch(args.nproc, [sys.executable, "-m", "convkern.cli", *args.argv])
    if distributed.launched_by_mpi():
        distributed.supervise()
        if args.nproc is not None and args.nproc != distributed.size():
            raise ValueError(f"train: --nproc {args.nproc} under an MPI launcher that started {distributed.size()} "
                             "processes; leave --nproc out under mpiexec (mpiexec -n sets the world size)")
    result = train(args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   optimizer=args.optimizer, lr_decay=args.lr_decay, device=args.device, seed=args.seed,
                   checkpoint=args.checkpoint, resume=args.resume, train_size=args.train_size, test_size=args.test_size,
                   sync_bn=args.sync_bn, cuda_graph=args.cuda_graph, amp=args.amp)
    if distributed.rank() != 0:
        return 0
    summary = {k: result[k] for k in RESULT_KEYS + (("loss_scale",) if args.amp else ())}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['model']} on {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} after "
              f"{summary['epochs']} epochs, {summary['train_seconds']:.1f} s training, "
              f"{summary['images_per_second']:.0f} images/s"
              + (f", mixed precision (final loss scale {summary['loss_scale']:g})" if args.amp else ""))
    return 0
