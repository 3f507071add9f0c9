"""Layers as modules, PyTorch-style: a ``Module`` owns ``Parameter``s, buffers and child modules;
``forward`` calls ``convkern.functional``.

Default initialisation is PyTorch's: the convolutions and ``Linear`` draw weight and bias from
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's ``kaiming_uniform_(a=sqrt(5))`` reduces to this
bound), with ``fan_in = weight.shape[1] * prod(kernel_size)`` (in_channels/groups * kernel taps, or
out_channels/groups * taps for a transposed convolution) or ``in_features``; ``BatchNorm`` starts at
weight 1, bias 0, running mean 0, running variance 1. Draws come from the global generator, so
``convkern.manual_seed(s)`` makes a model's initial weights reproducible.
"""
import math
from collections import OrderedDict

import numpy as np

from convkern import backend, distributed
from convkern import functional as F
from convkern import random as ck_random
from convkern.autograd import Tensor, cast_array, tensor
from convkern.ops.common import as_tensor, int_tuple


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (``requires_grad=True``). A read-only NumPy
    array is copied, since optimizers update parameters in place."""

    def __init__(self, data, requires_grad=True):
        t = data if isinstance(data, Tensor) else tensor(data)
        array = t.data
        if isinstance(array, np.ndarray) and not array.flags.writeable:
            array = array.copy()
        super().__init__(array, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class: assign Parameters, Modules and (via ``register_buffer``) buffers as attributes;
    implement ``forward``. Call the module to run it."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        # An existing entry keeps its place (state_dict order, optimizer state by position).
        if name in self._parameters:
            if value is not None and not isinstance(value, Parameter):
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to parameter "
                                f"{name!r} (expected a Parameter or None)")
            self._parameters[name] = value
            return
        if name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to buffer "
                                f"{name!r} (expected a Tensor or None)")
            self._buffers[name] = value
            return
        if name in self._modules:
            if value is not None and not isinstance(value, Module):
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to child module "
                                f"{name!r} (expected a Module or None)")
            self._modules[name] = value
            return
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name, value):
        """Register ``value`` (a Tensor or None) as state that is saved but not trained."""
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"register_buffer: {name} must be a convkern Tensor or None, got {type(value).__name__}")
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix=""):
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self):
        return (b for _, b in self.named_buffers())

    # ---- mode and gradients
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        """Drop every parameter's gradient (``p.grad = None``, as PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    # ---- state
    def state_dict(self):
        """Ordered ``{name: NumPy array}`` of every parameter and buffer (host copies)."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = np.array(p.numpy(), copy=True)
        for name, b in self.named_buffers():
            state[name] = np.array(b.numpy(), copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters and buffers, keeping each one's device and dtype.

        With ``strict`` every key must match: missing keys, unexpected keys and shape mismatches
        raise one RuntimeError listing them all, and nothing is changed. Returns
        ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict: state_dict must be a dict of arrays, got {type(state_dict).__name__}")
        targets = OrderedDict(list(self.named_parameters()) + list(self.named_buffers()))
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        problems = []
        arrays = {}
        for key, target in targets.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            array = np.asarray(value.numpy() if isinstance(value, Tensor) else value)
            if array.shape != target.shape:
                problems.append(f"{key}: expected shape {target.shape}, got {array.shape}")
            elif array.dtype.kind not in "fiub":
                problems.append(f"{key}: expected a numeric array, got dtype {array.dtype}")
            else:
                arrays[key] = array
        if strict:
            problems = [f"missing key {k!r}" for k in missing] + [f"unexpected key {k!r}" for k in unexpected] + problems
        if problems:
            raise RuntimeError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for key, array in arrays.items():
            target = targets[key]
            host = np.array(array, dtype=target.dtype, order="C", copy=True)  # never alias the source
            target.data = backend.to_device(host, target.device)
        return missing, unexpected

    def to(self, device=None, dtype=None):
        """Move every parameter, gradient and float buffer to ``device`` and/or cast to ``dtype``
        (float16, float32 or float64), in place; returns the module. A string argument is a device,
        anything else a dtype: ``m.to("cuda")``, ``m.to(np.float16)``. As in PyTorch, the float
        buffers (BatchNorm's running statistics) are cast too and integer ones are left alone."""
        if device is not None and not isinstance(device, str):
            device, dtype = None, device
        if device is not None:
            backend.check_device(device)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in backend.GRAD_DTYPES:
                raise TypeError(f"to: dtype must be float16, float32 or float64, got {dtype}")

        def move(t):
            if t.dtype not in backend.GRAD_DTYPES:
                return
            data = t.data
            if device is not None:
                data = backend.to_device(data, device)
            if dtype is not None and t.dtype != dtype:
                data = cast_array(data, dtype)          # on the device: no host round trip
            t.data = data
        for p in self.parameters():
            move(p)
            if p.grad is not None:
                move(p.grad)
        for b in self.buffers():
            move(b)
        return self

    def half(self):
        """``to(np.float16)``: float16 parameters and float buffers (storage; kernels compute in float32)."""
        return self.to(np.float16)

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


def _uniform(shape, bound, dtype, device):
    data = ck_random.generator().uniform(-bound, bound, shape).astype(dtype)
    return Parameter(tensor(data, device=device))


def _float_dtype(dtype, op):
    dtype = np.dtype(dtype)
    if dtype not in backend.FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _positive_int(value, name, op):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return int(value)


class _ConvNd(Module):
    """Shared parts of the convolution modules: argument checks and PyTorch's initialisation,
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias with ``fan_in = weight.shape[1] *
    prod(kernel_size)`` (for a transposed convolution that is out_channels/groups * prod(kernel_size))."""
    rank = 2
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 algorithm, dtype, device, output_padding=0):
        super().__init__()
        op = type(self).__name__
        in_channels = _positive_int(in_channels, "in_channels", op)
        out_channels = _positive_int(out_channels, "out_channels", op)
        groups = _positive_int(groups, "groups", op)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{op}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        kernel = int_tuple(kernel_size, self.rank, "kernel_size", op, 1)
        dtype = _float_dtype(dtype, op)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.output_padding = output_padding
        self.algorithm = algorithm
        shape = ((in_channels, out_channels // groups) if self.transposed else
                 (out_channels, in_channels // groups)) + kernel
        bound = 1.0 / math.sqrt(shape[1] * math.prod(kernel))
        self.weight = _uniform(shape, bound, dtype, device)
        self.bias = _uniform((out_channels,), bound, dtype, device) if bias else None

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}")
        if self.transposed and self.output_padding != 0:
            text += f", output_padding={self.output_padding}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        return text + (f", groups={self.groups}" if self.groups != 1 else "") + \
            ("" if self.bias is not None else ", bias=False")


class _Conv(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, algorithm="auto", dtype=np.float32, device="cpu"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, algorithm,
                         dtype, device)

    def forward(self, x):
        return self._fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        self.algorithm)

    def forward_activation(self, x, activation):
        """``activation(self(x))`` with the bias and activation fused into the convolution."""
        return self._fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        self.algorithm, activation=activation)


class Conv1d(_Conv):
    """``F.conv1d`` with weight (out_channels, in_channels/groups, k) and optional bias."""
    rank = 1
    _fn = staticmethod(F.conv1d)


class Conv2d(_Conv):
    """``F.conv2d`` with weight (out_channels, in_channels/groups, kh, kw) and optional bias."""
    rank = 2
    _fn = staticmethod(F.conv2d)


class Conv3d(_Conv):
    """``F.conv3d`` with weight (out_channels, in_channels/groups, kd, kh, kw) and optional bias."""
    rank = 3
    _fn = staticmethod(F.conv3d)


class _ConvTranspose(_ConvNd):
    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, algorithm="auto", dtype=np.float32, device="cpu"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, algorithm,
                         dtype, device, output_padding)

    def forward(self, x):
        return self._fn(x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.groups,
                        self.dilation, self.algorithm)


class ConvTranspose1d(_ConvTranspose):
    """``F.conv_transpose1d`` with weight (in_channels, out_channels/groups, k) and optional bias."""
    rank = 1
    _fn = staticmethod(F.conv_transpose1d)


class ConvTranspose2d(_ConvTranspose):
    """``F.conv_transpose2d`` with weight (in_channels, out_channels/groups, kh, kw) and optional bias."""
    rank = 2
    _fn = staticmethod(F.conv_transpose2d)


class ConvTranspose3d(_ConvTranspose):
    """``F.conv_transpose3d`` with weight (in_channels, out_channels/groups, kd, kh, kw) and optional bias."""
    rank = 3
    _fn = staticmethod(F.conv_transpose3d)


class SeparableConv2d(Module):
    """``F.separable_conv2d``: a depthwise convolution with ``depth_multiplier`` filters per input
    channel (depthwise_weight (in_channels*M, 1, kh, kw)), then a 1x1 convolution to out_channels
    (pointwise_weight (out_channels, in_channels*M, 1, 1)) with optional bias. Each weight is
    initialised as its own convolution's: bound 1/sqrt(kh*kw) and 1/sqrt(in_channels*M); the bias
    as the pointwise convolution's."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, depth_multiplier=1,
                 bias=True, algorithm="auto", dtype=np.float32, device="cpu"):
        super().__init__()
        op = "SeparableConv2d"
        in_channels = _positive_int(in_channels, "in_channels", op)
        out_channels = _positive_int(out_channels, "out_channels", op)
        depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier", op)
        kh, kw = int_tuple(kernel_size, 2, "kernel_size", op, 1)
        dtype = _float_dtype(dtype, op)
        mid = in_channels * depth_multiplier
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.depth_multiplier = stride, padding, dilation, depth_multiplier
        self.algorithm = algorithm
        self.depthwise_weight = _uniform((mid, 1, kh, kw), 1.0 / math.sqrt(kh * kw), dtype, device)
        self.pointwise_weight = _uniform((out_channels, mid, 1, 1), 1.0 / math.sqrt(mid), dtype, device)
        self.bias = _uniform((out_channels,), 1.0 / math.sqrt(mid), dtype, device) if bias else None

    def forward(self, x):
        return F.separable_conv2d(x, self.depthwise_weight, self.pointwise_weight, self.bias, self.stride,
                                  self.padding, self.dilation, self.algorithm)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, depth_multiplier={self.depth_multiplier}"
                + ("" if self.bias is not None else ", bias=False"))


class Linear(Module):
    """``y = x Wᵀ + b`` with weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, device="cpu"):
        super().__init__()
        op = "Linear"
        self.in_features = _positive_int(in_features, "in_features", op)
        self.out_features = _positive_int(out_features, "out_features", op)
        dtype = _float_dtype(dtype, op)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform((out_features, in_features), bound, dtype, device)
        self.bias = _uniform((out_features,), bound, dtype, device) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def forward_activation(self, x, activation):
        """``activation(self(x))`` with the bias and activation fused into one pass."""
        return F.linear(x, self.weight, self.bias, activation=activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _BatchNorm(Module):
    ranks, layout = None, ""  # accepted input ranks (None: any >= 2) and their description
    _normalize = staticmethod(F.batch_norm)  # the op; SyncBatchNorm's takes the global batch's statistics

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32, device="cpu"):
        super().__init__()
        op = type(self).__name__
        self.num_features = _positive_int(num_features, "num_features", op)
        dtype = _float_dtype(dtype, op)
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(tensor(np.ones(num_features, dtype), device=device))
            self.bias = Parameter(tensor(np.zeros(num_features, dtype), device=device))
        else:
            self.weight = self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", tensor(np.zeros(num_features, dtype), device=device))
            self.register_buffer("running_var", tensor(np.ones(num_features, dtype), device=device))
            self.register_buffer("num_batches_tracked", tensor(np.zeros((), np.int64)))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        return self.forward_activation(x, None)

    def forward_activation(self, x, activation):
        """``activation(self(x))``; "relu" is fused into the normalisation (``F.batch_norm``)."""
        op = type(self).__name__
        x = as_tensor(x, "input", op)
        if self.ranks is not None and x.ndim not in self.ranks:
            raise ValueError(f"{op}: input must be {self.layout}, got shape {x.shape}")
        if x.ndim >= 2 and x.shape[1] != self.num_features:
            raise ValueError(f"{op}: input must have num_features={self.num_features} channels in dimension 1, "
                             f"got shape {x.shape}")
        use_batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum
        track = self.training and self.track_running_stats
        if track and momentum is None:  # cumulative moving average, as PyTorch
            momentum = 1.0 / float(self.num_batches_tracked.data + 1)
        elif momentum is None:
            momentum = 0.0  # no running-stat update happens here
        extra = {} if activation is None else {"activation": activation}
        y = self._normalize(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch_stats, momentum=momentum, eps=self.eps, **extra)
        if track:  # counted only once the batch was accepted
            self.num_batches_tracked.data += 1
        return y

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, H, W) per channel of an (N, C, H, W) input."""
    ranks, layout = (4,), "4-D (N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of an (N, C) or (N, C, L) input."""
    ranks, layout = (2, 3), "2-D (N, C) or 3-D (N, C, L)"


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation per channel of an (N, C, ...) input whose training statistics are those
    of the global batch over every rank of ``convkern.distributed`` (``distributed.sync_batch_norm``:
    one all-gather of (count, mean, variance) per forward, one all-reduce of two (C,) sums per
    backward; every rank must run the layer, in the same order). In eval mode, or in a world of
    one, it is BatchNorm. Plain BatchNorm under data parallelism uses each rank's share only."""
    _normalize = staticmethod(distributed.sync_batch_norm)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """``module`` with every BatchNorm1d/BatchNorm2d in it replaced, in place and recursively,
        by a SyncBatchNorm holding the same Parameter and buffer objects and settings; returns
        the root (a new module when ``module`` itself is a BatchNorm)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                sync.weight, sync.bias = module.weight, module.bias
            if module.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    sync.register_buffer(name, getattr(module, name))
            object.__setattr__(sync, "training", module.training)
            return sync
        for name, child in list(module.named_children()):
            module._modules[name] = cls.convert_sync_batchnorm(child)
        return module


class _Stateless(Module):
    """A module that only holds hyper-parameters for one functional op."""
    fn = None
    names = ()

    def __init__(self, *args, **kwargs):
        super().__init__()
        params = dict(zip(self.names, args))
        for key in kwargs:
            if key not in self.names or key in params:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated argument {key!r}")
        params.update(kwargs)
        self.hparams = params

    def forward(self, x):
        return type(self).fn(x, **self.hparams)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())


def _stateless(name, fn, names, doc):
    return type(name, (_Stateless,), {"fn": staticmethod(fn), "names": names, "__doc__": doc})


_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
MaxPool1d = _stateless("MaxPool1d", F.max_pool1d, _MAX_POOL_ARGS, "``F.max_pool1d`` as a module.")
MaxPool2d = _stateless("MaxPool2d", F.max_pool2d, _MAX_POOL_ARGS, "``F.max_pool2d`` as a module.")
MaxPool3d = _stateless("MaxPool3d", F.max_pool3d, _MAX_POOL_ARGS, "``F.max_pool3d`` as a module.")
AvgPool1d = _stateless("AvgPool1d", F.avg_pool1d, _AVG_POOL_ARGS, "``F.avg_pool1d`` as a module.")
AvgPool2d = _stateless("AvgPool2d", F.avg_pool2d, _AVG_POOL_ARGS, "``F.avg_pool2d`` as a module.")
AvgPool3d = _stateless("AvgPool3d", F.avg_pool3d, _AVG_POOL_ARGS, "``F.avg_pool3d`` as a module.")
AdaptiveAvgPool1d = _stateless("AdaptiveAvgPool1d", F.adaptive_avg_pool1d, ("output_size",),
                               "``F.adaptive_avg_pool1d`` as a module (output_size 1: global average pooling).")
AdaptiveAvgPool2d = _stateless("AdaptiveAvgPool2d", F.adaptive_avg_pool2d, ("output_size",),
                               "``F.adaptive_avg_pool2d`` as a module (output_size 1: global average pooling).")
AdaptiveAvgPool3d = _stateless("AdaptiveAvgPool3d", F.adaptive_avg_pool3d, ("output_size",),
                               "``F.adaptive_avg_pool3d`` as a module (output_size 1: global average pooling).")
LocalResponseNorm = _stateless("LocalResponseNorm", F.local_response_norm, ("size", "alpha", "beta", "k"),
                               "``F.local_response_norm`` (PyTorch's LRN convention) as a module.")
LRN = _stateless("LRN", F.lrn, ("depth_radius", "bias", "alpha", "beta"),
                 "``F.lrn`` (TensorFlow's LRN convention, as in the AlexNet paper) as a module.")
ReLU = _stateless("ReLU", F.relu, (), "``F.relu`` as a module.")
Tanh = _stateless("Tanh", F.tanh, (), "``F.tanh`` as a module.")
Sigmoid = _stateless("Sigmoid", F.sigmoid, (), "``F.sigmoid`` as a module.")
Flatten = _stateless("Flatten", F.flatten, ("start_dim", "end_dim"), "``F.flatten`` as a module (start_dim=1).")


_FUSION = {"enabled": True}
_ACTIVATION_MODULES = {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}


def fuse_activations(enabled=None):
    """Whether a layer and the activation module after it run as one fused op (on by default):
    in ``Sequential`` (and through ``fused``), a Conv1d/Conv2d/Conv3d or Linear followed by ReLU,
    Tanh or Sigmoid (``F.conv2d(..., activation=)``, ``F.linear(..., activation=)``: the bias and
    activation in the forward's epilogue, their gradients in one backward pass) and a
    BatchNorm1d/BatchNorm2d followed by ReLU (``F.batch_norm(..., activation="relu")``; the
    reference ResNets' blocks use it). The results
    equal the unfused modules'; ``fuse_activations(False)`` runs every module on its own.

    ``fuse_activations()`` returns the setting; ``fuse_activations(True/False)`` sets it and
    returns the previous one."""
    previous = _FUSION["enabled"]
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise TypeError(f"fuse_activations: enabled must be True, False or None, got {enabled!r}")
        _FUSION["enabled"] = enabled
    return previous


def fusable_activation(layer, following):
    """The activation name ("relu", "tanh", "sigmoid") that ``layer`` can fuse with the module
    ``following`` it, or None: fusion is on, ``layer`` is exactly one of the fusing layer types
    (a subclass may override forward) and ``following`` exactly ReLU, Tanh or Sigmoid, and neither
    has its ``forward`` replaced on the instance (``summary`` and ``bench --model`` trace layers that
    way: a fused call would skip the tracer)."""
    if not _FUSION["enabled"] or type(layer) not in _FUSING:
        return None
    if "forward" in layer.__dict__ or "forward" in getattr(following, "__dict__", {}):
        return None
    act = _ACTIVATION_MODULES.get(type(following))
    return act if act in _FUSING[type(layer)] else None


def fused(layer, activation, x):
    """``activation(layer(x))`` for modules ``layer`` and ``activation``, as one fused op when
    ``fusable_activation`` allows (the reference ResNets' blocks use it for BN + ReLU)."""
    act = fusable_activation(layer, activation)
    return activation(layer(x)) if act is None else layer.forward_activation(x, act)


class Dropout(Module):
    """``F.dropout(x, p, training=self.training)``: active in train mode, identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Subsample2d(Module):
    """LeNet-5's trainable subsampling: ``y[:, c] = weight[c] * avg_pool(x)[:, c] + bias[c]``.

    Starts as plain average pooling (weight 1, bias 0).
    """

    def __init__(self, channels, kernel_size=2, stride=None, dtype=np.float32, device="cpu"):
        super().__init__()
        self.channels = _positive_int(channels, "channels", "Subsample2d")
        self.kernel_size, self.stride = kernel_size, stride
        dtype = _float_dtype(dtype, "Subsample2d")
        self.weight = Parameter(tensor(np.ones(channels, dtype), device=device))
        self.bias = Parameter(tensor(np.zeros(channels, dtype), device=device))

    def forward(self, x):
        return F.subsample2d(x, self.weight, self.bias, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"{self.channels}, kernel_size={self.kernel_size}"


class Identity(Module):
    def forward(self, x):
        return x


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... (or by an OrderedDict's keys)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: element {name} must be a Module, got {type(m).__name__}")
            setattr(self, name, m)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        """Each module in turn; a layer followed by its activation (Conv1d/2d/3d or Linear, then
        ReLU, Tanh or Sigmoid) runs as one fused op unless ``fuse_activations(False)``."""
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            act = fusable_activation(modules[i], nxt)
            x = modules[i](x) if act is None else modules[i].forward_activation(x, act)
            i += 1 if act is None else 2
        return x


_FUSING = {**{cls: ("relu", "tanh", "sigmoid") for cls in (Conv1d, Conv2d, Conv3d, Linear)},
           BatchNorm1d: ("relu",), BatchNorm2d: ("relu",)}


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m):
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList: expected a Module, got {type(m).__name__}")
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def l2_weight_loss(params, wl):
    """The TensorFlow CIFAR-10 tutorial's weight decay term: ``wl * sum(‖w‖²) / 2`` over ``params``
    (add it to the loss for the layers it names)."""
    params = list(params)
    if not params:
        raise ValueError("l2_weight_loss: params must name at least one parameter")
    total = None
    for p in params:
        term = (p * p).sum()
        total = term if total is None else total + term
    return total * (float(wl) / 2.0)
