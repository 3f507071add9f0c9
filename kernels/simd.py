"""Explicit CPU vectors for the register-blocked GEMM micro-kernel every CPU implicit GEMM uses.

LLVM's loop vectoriser, left alone, writes dot products with a horizontal sum at the end and, on
most AVX-512 parts, picks 256-bit vectors ("prefer-256-bit" tuning). A GEMM wants the opposite:
a block of accumulators that never leaves the registers, each updated by a broadcast of one
operand times a full-width vector of the other (an outer product per reduction step). Numba has
no vector type, so this module gives it one: ``Vec`` lowers to LLVM's ``<lanes x float>`` /
``<lanes x double>`` and the intrinsics below to plain vector loads, stores, broadcasts and
``llvm.fma``. The register allocator then keeps the whole tile in vector registers.

The micro-kernel is ``MR`` rows by ``NR = 3 * lanes`` columns (``tile_fma``): per reduction
step 3 vector loads of B, ``MR`` broadcasts of A and ``3 * MR`` FMAs. With 32 vector registers
(AVX-512) ``MR = 8`` (24 accumulators, 3 B vectors, 1 broadcast); with 16 (AVX2, SSE) ``MR = 4``.
Measured on a 2-core AVX-512 Xeon (``python bench/micro_kernel.py``): 403-408 GF/s float32 and
194 GF/s float64 in the L1/L2-resident micro-kernel loop, where NumPy's OpenBLAS GEMM 2048^2 ran
at 405-415 and 193 in the same runs: BLAS speed, in a loop the convolutions can feed directly.

``gather_fma`` is the same outer product turned round for products with few output channels:
``PR`` rows broadcast straight from an unpacked source at ``base[i] + idx[l]`` (pixels or taps of
a convolution), ``NB = 2 * lanes`` columns of a packed panel; ``gather_fma1`` the same with
``NB = lanes``, for products of at most one vector of channels.

Packed operands (``ap``, ``bp``, flat arrays): an A micro-panel is ``kc`` steps of ``MR``
consecutive values, a B micro-panel ``kc`` steps of ``NR`` consecutive values; C is a flat
row-major tile with row stride ``ldc``.
"""
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .cpu_util import cpu_kernel


def _host_vector_bytes():
    """64 where the CPU (or NUMBA_CPU_FEATURES) has AVX-512F, 32 with AVX, else 16."""
    from numba.core import config
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if "avx512f" in enabled:
        return 64
    return 32 if "avx" in enabled else 16


VECTOR_BYTES = _host_vector_bytes()
MR = 8 if VECTOR_BYTES == 64 else 4      # rows of the register tile: 3*MR accumulators + 3 + 1 registers
NV = 3                                   # vectors per row of the register tile


def lanes(dtype):
    """Elements of ``dtype`` per vector register."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def panel_width(dtype):
    """NR: columns of the register tile (3 vectors) for ``dtype``."""
    return NV * lanes(dtype)


class Vec(types.Type):
    """A CPU vector register of ``count`` elements of ``dtype`` (float32 or float64)."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name=f"vec<{dtype}x{count}>")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = ir.FloatType() if fe_type.dtype == types.float32 else ir.DoubleType()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


def _vec_of(arr):
    if not isinstance(arr, types.Array) or arr.dtype not in (types.float32, types.float64):
        return None
    return Vec(arr.dtype, VECTOR_BYTES // (4 if arr.dtype == types.float32 else 8))


def _element_pointer(context, builder, arr_type, arr, idx):
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.gep(data, [idx])


def _vector_pointer(context, builder, vec, arr_type, arr, idx):
    pointer = _element_pointer(context, builder, arr_type, arr, idx)
    return builder.bitcast(pointer, context.get_value_type(vec).as_pointer())


@intrinsic
def vlanes(typingctx, arr):
    """Elements per vector register for ``arr``'s dtype, a compile-time constant."""
    vec = _vec_of(arr)
    if vec is None:
        return None

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, vec.count)
    return types.intp(arr), codegen


@intrinsic
def vload(typingctx, arr, idx):
    """The vector ``arr[idx : idx + lanes]`` of a C-contiguous 1-D array (no bounds check)."""
    vec = _vec_of(arr)
    if vec is None or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vector_pointer(context, builder, vec, sig.args[0], args[0], args[1]),
                            align=vec.dtype.bitwidth // 8)
    return vec(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """``arr[idx : idx + lanes] = v`` (no bounds check)."""
    vec = _vec_of(arr)
    if vec is None or v != vec or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vector_pointer(context, builder, vec, sig.args[0], args[0], args[1]),
                      align=vec.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(arr, idx, v), codegen


@intrinsic
def vbroadcast(typingctx, arr, idx):
    """A vector whose every element is ``arr[idx]``."""
    vec = _vec_of(arr)
    if vec is None or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        scalar = builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1]))
        vt = context.get_value_type(vec)
        one = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), vec.count),
                                                            [0] * vec.count))
    return vec(arr, idx), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` element by element, one rounding (``llvm.fma``)."""
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vt = context.get_value_type(a)
        suffix = f"v{a.count}f{a.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.{suffix}")
        return builder.call(fn, args)
    return a(a, b, c), codegen


@njit(cache=True)
def _tile_fma_8x3(kc, ap, a0, bp, b0, c, c0, ldc):
    """c[i*ldc + c0 + j] += sum_l ap[a0 + l*8 + i] * bp[b0 + l*NR + j] for i < 8, j < NR."""
    w = vlanes(c)
    nr = 3 * w
    r0, r1, r2, r3 = c0, c0 + ldc, c0 + 2 * ldc, c0 + 3 * ldc
    r4, r5, r6, r7 = c0 + 4 * ldc, c0 + 5 * ldc, c0 + 6 * ldc, c0 + 7 * ldc
    c00, c01, c02 = vload(c, r0), vload(c, r0 + w), vload(c, r0 + 2 * w)
    c10, c11, c12 = vload(c, r1), vload(c, r1 + w), vload(c, r1 + 2 * w)
    c20, c21, c22 = vload(c, r2), vload(c, r2 + w), vload(c, r2 + 2 * w)
    c30, c31, c32 = vload(c, r3), vload(c, r3 + w), vload(c, r3 + 2 * w)
    c40, c41, c42 = vload(c, r4), vload(c, r4 + w), vload(c, r4 + 2 * w)
    c50, c51, c52 = vload(c, r5), vload(c, r5 + w), vload(c, r5 + 2 * w)
    c60, c61, c62 = vload(c, r6), vload(c, r6 + w), vload(c, r6 + 2 * w)
    c70, c71, c72 = vload(c, r7), vload(c, r7 + w), vload(c, r7 + 2 * w)
    for l in range(kc):
        bl = b0 + l * nr
        al = a0 + l * 8
        b_0, b_1, b_2 = vload(bp, bl), vload(bp, bl + w), vload(bp, bl + 2 * w)
        a = vbroadcast(ap, al)
        c00, c01, c02 = vfma(a, b_0, c00), vfma(a, b_1, c01), vfma(a, b_2, c02)
        a = vbroadcast(ap, al + 1)
        c10, c11, c12 = vfma(a, b_0, c10), vfma(a, b_1, c11), vfma(a, b_2, c12)
        a = vbroadcast(ap, al + 2)
        c20, c21, c22 = vfma(a, b_0, c20), vfma(a, b_1, c21), vfma(a, b_2, c22)
        a = vbroadcast(ap, al + 3)
        c30, c31, c32 = vfma(a, b_0, c30), vfma(a, b_1, c31), vfma(a, b_2, c32)
        a = vbroadcast(ap, al + 4)
        c40, c41, c42 = vfma(a, b_0, c40), vfma(a, b_1, c41), vfma(a, b_2, c42)
        a = vbroadcast(ap, al + 5)
        c50, c51, c52 = vfma(a, b_0, c50), vfma(a, b_1, c51), vfma(a, b_2, c52)
        a = vbroadcast(ap, al + 6)
        c60, c61, c62 = vfma(a, b_0, c60), vfma(a, b_1, c61), vfma(a, b_2, c62)
        a = vbroadcast(ap, al + 7)
        c70, c71, c72 = vfma(a, b_0, c70), vfma(a, b_1, c71), vfma(a, b_2, c72)
    vstore(c, r0, c00), vstore(c, r0 + w, c01), vstore(c, r0 + 2 * w, c02)
    vstore(c, r1, c10), vstore(c, r1 + w, c11), vstore(c, r1 + 2 * w, c12)
    vstore(c, r2, c20), vstore(c, r2 + w, c21), vstore(c, r2 + 2 * w, c22)
    vstore(c, r3, c30), vstore(c, r3 + w, c31), vstore(c, r3 + 2 * w, c32)
    vstore(c, r4, c40), vstore(c, r4 + w, c41), vstore(c, r4 + 2 * w, c42)
    vstore(c, r5, c50), vstore(c, r5 + w, c51), vstore(c, r5 + 2 * w, c52)
    vstore(c, r6, c60), vstore(c, r6 + w, c61), vstore(c, r6 + 2 * w, c62)
    vstore(c, r7, c70), vstore(c, r7 + w, c71), vstore(c, r7 + 2 * w, c72)


@njit(cache=True)
def _tile_fma_4x3(kc, ap, a0, bp, b0, c, c0, ldc):
    """c[i*ldc + c0 + j] += sum_l ap[a0 + l*4 + i] * bp[b0 + l*NR + j] for i < 4, j < NR."""
    w = vlanes(c)
    nr = 3 * w
    r0, r1, r2, r3 = c0, c0 + ldc, c0 + 2 * ldc, c0 + 3 * ldc
    c00, c01, c02 = vload(c, r0), vload(c, r0 + w), vload(c, r0 + 2 * w)
    c10, c11, c12 = vload(c, r1), vload(c, r1 + w), vload(c, r1 + 2 * w)
    c20, c21, c22 = vload(c, r2), vload(c, r2 + w), vload(c, r2 + 2 * w)
    c30, c31, c32 = vload(c, r3), vload(c, r3 + w), vload(c, r3 + 2 * w)
    for l in range(kc):
        bl = b0 + l * nr
        al = a0 + l * 4
        b_0, b_1, b_2 = vload(bp, bl), vload(bp, bl + w), vload(bp, bl + 2 * w)
        a = vbroadcast(ap, al)
        c00, c01, c02 = vfma(a, b_0, c00), vfma(a, b_1, c01), vfma(a, b_2, c02)
        a = vbroadcast(ap, al + 1)
        c10, c11, c12 = vfma(a, b_0, c10), vfma(a, b_1, c11), vfma(a, b_2, c12)
        a = vbroadcast(ap, al + 2)
        c20, c21, c22 = vfma(a, b_0, c20), vfma(a, b_1, c21), vfma(a, b_2, c22)
        a = vbroadcast(ap, al + 3)
        c30, c31, c32 = vfma(a, b_0, c30), vfma(a, b_1, c31), vfma(a, b_2, c32)
    vstore(c, r0, c00), vstore(c, r0 + w, c01), vstore(c, r0 + 2 * w, c02)
    vstore(c, r1, c10), vstore(c, r1 + w, c11), vstore(c, r1 + 2 * w, c12)
    vstore(c, r2, c20), vstore(c, r2 + w, c21), vstore(c, r2 + 2 * w, c22)
    vstore(c, r3, c30), vstore(c, r3 + w, c31), vstore(c, r3 + 2 * w, c32)


tile_fma = _tile_fma_8x3 if MR == 8 else _tile_fma_4x3


@njit(cache=True)
def _gather_fma_8x2(kc, src, base, i0, idx, l0, bp, b0, c, c0, ldc):
    """c[i*ldc + c0 + j] += sum_l src[base[i0 + i] + idx[l0 + l]] * bp[b0 + l*NB + j] for i < 8,
    j < NB: A's rows broadcast straight from ``src`` (nothing packed), B a packed NB-column panel."""
    w = vlanes(c)
    nb = 2 * w
    p0, r0 = uint64(base[i0 + 0]), c0 + 0 * ldc
    p1, r1 = uint64(base[i0 + 1]), c0 + 1 * ldc
    p2, r2 = uint64(base[i0 + 2]), c0 + 2 * ldc
    p3, r3 = uint64(base[i0 + 3]), c0 + 3 * ldc
    p4, r4 = uint64(base[i0 + 4]), c0 + 4 * ldc
    p5, r5 = uint64(base[i0 + 5]), c0 + 5 * ldc
    p6, r6 = uint64(base[i0 + 6]), c0 + 6 * ldc
    p7, r7 = uint64(base[i0 + 7]), c0 + 7 * ldc
    c00, c01 = vload(c, r0), vload(c, r0 + w)
    c10, c11 = vload(c, r1), vload(c, r1 + w)
    c20, c21 = vload(c, r2), vload(c, r2 + w)
    c30, c31 = vload(c, r3), vload(c, r3 + w)
    c40, c41 = vload(c, r4), vload(c, r4 + w)
    c50, c51 = vload(c, r5), vload(c, r5 + w)
    c60, c61 = vload(c, r6), vload(c, r6 + w)
    c70, c71 = vload(c, r7), vload(c, r7 + w)
    for l in range(kc):
        o = uint64(idx[l0 + l])
        bl = b0 + l * nb
        b_0, b_1 = vload(bp, bl), vload(bp, bl + w)
        a = vbroadcast(src, p0 + o)
        c00, c01 = vfma(a, b_0, c00), vfma(a, b_1, c01)
        a = vbroadcast(src, p1 + o)
        c10, c11 = vfma(a, b_0, c10), vfma(a, b_1, c11)
        a = vbroadcast(src, p2 + o)
        c20, c21 = vfma(a, b_0, c20), vfma(a, b_1, c21)
        a = vbroadcast(src, p3 + o)
        c30, c31 = vfma(a, b_0, c30), vfma(a, b_1, c31)
        a = vbroadcast(src, p4 + o)
        c40, c41 = vfma(a, b_0, c40), vfma(a, b_1, c41)
        a = vbroadcast(src, p5 + o)
        c50, c51 = vfma(a, b_0, c50), vfma(a, b_1, c51)
        a = vbroadcast(src, p6 + o)
        c60, c61 = vfma(a, b_0, c60), vfma(a, b_1, c61)
        a = vbroadcast(src, p7 + o)
        c70, c71 = vfma(a, b_0, c70), vfma(a, b_1, c71)
    vstore(c, r0, c00), vstore(c, r0 + w, c01)
    vstore(c, r1, c10), vstore(c, r1 + w, c11)
    vstore(c, r2, c20), vstore(c, r2 + w, c21)
    vstore(c, r3, c30), vstore(c, r3 + w, c31)
    vstore(c, r4, c40), vstore(c, r4 + w, c41)
    vstore(c, r5, c50), vstore(c, r5 + w, c51)
    vstore(c, r6, c60), vstore(c, r6 + w, c61)
    vstore(c, r7, c70), vstore(c, r7 + w, c71)


@njit(cache=True)
def _gather_fma_4x2(kc, src, base, i0, idx, l0, bp, b0, c, c0, ldc):
    """c[i*ldc + c0 + j] += sum_l src[base[i0 + i] + idx[l0 + l]] * bp[b0 + l*NB + j] for i < 4,
    j < NB."""
    w = vlanes(c)
    nb = 2 * w
    p0, r0 = uint64(base[i0 + 0]), c0 + 0 * ldc
    p1, r1 = uint64(base[i0 + 1]), c0 + 1 * ldc
    p2, r2 = uint64(base[i0 + 2]), c0 + 2 * ldc
    p3, r3 = uint64(base[i0 + 3]), c0 + 3 * ldc
    c00, c01 = vload(c, r0), vload(c, r0 + w)
    c10, c11 = vload(c, r1), vload(c, r1 + w)
    c20, c21 = vload(c, r2), vload(c, r2 + w)
    c30, c31 = vload(c, r3), vload(c, r3 + w)
    for l in range(kc):
        o = uint64(idx[l0 + l])
        bl = b0 + l * nb
        b_0, b_1 = vload(bp, bl), vload(bp, bl + w)
        a = vbroadcast(src, p0 + o)
        c00, c01 = vfma(a, b_0, c00), vfma(a, b_1, c01)
        a = vbroadcast(src, p1 + o)
        c10, c11 = vfma(a, b_0, c10), vfma(a, b_1, c11)
        a = vbroadcast(src, p2 + o)
        c20, c21 = vfma(a, b_0, c20), vfma(a, b_1, c21)
        a = vbroadcast(src, p3 + o)
        c30, c31 = vfma(a, b_0, c30), vfma(a, b_1, c31)
    vstore(c, r0, c00), vstore(c, r0 + w, c01)
    vstore(c, r1, c10), vstore(c, r1 + w, c11)
    vstore(c, r2, c20), vstore(c, r2 + w, c21)
    vstore(c, r3, c30), vstore(c, r3 + w, c31)


@njit(cache=True)
def _gather_fma_8x1(kc, src, base, i0, idx, l0, bp, b0, c, c0, ldc):
    """``_gather_fma_8x2`` with a one-vector panel (NB = lanes), for products of at most ``lanes``
    channels: 9 loads (8 of them broadcasts) per 8 FMAs, where two vectors would pad the channels."""
    w = vlanes(c)
    p0, r0 = uint64(base[i0 + 0]), c0 + 0 * ldc
    p1, r1 = uint64(base[i0 + 1]), c0 + 1 * ldc
    p2, r2 = uint64(base[i0 + 2]), c0 + 2 * ldc
    p3, r3 = uint64(base[i0 + 3]), c0 + 3 * ldc
    p4, r4 = uint64(base[i0 + 4]), c0 + 4 * ldc
    p5, r5 = uint64(base[i0 + 5]), c0 + 5 * ldc
    p6, r6 = uint64(base[i0 + 6]), c0 + 6 * ldc
    p7, r7 = uint64(base[i0 + 7]), c0 + 7 * ldc
    c0_, c1_, c2_, c3_ = vload(c, r0), vload(c, r1), vload(c, r2), vload(c, r3)
    c4_, c5_, c6_, c7_ = vload(c, r4), vload(c, r5), vload(c, r6), vload(c, r7)
    for l in range(kc):
        o = uint64(idx[l0 + l])
        b = vload(bp, b0 + l * w)
        c0_ = vfma(vbroadcast(src, p0 + o), b, c0_)
        c1_ = vfma(vbroadcast(src, p1 + o), b, c1_)
        c2_ = vfma(vbroadcast(src, p2 + o), b, c2_)
        c3_ = vfma(vbroadcast(src, p3 + o), b, c3_)
        c4_ = vfma(vbroadcast(src, p4 + o), b, c4_)
        c5_ = vfma(vbroadcast(src, p5 + o), b, c5_)
        c6_ = vfma(vbroadcast(src, p6 + o), b, c6_)
        c7_ = vfma(vbroadcast(src, p7 + o), b, c7_)
    vstore(c, r0, c0_), vstore(c, r1, c1_), vstore(c, r2, c2_), vstore(c, r3, c3_)
    vstore(c, r4, c4_), vstore(c, r5, c5_), vstore(c, r6, c6_), vstore(c, r7, c7_)


@njit(cache=True)
def _gather_fma_4x1(kc, src, base, i0, idx, l0, bp, b0, c, c0, ldc):
    """``_gather_fma_4x2`` with a one-vector panel (NB = lanes)."""
    w = vlanes(c)
    p0, r0 = uint64(base[i0 + 0]), c0 + 0 * ldc
    p1, r1 = uint64(base[i0 + 1]), c0 + 1 * ldc
    p2, r2 = uint64(base[i0 + 2]), c0 + 2 * ldc
    p3, r3 = uint64(base[i0 + 3]), c0 + 3 * ldc
    c0_, c1_, c2_, c3_ = vload(c, r0), vload(c, r1), vload(c, r2), vload(c, r3)
    for l in range(kc):
        o = uint64(idx[l0 + l])
        b = vload(bp, b0 + l * w)
        c0_ = vfma(vbroadcast(src, p0 + o), b, c0_)
        c1_ = vfma(vbroadcast(src, p1 + o), b, c1_)
        c2_ = vfma(vbroadcast(src, p2 + o), b, c2_)
        c3_ = vfma(vbroadcast(src, p3 + o), b, c3_)
    vstore(c, r0, c0_), vstore(c, r1, c1_), vstore(c, r2, c2_), vstore(c, r3, c3_)


# the gathered-rows micro-kernel: PR rows broadcast from the source x NB = 2 vectors of columns.
# LLVM hoists all PR broadcasts of a step above its FMAs, so 2*PR accumulators + 2 B vectors + PR
# broadcasts must fit: 26 of 32 registers on AVX-512, 14 of 16 on AVX2 (12 rows spilled and ran
# at 74 GF/s per core where 8 ran at 110, L1-resident, AMD EPYC znver4, 2026-12-03).
PR = 8 if VECTOR_BYTES == 64 else 4
gather_fma = _gather_fma_8x2 if PR == 8 else _gather_fma_4x2
gather_fma1 = _gather_fma_8x1 if PR == 8 else _gather_fma_4x1     # NB = 1 vector


def gather_panel_width(dtype):
    """NB: columns of the gathered-rows micro-kernel (2 vectors) for ``dtype``."""
    return 2 * lanes(dtype)


@njit(cache=True)
def panel_gemm(kc, ap, a_panel, a_step, bp, n_panels, ct):
    """ct[i, j] += sum_{l < kc} A[i, l] * B[l, j] for all rows of ``ct`` (a multiple of MR) and
    its first ``n_panels * NR`` columns.

    A's micro-panel of rows [m*MR, (m+1)*MR) starts at ``ap[a_panel + m*a_step]``; B's micro-panel
    of columns [j*NR, (j+1)*NR) at ``bp[j*kc*NR]`` (as ``pack`` functions write them). B's panels
    are the outer loop: one stays in L1 while all of A's rows stream past it from L2.
    """
    ldc = ct.shape[1]
    flat = ct.reshape(-1)
    nr = 3 * vlanes(flat)
    for jb in range(n_panels):
        for m in range(ct.shape[0] // MR):
            tile_fma(kc, ap, a_panel + m * a_step, bp, jb * kc * nr, flat, m * MR * ldc + jb * nr, ldc)


@njit(inline="always")
def _pack_rows_body(a, out):
    groups, rows, L = a.shape
    panels = out.shape[1]
    h = out.shape[3]
    for it in prange(groups * panels):
        g = it // panels
        m = it - g * panels
        for i in range(h):
            r = m * h + i
            if r < rows:
                src = a[g, r]
                for l in range(L):
                    out[g, m, l, i] = src[l]
            else:
                for l in range(L):
                    out[g, m, l, i] = 0


@njit(parallel=True, cache=True)
def _pack_rows_cpu(a, out):
    """out[g, m, l, i] = a[g, m*h + i, l] (h = out.shape[3]), zero past a's rows; one iteration
    per micro-panel."""
    _pack_rows_body(a, out)


@njit(cache=True)
def _pack_rows_serial_cpu(a, out):
    _pack_rows_body(a, out)


def pack_rows(a, height=MR):
    """A (groups, rows, L) as ``height``-row micro-panels, group after group: ``out[g, m, l, i] =
    a[g, m*height + i, l]``, rows zero-padded to a multiple of ``height``; flat, C-contiguous."""
    groups, rows, L = a.shape
    out = np.empty((groups, round_up(rows, height) // height, L, height), a.dtype)
    cpu_kernel(_pack_rows_cpu, _pack_rows_serial_cpu, out.size)(a, out)
    return out.reshape(-1)


def round_up(n, m):
    return -(-n // m) * m
