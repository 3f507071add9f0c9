"""convkern inside PyTorch: autograd Functions and ``torch.nn`` drop-ins that run convkern's kernels
on torch tensors, and ``replace_modules`` that swaps the supported layers of a torch model in place.

    import torch
    import convkern.torch as ckt
    model = torchvision_like_model()
    ckt.replace_modules(model)          # Conv*/ConvTranspose*/pools/LRN/BatchNorm*/Linear now run on convkern
    loss = loss_fn(model(x), y); loss.backward(); torch_optimizer.step()

Tensors are shared, not copied: a contiguous CPU tensor reaches the kernels as a NumPy view of its
storage (a non-contiguous one is made contiguous first), a CUDA tensor through its
``__cuda_array_interface__``; results come back as torch tensors on convkern's memory
(``torch.from_numpy``, ``torch.as_tensor`` on the CUDA array interface). Each op is one
``torch.autograd.Function`` whose forward runs the op's convkern ``Function`` and whose backward runs
that Function's backward kernels; the buffers it keeps for backward are handed to torch
(``ctx.save_for_backward``), so torch frees them, refuses a second backward without
``retain_graph=True`` and detects in-place changes of saved inputs, as for its own ops. Float32 and
float64 only. Modules keep torch's parameters and buffers: the torch optimizer updates them, and
``state_dict`` is unchanged.

Importing this module needs PyTorch; ``import convkern`` never imports it. Threads: see docs/pytorch.md
(both libraries' OpenMP pools live in one process; set ``OMP_WAIT_POLICY=PASSIVE`` before starting
Python, or import ``convkern.torch`` before ``torch``).
"""
import inspect

if __name__ != "convkern.torch":  # the file is named like the library it wraps
    raise ImportError(f"{__file__} was imported as the top-level module {__name__!r} because the convkern/ folder "
                      "is on sys.path (a script run from inside it?); run from elsewhere so that 'import torch' "
                      "finds PyTorch")

try:
    import torch
except ImportError as e:
    raise ImportError("convkern.torch needs PyTorch (pip install torch); the rest of convkern works "
                      "without it") from e

import convkern.functional as F
from convkern import backend
from convkern.autograd import Tensor
from convkern.ops.conv import conv_algorithms

FLOAT_DTYPES = (torch.float32, torch.float64)


# ---- torch tensor <-> convkern array, no copies --------------------------------------------

def _view(t, name, op):
    """A NumPy view (CPU) or Numba device array (CUDA) of torch tensor ``t``'s memory; a
    non-contiguous ``t`` is made contiguous first (that is the one copy)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        return backend.from_cuda_array_interface(t, name)
    raise ValueError(f"{op}: {name} is on device {t.device}; convkern runs on 'cpu' and 'cuda' tensors")


def _float_view(t, name, op):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}")
    return _view(t, name, op)


def _torch(array):
    """A torch tensor on ``array``'s memory (a convkern result or saved buffer)."""
    if backend.device_of(array) == "cpu":
        return torch.from_numpy(array)
    return torch.as_tensor(array, device="cuda")


class _ConvkernOp(torch.autograd.Function):
    """One convkern op in torch's graph. forward(run, op, names, grad_enabled, *inputs): ``run``
    takes convkern Tensors viewing ``inputs`` (named ``names`` in messages) and returns the op's
    result Tensor (or a tuple whose other entries are not differentiable, e.g. max-pool indices);
    backward calls the backward of the convkern ``Function`` node that made the result."""
    N_ARGS = 4  # run, op, names, grad_enabled: before the tensors

    @staticmethod
    def forward(ctx, run, op, names, grad_enabled, *inputs):
        # needs_input_grad stays True under torch.no_grad(); only grad_enabled says a graph is recorded
        needs = tuple(grad_enabled and need for need in ctx.needs_input_grad[_ConvkernOp.N_ARGS:])
        args = [None if t is None else Tensor(_float_view(t, name, op), requires_grad=need)
                for t, name, need in zip(inputs, names, needs)]
        result = run(*args)
        outputs = result if isinstance(result, tuple) else (result,)
        node = outputs[0].grad_fn
        if node is None and any(needs):
            raise RuntimeError(f"{op}: torch needs gradients but convkern recorded no graph; is convkern.no_grad() "
                               "active around the torch model?")
        ctx.node = node
        if node is not None:
            # which input each of the node's parents is (the op may pass them in another order)
            ctx.slots = [next((i for i, a in enumerate(args) if a is not None and a is p), None) for p in node.parents]
            if any(need and i not in ctx.slots for i, need in enumerate(needs)):
                raise RuntimeError(f"{op}: the result's convkern node does not take every input that needs a "
                                   "gradient (an op made of several nodes cannot be bridged this way)")
            kept = [None if a is None else _torch(a) for a in node.saved]
            node.saved = ()  # from here on torch owns them: freed after backward unless retain_graph
            ctx.n_kept = len(kept)
            ctx.save_for_backward(*kept, *inputs)
        out = [_torch(o.data) for o in outputs]
        if len(out) > 1:
            ctx.mark_non_differentiable(*out[1:])
            return tuple(out)
        return out[0]

    @staticmethod
    def backward(ctx, grad, *unused):
        node = ctx.node
        saved = ctx.saved_tensors  # torch raises here after a freed graph or an in-place change of an input
        node.saved = tuple(None if t is None else _view(t, "saved buffer", type(node).__name__)
                           for t in saved[:ctx.n_kept])
        try:
            parent_grads = node.backward(_view(grad, "grad_output", type(node).__name__))
        finally:
            node.saved = ()
        n = _ConvkernOp.N_ARGS
        grads = [None] * (len(ctx.needs_input_grad) - n)
        for slot, g in zip(ctx.slots, parent_grads):
            if slot is not None and g is not None and ctx.needs_input_grad[n + slot]:
                grads[slot] = _torch(g)
        return (None,) * n + tuple(grads)


def _buffer(t, name, op):
    """A running statistic, viewed so that convkern's in-place update lands in the torch tensor."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be a contiguous tensor: it is updated in place")
    return _view(t, name, op)


def _torch_op(fn, tensors, buffers=()):
    """The torch version of the convkern op ``fn``: the arguments named in ``tensors`` are torch
    tensors (or None) that get gradients, those in ``buffers`` torch tensors updated in place; the
    rest pass through. Same signature as ``fn``."""
    signature = inspect.signature(fn)
    op = fn.__name__

    def torch_fn(*args, **kwargs):
        params = signature.bind(*args, **kwargs)
        params.apply_defaults()
        params = params.arguments
        for name in buffers:
            params[name] = _buffer(params[name], name, op)

        def run(*convkern_tensors):
            return fn(**{**params, **dict(zip(tensors, convkern_tensors))})
        return _ConvkernOp.apply(run, op, tensors, torch.is_grad_enabled(), *(params[name] for name in tensors))

    torch_fn.__name__ = torch_fn.__qualname__ = op
    torch_fn.__signature__ = signature
    summary, rest = inspect.getdoc(fn).split("\n\n", 1)
    torch_fn.__doc__ = (f"{summary} On torch tensors: torch tensors in and out, no copies, gradients through "
                        f"torch's autograd (``convkern.functional.{op}``, whose documentation follows).\n\n{rest}")
    return torch_fn


_CONV = ("input", "weight", "bias")
conv1d = _torch_op(F.conv1d, _CONV)
conv2d = _torch_op(F.conv2d, _CONV)
conv3d = _torch_op(F.conv3d, _CONV)
conv_transpose1d = _torch_op(F.conv_transpose1d, _CONV)
conv_transpose2d = _torch_op(F.conv_transpose2d, _CONV)
conv_transpose3d = _torch_op(F.conv_transpose3d, _CONV)
max_pool1d = _torch_op(F.max_pool1d, ("input",))
max_pool2d = _torch_op(F.max_pool2d, ("input",))
max_pool3d = _torch_op(F.max_pool3d, ("input",))
avg_pool1d = _torch_op(F.avg_pool1d, ("input",))
avg_pool2d = _torch_op(F.avg_pool2d, ("input",))
avg_pool3d = _torch_op(F.avg_pool3d, ("input",))
adaptive_avg_pool1d = _torch_op(F.adaptive_avg_pool1d, ("input",))
adaptive_avg_pool2d = _torch_op(F.adaptive_avg_pool2d, ("input",))
adaptive_avg_pool3d = _torch_op(F.adaptive_avg_pool3d, ("input",))
local_response_norm = _torch_op(F.local_response_norm, ("input",))
lrn = _torch_op(F.lrn, ("input",))
batch_norm = _torch_op(F.batch_norm, _CONV, buffers=("running_mean", "running_var"))
linear = _torch_op(F.linear, _CONV)


# ---- nn.Module drop-ins ----------------------------------------------------------------------

def _unbatched(fn, input, rank):
    """``fn(input)``, accepting torch's unbatched (C, *spatial) input as a batch of one."""
    if input.dim() != rank + 1:
        return fn(input)
    out = fn(input.unsqueeze(0))
    return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)


def _check_algorithm(algorithm, op):
    if algorithm != "auto" and algorithm not in conv_algorithms():
        raise ValueError(f"{op}: unknown algorithm {algorithm!r}; expected 'auto' or one of {conv_algorithms()}")
    return algorithm


class _DropIn:
    """What every drop-in shares: ``unsupported(module)`` says which option of a torch module
    convkern cannot run (None when it can run all of them); forward refuses those. The drop-ins
    keep torch's constructors (and signatures), except the convolutions, which add ``algorithm``."""

    @staticmethod
    def unsupported(module):
        return None

    def _refuse_unsupported(self):
        why = self.unsupported(self)
        if why:
            raise ValueError(f"{type(self).__name__}: {why}")


class _Conv(_DropIn):
    rank, fn = 2, None

    def __init__(self, *args, algorithm="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.algorithm = _check_algorithm(algorithm, type(self).__name__)
        self._refuse_unsupported()

    @staticmethod
    def unsupported(module):
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} is not supported (convkern pads with zeros)"
        return None

    def forward(self, input):
        self._refuse_unsupported()
        return _unbatched(lambda x: self.fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                            self.groups, self.algorithm), input, self.rank)

    def extra_repr(self):
        return f"{super().extra_repr()}, algorithm={self.algorithm!r}"


class _ConvTranspose(_Conv):
    def forward(self, input, output_size=None):
        self._refuse_unsupported()
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self.rank, self.dilation)
        return _unbatched(lambda x: self.fn(x, self.weight, self.bias, self.stride, self.padding, output_padding,
                                            self.groups, self.dilation, self.algorithm), input, self.rank)


class Conv1d(_Conv, torch.nn.Conv1d):
    """``torch.nn.Conv1d`` computed by convkern: torch's arguments, plus ``algorithm`` ("auto" or one of
    ``convkern.conv_algorithms()``)."""
    rank, fn = 1, staticmethod(conv1d)


class Conv2d(_Conv, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by convkern: torch's arguments, plus ``algorithm`` ("auto" or one of
    ``convkern.conv_algorithms()``)."""
    rank, fn = 2, staticmethod(conv2d)


class Conv3d(_Conv, torch.nn.Conv3d):
    """``torch.nn.Conv3d`` computed by convkern: torch's arguments, plus ``algorithm`` ("auto" or one of
    ``convkern.conv_algorithms()``)."""
    rank, fn = 3, staticmethod(conv3d)


class ConvTranspose1d(_ConvTranspose, torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` computed by convkern (the conv backward-data kernels): torch's
    arguments, plus ``algorithm`` ("auto" or one of ``convkern.conv_algorithms()``)."""
    rank, fn = 1, staticmethod(conv_transpose1d)


class ConvTranspose2d(_ConvTranspose, torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by convkern (the conv backward-data kernels): torch's
    arguments, plus ``algorithm`` ("auto" or one of ``convkern.conv_algorithms()``)."""
    rank, fn = 2, staticmethod(conv_transpose2d)


class ConvTranspose3d(_ConvTranspose, torch.nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` computed by convkern (the conv backward-data kernels): torch's
    arguments, plus ``algorithm`` ("auto" or one of ``convkern.conv_algorithms()``)."""
    rank, fn = 3, staticmethod(conv_transpose3d)


class _MaxPool(_DropIn):
    rank, fn = 2, None

    def forward(self, input):
        return _unbatched(lambda x: self.fn(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                            self.ceil_mode, self.return_indices), input, self.rank)


class MaxPool1d(_MaxPool, torch.nn.MaxPool1d):
    """``torch.nn.MaxPool1d`` computed by convkern, ``return_indices`` included (positions within each row)."""
    rank, fn = 1, staticmethod(max_pool1d)


class MaxPool2d(_MaxPool, torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` computed by convkern, ``return_indices`` included (``h*W + w`` per plane, as torch)."""
    rank, fn = 2, staticmethod(max_pool2d)


class MaxPool3d(_MaxPool, torch.nn.MaxPool3d):
    """``torch.nn.MaxPool3d`` computed by convkern, ``return_indices`` included (``(d*H + h)*W + w``, as torch)."""
    rank, fn = 3, staticmethod(max_pool3d)


class _AvgPool(_DropIn):
    rank, fn = 2, None

    @staticmethod
    def unsupported(module):
        if getattr(module, "divisor_override", None) is not None:
            return f"divisor_override={module.divisor_override!r} is not supported"
        return None

    def forward(self, input):
        self._refuse_unsupported()
        return _unbatched(lambda x: self.fn(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                            self.count_include_pad), input, self.rank)


class AvgPool1d(_AvgPool, torch.nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` computed by convkern."""
    rank, fn = 1, staticmethod(avg_pool1d)


class AvgPool2d(_AvgPool, torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` computed by convkern (``divisor_override`` must be None)."""
    rank, fn = 2, staticmethod(avg_pool2d)


class AvgPool3d(_AvgPool, torch.nn.AvgPool3d):
    """``torch.nn.AvgPool3d`` computed by convkern (``divisor_override`` must be None)."""
    rank, fn = 3, staticmethod(avg_pool3d)


class _AdaptiveAvgPool(_DropIn):
    rank, fn = 2, None

    def forward(self, input):
        return _unbatched(lambda x: self.fn(x, self.output_size), input, self.rank)


class AdaptiveAvgPool1d(_AdaptiveAvgPool, torch.nn.AdaptiveAvgPool1d):
    """``torch.nn.AdaptiveAvgPool1d`` computed by convkern."""
    rank, fn = 1, staticmethod(adaptive_avg_pool1d)


class AdaptiveAvgPool2d(_AdaptiveAvgPool, torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` computed by convkern."""
    rank, fn = 2, staticmethod(adaptive_avg_pool2d)


class AdaptiveAvgPool3d(_AdaptiveAvgPool, torch.nn.AdaptiveAvgPool3d):
    """``torch.nn.AdaptiveAvgPool3d`` computed by convkern."""
    rank, fn = 3, staticmethod(adaptive_avg_pool3d)


class LocalResponseNorm(_DropIn, torch.nn.LocalResponseNorm):
    """``torch.nn.LocalResponseNorm`` computed by convkern's fused LRN kernels (PyTorch's form:
    ``y = x / (k + alpha/size * Σ x²)^beta`` over channels ``c - size//2 … c + (size-1)//2``)."""

    def forward(self, input):
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class LRN(torch.nn.Module):
    """Local response normalisation in TensorFlow's and the AlexNet paper's form, a convkern-only
    module: ``y = x / (bias + alpha * Σ_{j=c-r}^{c+r} x_j²)^beta``, ``r = depth_radius``, alpha not
    divided by the window (``convkern.functional.lrn``). AlexNet: ``LRN(2, 2.0, 1e-4, 0.75)``, which
    equals ``torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)``."""

    def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
        super().__init__()
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def forward(self, input):
        return lrn(input, self.depth_radius, self.bias, self.alpha, self.beta)

    def extra_repr(self):
        return f"depth_radius={self.depth_radius}, bias={self.bias}, alpha={self.alpha}, beta={self.beta}"


class _BatchNorm(_DropIn):
    def forward(self, input):
        # torch.nn.modules.batchnorm._BatchNorm.forward, with convkern's batch_norm
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_stats = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if pass_stats else None, self.running_var if pass_stats else None,
                          self.weight, self.bias, use_batch_stats, factor, self.eps)


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` computed by convkern; running statistics updated in the module's buffers as torch does."""


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by convkern; running statistics updated in the module's buffers as torch does."""


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` computed by convkern; running statistics updated in the module's buffers as torch does."""


class Linear(_DropIn, torch.nn.Linear):
    """``torch.nn.Linear`` computed by convkern's GEMM (BLAS on the CPU, the tiled kernel on CUDA)."""

    def forward(self, input):
        return linear(input, self.weight, self.bias)


DROP_INS = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
            torch.nn.ConvTranspose1d: ConvTranspose1d, torch.nn.ConvTranspose2d: ConvTranspose2d,
            torch.nn.ConvTranspose3d: ConvTranspose3d,
            torch.nn.MaxPool1d: MaxPool1d, torch.nn.MaxPool2d: MaxPool2d, torch.nn.MaxPool3d: MaxPool3d,
            torch.nn.AvgPool1d: AvgPool1d, torch.nn.AvgPool2d: AvgPool2d, torch.nn.AvgPool3d: AvgPool3d,
            torch.nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
            torch.nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d, torch.nn.LocalResponseNorm: LocalResponseNorm,
            torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d, torch.nn.BatchNorm3d: BatchNorm3d,
            torch.nn.Linear: Linear}


def replace_modules(model, algorithm="auto", strict=False, types=None):
    """Make every supported layer of the torch module ``model`` (itself included) run on convkern,
    in place, and return the qualified names of the layers swapped.

    A layer is swapped when its type is exactly one of ``DROP_INS``' keys (``torch.nn.Conv2d``,
    ``torch.nn.BatchNorm2d``, ...; subclasses may have their own forward and are left alone) and
    convkern runs all its options. The module object stays the same, only its class becomes the
    drop-in (a subclass of the torch class, as ``torch.nn.utils.parametrize`` does it): its
    Parameters, buffers, hooks, ``training`` flag and ``state_dict`` keys are unchanged, and an
    optimizer built before the swap keeps updating the same weights.

    Args:
        model: a ``torch.nn.Module``.
        algorithm: for the convolution layers, "auto" or one of ``convkern.conv_algorithms()``.
        strict: raise ValueError (before swapping anything) when a layer of a supported type uses
            an option convkern lacks (``padding_mode`` other than "zeros", AvgPool's
            ``divisor_override``); by default such layers stay torch's.
        types: swap only layers of these torch types (e.g. ``(torch.nn.LocalResponseNorm,)`` to take
            convkern's LRN and keep torch's convolutions); default: every type in ``DROP_INS``.

    Returns a list of the swapped layers' names (``""`` for ``model`` itself).
    """
    op = "replace_modules"
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{op}: model must be a torch.nn.Module, got {type(model).__name__}")
    _check_algorithm(algorithm, op)
    types = tuple(DROP_INS) if types is None else tuple(types)
    for t in types:
        if t not in DROP_INS:
            raise ValueError(f"{op}: types must be torch module classes with a drop-in (keys of DROP_INS), got {t!r}")
    swaps = []
    for name, module in model.named_modules():
        cls = DROP_INS.get(type(module))
        if cls is None or type(module) not in types:
            continue
        why = cls.unsupported(module)
        if why is None:
            swaps.append((name, module, cls))
        elif strict:
            raise ValueError(f"{op}: layer {name or '<model>'!r} ({type(module).__name__}): {why}")
    for name, module, cls in swaps:
        module.__class__ = cls
        if issubclass(cls, _Conv):
            module.algorithm = algorithm
    return [name for name, _, _ in swaps]


__all__ = ["AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
           "ConvTranspose2d", "ConvTranspose3d", "LRN", "Linear", "LocalResponseNorm", "MaxPool1d", "MaxPool2d",
           "MaxPool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d",
           "avg_pool2d", "avg_pool3d", "batch_norm", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
           "conv_transpose2d", "conv_transpose3d", "linear", "local_response_norm", "lrn", "max_pool1d",
           "max_pool2d", "max_pool3d", "replace_modules"]
