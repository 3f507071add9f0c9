"""Automatic mixed precision, PyTorch's ``torch.autocast`` and ``torch.amp.GradScaler``.

    scaler = ck.amp.GradScaler()
    for images, labels in loader:
        opt.zero_grad()
        with ck.amp.autocast():
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)        # unscales the gradients; skips the step if one is inf or NaN
        scaler.update()         # adapts the scale

``autocast`` (a context manager and a decorator, on the CPU and on CUDA) changes the dtype that
some ops run in, PyTorch's rules for float16:

- conv1d/2d, conv_transpose1d/2d, the depthwise/separable/atrous convolutions and ``linear`` run
  in float16: float32 inputs, weights and biases are cast to float16 first (conv3d and
  conv_transpose3d have no float16 kernels and keep their inputs' dtype);
- ``softmax``, ``log_softmax``, ``cross_entropy`` and ``Tensor.sum``/``mean`` run in float32:
  float16 input is cast up (a float16 loss could not hold a scaled loss, and exp/log and long
  sums want the range);
- elementwise ops with a float16 and a float32 operand (``a + b``, ``a * b``, ...) run in the
  wider dtype (PyTorch's type promotion);
- every other op runs in its input's dtype (batch_norm, pooling and the activations take
  float16 input as it comes; batch_norm with float32 parameters).

float64 tensors are never cast. The casts are ``Tensor.to`` (the ``Cast`` autograd op), so a
float32 parameter used in float16 receives a float32 gradient. Outside autocast (or inside
``autocast(enabled=False)``) nothing is cast implicitly and mixed dtypes are an error.

``GradScaler`` multiplies the loss by a scale S before backward, so that small float16
gradients do not flush to zero, and divides the gradients by S before the optimizer step
(``unscale_``: one kernel launch per gradient, which also sets a device-side flag when a
gradient is inf or NaN). A step whose gradients are not all finite is skipped and S shrinks
(``S *= backoff_factor``); after ``growth_interval`` finite steps in a row S grows
(``S *= growth_factor``, kept only when finite). S is a float32 value, as PyTorch keeps it.
``step`` reads the flag on the host (PyTorch's ``step`` reads it too: one 4-byte read per step);
everything else stays on the device, and ``scale`` reads S from a device array updated in place,
so a captured CUDA graph that scales its loss sees the current S.
"""
import functools
import math
import numbers
import threading

import numpy as np

from convkern import backend
from convkern import cuda as runtime
from convkern.kernels import amp as kernels, elementwise

__all__ = ["GradScaler", "autocast", "autocast_inputs", "get_autocast_dtype", "is_autocast_enabled"]

HALF, SINGLE, DOUBLE = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
# What autocast does to the float inputs of each op that calls ``autocast_inputs`` (PyTorch's op
# lists for float16): "float16" casts float32 to float16, "float32" float16 to float32, "promote"
# every float16/float32 operand to the widest float dtype among them, "keep" nothing. conv3d and
# conv_transpose3d have no float16 kernels, so they keep their inputs' dtype.
OPS = {**dict.fromkeys(("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "depthwise_conv2d",
                        "separable_conv2d", "atrous_conv2d", "linear"), "float16"),
       **dict.fromkeys(("softmax", "log_softmax", "cross_entropy", "sum", "mean"), "float32"),
       **dict.fromkeys(("add", "sub", "mul", "div"), "promote"),
       **dict.fromkeys(("conv3d", "conv_transpose3d"), "keep")}

_state = threading.local()


def is_autocast_enabled():
    """True inside ``autocast()`` (on this thread)."""
    return getattr(_state, "enabled", False)


def get_autocast_dtype():
    """The lower-precision dtype autocast runs its float16 ops in (float16: NumPy has no bfloat16)."""
    return HALF


class autocast:
    """Context manager and decorator: ops run in the dtypes of the module docstring's rules while
    it is active (``enabled=True``); ``autocast(enabled=False)`` switches them off inside an
    enabled region. Regions nest, and each thread has its own state, as in PyTorch.

    Args:
        enabled: bool (default True).
        dtype: the lower precision, ``np.float16`` (the only one: NumPy has no bfloat16).
    """

    def __init__(self, enabled=True, dtype=np.float16):
        if not isinstance(enabled, bool):
            raise TypeError(f"autocast: enabled must be True or False, got {enabled!r}")
        try:
            ok = np.dtype(dtype) == HALF
        except TypeError:
            ok = False
        if not ok:
            raise TypeError(f"autocast: dtype must be float16 (NumPy has no bfloat16), got {dtype!r}")
        self.enabled = enabled
        self._outer = []

    def __enter__(self):
        self._outer.append(is_autocast_enabled())
        _state.enabled = self.enabled
        return self

    def __exit__(self, *exc):
        _state.enabled = self._outer.pop()

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with autocast(self.enabled):
                return fn(*args, **kwargs)
        return wrapper


def autocast_inputs(op, *values):
    """``values`` as ``op`` (a key of ``OPS``) takes them under autocast; the values themselves
    outside autocast. Returns a tuple, one entry per value.

    Only float16 and float32 Tensors (and NumPy/CUDA arrays, made Tensors) are cast, through
    ``Tensor.to``; None, float64 and anything else come back unchanged, for the op to check.
    By ``OPS[op]``: "float16": float32 -> float16; "float32": float16 -> float32; "promote": every
    float16 or float32 value to the widest float dtype among the Tensors (a float64 one included);
    "keep": none.
    """
    if op not in OPS:
        raise ValueError(f"autocast_inputs: op must be one of {sorted(OPS)}, got {op!r}")
    kind = OPS[op]
    if not is_autocast_enabled() or kind == "keep":
        return values
    from convkern.autograd import Tensor, tensor  # autograd imports this module: import on use

    def floating(v):
        if isinstance(v, Tensor):
            return v
        if isinstance(v, np.ndarray) or backend.device_of(v) == "cuda":
            if np.dtype(v.dtype) in (HALF, SINGLE):
                return tensor(v)
        return None

    tensors = [floating(v) for v in values]
    present = [t.dtype for t in tensors if t is not None and t.dtype in backend.GRAD_DTYPES]
    if kind == "float16":
        want = HALF
    elif kind == "float32":
        want = SINGLE
    else:
        want = max(present, key=lambda d: d.itemsize) if present else None
    out = []
    for v, t in zip(values, tensors):
        if t is not None and t.dtype in (HALF, SINGLE) and want is not None and t.dtype != want:
            out.append(t.to(want))
        else:
            out.append(v if t is None else t)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# GradScaler
# ---------------------------------------------------------------------------------------------

READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"
STATE_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def _real(value, name, check, expected):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not check(float(value)):
        raise ValueError(f"GradScaler: {name} must be {expected}, got {value!r}")
    return float(value)


def _int(value, name, low, expected):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"GradScaler: {name} must be {expected}, got {value!r}")
    return int(value)


def _check_growth_factor(v):
    return _real(v, "growth_factor", lambda f: f > 1.0, "a finite number > 1")


def _check_backoff_factor(v):
    return _real(v, "backoff_factor", lambda f: 0.0 < f < 1.0, "a number in (0, 1)")


def _check_growth_interval(v):
    return _int(v, "growth_interval", 1, "an int >= 1")


def _float32(value):
    """``value`` rounded to float32 (inf beyond its range, 0 below it, without a warning)."""
    with np.errstate(over="ignore", under="ignore"):
        return np.float32(value)


def _check_scale(v, name="scale"):
    value = _real(v, name, lambda f: f > 0.0, "a finite number > 0")
    value32 = _float32(value)
    if not np.isfinite(value32) or value32 == 0:
        raise ValueError(f"GradScaler: {name} must be a positive float32 number (the scale is kept in float32), "
                         f"got {v!r}")
    return value32


class GradScaler:
    """Dynamic loss scaling, PyTorch's ``torch.amp.GradScaler``: ``scale(loss)`` before backward,
    ``step(optimizer)`` unscales the gradients and skips the step when one is inf or NaN,
    ``update()`` adapts the scale (the module docstring has the rules).

    Args:
        init_scale: the first scale S (default 2**16).
        growth_factor: S is multiplied by it after ``growth_interval`` finite steps in a row (> 1,
            default 2).
        backoff_factor: S is multiplied by it after a step with inf/NaN gradients (in (0, 1),
            default 0.5).
        growth_interval: finite steps in a row before S grows (default 2000).
        enabled: False makes every method a pass-through (``scale`` returns its input, ``step``
            runs ``optimizer.step()``), so one training loop serves both.

    Per iteration: ``scale(loss).backward()``, optionally ``unscale_(optimizer)`` (to clip or
    inspect the true gradients), ``step(optimizer)`` for each optimizer, then ``update()``.
    float16 gradients are refused, as PyTorch does: keep the parameters float32 under autocast.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if not isinstance(enabled, bool):
            raise TypeError(f"GradScaler: enabled must be True or False, got {enabled!r}")
        self._enabled = enabled
        self._scale = _check_scale(init_scale, "init_scale")
        self._growth_factor = _check_growth_factor(growth_factor)
        self._backoff_factor = _check_backoff_factor(backoff_factor)
        self._growth_interval = _check_growth_interval(growth_interval)
        self._growth_tracker = 0
        self._scale_arrays = {}      # device -> (1,) float32 array holding S, which ``scale`` multiplies by
        self._per_optimizer = {}     # id(optimizer) -> {"stage", "found_inf": {device: (1,) float32}, "found"}

    def is_enabled(self):
        return self._enabled

    def get_scale(self):
        """S as a Python float (1.0 when disabled)."""
        return float(self._scale) if self._enabled else 1.0

    def get_growth_factor(self):
        return self._growth_factor

    def set_growth_factor(self, new_factor):
        self._growth_factor = _check_growth_factor(new_factor)

    def get_backoff_factor(self):
        return self._backoff_factor

    def set_backoff_factor(self, new_factor):
        self._backoff_factor = _check_backoff_factor(new_factor)

    def get_growth_interval(self):
        return self._growth_interval

    def set_growth_interval(self, new_interval):
        self._growth_interval = _check_growth_interval(new_interval)

    # ---- scaling the loss

    def _scale_array(self, device):
        if device not in self._scale_arrays:
            if device == "cuda" and runtime.capturing():
                raise RuntimeError("GradScaler.scale: the first scale() on a device must run before a CUDA graph "
                                   "capture (it uploads the scale); run one step eagerly first")
            self._scale_arrays[device] = backend.to_device(np.array([self._scale], np.float32), device)
        return self._scale_arrays[device]

    def _scaled(self, t):
        from convkern.autograd import Tensor, cast_array
        if t.dtype not in backend.GRAD_DTYPES:
            raise TypeError(f"GradScaler.scale: outputs must be float tensors, got one of dtype {t.dtype}")
        if t.dtype == HALF:  # S = 2**16 overflows float16: scale a float16 loss in float32, as torch does a 0-d one
            t = t.float()
        factor = self._scale_array(t.device)
        if t.dtype != SINGLE:
            factor = cast_array(factor, t.dtype)
        full = backend.empty(t.shape, t.dtype, t.device)
        if full.size:
            elementwise.broadcast_scalar(factor, backend.flat(full))
        return t * Tensor(full)

    def scale(self, outputs):
        """``outputs`` times S: a Tensor, or a list/tuple of Tensors (the same structure back).
        Differentiable (backward sends S times the gradient). A float16 output is scaled in
        float32 (S = 2**16 is not a float16 number). Disabled: ``outputs`` unchanged."""
        if not self._enabled:
            return outputs
        from convkern.autograd import Tensor
        if isinstance(outputs, Tensor):
            return self._scaled(outputs)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"GradScaler.scale: outputs must be a Tensor or a list/tuple of Tensors, "
                        f"got {type(outputs).__name__}")

    # ---- unscaling and stepping

    def _state(self, optimizer):
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise TypeError(f"GradScaler: optimizer must be a convkern.optim optimizer, got {type(optimizer).__name__}")
        return self._per_optimizer.setdefault(id(optimizer), {"stage": READY, "found_inf": {}, "found": None})

    def unscale_(self, optimizer):
        """Divide every gradient of ``optimizer``'s parameters by S, in place, and record (on the
        device) whether any was inf or NaN. At most once per optimizer between ``update()`` calls,
        and before ``step``. float16 gradients raise ValueError (as PyTorch)."""
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == UNSCALED:
            raise RuntimeError("GradScaler.unscale_() has already been called on this optimizer since the last "
                               "update()")
        if state["stage"] == STEPPED:
            raise RuntimeError("GradScaler.unscale_() is being called after step(); call it before step()")
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        for g in grads:
            if g.dtype not in (SINGLE, DOUBLE):
                raise ValueError(f"GradScaler.unscale_: attempting to unscale {g.dtype} gradients (of a parameter of "
                                 f"shape {g.shape}); keep the parameters float32 and let autocast run the ops in "
                                 "float16, as PyTorch requires")
        if self._scale == 0:
            raise RuntimeError("GradScaler.unscale_: the scale has shrunk to 0 after steps that all had inf/NaN "
                               "gradients; the model's gradients are not finite at any scale")
        inv_scale = float(_float32(1.0 / float(self._scale)))   # torch: scale.double().reciprocal().float()
        found = state["found_inf"]
        for g in grads:
            if g.device not in found:
                found[g.device] = backend.zeros((1,), SINGLE, g.device)
            kernels.unscale_check(backend.flat(g.data), inv_scale, found[g.device])
        state["stage"] = UNSCALED

    def _found_inf(self, state):
        """Whether the recorded checks of one optimizer found inf/NaN (reads the flags once)."""
        if state["found"] is None:
            state["found"] = any(float(backend.to_numpy(f)[0]) != 0.0 for f in state["found_inf"].values())
        return state["found"]

    def step(self, optimizer, *args, **kwargs):
        """``unscale_(optimizer)`` unless done already this iteration, then ``optimizer.step(*args,
        **kwargs)`` only if every gradient was finite; returns its result (None when skipped).
        Disabled: just ``optimizer.step(*args, **kwargs)``."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("GradScaler.step: a closure is not supported when the scaler is enabled")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("GradScaler.step() has already been called on this optimizer since the last update()")
        if state["stage"] == READY:
            self.unscale_(optimizer)
        result = None if self._found_inf(state) else optimizer.step(*args, **kwargs)
        state["stage"] = STEPPED
        return result

    def update(self, new_scale=None):
        """Adapt S after the iteration's ``step`` calls: any inf/NaN found -> ``S *= backoff_factor``
        and the count of finite steps restarts; else the count grows, and at ``growth_interval``
        ``S *= growth_factor`` (kept only if finite in float32) and it restarts. ``new_scale`` (a
        positive number) sets S instead. Either way the iteration's records are cleared."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = _check_scale(new_scale, "new_scale")
        else:
            states = [s for s in self._per_optimizer.values() if s["stage"] != READY]
            if not states:
                raise RuntimeError("GradScaler.update(): no inf checks were recorded since the last update(); "
                                   "call step(optimizer) (or unscale_(optimizer)) first")
            if any([self._found_inf(s) for s in states]):
                self._scale = _float32(float(self._scale) * self._backoff_factor)
                self._growth_tracker = 0
            elif self._growth_tracker + 1 == self._growth_interval:
                grown = _float32(float(self._scale) * self._growth_factor)
                if np.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
        self._publish()
        self._per_optimizer = {}

    def _publish(self):
        """Write S into the device arrays that ``scale`` multiplies by (queued on the stream)."""
        for device, array in self._scale_arrays.items():
            if device == "cuda":
                runtime.upload(np.array([self._scale], np.float32), out=array)
            else:
                array[0] = self._scale

    # ---- checkpoints

    def state_dict(self):
        """``{"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}``
        (PyTorch's keys); ``{}`` when disabled."""
        if not self._enabled:
            return {}
        return {"scale": float(self._scale), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``. Every entry is checked first (exactly PyTorch's five keys,
        each in range, the tracker below the interval); a bad one raises ValueError naming it and
        changes nothing. An empty dict (saved by a disabled scaler) raises RuntimeError. Disabled:
        does nothing."""
        if not self._enabled:
            return
        if not isinstance(state_dict, dict):
            raise TypeError(f"GradScaler.load_state_dict: expected a dict from state_dict(), got "
                            f"{type(state_dict).__name__}")
        if not state_dict:
            raise RuntimeError("GradScaler.load_state_dict: the state dict is empty, possibly because it was saved "
                               "from a disabled GradScaler")
        missing = [k for k in STATE_KEYS if k not in state_dict]
        unknown = sorted(set(state_dict) - set(STATE_KEYS), key=str)
        if missing or unknown:
            raise ValueError(f"GradScaler.load_state_dict: expected the keys {list(STATE_KEYS)}; missing {missing}, "
                             f"unknown {unknown}")
        scale = _check_scale(state_dict["scale"])
        growth_factor = _check_growth_factor(state_dict["growth_factor"])
        backoff_factor = _check_backoff_factor(state_dict["backoff_factor"])
        growth_interval = _check_growth_interval(state_dict["growth_interval"])
        tracker = _int(state_dict["_growth_tracker"], "_growth_tracker", 0, "an int >= 0")
        if tracker >= growth_interval:
            raise ValueError(f"GradScaler: _growth_tracker must be below growth_interval ({growth_interval}), "
                             f"got {tracker}")
        self._growth_factor, self._backoff_factor, self._growth_interval = growth_factor, backoff_factor, \
            growth_interval
        self._growth_tracker = tracker
        self._scale = scale
        self._publish()
