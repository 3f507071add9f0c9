"""An AlexNet-style PyTorch model with PyTorch's LRN against the same model with convkern's LRN
drop-in (``convkern.torch.replace_modules(model, types=(torch.nn.LocalResponseNorm,))``), and the
LRN layer alone, forward + backward through torch's autograd, float32, CPU.

    python bench/torch_lrn.py                                   # table on stdout
    python bench/torch_lrn.py --batch 16 --rounds 7 --json bench/results/torch-lrn-cpu-float32.json

The model is ``convkern.models.alexnet`` written in torch: 227x227 inputs, conv1-5 with two groups
on conv2/4/5, LRN after conv1 and conv2 (``torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)``, the
paper's k=2, n=5, alpha=1e-4, beta=0.75), 3x3/2 max pools, fc4096-4096-1000 with dropout; a step
is forward, cross-entropy, backward. The LRN layer alone runs on the outputs of conv1
(N x 96 x 55 x 55) and conv2 (N x 256 x 27 x 27), as in bench/test_lrn.py.

Every configuration runs in its own process (two OpenMP pools in one process interact, see
docs/pytorch.md): "torch" never imports convkern (the pure-PyTorch baseline); the "mixed" ones
import torch first, as a user would, then convkern.torch, and time PyTorch's and convkern's LRN
interleaved, round by round. Before timing, each mixed process checks that both LRNs and both
models (dropout off) give the same output. With ``--repeat R`` the list of configurations runs R
times in turn (so that a busy spell of a shared machine hits every configuration); times are the
median and the minimum over all timed rounds of a configuration.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

LRN_SHAPES = {"conv1": (96, 55, 55), "conv2": (256, 27, 27)}
# (name, environment additions, torch.set_num_threads argument or None)
CONFIGS = {
    "torch": ({}, None),
    "mixed": ({}, None),
    "mixed-passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "mixed-torch1thread": ({}, 1),
}


def alexnet(torch, lrn):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(3, 96, 11, stride=4), tnn.ReLU(), lrn(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(96, 256, 5, padding=2, groups=2), tnn.ReLU(), lrn(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(256, 384, 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(384, 384, 3, padding=1, groups=2), tnn.ReLU(),
        tnn.Conv2d(384, 256, 3, padding=1, groups=2), tnn.ReLU(), tnn.MaxPool2d(3, 2), tnn.Flatten(),
        tnn.Dropout(0.5), tnn.Linear(256 * 6 * 6, 4096), tnn.ReLU(),
        tnn.Dropout(0.5), tnn.Linear(4096, 4096), tnn.ReLU(), tnn.Linear(4096, 1000))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(steps, rounds, warmup):
    """{name: [seconds per timed round]}, the steps interleaved within each round."""
    times = {name: [] for name in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            t = _timed(step)
            if r >= warmup:
                times[name].append(t)
    return times


def _lrn_steps(torch, ckt, batch, mixed):
    rng = np.random.default_rng(0)
    steps = {}
    for layer, shape in LRN_SHAPES.items():
        x = torch.tensor(np.maximum(rng.standard_normal((batch,) + shape, dtype=np.float32) * 20, 0),
                         requires_grad=True)
        dy = torch.tensor(rng.standard_normal((batch,) + shape, dtype=np.float32))
        impls = {"torch": torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)}
        if mixed:
            impls["convkern"] = ckt.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
            ref, ours = impls["torch"](x), impls["convkern"](x)
            np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-5)

        for impl, module in impls.items():
            def step(module=module, x=x, dy=dy):
                x.grad = None
                module(x).backward(dy)
            steps[f"lrn {layer} {impl}"] = step
    return steps


def _model_steps(torch, ckt, batch, mixed):
    torch.manual_seed(0)
    models = {"torch": alexnet(torch, lambda: torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0))}
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.random((batch, 3, 227, 227), dtype=np.float32))
    labels = torch.tensor(rng.integers(0, 1000, batch))
    if mixed:
        ours = alexnet(torch, lambda: torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0))
        ours.load_state_dict(models["torch"].state_dict())
        assert ckt.replace_modules(ours, types=(torch.nn.LocalResponseNorm,)) == ["2", "6"]
        models["convkern-lrn"] = ours
        with torch.no_grad():
            a, b = (m.eval()(x[:2]) for m in models.values())
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-4)

    steps = {}
    for name, model in models.items():
        model.train()

        def step(model=model):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), labels).backward()
        steps[f"alexnet {name}"] = step
    return steps


def worker(args):
    env, threads = CONFIGS[args.worker]
    mixed = args.worker != "torch"
    import torch
    ckt = None
    if mixed:
        import convkern.torch as ckt
    if threads is not None:
        torch.set_num_threads(threads)
    lrn = _rounds(_lrn_steps(torch, ckt, args.batch, mixed), args.rounds, args.warmup)
    model = _rounds(_model_steps(torch, ckt, args.batch, mixed), args.rounds, args.warmup)
    print(json.dumps({"config": args.worker, "env": env, "torch_threads": torch.get_num_threads(),
                      "times": {**lrn, **model}}))


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def _summary(records):
    """(config, what, median ms, min ms) over all the records of each configuration."""
    merged = {}
    for rec in records:
        for name, ts in rec["times"].items():
            merged.setdefault((rec["config"], name), []).extend(ts)
    return [(config, name, 1e3 * float(np.median(ts)), 1e3 * min(ts)) for (config, name), ts in merged.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeat", type=int, default=1, help="run the configurations this many times in turn")
    parser.add_argument("--json", help="write the per-round times and the machine here")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    records = []
    for _ in range(args.repeat):
        for config in args.configs:
            env = {**os.environ, **CONFIGS[config][0]}
            cmd = [sys.executable, __file__, "--worker", config, "--batch", str(args.batch),
                   "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = _summary(records)
    print(f"# batch {args.batch}, {args.repeat} x {args.rounds} timed rounds after {args.warmup} warm-up, float32, CPU "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end)")
    print(f"{'config':<20} {'what':<28} {'median ms':>10} {'min ms':>10}")
    for config, name, med, low in rows:
        print(f"{config:<20} {name:<28} {med:>10.1f} {low:>10.1f}")
    by = {(c, n): med for c, n, med, _ in rows}
    for config in args.configs:
        if config == "torch":
            continue
        for layer in LRN_SHAPES:
            t, c = by.get((config, f"lrn {layer} torch")), by.get((config, f"lrn {layer} convkern"))
            print(f"# {config}: LRN {layer} fwd+bwd, PyTorch / convkern = {t / c:.1f}x")
        t, c = by[(config, "alexnet torch")], by[(config, "alexnet convkern-lrn")]
        print(f"# {config}: AlexNet step, torch LRN / convkern LRN = {t / c:.2f}x")
        if "torch" in args.configs:
            for layer in LRN_SHAPES:
                t, c = by[("torch", f"lrn {layer} torch")], by[(config, f"lrn {layer} convkern")]
                print(f"# LRN {layer}: PyTorch in its own process / convkern in {config} = {t / c:.1f}x")
    if args.json:
        import platform
        import torch
        import numba
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": _cpu_name(),
                       "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                       "numba": numba.__version__, "numpy": np.__version__, "batch": args.batch,
                       "rounds": args.rounds, "warmup": args.warmup, "repeat": args.repeat, "records": records},
                      f, indent=1)


if __name__ == "__main__":
    main()
