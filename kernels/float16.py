"""float16 storage with float32 arithmetic: the one mechanism every kernel that takes float16 uses.

A float16 tensor is stored as IEEE binary16 and every kernel reads it into float32, computes and
accumulates in float32, and rounds the result to float16 (nearest even) only when it stores it,
as PyTorch's CPU and CUDA kernels do.

- CPU (``numba.njit``): Numba's CPU target has no float16 type, so a launcher passes each float16
  array as its uint16 bits (``cpu_view``) and the kernel reads an element with ``widen(x[i])``
  (binary16 bits -> float32, LLVM's ``fpext``: one ``vcvtph2ps`` on x86) and stores with
  ``out[i] = narrow(v, out)`` (float32 -> binary16 bits, ``fptrunc``). For float32 and float64
  arrays ``widen`` is the identity and ``narrow`` a cast to the array's type, so one kernel body
  serves all three dtypes; ``zero(x)`` is the accumulator's 0 (float32 for float16 data).
- CUDA (``numba.cuda.jit``): numba-cuda has float16 arrays, so kernel factories built with
  ``per_dtype(..., half=True)`` get ``dt = float16`` and accumulate in ``accumulator(dt)``
  (float32 for float16, ``dt`` otherwise): ``acc(x[i])`` reads, ``out[i] = dt(v)`` stores.
  (numba-cuda's ``@overload`` needs a live device to compile, so the CUDA side chooses its
  types when the factory runs instead.)
"""
import numpy as np
from llvmlite import ir
from numba import float32, types
from numba.types import float16
from numba.extending import intrinsic, overload

HALF = np.dtype(np.float16)


def cpu_view(a):
    """The array a CPU kernel receives: a float16 array's uint16 bits, any other array itself."""
    return a.view(np.uint16) if a.dtype == HALF else a


def accumulator_dtype(dtype):
    """The NumPy dtype kernels compute in for data of ``dtype``: float32 for float16."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == HALF else dtype


def accumulator(dt):
    """The Numba type a CUDA kernel for element type ``dt`` computes in: float32 for float16."""
    return float32 if dt == float16 else dt


@intrinsic
def _bits_to_float32(typingctx, bits):
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _float32_to_bits(typingctx, value):
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def widen(v):
    """A stored element as the kernel computes with it: binary16 bits (uint16) -> float32; a float
    unchanged."""
    if isinstance(v, np.uint16):
        return np.float32(np.array(v, np.uint16).view(np.float16))
    return np.float32(v) if isinstance(v, np.float16) else v


def narrow(v, like):
    """``v`` as an element of array ``like``: float32 rounded to binary16 bits (nearest even) for
    a uint16 view of float16 data, otherwise ``v`` cast to ``like``'s dtype."""
    if like.dtype == np.uint16:
        return np.array(v, np.float16).view(np.uint16)[()]
    return like.dtype.type(v)


def zero(like):
    """The accumulator's zero for data in array ``like`` (float32 for float16 data)."""
    return np.float32(0) if like.dtype in (np.uint16, HALF) else like.dtype.type(0)


@overload(widen, inline="always")
def _widen(v):
    if v == types.uint16:
        return lambda v: _bits_to_float32(v)
    if isinstance(v, types.Float):
        return lambda v: v
    return None


@overload(narrow, inline="always")
def _narrow(v, like):
    if not isinstance(like, types.Array):
        return None
    if like.dtype == types.uint16:
        return lambda v, like: _float32_to_bits(np.float32(v))
    if isinstance(like.dtype, types.Float):
        cast = like.dtype
        return lambda v, like: cast(v)
    return None


@overload(zero, inline="always")
def _zero(like):
    if not isinstance(like, types.Array):
        return None
    if like.dtype == types.uint16:
        return lambda like: np.float32(0)
    if isinstance(like.dtype, types.Float):
        cast = like.dtype
        return lambda like: cast(0)
    return None
