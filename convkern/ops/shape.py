"""Ops that move or broadcast values without arithmetic across elements: ``Cat`` (public
``cat``) and ``BiasAdd`` (public ``bias_add``)."""
import numbers

import numpy as np

from convkern import backend
from convkern.autograd import Function
from convkern.kernels import concat, elementwise
from convkern.ops.common import as_tensor, check_float, check_rank, check_same


class Cat(Function):
    """out = the inputs placed one after another along ``dim``; the gradient of each input is
    its slice of the output gradient."""

    def forward(self, *arrays):
        dim = self.params["dim"]
        first = arrays[0].shape
        shape = first[:dim] + (sum(a.shape[dim] for a in arrays),) + first[dim + 1:]
        out = backend.empty(shape, arrays[0].dtype, self.device)
        self.outer = int(np.prod(shape[:dim], dtype=np.int64))
        self.shapes = [a.shape for a in arrays]
        if out.size:
            out2 = out.reshape((self.outer, out.size // self.outer))
            for a, offset in zip(arrays, self._offsets()):
                if a.size:
                    concat.concat_fwd(a.reshape((self.outer, a.size // self.outer)), out2, offset)
        return out

    def _offsets(self):
        """Column offset of each input in the (outer, total_width) view of the output."""
        widths = [int(np.prod(s, dtype=np.int64)) // max(self.outer, 1) for s in self.shapes]
        return np.cumsum([0] + widths[:-1]).tolist()

    def backward(self, g):
        grads = []
        g2 = g.reshape((self.outer, g.size // self.outer)) if g.size else None
        for need, shape, offset in zip(self.needs_input_grad, self.shapes, self._offsets()):
            if not need:
                grads.append(None)
                continue
            gi = backend.empty(shape, g.dtype, self.device)
            if gi.size:
                concat.concat_bwd(g2, gi.reshape((self.outer, gi.size // self.outer)), offset)
            grads.append(gi)
        return tuple(grads)


def cat(tensors, dim=0):
    """Concatenate tensors along ``dim`` (negative counts from the end), PyTorch's ``torch.cat``.

    All tensors have the same rank, dtype (float16, float32 or float64) and device, and the same size in
    every dimension but ``dim``; the output's size along ``dim`` is the sum of theirs. Viewing
    each input as (outer, width_i) with ``outer = prod(shape[:dim])``, input i occupies columns
    ``[sum_{j<i} width_j, ... + width_i)`` of the output viewed as (outer, Σ width). Gradients
    flow to every input that requires them. Returns a new Tensor (also for a single input).
    """
    op = "cat"
    if isinstance(tensors, np.ndarray) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty list of tensors")
    ts = [as_tensor(t, f"tensors[{i}]", op) for i, t in enumerate(tensors)]
    first = ts[0]
    check_float(first, "tensors[0]", op, half=True)
    if first.ndim == 0:
        raise ValueError(f"{op}: tensors[0] is zero-dimensional and cannot be concatenated")
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"{op}: dim must be an int, got {dim!r}")
    if not -first.ndim <= dim < first.ndim:
        raise ValueError(f"{op}: dim must be in [{-first.ndim}, {first.ndim - 1}] for {first.ndim}-D tensors, "
                         f"got {dim}")
    d = int(dim) % first.ndim
    for i, t in enumerate(ts[1:], start=1):
        check_same(t, first, f"tensors[{i}]", "tensors[0]", op)
        if t.ndim != first.ndim:
            raise ValueError(f"{op}: tensors[{i}] has {t.ndim} dimensions (shape {t.shape}) but tensors[0] has "
                             f"{first.ndim} (shape {first.shape})")
        if t.shape[:d] + t.shape[d + 1:] != first.shape[:d] + first.shape[d + 1:]:
            raise ValueError(f"{op}: sizes must match except in dimension {d}: tensors[{i}] has shape {t.shape}, "
                             f"tensors[0] has shape {first.shape}")
    return Cat.apply(*ts, dim=d)


class BiasAdd(Function):
    """y[n, c, ...] = x[n, c, ...] + b[c]; dx = dy, db[c] = Σ dy[:, c, ...]."""

    def forward(self, x, b):
        self.shape4 = x.shape[:2] + (int(np.prod(x.shape[2:], dtype=np.int64)), 1)
        y = backend.empty(x.shape, x.dtype, self.device)
        elementwise.scalar("mul", backend.flat(x), 1.0, backend.flat(y))
        elementwise.bias_add_nchw(y.reshape(self.shape4), b)
        return y

    def backward(self, g):
        need_x, need_b = self.needs_input_grad
        db = None
        if need_b:
            db = backend.empty((self.shape4[1],), g.dtype, self.device)
            elementwise.bias_grad_nchw(g.reshape(self.shape4), db)
        return (g if need_x else None), db


def bias_add(input, bias):
    """``y[n, c, ...] = input[n, c, ...] + bias[c]``: a (C,) bias broadcast along dimension 1 of
    input (N, C), (N, C, L) or (N, C, H, W). Gradients: ``dinput = dy``, ``dbias[c] = Σ_{n,...} dy[n, c, ...]``
    (deterministic). Returns a Tensor of input's shape.
    """
    op = "bias_add"
    x = as_tensor(input, "input", op)
    check_float(x, "input", op, half=True)
    if not 2 <= x.ndim <= 4:
        raise ValueError(f"{op}: input must be 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W), got shape {x.shape}")
    b = as_tensor(bias, "bias", op)
    check_same(b, x, "bias", "input", op)
    check_rank(b, 1, "bias", "(C,)", op)
    if b.shape != (x.shape[1],):
        raise ValueError(f"{op}: bias must have shape (C,) = ({x.shape[1]},), got {b.shape}")
    return BiasAdd.apply(x, b)
