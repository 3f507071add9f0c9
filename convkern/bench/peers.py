"""Peers: PyTorch and TensorFlow timing the same conv passes on the same data, when installed.

A peer that cannot run a pass (its own limits, the simulator) is skipped with a note. By default
the peers run in a separate worker process (``PeerProcess``): two OpenMP pools in one process
(Numba's and PyTorch's) fight over the cores and made convkern look up to 2.4x slower; the worker
and convkern take turns per layer and pass, each idle (passive wait) while the other runs.
``InProcessPeers`` times them in this process (a stand-in module in the tests).
"""
import io
import multiprocessing
import os
from typing import Callable, NamedTuple

import numpy as np

from convkern import backend
from convkern.bench.operands import _geometry, _Operands, _relative_error
from convkern.bench.timing import time_call

PEER_NAMES = ("torch", "tensorflow")


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


class InProcessPeers:
    """The peers timed in this process."""
    how = "in this process"

    def __init__(self, device, log):
        self.peers = open_peers(device, log)

    def time(self, layer, ops, pass_, min_seconds, log):
        """[(peer name, (first_s, median_s, max_rel_err))] of the peers that ran ``pass_``."""
        out = []
        for peer in self.peers:
            timed = _time_peer(peer, ops, pass_, layer["name"], min_seconds, log)
            if timed:
                out.append((peer.name, timed))
        return out

    def close(self):
        for peer in self.peers:
            peer.restore()


def _worker(conn, device):
    """The peer worker process: open the peers, then time what the parent asks until it sends None."""
    log = io.StringIO()
    peers = InProcessPeers(device, log)
    conn.send(([p.name for p in peers.peers], log.getvalue()))
    ops_of = {}
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            layer, dtype, pass_, min_seconds = msg
            key = (layer["name"], dtype)
            if key not in ops_of:
                ops_of.clear()                       # one layer's operands at a time
                ops_of[key] = _Operands(_geometry(layer), dtype, device)
            log = io.StringIO()
            timed = peers.time(layer, ops_of[key], pass_, min_seconds, log)
            conn.send((timed, log.getvalue()))
    finally:
        peers.close()


class PeerProcess:
    """The peers timed in a spawned worker process with the same operands (same seed). convkern
    and the worker take turns, so only one of them computes at a time, and this process never
    imports PyTorch or TensorFlow."""

    def __init__(self, device, log):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # the worker's OpenMP pools must sleep, not spin, while convkern runs (convkern sets this
        # default for its own process on import; the worker inherits the environment)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._proc = ctx.Process(target=_worker, args=(child, device), daemon=True)
        self._proc.start()
        child.close()
        self.names, notes = self._conn.recv()
        self.how = f"in a separate worker process (pid {self._proc.pid}), taking turns with convkern"
        print(notes, end="", file=log)

    def time(self, layer, ops, pass_, min_seconds, log):
        self._conn.send((layer, str(ops.dtype), pass_, min_seconds))
        timed, notes = self._conn.recv()
        print(notes, end="", file=log)
        return timed

    def close(self):
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
