"""``convkern.summary(model, input_shape)``: per-layer output shape, parameters, FLOPs and
activation memory, from one real forward pass, plus the memory one training step needs.

Layers are the leaf modules (those without children) in the order the forward pass calls them.
FLOPs count a multiply-add as two: convolution ``2·N·K·P·Q·(C/groups)·R·S`` (+ ``N·K·P·Q`` for
the bias), linear ``2·N·in·out`` (+ ``N·out``), pooling one per window element (per
output), LRN, batch-norm
and activations a few per element (see ``_flops``). Memory for a training step =
weights + gradients (same size) + the activations kept for backward, counted as every leaf
layer's output (what the next layer's backward reads) and the input.
"""
import numpy as np

from convkern import nn
from convkern.autograd import no_grad, tensor


class LayerInfo:
    def __init__(self, name, kind, output_shape, params, flops, activation_bytes):
        self.name, self.kind, self.output_shape = name, kind, output_shape
        self.params, self.flops, self.activation_bytes = params, flops, activation_bytes


class Summary:
    """Result of ``summary``: ``layers`` (LayerInfo list) and totals; ``str()`` is the table."""

    def __init__(self, model_name, input_shape, layers, params, input_bytes, itemsize):
        self.model_name, self.input_shape, self.layers = model_name, input_shape, layers
        self.params = params
        self.flops = sum(layer.flops for layer in layers)
        self.param_bytes = params * itemsize
        self.input_bytes = input_bytes
        self.activation_bytes = sum(layer.activation_bytes for layer in layers) + input_bytes
        self.training_bytes = 2 * self.param_bytes + self.activation_bytes

    def estimate_bytes(self, batch_size):
        """(forward pass, training step) bytes at ``batch_size`` estimated from this summary, whose
        activations scale with the batch: a training step keeps every activation
        (``2·params + activations·B/N``); a forward pass without a graph holds about the input and,
        at its largest layer, that layer's input, output and a workspace of the same size
        (``params + (input + 3·largest activation)·B/N``)."""
        scale = batch_size / self.input_shape[0]
        largest = max((layer.activation_bytes for layer in self.layers), default=0)
        forward = self.param_bytes + scale * (self.input_bytes + 3 * largest)
        training = 2 * self.param_bytes + scale * self.activation_bytes
        return int(forward), int(training)

    def __str__(self):
        rows = [("layer", "type", "output shape", "params", "MFLOPs", "activations")]
        for layer in self.layers:
            rows.append((layer.name, layer.kind, "x".join(map(str, layer.output_shape)), f"{layer.params:,}",
                         _mflops(layer.flops), _mib(layer.activation_bytes)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for j, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
            if j == 0:
                lines.append("-" * len(lines[0]))
        lines.append("-" * len(lines[0]))
        lines += [f"model: {self.model_name}, input {'x'.join(map(str, self.input_shape))}",
                  f"parameters: {self.params:,} ({_mib(self.param_bytes)})",
                  f"forward FLOPs per pass: {_mflops(self.flops)} MFLOPs",
                  f"activations kept for backward: {_mib(self.activation_bytes)}",
                  f"training step memory (weights + gradients + activations): {_mib(self.training_bytes)}"]
        return "\n".join(lines)


def _mflops(flops):
    m = flops / 1e6
    return f"{m:,.3f}" if m < 10 else f"{m:,.1f}"


def _mib(n):
    return f"{n / 2**20:,.2f} MiB"


def _flops(module, x_shape, y_shape):
    n_out = int(np.prod(y_shape))
    if isinstance(module, nn._ConvNd):
        # a transposed convolution does its multiply-adds per input element
        taps = module.weight.shape[1] * int(np.prod(module.weight.shape[2:]))
        flops = 2 * (int(np.prod(x_shape)) if module.transposed else n_out) * taps
        return flops + (n_out if module.bias is not None else 0)
    if isinstance(module, nn.SeparableConv2d):
        mid = module.depthwise_weight.shape[0]
        mid_out = n_out // module.out_channels * mid
        flops = 2 * mid_out * int(np.prod(module.kernel_size)) + 2 * n_out * mid
        return flops + (n_out if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        rows = n_out // module.out_features
        return 2 * rows * module.in_features * module.out_features + (n_out if module.bias is not None else 0)
    pools = {nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool3d: 3}
    if type(module) in pools:
        k = module.hparams.get("kernel_size")
        return n_out * int(np.prod((k,) * pools[type(module)] if isinstance(k, int) else k))
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Subsample2d)):
        return int(np.prod(x_shape))
    if isinstance(module, (nn.LocalResponseNorm, nn.LRN)):
        return 6 * n_out           # square, window add/subtract, scale, pow, multiply
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return 4 * n_out
    if isinstance(module, (nn.Flatten, nn.Identity, nn.Dropout)):
        return 0
    return n_out


def summary(model, input_shape, name=None):
    """Run ``model`` once on zeros of ``input_shape`` (N, C, H, W) in eval mode, without a graph,
    and return a ``Summary`` (print it for the table)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary: model must be a convkern.nn.Module, got {type(model).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"summary: input_shape must be (N, C, H, W) with positive sizes, got {input_shape!r}")
    params = list(model.parameters())
    dtype = params[0].dtype if params else np.dtype(np.float32)
    device = params[0].device if params else "cpu"
    layers, patched = [], {}
    for mod_name, module in model.named_modules():
        if next(module.children(), None) is not None or id(module) in patched:
            continue

        def traced(x, *args, _module=module, _name=mod_name or type(module).__name__, _forward=module.forward, **kw):
            y = _forward(x, *args, **kw)
            out = y[0] if isinstance(y, tuple) else y
            layers.append(LayerInfo(_name, type(_module).__name__, out.shape,
                                    sum(p.size for p in _module._parameters.values() if p is not None),
                                    _flops(_module, x.shape, out.shape), out.size * out.dtype.itemsize))
            return y
        object.__setattr__(module, "forward", traced)
        patched[id(module)] = module
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            model(tensor(np.zeros(shape, dtype), device=device))
    finally:
        for module in patched.values():
            module.__dict__.pop("forward", None)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    total = sum(p.size for p in params)
    return Summary(name or type(model).__name__, shape, layers, total, int(np.prod(shape)) * dtype.itemsize,
                   dtype.itemsize)
