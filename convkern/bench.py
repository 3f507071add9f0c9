"""``convkern bench``: every conv algorithm x pass on a shape suite, timed, in GFLOP/s and
% of the machine's measured GEMM peak, each result checked against a float64 reference.

Timing: the first call (JIT compile + run) is reported apart; then one warm-up and repeated
runs until at least ``min_runs`` and ``min_seconds``; the median is reported.

Peers (``peers=True``): PyTorch and TensorFlow, each when importable and able to run on the
bench's device, time the same pass on the same data; a peer that cannot is skipped with a note.
Their records have ``algorithm`` = the peer's name. Each convkern record carries ``peers``
({name: median_ms} of the peers that ran that layer and pass), ``ratio_vs_<name>`` (peer time ÷
convkern time, None where that peer did not run) and, as before, ``peer`` / ``ratio_vs_peer``:
the first of ``PEER_NAMES`` that ran.
"""
import csv
import fnmatch
import json
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

import numpy as np
from numba import cuda

from convkern import backend, reference
from convkern.kernels.conv_registry import BY_NAME
from convkern.ops.conv import PASSES, conv_algorithms, conv_geometry, launcher
from convkern.suites import SUITES, load_suite, quick

FIELDS = ["suite", "layer", "N", "C", "H", "W", "K", "R", "S", "stride", "pad", "dilation", "groups",
          "device", "dtype", "algorithm", "pass", "median_ms", "first_call_ms", "gflops", "pct_peak",
          "correct", "max_rel_err", "peer", "ratio_vs_peer", "peers", "ratio_vs_torch", "ratio_vs_tensorflow"]
PEER_NAMES = ("torch", "tensorflow")


def _sync(device):
    if device == "cuda":
        cuda.synchronize()


def time_call(fn, device, min_runs=3, min_seconds=0.3, max_runs=50, sync=None):
    """(first_call_seconds, median_seconds) of ``fn()``; ``sync()`` (default: Numba's
    ``cuda.synchronize()`` on cuda) waits for the device after each call."""
    sync = sync or (lambda: _sync(device))
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_seconds and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def measure_peak_gflops(device, n=2048):
    """GFLOP/s of a large float32 GEMM: NumPy/BLAS on CPU, convkern's tiled GEMM on CUDA."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    if device == "cpu":
        c = np.empty_like(a)
        _, t = time_call(lambda: np.matmul(a, b, out=c), device)
    else:
        from convkern.kernels.gemm import gemm
        da, db = cuda.to_device(a), cuda.to_device(b)
        dc = cuda.device_array_like(da)
        _, t = time_call(lambda: gemm(da, db, dc), device)
    return 2.0 * n ** 3 / t / 1e9


def _geometry(layer):
    x_shape = (layer["N"], layer["C"], layer["H"], layer["W"])
    w_shape = (layer["K"], layer["C"] // layer["groups"], layer["R"], layer["S"])
    return conv_geometry(x_shape, w_shape, tuple(layer["stride"]), tuple(layer["pad"]),
                         tuple(layer["dilation"]), layer["groups"], op="bench")


def _relative_error(result, ref):
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(result.astype(np.float64) - ref))) / scale


class _Operands:
    """Inputs of one layer on one device, and the float64 reference per pass (made lazily)."""

    def __init__(self, g, dtype, device, seed=0):
        rng = np.random.default_rng(seed)
        self.g, self.dtype, self.device = g, np.dtype(dtype), device
        self.host = dict(x=rng.standard_normal((g.N, g.C, g.H, g.W)).astype(dtype),
                         w=rng.standard_normal((g.K, g.C // g.groups, g.R, g.S)).astype(dtype),
                         dy=rng.standard_normal((g.N, g.K, g.P, g.Q)).astype(dtype))
        self.dev = {k: backend.to_device(v, device) for k, v in self.host.items()}
        self._refs = {}

    def out_shape(self, pass_):
        g = self.g
        return {"fwd": (g.N, g.K, g.P, g.Q), "bwd_data": (g.N, g.C, g.H, g.W),
                "bwd_filter": (g.K, g.C // g.groups, g.R, g.S)}[pass_]

    def args(self, pass_):
        d = self.dev
        return {"fwd": (d["x"], d["w"]), "bwd_data": (d["dy"], d["w"]), "bwd_filter": (d["dy"], d["x"])}[pass_]

    def ref(self, pass_):
        if pass_ not in self._refs:
            h, g = self.host, self.g
            self._refs[pass_] = {"fwd": lambda: reference.conv_fwd(h["x"], h["w"], g),
                                 "bwd_data": lambda: reference.conv_bwd_data(h["dy"], h["w"], g),
                                 "bwd_filter": lambda: reference.conv_bwd_filter(h["dy"], h["x"], g)}[pass_]()
        return self._refs[pass_]


class _Peer(NamedTuple):
    """Another library timed on the same passes: ``make(ops, pass_)`` returns ``(run, result)``,
    ``unsupported(g, pass_)`` says why a pass cannot run (or None), ``restore()`` undoes settings."""
    name: str
    label: str
    make: Callable
    sync: Callable
    unsupported: Callable
    restore: Callable


_SIMULATED = "convkern's cuda device is Numba's simulator, not a GPU to compare with"


def _torch_peer(torch, ops, pass_):
    """A callable running PyTorch's conv pass on tensors on the bench's device, and its result getter."""
    g, h = ops.g, ops.host
    x, w, dy = (torch.from_numpy(h[k]).to(ops.device) for k in ("x", "w", "dy"))
    args = dict(stride=(g.stride_h, g.stride_w), padding=(g.pad_h, g.pad_w), dilation=(g.dil_h, g.dil_w))
    box = {}
    if pass_ == "fwd":
        def run():
            box["out"] = torch.nn.functional.conv2d(x, w, None, groups=g.groups, **args)
    else:
        mask = [pass_ == "bwd_data", pass_ == "bwd_filter", False]

        def run():
            res = torch.ops.aten.convolution_backward(dy, x, w, None, list(args["stride"]), list(args["padding"]),
                                                      list(args["dilation"]), False, [0, 0], g.groups, mask)
            box["out"] = res[0] if pass_ == "bwd_data" else res[1]
    return run, lambda: box["out"].cpu().numpy()


def _open_torch(device):
    """(Peer, None) when PyTorch can run on ``device`` (cuDNN on cuda), else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    sync, restore = (lambda: None), (lambda: None)
    if device == "cuda":
        if backend.cuda_kind() == "simulated":
            return None, _SIMULATED
        if torch.version.cuda is None:
            return None, f"PyTorch {torch.__version__} is a CPU-only build"
        if not torch.cuda.is_available():
            return None, f"PyTorch {torch.__version__} sees no GPU (torch.cuda.is_available() is False)"
        # convkern computes in full float32: no TF32 tensor-core rounding for cuDNN either
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        sync = torch.cuda.synchronize

        def restore():
            torch.backends.cudnn.allow_tf32 = tf32
    label = f"PyTorch {torch.__version__} on {device}" + (" (cuDNN)" if device == "cuda" else "")
    return _Peer("torch", label, lambda ops, pass_: _torch_peer(torch, ops, pass_), sync,
                lambda g, pass_: None, restore), None


def tf_conv_args(g):
    """TensorFlow's NHWC arguments for geometry ``g``: strides, dilations, and the explicit padding
    in ``tf.nn.conv2d``'s form ``[[0, 0], [top, bottom], [left, right], [0, 0]]`` and in the raw
    gradient ops' flat form. Bottom/right padding is the least that gives exactly ``g.P`` x ``g.Q``
    outputs (rows and columns the last window never reaches are not padded)."""
    bottom = max(0, (g.P - 1) * g.stride_h + g.dil_h * (g.R - 1) + 1 - g.H - g.pad_h)
    right = max(0, (g.Q - 1) * g.stride_w + g.dil_w * (g.S - 1) + 1 - g.W - g.pad_w)
    padding = [[0, 0], [g.pad_h, bottom], [g.pad_w, right], [0, 0]]
    return dict(strides=[1, g.stride_h, g.stride_w, 1], dilations=[1, g.dil_h, g.dil_w, 1], padding=padding,
                explicit_paddings=[p for pair in padding for p in pair])


def tf_unsupported(g, device, pass_):
    """Why TensorFlow cannot run this pass of ``g`` on ``device``, or None: its CPU gradient
    kernels take neither groups nor dilation (forward and the GPU kernels take both)."""
    if device != "cpu" or pass_ == "fwd":
        return None
    if g.groups > 1:
        return f"TensorFlow has no CPU gradients for grouped convolutions (groups={g.groups})"
    if g.dil_h > 1 or g.dil_w > 1:
        return f"TensorFlow's CPU gradients take no dilation > 1 (dilation={g.dil_h}x{g.dil_w})"
    return None


def _tensorflow_peer(tf, ops, pass_):
    """A callable running TensorFlow's conv pass in NHWC / HWIO, and its result getter (back in
    NCHW / KCRS). Layout changes and shape constants are made here, outside the timed call."""
    g, h = ops.g, ops.host
    place = "/GPU:0" if ops.device == "cuda" else "/CPU:0"
    a = tf_conv_args(g)
    with tf.device(place):
        x, dy = (tf.identity(tf.constant(np.ascontiguousarray(h[k].transpose(0, 2, 3, 1)))) for k in ("x", "dy"))
        w = tf.identity(tf.constant(np.ascontiguousarray(h["w"].transpose(2, 3, 1, 0))))
    common = dict(strides=a["strides"], dilations=a["dilations"], data_format="NHWC")
    raw = dict(common, padding="EXPLICIT", explicit_paddings=a["explicit_paddings"])
    box = {}
    if pass_ == "fwd":
        def op():
            return tf.nn.conv2d(x, w, padding=a["padding"], **common)
    elif pass_ == "bwd_data":
        sizes = tf.constant([g.N, g.H, g.W, g.C], dtype=tf.int32)

        def op():
            return tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=w, out_backprop=dy, **raw)
    else:
        sizes = tf.constant([g.R, g.S, g.C // g.groups, g.K], dtype=tf.int32)

        def op():
            return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=sizes, out_backprop=dy, **raw)

    def run():
        with tf.device(place):
            box["out"] = op()
    back = (3, 2, 0, 1) if pass_ == "bwd_filter" else (0, 3, 1, 2)
    return run, lambda: box["out"].numpy().transpose(back)


def _open_tensorflow(device):
    """(Peer, None) when TensorFlow can run on ``device``, else (None, why not). Never required."""
    try:
        import tensorflow as tf
    except ImportError:
        return None, "TensorFlow is not installed"
    except Exception as e:  # a broken install must not stop the bench
        return None, f"TensorFlow failed to import ({type(e).__name__}: {e})"
    sync = lambda: None  # noqa: E731 (eager CPU ops return when done)
    if device == "cuda":
        if backend.cuda_kind() == "simulated":
            return None, _SIMULATED
        if not tf.config.list_physical_devices("GPU"):
            return None, f"TensorFlow {tf.__version__} sees no GPU"
        sync = getattr(getattr(tf.test, "experimental", None), "sync_devices", None)
        if sync is None:
            return None, f"TensorFlow {tf.__version__} lacks tf.test.experimental.sync_devices (needs 2.13+)"
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    return _Peer("tensorflow", f"TensorFlow {tf.__version__} on {device}",
                lambda ops, pass_: _tensorflow_peer(tf, ops, pass_), sync,
                lambda g, pass_: tf_unsupported(g, device, pass_),
                lambda: tf.config.experimental.enable_tensor_float_32_execution(tf32)), None


def open_peers(device, log):
    """The peers that can run on ``device``, in ``PEER_NAMES`` order; a note on ``log`` for each."""
    peers = []
    for name, opener in zip(PEER_NAMES, (_open_torch, _open_tensorflow)):
        peer, why = opener(device)
        if peer:
            peers.append(peer)
            print(f"# peers: {peer.label}", file=log)
        else:
            print(f"# peers: {name} skipped: {why}", file=log)
    if not peers:
        print("# peers: none available; peer columns skipped", file=log)
    return peers


def _time_peer(peer, ops, pass_, layer, min_seconds, log):
    """(first_s, median_s, max_rel_err) of ``peer`` on one pass, or None (with a note) when it cannot run."""
    why = peer.unsupported(ops.g, pass_)
    if why is None:
        try:
            run, result = peer.make(ops, pass_)
            first, med = time_call(run, ops.device, min_seconds=min_seconds, sync=peer.sync)
            return first, med, _relative_error(result(), ops.ref(pass_))
        except Exception as e:  # a peer's own limits must not stop the bench
            why = f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]
    print(f"# peers: {peer.name} skipped on {layer} {pass_}: {why}", file=log)
    return None


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
              quick_mode=False, peers=False, log=sys.stderr, min_seconds=0.3, layers=None):
    """Benchmark records (dicts with ``FIELDS``) for every layer x algorithm x pass, and with
    ``peers`` for every layer x pass a peer ran (see the module docstring). ``layers``: shell-style
    name patterns selecting the suite's layers (None: all).

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
    layers = [quick(l) if quick_mode else l for l in select_layers(load_suite(suite), layers)]
    peak = None if backend.cuda_kind() == "simulated" and device == "cuda" else measure_peak_gflops(device)
    if peak is not None:
        print(f"# peak: float32 GEMM at {peak:.1f} GFLOP/s on {device}", file=log)
    peer_list = open_peers(device, log) if peers else []
    try:
        return _bench_layers(layers, suite, device, algorithms, passes, dtype, peer_list, peak, log, min_seconds)
    finally:
        for peer in peer_list:
            peer.restore()


def _bench_layers(layers, suite, device, algorithms, passes, dtype, peer_list, peak, log, min_seconds):
    tol = 1e-3 if np.dtype(dtype) == np.float32 else 1e-9
    records = []
    suite_name = suite if suite in SUITES else "custom"
    for layer in layers:
        g = _geometry(layer)
        ops = _Operands(g, dtype, device)
        base = dict(suite=suite_name, layer=layer["name"], N=g.N, C=g.C, H=g.H, W=g.W, K=g.K, R=g.R, S=g.S,
                    stride=layer["stride"], pad=layer["pad"], dilation=layer["dilation"], groups=g.groups,
                    device=device, dtype=str(np.dtype(dtype)))
        for pass_ in passes:
            peer_ms = {}
            for peer in peer_list:
                timed = _time_peer(peer, ops, pass_, layer["name"], min_seconds, log)
                if timed:
                    peer_ms[peer.name] = timed[1] * 1e3
                    records.append(_log(_record(base, peer.name, pass_, g, *timed, peak, tol), log))
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
                records.append(_log(_record(base, alg, pass_, g, first, med, err, peak, tol, peer_ms), log))
    return records


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
    p.add_argument("--suite", default="reference", help="reference | deepbench | convnet | PATH.json")
    p.add_argument("--layers", default=None, metavar="PATTERNS",
                   help="comma list of layer names or shell patterns (e.g. 'vgg16.*,resnet34.layer?'); default all")
    p.add_argument("--device", default="cpu", choices=backend.DEVICES)
    p.add_argument("--algorithms", default=None, help="comma list of " + ",".join(conv_algorithms() + ["auto"]))
    p.add_argument("--passes", default=",".join(PASSES), help="comma list of fwd,bwd_data,bwd_filter")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help="scale layers down to CI size")
    p.add_argument("--peers", action="store_true",
                   help="also time PyTorch and TensorFlow, where installed, on the same shapes and device")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the records as CSV")
    p.add_argument("--plot", metavar="PATH.png", help="grouped bar chart of GFLOP/s (needs matplotlib)")


def run(args):
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
