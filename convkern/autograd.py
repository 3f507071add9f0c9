"""The autograd core: ``Tensor`` (data, grad and the ``Function`` that made it), ``Function``
(forward on CPU, forward on CUDA, backward) and ``no_grad``.

As in micrograd, each result remembers its parents through the node that made it, backward
walks the graph in reverse topological order and gradients *accumulate* (``+=``), so fan-out
is correct. The order is computed iteratively, so deep graphs never hit the recursion limit.
"""
import math
import threading

import numpy as np

from convkern import amp, backend
from convkern.kernels import elementwise

_state = threading.local()


def is_grad_enabled():
    """False inside ``no_grad()``: ops then record no graph."""
    return getattr(_state, "grad_enabled", True)


class no_grad:
    """Context manager (and decorator) that records no graph: results have no ``grad_fn``."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.grad_enabled = False

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


class Function:
    """One differentiable op. Subclasses implement ``forward_cpu(*arrays)`` and
    ``forward_cuda(*arrays)`` (or override ``forward``) returning the output array, and
    ``backward(grad_output)`` returning one gradient array (or None) per input.

    ``apply`` receives Tensors (or None for absent optional inputs) plus keyword parameters;
    ``self.needs_input_grad`` tells forward what to save, and ``save_for_backward`` keeps only
    that; the saved buffers are released after the first backward through the node.
    """

    def __init__(self, **params):
        self.params = params
        self.parents = ()
        self.needs_input_grad = ()
        self.device = "cpu"
        self.saved = ()
        self.freed = False

    @classmethod
    def apply(cls, *inputs, **params):
        fn = cls(**params)
        fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        fn.device = next(t.device for t in inputs if t is not None)
        out = fn.forward(*(None if t is None else t.data for t in inputs))
        if is_grad_enabled() and any(fn.needs_input_grad):
            fn.parents = inputs
            return Tensor(out, requires_grad=True, _ctx=fn)
        fn.saved = ()
        return Tensor(out)

    def forward(self, *arrays):
        if self.device == "cuda":
            return self.forward_cuda(*arrays)
        return self.forward_cpu(*arrays)

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def release(self):
        self.saved = ()
        self.freed = True


def _add_arrays(a, b):
    out = backend.empty(a.shape, a.dtype, backend.device_of(a))
    elementwise.binary("add", backend.flat(a), backend.flat(b), backend.flat(out))
    return out


def _copy(a, out=None):
    """A copy of ``a``, written into ``out`` when that is an array of its shape, dtype and device."""
    if out is None or tuple(out.shape) != tuple(a.shape) or out.dtype != a.dtype \
            or backend.device_of(out) != backend.device_of(a):
        out = backend.empty(a.shape, a.dtype, backend.device_of(a))
    elementwise.scalar("mul", backend.flat(a), 1.0, backend.flat(out))
    return out


def _topological_order(root):
    """Tensors reachable from ``root`` that need gradients, parents before children."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.parents:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def backward(root, grad=None, retain_graph=False):
    """Accumulate d(root)/d(leaf) into every leaf's ``.grad`` (see ``Tensor.backward``)."""
    if not root.requires_grad:
        raise RuntimeError("backward(): the tensor does not require grad and has no grad_fn")
    if grad is None:
        if root.size != 1:
            raise RuntimeError(f"backward(): grad must be given for a non-scalar tensor of shape "
                               f"{root.shape} (pass grad= of the same shape)")
        g0 = backend.full(root.shape, 1.0, root.dtype, root.device)
    else:
        g0 = Tensor._coerce(grad, "grad", like=root).data
        if tuple(g0.shape) != root.shape:
            raise ValueError(f"backward(): grad must have the tensor's shape {root.shape}, "
                             f"got {tuple(g0.shape)}")
    grads = {id(root): g0}
    for node in reversed(_topological_order(root)):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        fn = node._ctx
        if fn is None:
            if node.grad is None:
                node.grad = Tensor(_copy(g, node._grad_home))
            else:
                elementwise.binary("add", backend.flat(node.grad.data), backend.flat(g),
                                   backend.flat(node.grad.data))
            continue
        if fn.freed:
            raise RuntimeError(
                f"backward(): trying to backward through {type(fn).__name__} a second time; its "
                "saved buffers were freed by the first backward() (pass retain_graph=True to keep them)")
        parent_grads = fn.backward(g)
        if not retain_graph:
            fn.release()
        for parent, pg in zip(fn.parents, parent_grads):
            if parent is None or pg is None or not parent.requires_grad:
                continue
            prev = grads.get(id(parent))
            grads[id(parent)] = pg if prev is None else _add_arrays(prev, pg)


class Tensor:
    """An array on "cpu" (NumPy) or "cuda" (Numba device array) with an optional gradient.

    ``grad`` accumulates over ``backward()`` calls (zero it by setting ``t.grad = None``);
    non-leaf tensors do not keep a ``grad``.
    """
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, _ctx=None):
        self.data = data
        self.grad = None
        self._grad_home = None     # where backward writes a leaf's new gradient (optim's flat buffers)
        self._ctx = _ctx
        if requires_grad and np.dtype(data.dtype) not in backend.GRAD_DTYPES:
            raise TypeError(f"requires_grad=True needs a float16, float32 or float64 tensor, got {data.dtype}")
        self.requires_grad = bool(requires_grad)

    @staticmethod
    def _coerce(value, name, like=None):
        """Turn ``value`` into a Tensor; with ``like``, check dtype and device match it."""
        t = value if isinstance(value, Tensor) else tensor(value, device=like.device if like is not None else None)
        if like is not None:
            if t.device != like.device:
                raise ValueError(f"{name} is on device {t.device!r} but the tensor is on {like.device!r}")
            if t.dtype != like.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but the tensor has dtype {like.dtype}")
        return t

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: np.dtype(self.data.dtype))
    device = property(lambda self: backend.device_of(self.data))
    ndim = property(lambda self: len(self.data.shape))
    size = property(lambda self: int(np.prod(self.data.shape, dtype=np.int64)))
    is_leaf = property(lambda self: self._ctx is None)
    grad_fn = property(lambda self: self._ctx)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r}{extra})"

    def numpy(self):
        """The data as a NumPy array (the array itself on CPU, a host copy from CUDA)."""
        return backend.to_numpy(self.data)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        if dtype is not None and np.dtype(dtype) != a.dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    @property
    def __cuda_array_interface__(self):
        """CUDA tensors expose their device memory (no copy) to CuPy, PyTorch, Numba."""
        if self.device != "cuda":
            raise AttributeError("__cuda_array_interface__: only CUDA tensors have one; this tensor is on "
                                 "the CPU (use numpy() or __dlpack__)")
        return backend.cuda_array_interface(self.data)

    def __dlpack__(self, **kwargs):
        """DLPack export of CPU tensors (through NumPy); CUDA tensors use __cuda_array_interface__."""
        if self.device != "cpu":
            raise BufferError("__dlpack__: CUDA tensors are exported through __cuda_array_interface__ "
                              "(Numba has no DLPack exporter)")
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (1, 0) if self.device == "cpu" else (2, 0)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(-1)[0].item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device=None, dtype=None):
        """This tensor on ``device`` ("cpu" or "cuda") and/or of float ``dtype`` (float16, float32,
        float64), as PyTorch: ``t.to("cuda")``, ``t.to(np.float16)``, ``t.to("cuda", np.float16)``;
        a string is a device, anything else a dtype. Differentiable; returns the tensor itself when
        nothing changes."""
        if device is not None and not isinstance(device, str):
            if dtype is not None:
                raise TypeError(f"to: expected (device, dtype), got a non-string device {device!r} and dtype {dtype!r}")
            device, dtype = None, device
        out = self
        if device is not None:
            backend.check_device(device)
            if device != self.device:
                out = ToDevice.apply(out, device=device)
        return out if dtype is None else out._cast(dtype, "to")

    def half(self):
        """``to(np.float16)``: float16 storage (kernels compute in float32)."""
        return self._cast(np.float16, "half")

    def float(self):
        """``to(np.float32)``."""
        return self._cast(np.float32, "float")

    def double(self):
        """``to(np.float64)``."""
        return self._cast(np.float64, "double")

    def _cast(self, dtype, op):
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{op}: dtype must be float16, float32 or float64, got {dtype!r}") from None
        if dtype not in backend.GRAD_DTYPES:
            raise TypeError(f"{op}: dtype must be float16, float32 or float64, got {dtype}")
        if dtype == self.dtype:
            return self
        if self.dtype not in backend.GRAD_DTYPES:
            if self.device == "cuda":
                raise TypeError(f"{op}: cannot convert a CUDA tensor of dtype {self.dtype} to {dtype}; the cast "
                                "kernel takes float16, float32 and float64 (convert integers on the CPU)")
            return Tensor(self.data.astype(dtype))
        return Cast.apply(self, dtype=dtype)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor; ``grad`` is required unless it has one element."""
        backward(self, grad, retain_graph)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=_resolve_shape(shape, self.size, self.shape))

    def view(self, *shape):
        return self.reshape(*shape)

    def sum(self):
        """Sum of all elements (a 0-d tensor of this dtype; float16 data is summed in float32).
        Under ``amp.autocast`` a float16 tensor is cast to float32 first (a loss)."""
        (x,) = amp.autocast_inputs("sum", self)
        return Sum.apply(x, scale=1.0)

    def mean(self):
        """Mean of all elements (a 0-d tensor); NaN for an empty tensor, as in PyTorch (0/0). The
        sum is scaled before it is rounded to the tensor's dtype, so a float16 mean does not
        overflow where its sum would. Under ``amp.autocast`` float16 is cast to float32 first."""
        (x,) = amp.autocast_inputs("mean", self)
        return Sum.apply(x, scale=1.0 / x.size if x.size else math.nan)

    def _binary(self, other, op, reverse=False):
        if isinstance(other, (int, float, np.integer, np.floating)) and not isinstance(other, bool):
            sop = {"add": "add", "sub": "rsub" if reverse else "sub", "mul": "mul",
                   "div": "rdiv" if reverse else "div"}[op]
            return ScalarOp.apply(self, op=sop, value=float(other))
        self, other = amp.autocast_inputs(op, self, other)
        other = Tensor._coerce(other, "other operand", like=self)
        if other.shape != self.shape:
            raise ValueError(f"elementwise {op} needs operands of the same shape, got {self.shape} "
                             f"and {other.shape} (only Python scalars broadcast)")
        a, b = (other, self) if reverse else (self, other)
        return BinaryOp.apply(a, b, op=op)

    def __add__(self, o): return self._binary(o, "add")
    def __radd__(self, o): return self._binary(o, "add", reverse=True)
    def __sub__(self, o): return self._binary(o, "sub")
    def __rsub__(self, o): return self._binary(o, "sub", reverse=True)
    def __mul__(self, o): return self._binary(o, "mul")
    def __rmul__(self, o): return self._binary(o, "mul", reverse=True)
    def __truediv__(self, o): return self._binary(o, "div")
    def __rtruediv__(self, o): return self._binary(o, "div", reverse=True)
    def __neg__(self): return ScalarOp.apply(self, op="mul", value=-1.0)

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)) or isinstance(exponent, bool):
            raise TypeError(f"exponent must be a Python number, got {type(exponent).__name__}")
        return ScalarOp.apply(self, op="pow", value=float(exponent))


def _resolve_shape(shape, size, old_shape):
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: only one dimension may be -1, got {shape}")
    known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape tensor of shape {old_shape} into {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) != size:
        raise ValueError(f"reshape: cannot reshape tensor of shape {old_shape} ({size} elements) into {shape}")
    return shape


def tensor(data, requires_grad=False, device=None, dtype=None):
    """Make a Tensor from a NumPy array, a nested list or scalar, a Numba CUDA device array, any
    object with ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors; viewed, not
    copied) or another Tensor. ``device`` defaults to where the data already is; ``dtype`` converts
    (CPU data only). Arrays are made C-contiguous, native-byte-order and writable (a read-only
    NumPy array is copied; any other is shared, as ``torch.from_numpy``)."""
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError as e:
            raise TypeError(f"dtype: expected a NumPy dtype such as np.float32, got {dtype!r} ({e})") from None
    if isinstance(data, Tensor):
        data = data.data
    elif backend.has_cuda_array_interface(data):
        data = backend.from_cuda_array_interface(data)
    if backend.device_of(data) == "cuda":
        if np.dtype(data.dtype).kind not in "fiub":
            raise TypeError(f"data: expected a float16, float32, float64 or integer array, got dtype {data.dtype}")
        if dtype is not None and np.dtype(dtype) != np.dtype(data.dtype):
            raise TypeError(f"dtype: cannot convert CUDA data of dtype {data.dtype} to {np.dtype(dtype)}; "
                            "convert on the CPU first")
        if not data.is_c_contiguous():
            raise ValueError("data: CUDA arrays must be C-contiguous; make a contiguous copy on the device "
                             "first (e.g. cupy.ascontiguousarray(x) or x.contiguous())")
        array = data
    else:
        try:
            array = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError) as e:  # ragged nesting, strings that are not numbers, ...
            raise type(e)(f"data: cannot make a numeric array of it: {e}") from None
        if array.dtype.kind not in "fiub":
            raise TypeError(f"data: expected a float16, float32, float64 or integer array, got dtype {array.dtype}")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # kernels write parameters and gradients in place
            array = array.copy()
    if device is not None:
        backend.check_device(device)
        array = backend.to_device(array, device)
    return Tensor(array, requires_grad=requires_grad)


def from_dlpack(obj):
    """A Tensor sharing the memory of a DLPack-capable object. CPU producers go through NumPy's
    importer (no copy); CUDA producers are taken through their ``__cuda_array_interface__``
    (Numba has no DLPack importer)."""
    if isinstance(obj, Tensor):
        return obj
    if not hasattr(obj, "__dlpack_device__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__ and __dlpack_device__, "
                        f"got {type(obj).__name__}")
    device_type = int(obj.__dlpack_device__()[0])
    if device_type == 1:
        return tensor(np.from_dlpack(obj))
    if backend.has_cuda_array_interface(obj):
        return tensor(obj)
    raise TypeError(f"from_dlpack: DLPack device type {device_type} is not supported; pass CPU arrays, "
                    "or CUDA arrays that expose __cuda_array_interface__")


class ToDevice(Function):
    """Copy to another device; the gradient is copied back."""

    def forward(self, a):
        self.src = backend.device_of(a)
        return backend.to_device(a, self.params["device"])

    def backward(self, g):
        return (backend.to_device(g, self.src),)


class Cast(Function):
    """out = a converted to ``dtype`` (float16, float32 or float64; rounded to nearest even); the
    gradient is converted back to a's dtype, so a float32 parameter cast to float16 receives a
    float32 gradient."""

    def forward(self, a):
        self.src = np.dtype(a.dtype)
        return cast_array(a, self.params["dtype"])

    def backward(self, g):
        return (cast_array(g, self.src),)


def cast_array(a, dtype):
    """A new array of ``a`` converted to float ``dtype`` on ``a``'s device (``elementwise.cast``)."""
    out = backend.empty(a.shape, dtype, backend.device_of(a))
    if out.size:
        elementwise.cast(backend.flat(a), backend.flat(out))
    return out


class Reshape(Function):
    def forward(self, a):
        self.in_shape = a.shape
        return a.reshape(self.params["shape"])

    def backward(self, g):
        return (g.reshape(self.in_shape),)


def _ewise(kind, op, *arrays, value=None):
    a = arrays[0]
    out = backend.empty(a.shape, a.dtype, backend.device_of(a))
    flats = [backend.flat(x) for x in arrays] + [backend.flat(out)]
    if kind == "binary":
        elementwise.binary(op, *flats)
    else:
        elementwise.scalar(op, flats[0], value, flats[1])
    return out


class BinaryOp(Function):
    """out = a (+ - * /) b, same shapes."""

    def forward(self, a, b):
        op = self.params["op"]
        if op in ("mul", "div"):
            self.save_for_backward(a, b)
        return _ewise("binary", op, a, b)

    def backward(self, g):
        op = self.params["op"]
        need_a, need_b = self.needs_input_grad
        if op == "add":
            return g, g
        if op == "sub":
            return g, (_ewise("scalar", "mul", g, value=-1.0) if need_b else None)
        a, b = self.saved
        if op == "mul":
            return (_ewise("binary", "mul", g, b) if need_a else None,
                    _ewise("binary", "mul", g, a) if need_b else None)
        ga = _ewise("binary", "div", g, b)          # g / b
        gb = None
        if need_b:                                   # -g * a / b^2 = -(g/b) * (a/b)
            gb = _ewise("binary", "mul", ga, _ewise("binary", "div", a, b))
            gb = _ewise("scalar", "mul", gb, value=-1.0)
        return (ga if need_a else None), gb


class ScalarOp(Function):
    """out = a op v for a Python float v: add, sub, rsub (v - a), mul, div, rdiv (v / a), pow."""

    def forward(self, a):
        op = self.params["op"]
        if op in ("rdiv", "pow"):
            self.save_for_backward(a)
        return _ewise("scalar", op, a, value=self.params["value"])

    def backward(self, g):
        op, v = self.params["op"], self.params["value"]
        if op in ("add", "sub"):
            return (g,)
        if op == "rsub":
            return (_ewise("scalar", "mul", g, value=-1.0),)
        if op == "mul":
            return (_ewise("scalar", "mul", g, value=v),)
        if op == "div":
            return (_ewise("scalar", "div", g, value=v),)
        (a,) = self.saved
        if op == "rdiv":                             # d(v/a) = -v / a^2
            d = _ewise("scalar", "mul", _ewise("scalar", "pow", a, value=-2.0), value=-v)
        else:                                        # d(a^v) = v * a^(v-1)
            d = _ewise("scalar", "mul", _ewise("scalar", "pow", a, value=v - 1.0), value=v)
        return (_ewise("binary", "mul", g, d),)


class Sum(Function):
    """out = scale * (sum of all elements), deterministic order, accumulated in float32 for
    float16 data (scale 1: ``sum``, 1/n: ``mean``); the gradient is scale * g everywhere."""

    def forward(self, a):
        self.in_shape = a.shape
        out = backend.empty((1,), a.dtype, backend.device_of(a))
        elementwise.sum_all(backend.flat(a), out, self.params["scale"])
        return out.reshape(())

    def backward(self, g):
        scale = self.params["scale"]
        g1 = g.reshape((1,))
        if scale != 1.0:
            g1 = _ewise("scalar", "mul", g1, value=scale)
        out = backend.empty(self.in_shape, g.dtype, backend.device_of(g))
        elementwise.broadcast_scalar(g1, backend.flat(out))
        return (out,)
