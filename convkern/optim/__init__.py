"""Optimizers with PyTorch's update rules, step for step; the updates are fused kernels
(``kernels/optim.py``) that run where the parameters live.

    opt = convkern.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    opt = convkern.optim.Adam([{"params": convs}, {"params": fcs, "weight_decay": 4e-3}], lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

With ``flat=True`` each parameter group is updated by one kernel call: the optimizer copies the
group's parameters into one flat buffer and makes each ``p.data`` a view of it (an array the caller
shared with a parameter is no longer that parameter's storage), backward writes each new gradient
into its slice of a flat gradient buffer (a ``p.grad`` kept across ``zero_grad()`` is overwritten
by the next backward), and the state lives in flat buffers too. A parameter given new data
(``load_state_dict``, ``p.data = ...``) is copied back in at the next ``step()``; a group whose
parameters differ in device or dtype, or only some of which have a gradient or a state, takes the
per-parameter path for that step.
"""
import abc
import numbers

import numpy as np

from convkern import backend
from convkern.autograd import Tensor
from convkern.kernels import elementwise
from convkern.kernels import optim as kernels
from convkern.optim import lr_scheduler  # noqa: F401

__all__ = ["Optimizer", "SGD", "Adam", "lr_scheduler"]


def _number(value, name, op, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise TypeError(f"{op}: {name} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and (value >= high if high_open else value > high)):
        upper = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"{op}: {name} must be >= {low}{upper}, got {value!r}")
    return float(value)


class Optimizer(abc.ABC):
    """Base class: ``param_groups`` (each a dict with "params" and its hyper-parameters), per-parameter
    ``state``, ``zero_grad()``, ``step()``, ``state_dict()``/``load_state_dict()``."""

    def __init__(self, params, defaults, flat=False):
        self.defaults = defaults
        self.state = {}
        self.param_groups = []
        if not isinstance(flat, bool):
            raise TypeError(f"{type(self).__name__}: flat must be True or False, got {flat!r}")
        self.flat = flat
        self._flat_groups = {}      # group index -> _FlatGroup
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or of dicts, "
                            "got a single Tensor (wrap it in a list)")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        op = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{op}: a parameter group must be a dict with a 'params' entry, got {group!r}")
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"{op}: unknown option(s) {sorted(unknown)} in a parameter group; "
                             f"expected {sorted(self.defaults)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{op}: params[{i}] must be a convkern Tensor, got {type(p).__name__}")
            if not p.requires_grad or not p.is_leaf:
                raise ValueError(f"{op}: params[{i}] must be a leaf Tensor with requires_grad=True")
            if id(p) in seen:
                raise ValueError(f"{op}: params[{i}] appears in more than one parameter group")
            seen.add(id(p))
        full = dict(self.defaults)
        full.update({k: v for k, v in group.items() if k != "params"})
        self._check_options(full)
        full["params"] = params
        self.param_groups.append(full)

    def _check_options(self, options):
        _number(options["lr"], "lr", type(self).__name__, low=0)

    def zero_grad(self):
        """Drop every parameter's gradient (``p.grad = None``, as PyTorch's default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        """One update of every parameter that has a gradient."""
        for j, group in enumerate(self.param_groups):
            if self.flat and self._step_flat(j, group):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.data
                if isinstance(p.data, np.ndarray) and not p.data.flags.writeable:
                    raise ValueError(f"{type(self).__name__}.step: a parameter of shape {p.shape} holds a read-only "
                                     "NumPy array, which the update cannot write; give it a writable copy "
                                     "(p.data = p.data.copy())")
                if p.grad.device != p.device or p.grad.dtype != p.dtype or tuple(g.shape) != p.shape:
                    raise RuntimeError(f"{type(self).__name__}.step: a gradient of shape {tuple(g.shape)} "
                                       f"({p.grad.dtype}, {p.grad.device}) does not match its parameter "
                                       f"{p.shape} ({p.dtype}, {p.device})")
                self._update(backend.flat(p.data), backend.flat(g), self.state.setdefault(id(p), {}), group, p)

    @abc.abstractmethod
    def _update(self, p, g, state, group, param):
        """Update the flat parameter ``p`` in place from its flat gradient ``g`` and ``state``."""

    @abc.abstractmethod
    def _update_flat(self, flat, states, group):
        """Update every parameter of ``flat`` (a _FlatGroup) with one kernel call; False when the
        states are not uniform (then each parameter is updated on its own)."""

    def _step_flat(self, j, group):
        """The whole group in one kernel call, when every parameter has a gradient and all share a
        device and dtype; False otherwise."""
        params = group["params"]
        if any(p.grad is None for p in params):
            return False
        flat = self._flat_groups.get(j)
        if flat is None or not flat.holds(params):
            if len({(p.device, p.dtype) for p in params}) != 1:
                return False
            flat = self._flat_groups[j] = _FlatGroup(params)
        flat.gather_grads(params, type(self).__name__)
        return self._update_flat(flat, [self.state.setdefault(id(p), {}) for p in params], group)

    def _flat_states(self, flat, states, keys):
        """The flat buffers of state ``keys`` and whether they are new (zero-filled), with each
        parameter's state entry made a view of its slice (existing values copied in); None when some
        parameters have these states and others not."""
        present = {key in s for s in states for key in keys}
        if len(present) != 1:
            return None
        buffers = []
        for key in keys:
            buffer, views = flat.state_buffer(key)
            if present == {True}:
                for s, p, view in zip(states, flat.params, views):
                    arr = self._state_array(s, key, p, 0.0)
                    if arr is not view:
                        _copy_into(arr, view)
            for s, view in zip(states, views):
                s[key] = view
            buffers.append(buffer)
        return buffers, present == {False}

    def _state_array(self, state, key, param, fill):
        """State ``key`` of ``param`` as a flat array on its device and dtype (created filled with
        ``fill``; moved and cast along when the parameter was, e.g. by ``model.to("cuda")``)."""
        arr = state.get(key)
        if arr is None:
            arr = backend.full((param.size,), fill, param.dtype, param.device)
        elif backend.device_of(arr) != param.device or arr.dtype != param.dtype:
            arr = backend.to_device(backend.to_numpy(arr).astype(param.dtype), param.device)
        state[key] = arr
        return arr

    def state_dict(self):
        """``{"state": {"i": {name: array or number}}, "param_groups": {"j": {option: value, "params": [i...]}}}``
        with parameters numbered in group order; arrays are host copies."""
        index = {}
        groups = {}
        for j, group in enumerate(self.param_groups):
            ids = []
            for p in group["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            entry = {k: v for k, v in group.items() if k != "params"}
            entry["params"] = np.array(ids, np.int64)
            groups[str(j)] = entry
        state = {}
        for pid, entries in self.state.items():
            if pid in index:
                state[str(index[pid])] = {k: (backend.to_numpy(v).copy() if hasattr(v, "shape") else v)
                                          for k, v in entries.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by ``state_dict`` into an optimizer built over
        parameters of the same shapes in the same order. The whole state is checked first (groups
        "0".."n-1" each with "params" and valid options, per-parameter state dicts of arrays of the
        parameter's size or numbers); a bad one raises ValueError naming the entry and changes nothing."""
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), dict) \
                or not isinstance(state_dict.get("state"), dict):
            raise ValueError(f"{op}: expected a dict with 'state' and 'param_groups' dicts (from state_dict())")
        groups = {str(k): v for k, v in state_dict["param_groups"].items()}
        expected = [str(j) for j in range(len(self.param_groups))]
        if sorted(groups) != sorted(expected):
            raise ValueError(f"{op}: the saved parameter groups are {sorted(groups)}, this optimizer has "
                             f"{len(expected)}: {expected}")
        params, options = [], []
        for j, group in enumerate(self.param_groups):
            saved = groups[str(j)]
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"{op}: parameter group {j} must be a dict with a 'params' entry, got {saved!r}")
            n_saved = int(np.size(saved["params"]))
            if n_saved != len(group["params"]):
                raise ValueError(f"{op}: parameter group {j} has {len(group['params'])} parameters, the saved "
                                 f"one {n_saved}")
            unknown = set(saved) - set(self.defaults) - {"params", "initial_lr"}
            if unknown:
                raise ValueError(f"{op}: parameter group {j} has unknown option(s) {sorted(unknown)}")
            restored = {k: (v.item() if np.ndim(v) == 0 and hasattr(v, "item") else v)
                        for k, v in saved.items() if k != "params"}
            if "betas" in restored and hasattr(restored["betas"], "tolist"):
                restored["betas"] = tuple(restored["betas"].tolist())
            full = dict(group, **restored)
            try:
                self._check_options(full)
                if "initial_lr" in full:
                    _number(full["initial_lr"], "initial_lr", type(self).__name__, low=0)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{op}: parameter group {j}: {e}") from None
            options.append({k: full[k] for k in restored})
            params.extend(group["params"])
        new_state = {key: self._restored_state(op, key, entries, params)
                     for key, entries in state_dict["state"].items()}
        for group, restored in zip(self.param_groups, options):
            group.update(restored)
        self.state = {id(params[int(key)]): entries for key, entries in new_state.items()}

    def _restored_state(self, op, key, entries, params):
        """Parameter ``key``'s saved state, checked and moved to the parameter's device and dtype."""
        if not str(key).isdigit() or int(key) >= len(params):
            raise ValueError(f"{op}: state for parameter {key!r}, but the optimizer has {len(params)} parameters")
        if not isinstance(entries, dict):
            raise ValueError(f"{op}: the state of parameter {key} must be a dict, got {type(entries).__name__}")
        p = params[int(key)]
        restored = {}
        for name, value in entries.items():
            if np.ndim(value) > 0:
                if not hasattr(value, "shape") or np.asarray(value).dtype.kind not in "fiu":
                    raise ValueError(f"{op}: state {name!r} of parameter {key} must be a numeric array, got {value!r}")
                if int(np.size(value)) != p.size:
                    raise ValueError(f"{op}: state {name!r} of parameter {key} has {np.size(value)} "
                                     f"elements, the parameter {p.size}")
                value = backend.to_device(np.array(np.asarray(value).reshape(-1), p.dtype, copy=True), p.device)
            else:
                value = value.item() if hasattr(value, "item") else value
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise ValueError(f"{op}: state {name!r} of parameter {key} must be a number or an array, "
                                     f"got {value!r}")
            restored[name] = value
        return restored


def _copy_into(src, dst):
    elementwise.scalar("mul", backend.flat(src), 1.0, backend.flat(dst))


class _FlatGroup:
    """One parameter group's parameters, gradients and state as slices of one flat buffer each.
    Building it copies the parameters in and points ``p.data`` at the slices; ``p._grad_home``
    tells backward where to write each new gradient, and ``gather_grads`` copies in any gradient
    that arrived some other way (set by hand, or from before the group was built)."""

    def __init__(self, params):
        self.params = list(params)
        self.device, self.dtype = params[0].device, params[0].dtype
        self.bounds = np.cumsum([0] + [p.size for p in params]).tolist()
        self.data = backend.empty((self.bounds[-1],), self.dtype, self.device)
        self.grad = backend.zeros((self.bounds[-1],), self.dtype, self.device)
        self.data_views = self._views(self.data, True)
        self.grad_views = self._views(self.grad, True)
        self.state = {}
        for p, view, home in zip(self.params, self.data_views, self.grad_views):
            _copy_into(p.data, view)
            p.data = view
            p._grad_home = home

    def _views(self, buffer, shaped):
        return [buffer[lo:hi].reshape(p.shape) if shaped else buffer[lo:hi]
                for p, lo, hi in zip(self.params, self.bounds[:-1], self.bounds[1:])]

    def holds(self, params):
        """Whether these parameters are still the ones laid out here; a parameter given new data of
        the same shape, dtype and device is copied back into its slice."""
        if len(params) != len(self.params):
            return False
        for p, mine, view, home in zip(params, self.params, self.data_views, self.grad_views):
            if p is not mine:
                return False
            if p.data is not view:
                if p.shape != tuple(view.shape) or p.dtype != self.dtype or p.device != self.device:
                    return False
                _copy_into(p.data, view)
                p.data = view
                p._grad_home = home
        return True

    def gather_grads(self, params, op):
        """Copy into the flat gradient every gradient that backward did not write there."""
        for p, home in zip(params, self.grad_views):
            g = p.grad
            if g.data is home:
                continue
            if g.device != p.device or g.dtype != p.dtype or g.shape != p.shape:
                raise RuntimeError(f"{op}.step: a gradient of shape {g.shape} ({g.dtype}, {g.device}) does "
                                   f"not match its parameter {p.shape} ({p.dtype}, {p.device})")
            _copy_into(g.data, home)
            p.grad = Tensor(home)

    def state_buffer(self, key):
        """State ``key``'s flat buffer (zero-filled when new) and its per-parameter 1-D slices."""
        if key not in self.state:
            buffer = backend.zeros((self.bounds[-1],), self.dtype, self.device)
            self.state[key] = buffer, self._views(buffer, False)
        return self.state[key]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay
    (PyTorch's rule: ``d = g + wd·p``; ``buf = d`` then ``buf = μ·buf + (1-τ)·d``; ``d = d + μ·buf``
    with Nesterov, else ``d = buf``; ``p -= lr·d``). ``flat=True``: one kernel call per parameter
    group, over flat buffers that hold the group's parameters, gradients and momenta (module docstring)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, flat=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov), flat)

    def _check_options(self, o):
        super()._check_options(o)
        for name in ("momentum", "dampening", "weight_decay"):
            _number(o[name], name, "SGD", low=0)
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")

    def _update(self, p, g, state, group, param):
        momentum = group["momentum"]
        first = "momentum_buffer" not in state
        buf = self._state_array(state, "momentum_buffer", param, 0.0) if momentum else g
        kernels.sgd_step(p, g, buf, group["lr"], momentum, group["dampening"], group["weight_decay"],
                         group["nesterov"], first)

    def _update_flat(self, flat, states, group):
        momentum = group["momentum"]
        buf, first = flat.grad, False
        if momentum:
            found = self._flat_states(flat, states, ["momentum_buffer"])
            if found is None:
                return False
            (buf,), first = found
        kernels.sgd_step(flat.data, flat.grad, buf, group["lr"], momentum, group["dampening"],
                         group["weight_decay"], group["nesterov"], first)
        return True


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and L2 weight decay added to the gradient, PyTorch's
    rule: ``m = β1·m + (1-β1)·d``, ``v = β2·v + (1-β2)·d²``,
    ``p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)``. ``flat=True`` as for SGD."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, flat=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), flat)

    def _check_options(self, o):
        super()._check_options(o)
        betas = o["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Adam: betas must be a pair of numbers, got {betas!r}")
        o["betas"] = tuple(_number(b, "betas", "Adam", low=0, high=1, high_open=True) for b in betas)
        _number(o["eps"], "eps", "Adam", low=0)
        _number(o["weight_decay"], "weight_decay", "Adam", low=0)

    def _update(self, p, g, state, group, param):
        m = self._state_array(state, "exp_avg", param, 0.0)
        v = self._state_array(state, "exp_avg_sq", param, 0.0)
        state["step"] = state.get("step", 0) + 1
        beta1, beta2 = group["betas"]
        kernels.adam_step(p, g, m, v, group["lr"], beta1, beta2, group["eps"], group["weight_decay"], state["step"])

    def _update_flat(self, flat, states, group):
        steps = {s.get("step", 0) for s in states}
        found = self._flat_states(flat, states, ["exp_avg", "exp_avg_sq"]) if len(steps) == 1 else None
        if found is None:
            return False
        (m, v), _ = found
        step = steps.pop() + 1
        for s in states:
            s["step"] = step
        beta1, beta2 = group["betas"]
        kernels.adam_step(flat.data, flat.grad, m, v, group["lr"], beta1, beta2, group["eps"],
                          group["weight_decay"], step)
        return True
