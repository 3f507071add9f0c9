"""Warp-level tensor-core and asynchronous-copy instructions for Numba CUDA kernels, each with an
exact model for Numba's CUDA simulator.

Numba has no tensor-core API; on a GPU each function below is an ``@intrinsic`` that emits one
PTX instruction as inline assembly (sm_80 and later):

- ``mma_tf32_m16n8k8(a, b, c) -> d``: ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``,
  ``D (16x8) = A (16x8) @ B (8x8) + C``; a, b, c, d are tuples of 4, 2, 4, 4 float32.
- ``mma_f16_m16n8k16(a, b, c) -> d``: ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32``,
  ``D (16x8) = A (16x16) @ B (16x8) + C``; a, b are tuples of 8 and 4 float16 (packed into
  .f16x2 registers, lower index in the low half), c, d of 4 float32.
- ``mma_f64_m8n8k4(a, b, c) -> d``: ``mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64``,
  ``D (8x8) = A (8x4) @ B (4x8) + C``; a, b are float64 scalars, c, d tuples of 2 float64.
- ``ldmatrix_x4(arr, idx) -> (r0, r1, r2, r3)``: ``ldmatrix.sync.aligned.m8n8.x4.shared.b16`` on
  a shared array of 32-bit elements: lane ``l`` passes the start ``arr[idx]`` of row ``l % 8`` of
  matrix ``l // 8`` (4 contiguous elements, 16-byte aligned); it receives element ``l % 4`` of
  row ``l // 4`` of each of the four 8x4 matrices.
- ``cp_async(dst, dst_idx, src, src_idx, valid)``: ``cp.async.ca.shared.global`` of one 4- or
  8-byte element ``src[src_idx]`` to the shared ``dst[dst_idx]``, zero-filled when ``valid`` is
  false (then nothing is read, but ``src_idx`` must still lie inside ``src``).
  ``cp_async_commit()`` closes the thread's current group (``cp.async.commit_group``);
  ``cp_async_wait(n)`` returns a function that waits until at most ``n`` of the thread's
  committed groups are in flight (``cp.async.wait_group n``; ``n`` is an immediate in PTX).
- ``round_tf32(x)``: float32 rounded to TF32 (10-bit mantissa), to nearest, ties to even, by
  integer arithmetic on the bits, so that the CPU kernels (``round_tf32_cpu``) round identically.
- ``pack_f16x2(lo, hi) -> word`` and ``unpack_f16x2(word) -> (lo, hi)``: two float16 as the bits
  of one float32 (``lo`` in the low half), the .f16x2 register that ``mma_f16_m16n8k16`` reads:
  float16 tiles live in shared arrays of 32-bit words, which ``cp_async`` (4 bytes) fills and
  ``ldmatrix_x4`` reads. Pure bit moves (no rounding); the compiler folds a pair unpacked from
  ``ldmatrix`` and packed again by the MMA into the register itself.

Fragment layouts (PTX ISA, "Matrix fragments for mma"): with ``g = lane >> 2`` and
``t = lane & 3``, register ``i`` of a lane holds the matrix element ``*_layout(lane, i)`` (row,
column) given by the functions below. The simulator runs one Python thread per CUDA thread; a
warp's 32 threads meet in a rendezvous, deposit their registers, the last to arrive assembles
the matrices and computes the result once, and each lane takes its own registers of it. A lane
that exits, or waits at ``syncthreads``, while its warp waits at a warp-wide instruction is
reported as an error instead of hanging. Asynchronous copies are queued per thread and land at
``cp_async_wait`` (their destination reads as NaN until then, as it is undefined on a GPU).

Numerics of the models: products are exact and summed in float64, then rounded once to
float32, for TF32 and FP16 (the PTX ISA leaves a tensor core's internal accumulation order
and rounding unspecified, so the GPU may differ in the last bits); TF32 operands lose their 13
low mantissa bits (the tensor core reads the upper 19 bits only). FP64 is IEEE: ``d = c``, then
``d = fma(a_k, b_k, d)`` for ``k = 0..3``, each correctly rounded.
"""
import functools
import math
import threading

import numpy as np
from numba import njit, prange, uint32

from .cuda_util import SIMULATOR

WARP = 32
POLL_SECONDS = 0.2       # how often a simulated lane waiting for its warp checks on the others
ABSENT_SECONDS = 10.0    # how long a lane may be missing before it counts as exited
STUCK_SECONDS = 2.0      # how long a lane may sit at syncthreads while its warp waits before that is an error
# alignment of shared arrays that ldmatrix reads (16-byte rows); the simulator takes no alignment
SMEM_ALIGN = None if SIMULATOR else 16


def tf32_a_layout(lane, i):
    """m16n8k8 .tf32 A (16x8, row-major): registers a0..a3."""
    g, t = lane >> 2, lane & 3
    return g + 8 * (i & 1), t + 4 * (i >> 1)


def tf32_b_layout(lane, i):
    """m16n8k8 .tf32 B (8x8, column-major): registers b0, b1."""
    g, t = lane >> 2, lane & 3
    return t + 4 * i, g


def acc_layout(lane, i):
    """m16n8k8 and m16n8k16 f32 C/D (16x8): registers c0..c3."""
    g, t = lane >> 2, lane & 3
    return g + 8 * (i >> 1), 2 * t + (i & 1)


def f16_a_layout(lane, i):
    """m16n8k16 .f16 A (16x16, row-major): elements a0..a7 (two per .f16x2 register)."""
    g, t = lane >> 2, lane & 3
    return g + 8 * ((i >> 1) & 1), 2 * t + (i & 1) + 8 * (i >> 2)


def f16_b_layout(lane, i):
    """m16n8k16 .f16 B (16x8, column-major): elements b0..b3."""
    g, t = lane >> 2, lane & 3
    return 2 * t + (i & 1) + 8 * (i >> 1), g


def f64_a_layout(lane, i=0):
    """m8n8k4 .f64 A (8x4, row-major): the one register a0."""
    return lane >> 2, lane & 3


def f64_b_layout(lane, i=0):
    """m8n8k4 .f64 B (4x8, column-major): the one register b0."""
    return lane & 3, lane >> 2


def f64_acc_layout(lane, i):
    """m8n8k4 .f64 C/D (8x8): registers c0, c1."""
    return lane >> 2, 2 * (lane & 3) + i


@njit(cache=True)
def tf32_bits(bits):
    """The bits of the float32 ``bits`` rounded to TF32: the 13 low mantissa bits cleared after
    adding half of their weight, minus one when the kept part is even (ties to even). Infinity
    and NaN are returned unchanged; a carry into the exponent gives the next binade or infinity."""
    if (bits & 0x7F800000) == 0x7F800000:
        return bits
    return uint32((bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000)


@njit(parallel=True, cache=True)
def round_tf32_cpu(src, dst):
    """dst[i] = src[i] rounded to TF32 (``tf32_bits``); src and dst are the uint32 views of
    float32 arrays of one length (``a.reshape(-1).view(np.uint32)``)."""
    for i in prange(src.shape[0]):
        dst[i] = tf32_bits(src[i])


# ---------------------------------------------------------------- simulator models

class _Warp:
    """The rendezvous of one simulated warp's threads (lanes)."""

    def __init__(self, manager, index, size):
        self.manager, self.index, self.size = manager, index, size
        self.cond = threading.Condition()
        self.values = [None] * WARP
        self.arrived = 0
        self.generation = 0
        self.op = None
        self.outcome = None
        self.threads = [None] * WARP      # each lane's thread, once it has arrived somewhere
        self.waited = 0.0                 # seconds the current generation has waited for absent lanes
        self.stuck = 0.0                  # ... and seen a lane blocked at syncthreads, without a break

    def exchange(self, op, lane, value, compute):
        """Deposit ``value``; once every lane has, ``compute(values by lane)`` runs once and each
        lane gets its result."""
        if self.size != WARP:
            raise RuntimeError(f"{op} needs a full warp of {WARP} threads; warp {self.index} of this block has "
                               f"{self.size}")
        with self.cond:
            if self.arrived == 0:
                self.op = op
            elif op != self.op:
                raise RuntimeError(f"lane {lane} of warp {self.index} executes {op} while its other lanes wait at "
                                   f"{self.op}: a warp-wide instruction must be executed by all lanes together")
            self.values[lane] = value
            self.threads[lane] = threading.current_thread()
            self.arrived += 1
            generation = self.generation
            if self.arrived == self.size:
                try:
                    self.outcome = (True, compute(self.values))
                except Exception as exc:   # every lane raises it, not just the last
                    self.outcome = (False, exc)
                self.values = [None] * WARP
                self.arrived = 0
                self.generation += 1
                self.waited = self.stuck = 0.0
                self.cond.notify_all()
            while self.generation == generation:
                if not self.cond.wait(POLL_SECONDS) and self.generation == generation:
                    self._check_progress(op)
            ok, result = self.outcome
            if not ok:
                raise result
            return result

    def _check_progress(self, op):
        """Called by a waiting lane every POLL_SECONDS: raise when the absent lanes cannot come."""
        me = threading.current_thread()
        if getattr(me, "abort", False):
            raise RuntimeError(f"{op}: the simulated kernel was aborted by an error in another thread")
        exited = [lane for lane, t in enumerate(self.threads) if t is not None and not t.is_alive()]
        failed = [t.exception[0] for t in self.threads if t is not None and getattr(t, "exception", None)]
        if failed:
            raise RuntimeError(f"{op}: a lane of warp {self.index} failed: {failed[0]}")
        lanes = [t for t in threading.enumerate()
                 if getattr(t, "_manager", None) is self.manager and t.thread_id // WARP == self.index]
        # a lane never seen and not running has exited, or (in a big block) is not started yet
        poll = POLL_SECONDS / max(1, self.arrived)     # every waiting lane polls
        self.waited += poll
        if exited or (len(lanes) < self.size and self.waited > ABSENT_SECONDS):
            raise RuntimeError(f"{op}: lane(s) of warp {self.index} exited without executing it; every lane "
                               f"must execute a .sync.aligned instruction")
        # the simulator releases a barrier's threads one by one: a lane still flagged as blocked
        # may be on its way here; only one that stays blocked has diverged
        stuck = [t.thread_id % WARP for t in lanes if t.syncthreads_blocked]
        self.stuck = self.stuck + poll if stuck else 0.0
        if self.stuck > STUCK_SECONDS:
            raise RuntimeError(f"{op}: lane(s) {stuck} of warp {self.index} wait at syncthreads while the others "
                               f"wait here: the warp diverged")


_WARPS_LOCK = threading.Lock()


def _lane():
    """(this simulated thread's warp, its lane), looked up once per thread."""
    me = threading.current_thread()
    found = me.__dict__.get("_convkern_lane")
    if found is None:
        manager = me._manager
        index = me.thread_id // WARP
        with _WARPS_LOCK:
            warps = manager.__dict__.setdefault("_convkern_warps", {})
            if index not in warps:
                threads = math.prod(manager._block_dim)
                warps[index] = _Warp(manager, index, min(WARP, threads - index * WARP))
        found = me.__dict__["_convkern_lane"] = (warps[index], me.thread_id % WARP)
    return found


@functools.lru_cache(maxsize=None)
def _coords(layout, count):
    """(rows, cols) index arrays (WARP, count) of a fragment layout."""
    rc = np.array([[layout(lane, i) for i in range(count)] for lane in range(WARP)])
    return rc[..., 0], rc[..., 1]


def _matrix(regs, layout, shape):
    """The matrix whose element ``layout(lane, i)`` is ``regs[lane][i]``, in float64."""
    regs = np.asarray(regs, np.float64)
    m = np.empty(shape)
    m[_coords(layout, regs.shape[1])] = regs
    return m


def _fragment(d, layout, lane, count):
    rows, cols = _coords(layout, count)
    return d[rows[lane], cols[lane]]


def _mma_exchange(op, a, b, c, compute):
    warp, lane = _lane()
    return warp.exchange(op, lane, (a, b, c), lambda values: compute(*zip(*values))), lane


def _tf32_upper_bits(regs):
    return (np.array(regs, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def _sim_mma_tf32_m16n8k8(a, b, c):
    def compute(a, b, c):
        # the tensor core reads the upper 19 bits of each .tf32 operand
        am = _matrix(_tf32_upper_bits(a), tf32_a_layout, (16, 8))
        bm = _matrix(_tf32_upper_bits(b), tf32_b_layout, (8, 8))
        return (am @ bm + _matrix(c, acc_layout, (16, 8))).astype(np.float32)

    d, lane = _mma_exchange("mma.m16n8k8.tf32", a, b, c, compute)
    return tuple(_fragment(d, acc_layout, lane, 4))


def _sim_mma_f16_m16n8k16(a, b, c):
    def compute(a, b, c):
        # float16 operands and their products are exact in float64
        am = _matrix(np.array(a, np.float16), f16_a_layout, (16, 16))
        bm = _matrix(np.array(b, np.float16), f16_b_layout, (16, 8))
        return (am @ bm + _matrix(c, acc_layout, (16, 8))).astype(np.float32)

    d, lane = _mma_exchange("mma.m16n8k16.f16", a, b, c, compute)
    return tuple(_fragment(d, acc_layout, lane, 4))


def _fma(x, y, z):
    """x*y + z rounded once (IEEE fused multiply-add): exact integer arithmetic on the operands'
    binary fractions, one correctly rounded division; plain arithmetic for inf and NaN."""
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
        return x * y + z
    (nx, dx), (ny, dy), (nz, dz) = x.as_integer_ratio(), y.as_integer_ratio(), z.as_integer_ratio()
    return (nx * ny * dz + nz * dx * dy) / (dx * dy * dz)


def _sim_mma_f64_m8n8k4(a, b, c):
    def compute(a, b, c):
        am = _matrix([(v,) for v in a], f64_a_layout, (8, 4)).tolist()
        bm = _matrix([(v,) for v in b], f64_b_layout, (4, 8)).tolist()
        d = _matrix(c, f64_acc_layout, (8, 8)).tolist()
        for i in range(8):
            for j in range(8):
                acc = d[i][j]
                for k in range(4):
                    acc = _fma(am[i][k], bm[k][j], acc)
                d[i][j] = acc
        return np.array(d)

    d, lane = _mma_exchange("mma.m8n8k4.f64", float(a), float(b), c, compute)
    return tuple(_fragment(d, f64_acc_layout, lane, 2))


def _sim_ldmatrix_x4(arr, idx):
    def compute(values):
        rows = []
        for lane in range(WARP):
            src, flat = values[lane]
            if src is not values[0][0]:
                raise RuntimeError("ldmatrix: all lanes must address one shared array")
            rows.append(flat)
        return rows

    if arr.dtype.itemsize != 4:
        raise TypeError(f"ldmatrix_x4 loads 32-bit elements, got an array of {arr.dtype}")
    flat = int(np.ravel_multi_index(tuple(int(i) for i in idx), arr.shape))
    if flat % 4 or idx[-1] + 4 > arr.shape[-1]:
        raise RuntimeError(f"ldmatrix: lane row at {tuple(idx)} of a {arr.shape} array is not 4 whole, "
                           "16-byte aligned elements of one row")
    warp, lane = _lane()
    starts = warp.exchange("ldmatrix.x4", lane, (arr, flat), compute)
    data = arr.reshape(-1)
    return tuple(data[starts[8 * m + (lane >> 2)] + (lane & 3)] for m in range(4))


class _AsyncCopies:
    """One simulated thread's cp.async state: the open group and the committed ones, oldest first."""

    def __init__(self):
        self.open = []
        self.committed = []


def _copies():
    me = threading.current_thread()
    state = me.__dict__.get("_convkern_cp_async")
    if state is None:
        state = me.__dict__["_convkern_cp_async"] = _AsyncCopies()
    return state


def _sim_cp_async(dst, dst_idx, src, src_idx, valid):
    if not 0 <= src_idx < src.shape[0]:
        raise IndexError(f"cp.async: source index {src_idx} outside the source of {src.shape[0]} elements "
                         "(pass an in-range index even when the copy is not valid)")
    value = src[src_idx] if valid else dst.dtype.type(0)
    dst[dst_idx] = np.nan
    _copies().open.append((dst, dst_idx, value))


def _sim_cp_async_commit():
    state = _copies()
    state.committed.append(state.open)
    state.open = []


def _sim_cp_async_wait(n):
    def wait():
        state = _copies()
        while len(state.committed) > n:
            for dst, idx, value in state.committed.pop(0):
                dst[idx] = value
    return wait


def _sim_pack_f16x2(lo, hi):
    return np.array([lo, hi], np.float16).view(np.float32)[0]


def _sim_unpack_f16x2(word):
    lo, hi = np.array([word], np.float32).view(np.float16)
    return lo, hi


def _sim_round_tf32(x):
    bits = np.array(x, np.float32).view(np.uint32)
    return np.array(tf32_bits.py_func(int(bits)), np.uint32).view(np.float32)[()]


# ---------------------------------------------------------------- PTX intrinsics

def _build_intrinsics():
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.api_util import normalize_indices
    from numba.cuda.extending import intrinsic

    i16, i32, f32, f64 = ir.IntType(16), ir.IntType(32), ir.FloatType(), ir.DoubleType()

    def element_pointer(context, builder, arr_ty, arr, idx_ty, idx):
        idx_ty, indices = normalize_indices(context, builder, idx_ty, idx, arr_ty, arr_ty.dtype)
        ary = context.make_array(arr_ty)(context, builder, value=arr)
        return cgutils.get_item_pointer(context, builder, arr_ty, ary, indices, wraparound=False)

    def shared_address(builder, ptr):
        """The 32-bit .shared address of a generic pointer into shared memory."""
        return builder.ptrtoint(builder.addrspacecast(ptr, ptr.type.pointee.as_pointer(3)), i32)

    def asm(builder, out_types, text, constraints, args, side_effect=False):
        ret = ir.LiteralStructType(out_types) if len(out_types) > 1 else (out_types[0] if out_types else ir.VoidType())
        fnty = ir.FunctionType(ret, [a.type for a in args])
        value = builder.asm(fnty, text, constraints, args, side_effect)
        if len(out_types) > 1:
            return [builder.extract_value(value, i) for i in range(len(out_types))]
        return value

    def operands(first, count):
        return ", ".join(f"${first + i}" for i in range(count))

    def check_tuple(name, arg, dtype, count):
        if not (isinstance(arg, types.UniTuple) and arg.dtype == dtype and arg.count == count):
            raise TypeError(f"{name}: expected a tuple of {count} {dtype}, got {arg}")

    @intrinsic
    def mma_tf32_m16n8k8(typingctx, a, b, c):
        for name, arg, count in (("a", a, 4), ("b", b, 2), ("c", c, 4)):
            check_tuple(f"mma_tf32_m16n8k8 {name}", arg, types.float32, count)
        sig = types.UniTuple(types.float32, 4)(a, b, c)

        def codegen(context, builder, sig, args):
            ab = [builder.bitcast(v, i32) for v in cgutils.unpack_tuple(builder, args[0])
                  + cgutils.unpack_tuple(builder, args[1])]
            cv = cgutils.unpack_tuple(builder, args[2])
            text = (f"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {{{operands(0, 4)}}}, {{{operands(4, 4)}}}, "
                    f"{{{operands(8, 2)}}}, {{{operands(10, 4)}}};")
            d = asm(builder, [f32] * 4, text, "=f,=f,=f,=f," + ",".join(["r"] * 6 + ["f"] * 4), ab + list(cv))
            return context.make_tuple(builder, sig.return_type, d)
        return sig, codegen

    @intrinsic
    def mma_f16_m16n8k16(typingctx, a, b, c):
        for name, arg, dtype, count in (("a", a, types.float16, 8), ("b", b, types.float16, 4),
                                        ("c", c, types.float32, 4)):
            check_tuple(f"mma_f16_m16n8k16 {name}", arg, dtype, count)
        sig = types.UniTuple(types.float32, 4)(a, b, c)

        def codegen(context, builder, sig, args):
            def bits(h):
                # numba-cuda lowers float16 values as i16 (their bits); an LLVM half is cast to them
                return h if h.type == i16 else builder.bitcast(h, i16)

            def pack(halves):
                regs = []
                for lo, hi in zip(halves[::2], halves[1::2]):
                    hi32 = builder.shl(builder.zext(bits(hi), i32), ir.Constant(i32, 16))
                    regs.append(builder.or_(builder.zext(bits(lo), i32), hi32))
                return regs
            ab = pack(cgutils.unpack_tuple(builder, args[0])) + pack(cgutils.unpack_tuple(builder, args[1]))
            cv = cgutils.unpack_tuple(builder, args[2])
            text = (f"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{operands(0, 4)}}}, {{{operands(4, 4)}}}, "
                    f"{{{operands(8, 2)}}}, {{{operands(10, 4)}}};")
            d = asm(builder, [f32] * 4, text, "=f,=f,=f,=f," + ",".join(["r"] * 6 + ["f"] * 4), ab + list(cv))
            return context.make_tuple(builder, sig.return_type, d)
        return sig, codegen

    @intrinsic
    def mma_f64_m8n8k4(typingctx, a, b, c):
        if a != types.float64 or b != types.float64:
            raise TypeError(f"mma_f64_m8n8k4: a and b must be float64, got {a}, {b}")
        check_tuple("mma_f64_m8n8k4 c", c, types.float64, 2)
        sig = types.UniTuple(types.float64, 2)(a, b, c)

        def codegen(context, builder, sig, args):
            cv = cgutils.unpack_tuple(builder, args[2])
            text = "mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {$0, $1}, {$2}, {$3}, {$4, $5};"
            d = asm(builder, [f64] * 2, text, "=d,=d,d,d,d,d", [args[0], args[1]] + list(cv))
            return context.make_tuple(builder, sig.return_type, d)
        return sig, codegen

    @intrinsic
    def ldmatrix_x4(typingctx, arr, idx):
        if not (isinstance(arr, types.Array) and arr.dtype.bitwidth == 32):
            raise TypeError(f"ldmatrix_x4: expected an array of 32-bit elements, got {arr}")
        sig = types.UniTuple(arr.dtype, 4)(arr, idx)

        def codegen(context, builder, sig, args):
            ptr = element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            regs = asm(builder, [i32] * 4, "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {$0, $1, $2, $3}, [$4];",
                       "=r,=r,=r,=r,r,~{memory}", [shared_address(builder, ptr)], side_effect=True)
            ty = context.get_value_type(sig.args[0].dtype)
            return context.make_tuple(builder, sig.return_type, [builder.bitcast(r, ty) for r in regs])
        return sig, codegen

    @intrinsic
    def cp_async(typingctx, dst, dst_idx, src, src_idx, valid):
        if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype
                and dst.dtype.bitwidth in (32, 64) and src.ndim == 1):
            raise TypeError(f"cp_async: expected a destination and a 1-D source of one 32- or 64-bit dtype, "
                            f"got {dst} and {src}")
        sig = types.void(dst, dst_idx, src, src_idx, valid)

        def codegen(context, builder, sig, args):
            dptr = element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            sptr = element_pointer(context, builder, sig.args[2], args[2], sig.args[3], args[3])
            size = sig.args[0].dtype.bitwidth // 8
            ok = context.cast(builder, args[4], sig.args[4], types.boolean)
            src_size = builder.select(ok, ir.Constant(i32, size), ir.Constant(i32, 0))
            asm(builder, [], f"cp.async.ca.shared.global [$0], [$1], {size}, $2;", "r,l,r,~{memory}",
                [shared_address(builder, dptr), sptr, src_size], side_effect=True)
            return context.get_dummy_value()
        return sig, codegen

    @intrinsic
    def cp_async_commit(typingctx):
        sig = types.void()

        def codegen(context, builder, sig, args):
            asm(builder, [], "cp.async.commit_group;", "~{memory}", [], side_effect=True)
            return context.get_dummy_value()
        return sig, codegen

    def cp_async_wait(n):
        @intrinsic
        def wait(typingctx):
            sig = types.void()

            def codegen(context, builder, sig, args):
                asm(builder, [], f"cp.async.wait_group {int(n)};", "~{memory}", [], side_effect=True)
                return context.get_dummy_value()
            return sig, codegen
        return wait

    @intrinsic
    def round_tf32(typingctx, x):
        if x != types.float32:
            raise TypeError(f"round_tf32: expected float32, got {x}")
        sig = types.float32(x)

        def codegen(context, builder, sig, args):
            bits = builder.bitcast(args[0], i32)
            odd = builder.and_(builder.lshr(bits, ir.Constant(i32, 13)), ir.Constant(i32, 1))
            up = builder.add(builder.add(bits, ir.Constant(i32, 0xFFF)), odd)
            rounded = builder.and_(up, ir.Constant(i32, 0xFFFFE000))
            special = builder.icmp_unsigned("==", builder.and_(bits, ir.Constant(i32, 0x7F800000)),
                                            ir.Constant(i32, 0x7F800000))
            return builder.bitcast(builder.select(special, bits, rounded), f32)
        return sig, codegen

    @intrinsic
    def pack_f16x2(typingctx, lo, hi):
        if lo != types.float16 or hi != types.float16:
            raise TypeError(f"pack_f16x2: expected two float16, got {lo}, {hi}")
        sig = types.float32(lo, hi)

        def codegen(context, builder, sig, args):
            hi = builder.shl(builder.zext(args[1], i32), ir.Constant(i32, 16))
            return builder.bitcast(builder.or_(builder.zext(args[0], i32), hi), f32)
        return sig, codegen

    @intrinsic
    def unpack_f16x2(typingctx, word):
        if word != types.float32:
            raise TypeError(f"unpack_f16x2: expected a float32 word, got {word}")
        sig = types.UniTuple(types.float16, 2)(word)

        def codegen(context, builder, sig, args):
            bits = builder.bitcast(args[0], i32)
            halves = [builder.trunc(bits, i16), builder.trunc(builder.lshr(bits, ir.Constant(i32, 16)), i16)]
            return context.make_tuple(builder, sig.return_type, halves)
        return sig, codegen

    return (mma_tf32_m16n8k8, mma_f16_m16n8k16, mma_f64_m8n8k4, ldmatrix_x4, cp_async, cp_async_commit,
            cp_async_wait, round_tf32, pack_f16x2, unpack_f16x2)


if SIMULATOR:
    mma_tf32_m16n8k8 = _sim_mma_tf32_m16n8k8
    mma_f16_m16n8k16 = _sim_mma_f16_m16n8k16
    mma_f64_m8n8k4 = _sim_mma_f64_m8n8k4
    ldmatrix_x4 = _sim_ldmatrix_x4
    cp_async = _sim_cp_async
    cp_async_commit = _sim_cp_async_commit
    cp_async_wait = _sim_cp_async_wait
    round_tf32 = _sim_round_tf32
    pack_f16x2 = _sim_pack_f16x2
    unpack_f16x2 = _sim_unpack_f16x2
else:
    (mma_tf32_m16n8k8, mma_f16_m16n8k16, mma_f64_m8n8k4, ldmatrix_x4, cp_async, cp_async_commit,
     cp_async_wait, round_tf32, pack_f16x2, unpack_f16x2) = _build_intrinsics()
