"""``convkern bench``: every conv algorithm x pass on a shape suite, timed, in GFLOP/s and
% of the machine's measured GEMM peak, each result checked against a float64 reference.

Timing: the first call (JIT compile + run) is reported apart; then one warm-up and repeated
runs until at least ``min_runs`` and ``min_seconds``; the median is reported.

Peers (``peers=True``, ``convkern/bench/peers.py``): PyTorch and TensorFlow, each when importable
and able to run on the bench's device, time the same pass on the same data, in a separate worker
process by default (``peer_process``); a peer that cannot is skipped with a note. Their records
have ``algorithm`` = the peer's name; every record's ``peer_timing`` says how the peers were
measured. Each convkern record carries ``peers`` ({name: median_ms} of the peers that ran that
layer and pass), ``ratio_vs_<name>`` (peer time ÷ convkern time, None where that peer did not run)
and ``peer`` / ``ratio_vs_peer``: the first of ``PEER_NAMES`` that ran.

The package: ``timing.py`` (median timing, GEMM peak), ``operands.py`` (a suite row's geometry,
operands and reference), ``peers.py``, ``model.py`` (``--model``: a whole reference CNN, layer by
layer), and this file (the layer benchmark, records, tables, files, the command line).
"""
import csv
import fnmatch
import importlib.util
import json
import os
import sys

import numpy as np

from convkern import backend, cli_args
from convkern.bench.operands import _geometry, _Operands, _relative_error
from convkern.bench.peers import (PEER_NAMES, InProcessPeers, PeerProcess, open_peers, tf_conv_args,  # noqa: F401
                                  tf_unsupported)
from convkern.bench.timing import measure_peak_gflops, time_call  # noqa: F401
from convkern.kernels.conv_registry import ALGORITHMS, BY_NAME
from convkern.ops.conv import PASSES, allow_tf32, conv_algorithms, launcher
from convkern.suites import SUITES, load_suite, quick

FIELDS = ["suite", "layer", "N", "C", "H", "W", "K", "R", "S", "stride", "pad", "dilation", "groups",
          "device", "dtype", "algorithm", "pass", "median_ms", "first_call_ms", "gflops", "pct_peak",
          "correct", "max_rel_err", "peer", "ratio_vs_peer", "peers", "ratio_vs_torch", "ratio_vs_tensorflow",
          "peer_timing"]


def select_layers(layers, patterns):
    """The layers whose name matches one of the shell-style ``patterns`` (all when None), in
    suite order; a pattern that matches nothing is a ValueError."""
    if patterns is None:
        return list(layers)
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(l["name"], pat) for l in layers):
            raise ValueError(f"--layers: {pat!r} matches no layer of the suite; its layers are "
                             + ", ".join(l["name"] for l in layers))
    return [l for l in layers if any(fnmatch.fnmatchcase(l["name"], pat) for pat in patterns)]


def run_bench(suite="reference", device="cpu", algorithms=None, passes=PASSES, dtype="float32",
              quick_mode=False, peers=False, log=sys.stderr, min_seconds=0.3, layers=None, peer_process=True):
    """Benchmark records (dicts with ``FIELDS``) for every layer x algorithm x pass, and with
    ``peers`` for every layer x pass a peer ran (see the module docstring). ``layers``: shell-style
    name patterns selecting the suite's layers (None: all). ``peer_process``: time the peers in a
    separate worker process (False: in this one).

    Progress lines and peer notes go to ``log`` (None: silent)."""
    if log is None:
        log = open(os.devnull, "w")
    backend.check_device(device)
    known = conv_algorithms(device) + ["auto"]
    algorithms = list(algorithms or known)
    for a in algorithms:
        if a not in known:
            raise ValueError(f"--algorithms: unknown algorithm {a!r}; expected some of {known}")
    for p in passes:
        if p not in PASSES:
            raise ValueError(f"--passes: unknown pass {p!r}; expected some of {list(PASSES)}")
    simulated = device == "cuda" and backend.cuda_kind() == "simulated"
    layers = [quick(l, simulated) if quick_mode else l for l in select_layers(load_suite(suite), layers)]
    for layer in layers:  # every layer's shape and memory, before any is timed
        _check_layer_memory(layer, _geometry(layer), dtype, device)
    peak = None if backend.cuda_kind() == "simulated" and device == "cuda" else measure_peak_gflops(device)
    if peak is not None:
        print(f"# peak: float32 GEMM at {peak:.1f} GFLOP/s on {device}", file=log)
    runner = (PeerProcess if peer_process else InProcessPeers)(device, log) if peers else None
    if runner is not None:
        print(f"# peers: timed {runner.how}", file=log)
    try:
        return _bench_layers(layers, suite, device, algorithms, passes, dtype, runner, peak, log, min_seconds)
    finally:
        if runner is not None:
            runner.close()


def _check_layer_memory(layer, g, dtype, device):
    """Refuse a layer whose arrays cannot fit: x, w, dy and the output in ``dtype`` (on the host,
    and again on a GPU), and the reference's padded float64 input, weight, result and one einsum
    temporary of the result's size (on the host)."""
    x, w, y = g.N * g.C * g.H * g.W, g.K * (g.C // g.groups) * g.R * g.S, g.N * g.K * g.P * g.Q
    operands = np.dtype(dtype).itemsize * (x + w + y + max(x, w, y))
    reference = 8 * (2 * x + w + 2 * y)
    who = f"--suite: layer {layer['name']!r} ({g.N}x{g.C}x{g.H}x{g.W} -> {g.K} {g.R}x{g.S})"
    if device == "cuda":
        cli_args.check_memory(operands, who, "its operands and output", "cuda")
    cli_args.check_memory(operands + reference, who, "its operands, output and float64 reference", "cpu")


def _bench_layers(layers, suite, device, algorithms, passes, dtype, runner, peak, log, min_seconds):
    tol = 1e-3 if np.dtype(dtype) == np.float32 else 1e-9
    records = []
    suite_name = suite if suite in SUITES else "custom"
    for layer in layers:
        g = _geometry(layer)
        ops = _Operands(g, dtype, device)
        base = dict(suite=suite_name, layer=layer["name"], N=g.N, C=g.C, H=g.H, W=g.W, K=g.K, R=g.R, S=g.S,
                    stride=layer["stride"], pad=layer["pad"], dilation=layer["dilation"], groups=g.groups,
                    device=device, dtype=str(np.dtype(dtype)))
        base["peer_timing"] = runner.how if runner is not None else None
        for pass_ in passes:
            peer_ms = {}
            for name, timed in (runner.time(layer, ops, pass_, min_seconds, log) if runner else []):
                peer_ms[name] = timed[1] * 1e3
                records.append(_log(_record(base, name, pass_, g, *timed, peak, tol), log))
            for alg in algorithms:
                if alg != "auto":
                    ok, why = BY_NAME[alg].supports(g, device, pass_)
                    if not ok:
                        print(f"# {layer['name']} {pass_}: {alg} skipped: {why}", file=log)
                        continue
                out = backend.empty(ops.out_shape(pass_), dtype, device)
                if device == "cpu":
                    out.fill(np.nan)
                fn = launcher(alg, g, device, pass_)
                a, b = ops.args(pass_)
                first, med = time_call(lambda: fn(a, b, out, g), device, min_seconds=min_seconds)
                err = _relative_error(backend.to_numpy(out), ops.ref(pass_))
                records.append(_log(_record(base, alg, pass_, g, first, med, err, peak,
                                            _tolerance(alg, dtype, tol), peer_ms), log))
    return records


def _tolerance(alg, dtype, tol):
    """The bound on ``max_rel_err`` for ``alg``: ``tol``, or the rtol of its reduced precision
    (TF32) for ``dtype``; for auto, the loosest one it may pick (allow_tf32)."""
    names = [alg] if alg != "auto" else [a.name for a in ALGORITHMS] if allow_tf32() else []
    bounds = [BY_NAME[n].tolerance(dtype) for n in names]
    return max([tol] + [b[0] for b in bounds if b is not None])


def _log(rec, log):
    print(f"{rec['layer']:<18} {rec['algorithm']:<14} {rec['pass']:<10} {rec['median_ms']:10.3f} ms "
          f"{rec['gflops']:8.1f} GF/s {'ok' if rec['correct'] else 'WRONG'}", file=log)
    return rec


def _record(base, alg, pass_, g, first, med, err, peak, tol, peer_ms=None):
    """One record; ``peer_ms``: {peer name: median ms} of the peers timed on this layer and pass."""
    gflops = g.flops / med / 1e9
    correct = bool(np.isfinite(err) and err <= tol)
    peer_ms = peer_ms or {}
    ratios = {f"ratio_vs_{name}": peer_ms[name] / (med * 1e3) if name in peer_ms else None for name in PEER_NAMES}
    first_peer = next(iter(peer_ms), None)
    return dict(base, algorithm=alg, **{"pass": pass_}, median_ms=med * 1e3,
                first_call_ms=first * 1e3, gflops=gflops if correct else 0.0,
                pct_peak=(100.0 * gflops / peak) if (peak and correct) else None,
                correct=correct, max_rel_err=err, peer=first_peer,
                ratio_vs_peer=ratios[f"ratio_vs_{first_peer}"] if first_peer else None, peers=dict(peer_ms), **ratios)


def format_table(records):
    """An aligned text table of the records, with an "x <peer>" column (peer time ÷ convkern time)
    for each peer that ran."""
    ran = [n for n in PEER_NAMES if any(r.get(f"ratio_vs_{n}") is not None for r in records)]
    head = ["layer", "shape (NCHW->K RxS /s +p g)", "algorithm", "pass", "ms", "GF/s", "%peak", "first ms",
            "correct"] + [f"x {n}" for n in ran]
    rows = []
    for r in records:
        shape = (f"{r['N']}x{r['C']}x{r['H']}x{r['W']}->{r['K']} {r['R']}x{r['S']} /{r['stride'][0]}"
                 f" +{r['pad'][0]} g{r['groups']}")
        ratios = [r.get(f"ratio_vs_{n}") for n in ran]
        rows.append([r["layer"], shape, r["algorithm"], r["pass"], f"{r['median_ms']:.3f}", f"{r['gflops']:.1f}",
                     "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}", f"{r['first_call_ms']:.0f}",
                     "yes" if r["correct"] else "NO"] + ["-" if x is None else f"{x:.2f}" for x in ratios])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_json(records, path):
    with open(path, "w") as f:
        json.dump(records, f, indent=1)


def write_csv(records, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(r[k]) if isinstance(r.get(k), dict) else r.get(k) for k in FIELDS})


def write_plot(records, path):
    """Grouped bar chart of GFLOP/s per layer and algorithm, one panel per pass."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'convkern[plot]'") from None
    passes = [p for p in PASSES if any(r["pass"] == p for r in records)]
    layers = list(dict.fromkeys(r["layer"] for r in records))
    algs = list(dict.fromkeys(r["algorithm"] for r in records))
    fig, axes = plt.subplots(len(passes), 1, figsize=(max(8, len(layers) * 0.7), 3.2 * len(passes)), squeeze=False)
    width = 0.8 / len(algs)
    for ax, p in zip(axes[:, 0], passes):
        for i, a in enumerate(algs):
            vals = [next((r["gflops"] for r in records if r["layer"] == l and r["algorithm"] == a
                          and r["pass"] == p), 0.0) for l in layers]
            ax.bar(np.arange(len(layers)) + i * width, vals, width, label=a)
        ax.set_title(p)
        ax.set_ylabel("GFLOP/s")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    axes[0, 0].legend(fontsize=8, ncol=len(algs))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_arguments(p):
    """The options of ``convkern bench``, each checked as it is parsed (``convkern.cli_args``)."""
    check = dict(action=cli_args.Checked)
    p.add_argument("--model", default=None, metavar="NAME",
                   help="profile a whole reference CNN layer by layer instead of a layer suite "
                        "(" + ", ".join(_model_names()) + ")")
    p.add_argument("--batch-size", **check, check=cli_args.positive_int, default=None, metavar="B",
                   help="with --model: the batch (default 32)")
    p.add_argument("--input-size", **check, check=cli_args.size_hw, default=None, metavar="H[xW]",
                   help="with --model: the input's spatial size instead of the model's own (e.g. 64)")
    p.add_argument("--suite", default="reference", help="reference | deepbench | convnet | PATH.json "
                                                         "(default: %(default)s)")
    p.add_argument("--layers", default=None, metavar="PATTERNS",
                   help="comma list of layer names or shell patterns (e.g. 'vgg16.*,resnet34.layer?'); default all")
    p.add_argument("--device", default="cpu", choices=backend.DEVICES, help="default: %(default)s")
    p.add_argument("--algorithms", default=None,
                   help="comma list of " + ",".join(conv_algorithms() + ["auto"]) + " (default: all)")
    p.add_argument("--passes", default=",".join(PASSES), help="comma list of fwd,bwd_data,bwd_filter (default: all)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default: %(default)s")
    p.add_argument("--quick", action="store_true",
                   help="scale layers down to CI size (batch <= 2, sizes <= 16; on the CUDA simulator 1 and 8)")
    p.add_argument("--peers", action="store_true",
                   help="also time PyTorch and TensorFlow, where installed, on the same shapes and device "
                        "(in a separate worker process)")
    p.add_argument("--json", **check, check=cli_args.output_path, metavar="PATH", help="write the records as JSON")
    p.add_argument("--csv", **check, check=cli_args.output_path, metavar="PATH", help="write the records as CSV")
    p.add_argument("--plot", **check, check=_plot_path, metavar="PATH.png",
                   help="grouped bar chart of GFLOP/s (needs matplotlib)")


def _plot_path(value, name):
    """An output path for the plot, refused at once when matplotlib, which draws it, is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError(f"{name} needs matplotlib: pip install 'convkern[plot]'")
    return cli_args.output_path(value, name)


def _model_names():
    from convkern import models
    return list(models.REGISTRY)


def _run_model(args):
    from convkern.bench.model import format_profile, profile_model
    for flag, value in (("--layers", args.layers), ("--algorithms", args.algorithms), ("--csv", args.csv),
                        ("--plot", args.plot), ("--quick", args.quick)):
        if value:
            raise ValueError(f"{flag} does not apply to --model (the model's own layers and 'auto' are timed)")
    profile = profile_model(args.model, 32 if args.batch_size is None else args.batch_size, args.device, args.dtype,
                            peers=args.peers, input_size=args.input_size)
    print(format_profile(profile))
    if args.json:
        write_json(profile, args.json)
    return 0


def run(args):
    if args.model is not None:
        return _run_model(args)
    if args.batch_size is not None or args.input_size is not None:
        raise ValueError("--batch-size and --input-size apply to --model only (a suite fixes each layer's shape)")
    records = run_bench(suite=args.suite, device=args.device,
                        algorithms=args.algorithms.split(",") if args.algorithms else None,
                        passes=args.passes.split(","), dtype=args.dtype, quick_mode=args.quick, peers=args.peers,
                        min_seconds=0.05 if args.quick else 0.3,
                        layers=args.layers.split(",") if args.layers else None)
    print(format_table(records))
    if args.json:
        write_json(records, args.json)
    if args.csv:
        write_csv(records, args.csv)
    if args.plot:
        write_plot(records, args.plot)
    wrong = [r for r in records if not r["correct"]]
    if wrong:
        print(f"error: {len(wrong)} result(s) differ from the float64 reference", file=sys.stderr)
        return 1
    return 0
