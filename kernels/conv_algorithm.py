"""What a convolution algorithm is, for the registry (``conv_registry.py``), and the one check of
the arrays every conv launcher receives.

An algorithm is a name, one launcher per pass and two questions answered from the geometry
alone: ``supports(g, device, pass_, dtype=None) -> (ok, reason)`` (can it run this pass at all,
on data of ``dtype`` when given; the reason says why not) and ``preference(g, device, pass_) ->
int`` (the heuristic's rank for ``auto`` without timing: lower first, ties broken by registry
order). Each algorithm declares the dtypes it takes (``dtypes``: float32 and float64 unless it
says more; float16 is storage with float32 arithmetic, ``float16.py``). An algorithm that
computes some dtype in lower precision than the dtype itself (TF32 tensor-core math for float32)
says so in ``reduced_precision``; ``auto`` skips it for that dtype unless the user allowed it
(``convkern.allow_tf32``), and ``tolerance(dtype)`` is what its results are tested against. Launchers are
``launch(a, b, out, g)`` with the operands of ``ConvGeometry.operand_shapes(pass_)``; they
overwrite ``out`` and pick the CPU or CUDA kernel by the array type. ``forward_fused(x, w, y, g,
bias, act)`` runs the forward with the layer's bias and activation: an algorithm whose kernel
fuses them into its epilogue says so with ``fused_fwd``; any other runs its forward and then one
fused bias-activation pass (``activation.bias_activation``).
"""
import numpy as np

from .activation import bias_activation
from .cuda_util import is_device_array
from .shapes import PASSES

DEVICES = ("cpu", "cuda")
FLOAT_DTYPES = ("float32", "float64")
WITH_HALF = ("float16", "float32", "float64")
ROLES = {"fwd": ("input", "weight", "output"), "bwd_data": ("grad_output", "weight", "grad_input"),
         "bwd_filter": ("grad_output", "input", "grad_weight")}


def always(g, device, pass_):
    return True, ""


class ConvAlgorithm:
    """One registry entry. ``ranks``: the spatial ranks its kernels take (a rank-1 geometry
    reaches them as rank 2, see ``ConvGeometry.as_2d``); ``limits(g, device, pass_)`` adds the
    algorithm's own conditions as ``(ok, reason)``; ``preference`` defaults to 5 everywhere.
    ``dtypes``: the dtypes its launchers take, a sequence (each for every rank in ``ranks``) or
    ``{dtype: ranks}``; default float32 and float64. ``reduced_precision``: ``{dtype: (rtol,
    atol)}`` for the dtypes it computes in lower precision, with the tolerance of its results
    against a float64 reference. ``fused_fwd(x, w, y, g, bias, act)``: a forward launcher
    that adds the bias and applies the activation in its kernel's epilogue, when it has one."""

    def __init__(self, name, fwd, bwd_data, bwd_filter, ranks=(2,), limits=always, preference=None, summary="",
                 reduced_precision=None, dtypes=FLOAT_DTYPES, fused_fwd=None):
        self.name = name
        self.fused_fwd = fused_fwd
        self.launchers = {"fwd": fwd, "bwd_data": bwd_data, "bwd_filter": bwd_filter}
        self.ranks = tuple(ranks)
        by_dtype = dtypes if isinstance(dtypes, dict) else dict.fromkeys(dtypes, self.ranks)
        # narrowest first, so that messages list float16, float32, float64
        self.dtypes = {np.dtype(d).name: tuple(r)
                       for d, r in sorted(by_dtype.items(), key=lambda item: np.dtype(item[0]).itemsize)}
        self._limits = limits
        self._preference = preference or (lambda g, device, pass_: 5)
        self.summary = summary
        self.reduced_precision = {np.dtype(d).name: tuple(tol) for d, tol in (reduced_precision or {}).items()}

    def supports(self, g, device, pass_, dtype=None):
        """``(True, "")`` when this algorithm can run ``pass_`` of geometry ``g`` on ``device``
        (on arrays of ``dtype``, when given), else ``(False, reason)``."""
        if device not in DEVICES:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if pass_ not in PASSES:
            raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
        rank = g.as_2d().rank
        if rank not in self.ranks:
            return False, f"{self.name} runs {_dims(self.ranks)} convolutions only; this one is {g.rank}-D"
        if dtype is not None:
            name = dtype_name(dtype)
            if name not in self.dtypes:
                return False, f"{self.name} takes {' and '.join(self.dtypes)} arrays, not {name}"
            if rank not in self.dtypes[name]:
                return False, (f"{self.name} takes {name} for {_dims(self.dtypes[name])} convolutions only; "
                               f"this one is {g.rank}-D")
        return self._limits(g, device, pass_)

    def takes(self, dtype):
        """True when some rank of this algorithm takes arrays of ``dtype``."""
        return dtype_name(dtype) in self.dtypes

    def preference(self, g, device, pass_):
        return self._preference(g, device, pass_)

    def reduces_precision(self, dtype):
        """True when this algorithm computes ``dtype`` in lower precision than ``dtype`` (auto
        then needs the user's consent to pick it)."""
        return dtype_name(dtype) in self.reduced_precision

    def tolerance(self, dtype):
        """(rtol, atol) of its ``dtype`` results against a float64 reference when it computes
        ``dtype`` in reduced precision; None when it computes at the dtype's own precision."""
        return self.reduced_precision.get(dtype_name(dtype))

    def launcher(self, pass_):
        return self.launchers[pass_]

    def forward_fused(self, x, w, y, g, bias, act):
        """``y = act(conv(x, w) + bias)``: the forward, its bias (None or (K,)) and activation
        (None, "relu", "tanh" or "sigmoid"), fused into the kernel when ``fused_fwd`` is given."""
        if self.fused_fwd is not None:
            self.fused_fwd(x, w, y, g, bias, act)
        else:
            self.launchers["fwd"](x, w, y, g)
            bias_activation(act, y, bias)

    def __repr__(self):
        return f"ConvAlgorithm({self.name!r})"


_DTYPE_NAMES = {}


def dtype_name(dtype):
    """``np.dtype(dtype).name``, remembered: auto asks every algorithm on every call, and NumPy
    builds the name anew each time (a quarter of ``supports``' cost in a LeNet-5 step)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        name = _DTYPE_NAMES[dtype] = np.dtype(dtype).name
        return name
    except TypeError:                    # an unhashable dtype-like: not remembered
        return np.dtype(dtype).name


def _dims(ranks):
    return " and ".join(f"{r}-D" for r in ranks)


def by_rank(launch_2d, launch_3d):
    """One launcher for an algorithm whose 2-D and 3-D kernels live in separate files: it runs
    ``launch_3d`` on a rank-3 geometry and ``launch_2d`` otherwise."""
    def launch(a, b, out, g):
        return (launch_3d if g.rank == 3 else launch_2d)(a, b, out, g)
    launch.__name__ = launch_2d.__name__.replace("conv2d_", "conv_")
    launch.__doc__ = f"``{launch_2d.__name__}`` or, on a 3-D geometry, ``{launch_3d.__name__}``."
    return launch


def check_conv_arrays(name, g, pass_, a, b, out, dtypes=FLOAT_DTYPES):
    """Raise TypeError/ValueError unless ``a, b, out`` are the C-contiguous operands of
    ``pass_`` of geometry ``g``: one dtype of ``dtypes`` (by default float32 or float64), all
    NumPy arrays or all CUDA device arrays, shapes ``g.operand_shapes(pass_)``. ``name``
    prefixes the message."""
    arrays = (a, b, out)
    roles = ROLES[pass_]
    got = [np.dtype(x.dtype) for x in arrays]
    if len(set(got)) > 1 or got[0].name not in dtypes:
        raise TypeError(f"{name} {pass_}: arrays must all be {' or all '.join(dtypes)}, got "
                        + ", ".join(f"{r} {d}" for r, d in zip(roles, got)))
    on_device = [is_device_array(x) for x in arrays]
    if len(set(on_device)) > 1:
        raise TypeError(f"{name} {pass_}: arrays must be all NumPy arrays or all CUDA device arrays, got "
                        + ", ".join(f"{r} on {'cuda' if d else 'cpu'}" for r, d in zip(roles, on_device)))
    want = g.operand_shapes(pass_)
    got = tuple(tuple(x.shape) for x in arrays)
    if got != want:
        raise ValueError(f"{name} {pass_}: expected {'/'.join(roles)} shapes {want}, got {got}")
    for role, x, dev in zip(roles, arrays, on_device):
        if not (x.is_c_contiguous() if dev else x.flags.c_contiguous):
            raise ValueError(f"{name} {pass_}: {role} must be C-contiguous")
