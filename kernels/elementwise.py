"""Elementwise and reduction primitives the autograd layer composes its ops from.

- ``binary(op, a, b, out)``: ``out = a + b | a - b | a * b | a / b`` elementwise.
- ``scalar(op, a, v, out)``: ``out = a + v | a - v | v - a | a * v | a / v | v / a | a ** v``.
- ``unary(op, a, out)``: ``out = -a | exp(a) | log(a) | sqrt(a)``.
- ``fill(out, v)``: ``out[...] = v``; ``broadcast_scalar(a, out)``: ``out[...] = a[0]``.
- ``sum_all(a, out, scale=1)``: ``out[0] = scale * sum(a)``.
- ``bias_add_nchw(y, b)``: ``y[n, k, p, q] += b[k]`` in place.
- ``bias_grad_nchw(dy, db)``: ``db[k] = sum_{n,p,q} dy[n, k, p, q]``.
- ``cast(src, dst)``: ``dst[...] = src`` converted to ``dst``'s dtype (float16, float32, float64).

Arrays are C-contiguous and share one float dtype (float16, float32 or float64; ``cast``
converts between them); the elementwise ops treat them as flat, so ``out`` may be one of the
inputs. Math runs in the arrays' accumulator dtype (``float16.accumulator_dtype``): their own
dtype for float32 and float64, float32 for float16 data, which is rounded once when it is
stored (kernels/float16.py); a Python scalar is cast to the accumulator dtype first. Every op
name maps to a small int code and each family is one kernel that branches on it per element
(on the CPU, LLVM hoists that loop-invariant branch out of the loop and vectorises each arm).
Both reductions are deterministic: a fixed split of the data into blocks, summed in a fixed
order (a shared-memory tree on the GPU), never atomics, so repeated runs give bitwise-identical
sums; partial sums are kept in the accumulator dtype. The bias gradient cuts each channel into
as many splits as fill whole waves of the device's resident blocks (one block per channel
leaves most SMs idle), so its sums are reproducible on one device.

The CPU loops index slices from 0 rather than a big array at ``base + j``: Numba then knows
the index is non-negative, drops its negative-index wraparound and LLVM vectorises the loop
(2.5-6x faster); ``fastmath={"reassoc"}`` lets it vectorise the sums too.
"""
import math

import numpy as np
from numba import cuda, float32, float64, int64, njit, prange
from numba.types import float16

from .cpu_util import cpu_kernel
from .cuda_util import (SIMULATOR, array1, array2, block_sum, blocks, device_empty, is_device_array, per_dtype,
                        resident_blocks, stream, wave_splits)
from .float16 import HALF, accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

THREADS = 32 if SIMULATOR else 256               # elementwise block size
REDUCE_THREADS = 16 if SIMULATOR else 256        # tree-reduction block size, a power of two
SUM_MAX_BLOCKS = 8 if SIMULATOR else 1024        # partial sums of sum_all's first pass
CPU_SUM_CHUNK = 1 << 14                          # elements per partial sum on the CPU
MIN_PER_THREAD = 4                               # values each thread of a bias-gradient split sums at least

ADD, SUB, MUL, DIV, RSUB, RDIV, POW = range(7)
NEG, EXP, LOG, SQRT = range(4)
BINARY_OPS = {"add": ADD, "sub": SUB, "mul": MUL, "div": DIV}
SCALAR_OPS = {"add": ADD, "sub": SUB, "rsub": RSUB, "mul": MUL, "div": DIV, "rdiv": RDIV, "pow": POW}
UNARY_OPS = {"neg": NEG, "exp": EXP, "log": LOG, "sqrt": SQRT}


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), array1(dt), array1(dt)), threads=THREADS, half=True)
def binary_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, a, b, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            x = acc(a[i])
            y = acc(b[i])
            if op == ADD:
                r = x + y
            elif op == SUB:
                r = x - y
            elif op == MUL:
                r = x * y
            else:
                r = x / y
            out[i] = dt(r)
    return kernel


@njit(inline="always")
def _binary_body(op, a, b, out):
    for i in prange(out.shape[0]):
        x = widen(a[i])
        y = widen(b[i])
        if op == ADD:
            r = x + y
        elif op == SUB:
            r = x - y
        elif op == MUL:
            r = x * y
        else:
            r = x / y
        out[i] = narrow(r, out)


@njit(parallel=True, cache=True, error_model="numpy")
def binary_cpu(op, a, b, out):
    _binary_body(op, a, b, out)


@njit(cache=True, error_model="numpy")
def binary_serial_cpu(op, a, b, out):
    _binary_body(op, a, b, out)


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), accumulator(dt), array1(dt)), threads=THREADS, half=True)
def scalar_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, a, value, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            x = acc(a[i])
            if op == ADD:
                r = x + value
            elif op == SUB:
                r = x - value
            elif op == RSUB:
                r = value - x
            elif op == MUL:
                r = x * value
            elif op == DIV:
                r = x / value
            elif op == RDIV:
                r = value / x
            else:
                r = math.pow(x, value)
            out[i] = dt(r)
    return kernel


@njit(inline="always")
def _scalar_body(op, a, value, out):
    for i in prange(out.shape[0]):
        x = widen(a[i])
        if op == ADD:
            r = x + value
        elif op == SUB:
            r = x - value
        elif op == RSUB:
            r = value - x
        elif op == MUL:
            r = x * value
        elif op == DIV:
            r = x / value
        elif op == RDIV:
            r = value / x
        else:
            r = math.pow(x, value)
        out[i] = narrow(r, out)


@njit(parallel=True, cache=True, error_model="numpy")
def scalar_cpu(op, a, value, out):
    _scalar_body(op, a, value, out)


@njit(cache=True, error_model="numpy")
def scalar_serial_cpu(op, a, value, out):
    _scalar_body(op, a, value, out)


# one thread per element i
@per_dtype(lambda dt: (int64, array1(dt), array1(dt)), threads=THREADS, half=True)
def unary_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(op, a, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            x = acc(a[i])
            if op == NEG:
                r = -x
            elif op == EXP:
                r = math.exp(x)
            elif op == LOG:
                r = math.log(x)
            else:
                r = math.sqrt(x)
            out[i] = dt(r)
    return kernel


@njit(inline="always")
def _unary_body(op, a, out):
    for i in prange(out.shape[0]):
        x = widen(a[i])
        if op == NEG:
            r = -x
        elif op == EXP:
            r = math.exp(x)
        elif op == LOG:
            r = math.log(x)
        else:
            r = math.sqrt(x)
        out[i] = narrow(r, out)


@njit(parallel=True, cache=True, error_model="numpy")
def unary_cpu(op, a, out):
    _unary_body(op, a, out)


@njit(cache=True, error_model="numpy")
def unary_serial_cpu(op, a, out):
    _unary_body(op, a, out)


# one thread per element i
@per_dtype(lambda dt: (array1(dt), accumulator(dt)), threads=THREADS, half=True)
def fill_cuda(dt):
    @cuda.jit
    def kernel(out, value):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = dt(value)
    return kernel


@njit(inline="always")
def _fill_body(out, value):
    v = narrow(value, out)
    for i in prange(out.shape[0]):
        out[i] = v


@njit(parallel=True, cache=True)
def fill_cpu(out, value):
    _fill_body(out, value)


@njit(cache=True)
def fill_serial_cpu(out, value):
    _fill_body(out, value)


# one thread per element i of out
@per_dtype(lambda dt: (array1(dt), array1(dt)), threads=THREADS, half=True)
def broadcast_scalar_cuda(dt):
    @cuda.jit
    def kernel(a, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = a[0]
    return kernel


@njit(inline="always")
def _broadcast_scalar_body(a, out):
    v = a[0]
    for i in prange(out.shape[0]):
        out[i] = v


@njit(parallel=True, cache=True)
def broadcast_scalar_cpu(a, out):
    _broadcast_scalar_body(a, out)


@njit(cache=True)
def broadcast_scalar_serial_cpu(a, out):
    _broadcast_scalar_body(a, out)


# one thread per element i: dst[i] = src[i] converted to dst's type. float64 -> float16 rounds
# through float32 (as PyTorch's Half does, on both devices), so the CPU, the simulator and a GPU agree.
def _cast_cuda(to):
    mid = float32 if to == float16 else to

    @cuda.jit
    def kernel(src, dst):
        i = cuda.grid(1)
        if i < dst.shape[0]:
            dst[i] = to(mid(src[i]))
    return kernel


@per_dtype(lambda dt: (array1(dt), array1(float16)), threads=THREADS, half=True)
def cast_to_float16_cuda(dt):
    return _cast_cuda(float16)


@per_dtype(lambda dt: (array1(dt), array1(float32)), threads=THREADS, half=True)
def cast_to_float32_cuda(dt):
    return _cast_cuda(float32)


@per_dtype(lambda dt: (array1(dt), array1(float64)), threads=THREADS, half=True)
def cast_to_float64_cuda(dt):
    return _cast_cuda(float64)


CAST_CUDA = {HALF: cast_to_float16_cuda, np.dtype(np.float32): cast_to_float32_cuda,
             np.dtype(np.float64): cast_to_float64_cuda}


@njit(inline="always")
def _cast_body(src, dst):
    for i in prange(dst.shape[0]):
        dst[i] = narrow(widen(src[i]), dst)


@njit(parallel=True, cache=True)
def cast_cpu(src, dst):
    _cast_body(src, dst)


@njit(cache=True)
def cast_serial_cpu(src, dst):
    _cast_body(src, dst)


# one block per partial sum partials[blockIdx.x]; thread t sums a[blockIdx.x*blockDim.x + t :: gridDim.x*blockDim.x]
# in the accumulator type and the block's total times scale is stored in partials' type
def _sum_blocks_cuda(acc, stored):
    @cuda.jit
    def kernel(a, partials, scale):
        buf = cuda.shared.array(REDUCE_THREADS, acc)
        t = cuda.threadIdx.x
        s = acc(0)
        for i in range(cuda.blockIdx.x * REDUCE_THREADS + t, a.shape[0], cuda.gridDim.x * REDUCE_THREADS):
            s += acc(a[i])
        total = block_sum(buf, s)
        if t == 0:
            partials[cuda.blockIdx.x] = stored(total * scale)
    return kernel


# pass 1 of sum_all: the data (dt) into partial sums (accumulator dtype)
@per_dtype(lambda dt: (array1(dt), array1(accumulator(dt)), accumulator(dt)), threads=REDUCE_THREADS, half=True)
def sum_blocks_cuda(dt):
    return _sum_blocks_cuda(accumulator(dt), accumulator(dt))


# pass 2 of sum_all: the partial sums (accumulator dtype) into the result (dt)
@per_dtype(lambda dt: (array1(accumulator(dt)), array1(dt), accumulator(dt)), threads=REDUCE_THREADS, half=True)
def sum_partials_cuda(dt):
    return _sum_blocks_cuda(accumulator(dt), dt)


@njit(inline="always")
def _sum_blocks_body(a, partials, scale):
    chunk = (a.shape[0] + partials.shape[0] - 1) // partials.shape[0]
    for j in prange(partials.shape[0]):
        seg = a[j * chunk:(j + 1) * chunk]
        acc = zero(a)
        for i in range(seg.shape[0]):
            acc += widen(seg[i])
        partials[j] = narrow(acc * scale, partials)


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def sum_blocks_cpu(a, partials, scale):
    _sum_blocks_body(a, partials, scale)


@njit(cache=True, fastmath={"reassoc"})
def sum_blocks_serial_cpu(a, partials, scale):
    _sum_blocks_body(a, partials, scale)


# one thread per element i of y, channel k = (i // plane) % K
@per_dtype(lambda dt: (array1(dt), array1(dt), int64), threads=THREADS, half=True)
def bias_add_nchw_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(y, b, plane):
        i = cuda.grid(1)
        if i < y.shape[0]:
            y[i] = dt(acc(y[i]) + acc(b[(i // plane) % b.shape[0]]))
    return kernel


@njit(inline="always")
def _bias_add_nchw_body(y, b, n_images, plane):
    K = b.shape[0]
    for nk in prange(n_images * K):
        bk = widen(b[nk % K])
        yk = y[nk * plane:(nk + 1) * plane]
        for j in range(plane):
            yk[j] = narrow(widen(yk[j]) + bk, yk)


@njit(parallel=True, cache=True)
def bias_add_nchw_cpu(y, b, n_images, plane):
    _bias_add_nchw_body(y, b, n_images, plane)


@njit(cache=True)
def bias_add_nchw_serial_cpu(y, b, n_images, plane):
    _bias_add_nchw_body(y, b, n_images, plane)


# one block per (split s, channel k): thread t sums the values lo + t, lo + t + REDUCE_THREADS, ... below
# hi of channel k, [lo, hi) being split s of its N*P*Q values; the block's sum goes to partials[s, k]
@per_dtype(lambda dt: (array1(dt), array2(accumulator(dt)), int64, int64, int64), threads=REDUCE_THREADS, half=True)
def bias_grad_partials_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(dy, partials, n_images, plane, chunk):
        buf = cuda.shared.array(REDUCE_THREADS, acc)
        s = cuda.blockIdx.x
        k = cuda.blockIdx.y
        K = partials.shape[1]
        t = cuda.threadIdx.x
        lo = s * chunk
        hi = min(n_images * plane, lo + chunk)
        a = acc(0)
        for e in range(lo + t, hi, REDUCE_THREADS):
            n = e // plane
            a += acc(dy[(n * K + k) * plane + e - n * plane])
        total = block_sum(buf, a)
        if t == 0:
            partials[s, k] = total
    return kernel


# one thread per column k: out[k] = the sum of partials[:, k] in row order
@per_dtype(lambda dt: (array2(accumulator(dt)), array1(dt)), threads=THREADS, half=True)
def sum_rows_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(partials, out):
        k = cuda.grid(1)
        if k < out.shape[0]:
            a = acc(0)
            for s in range(partials.shape[0]):
                a += partials[s, k]
            out[k] = dt(a)
    return kernel


@njit(inline="always")
def _bias_grad_nchw_body(dy, db, n_images, plane):
    K = db.shape[0]
    for k in prange(K):
        acc = zero(dy)
        for n in range(n_images):
            dyk = dy[(n * K + k) * plane:(n * K + k + 1) * plane]
            for j in range(plane):
                acc += widen(dyk[j])
        db[k] = narrow(acc, db)


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def bias_grad_nchw_cpu(dy, db, n_images, plane):
    _bias_grad_nchw_body(dy, db, n_images, plane)


@njit(cache=True, fastmath={"reassoc"})
def bias_grad_nchw_serial_cpu(dy, db, n_images, plane):
    _bias_grad_nchw_body(dy, db, n_images, plane)


def flat_operands(*arrays):
    """Check that ``arrays`` are C-contiguous and share shape, float dtype and device.

    Returns their 1-D views and whether they are CUDA device arrays.
    """
    first = arrays[0]
    if first.dtype not in binary_cuda:
        raise TypeError(f"elementwise kernels need float16, float32 or float64 arrays, got {first.dtype}")
    on_device = is_device_array(first)
    for other in arrays[1:]:
        if other.shape != first.shape:
            raise ValueError(f"elementwise operands must share one shape, got {first.shape} and {other.shape}")
        _match("elementwise", "every operand", other, first, on_device)
    if not on_device and not all(x.flags.c_contiguous for x in arrays):
        raise ValueError("elementwise operands must be C-contiguous")
    return [x.reshape(x.size) for x in arrays], on_device


def _match(name, arg, x, like, on_device):
    if x.dtype != like.dtype or is_device_array(x) != on_device:
        raise TypeError(f"{name}: {arg} must have dtype {like.dtype} and be a "
                        f"{'CUDA device' if on_device else 'NumPy'} array like the other operand")


def _bias_operands(y, b, name):
    """Check a 4-D (N, K, P, Q) array and its (K,) bias; return the flat view of ``y`` and the device flag."""
    if len(y.shape) != 4 or b.shape != (y.shape[1],):
        raise ValueError(f"{name}: expected a 4-D (N, K, P, Q) array and a bias of shape (K,), "
                         f"got {y.shape} and {b.shape}")
    (y1,), on_device = flat_operands(y)
    _match(name, "bias", b, y, on_device)
    return y1, on_device


def op_code(table, op, family):
    if op not in table:
        raise ValueError(f"{family}: unknown op {op!r}, expected one of {sorted(table)}")
    return table[op]


def binary(op, a, b, out):
    """``out = a <op> b`` elementwise for op in add, sub, mul, div; ``out`` may alias ``a`` or ``b``."""
    code = op_code(BINARY_OPS, op, "binary")
    (a1, b1, out1), on_device = flat_operands(a, b, out)
    if on_device:
        binary_cuda[out.dtype][blocks(out.size, THREADS), THREADS, stream()](code, a1, b1, out1)
    else:
        cpu_kernel(binary_cpu, binary_serial_cpu, out.size)(code, cpu_view(a1), cpu_view(b1), cpu_view(out1))


def scalar(op, a, value, out):
    """``out = a + v, a - v, v - a, a * v, a / v, v / a, a ** v`` for op add, sub, rsub, mul, div, rdiv, pow."""
    code = op_code(SCALAR_OPS, op, "scalar")
    (a1, out1), on_device = flat_operands(a, out)
    value = accumulator_dtype(out.dtype).type(value)
    if on_device:
        scalar_cuda[out.dtype][blocks(out.size, THREADS), THREADS, stream()](code, a1, value, out1)
    else:
        cpu_kernel(scalar_cpu, scalar_serial_cpu, out.size)(code, cpu_view(a1), value, cpu_view(out1))


def unary(op, a, out):
    """``out = -a, exp(a), log(a), sqrt(a)`` for op neg, exp, log, sqrt; ``out`` may alias ``a``."""
    code = op_code(UNARY_OPS, op, "unary")
    (a1, out1), on_device = flat_operands(a, out)
    if on_device:
        unary_cuda[out.dtype][blocks(out.size, THREADS), THREADS, stream()](code, a1, out1)
    else:
        cpu_kernel(unary_cpu, unary_serial_cpu, out.size)(code, cpu_view(a1), cpu_view(out1))


def fill(out, value):
    """``out[...] = value`` (rounded to ``out``'s dtype)."""
    (out1,), on_device = flat_operands(out)
    value = accumulator_dtype(out.dtype).type(value)
    if on_device:
        fill_cuda[out.dtype][blocks(out.size, THREADS), THREADS, stream()](out1, value)
    else:
        cpu_kernel(fill_cpu, fill_serial_cpu, out.size)(cpu_view(out1), value)


def broadcast_scalar(a, out):
    """``out[...] = a[0]`` for ``a`` of shape (1,): the gradient of a sum or mean."""
    (out1,), on_device = flat_operands(out)
    if a.shape != (1,):
        raise ValueError(f"broadcast_scalar: a must have shape (1,), got {a.shape}")
    _match("broadcast_scalar", "a", a, out, on_device)
    if on_device:
        broadcast_scalar_cuda[out.dtype][blocks(out.size, THREADS), THREADS, stream()](a, out1)
    else:
        cpu_kernel(broadcast_scalar_cpu, broadcast_scalar_serial_cpu, out.size)(cpu_view(a), cpu_view(out1))


def cast(src, dst):
    """``dst[...] = src`` converted to ``dst``'s dtype, rounding to nearest even (float64 ->
    float16 through float32, as PyTorch); any pair of float16, float32 and float64 arrays of one
    shape and device (equal dtypes copy)."""
    if src.dtype not in binary_cuda or dst.dtype not in binary_cuda:
        raise TypeError(f"cast: src and dst must be float16, float32 or float64 arrays, got {src.dtype} and "
                        f"{dst.dtype}")
    if src.shape != dst.shape:
        raise ValueError(f"cast: src and dst must share one shape, got {src.shape} and {dst.shape}")
    on_device = is_device_array(src)
    if is_device_array(dst) != on_device:
        raise TypeError("cast: src and dst must both be CUDA device arrays or both NumPy arrays")
    if not on_device and not (src.flags.c_contiguous and dst.flags.c_contiguous):
        raise ValueError("cast: src and dst must be C-contiguous")
    s1, d1 = src.reshape(src.size), dst.reshape(dst.size)
    if on_device:
        CAST_CUDA[np.dtype(dst.dtype)][src.dtype][blocks(dst.size, THREADS), THREADS, stream()](s1, d1)
    else:
        cpu_kernel(cast_cpu, cast_serial_cpu, dst.size)(cpu_view(s1), cpu_view(d1))


def sum_all(a, out, scale=1.0):
    """``out[0] = scale * (sum of all elements of a)``; ``out`` has shape (1,). Deterministic.

    Two passes: a fixed number of partial sums (set by ``a.size`` alone) in the accumulator
    dtype, then their sum times ``scale``, rounded once to ``out``'s dtype (so a float16 mean,
    ``scale = 1/n``, does not overflow where the sum would).
    """
    (a1,), on_device = flat_operands(a)
    if out.shape != (1,):
        raise ValueError(f"sum_all: out must have shape (1,), got {out.shape}")
    _match("sum_all", "out", out, a, on_device)
    acc = accumulator_dtype(a.dtype)
    one, scale = acc.type(1), acc.type(scale)
    if on_device:
        n_partials = min(blocks(a.size, REDUCE_THREADS), SUM_MAX_BLOCKS)
        partials = device_empty(n_partials, acc)
        sum_blocks_cuda[a.dtype][n_partials, REDUCE_THREADS, stream()](a1, partials, one)
        sum_partials_cuda[a.dtype][1, REDUCE_THREADS, stream()](partials, out, scale)
    else:
        partials = np.empty(blocks(a.size, CPU_SUM_CHUNK), acc)
        cpu_kernel(sum_blocks_cpu, sum_blocks_serial_cpu, a1.size)(cpu_view(a1), partials, one)
        cpu_kernel(sum_blocks_cpu, sum_blocks_serial_cpu, partials.size)(partials, cpu_view(out), scale)


def bias_add_nchw(y, b):
    """``y[n, k, p, q] += b[k]`` in place (``y`` is (N, K, P, Q), ``b`` is (K,))."""
    y1, on_device = _bias_operands(y, b, "bias_add_nchw")
    N, _, P, Q = y.shape
    if on_device:
        bias_add_nchw_cuda[y.dtype][blocks(y.size, THREADS), THREADS, stream()](y1, b, P * Q)
    else:
        cpu_kernel(bias_add_nchw_cpu, bias_add_nchw_serial_cpu, y.size)(cpu_view(y1), cpu_view(b), N, P * Q)


def bias_grad_nchw(dy, db):
    """``db[k] = sum_{n,p,q} dy[n, k, p, q]`` (``dy`` is (N, K, P, Q), ``db`` is (K,)); deterministic."""
    dy1, on_device = _bias_operands(dy, db, "bias_grad_nchw")
    N, K, P, Q = dy.shape
    if on_device:
        # several blocks per channel, as many as fill whole waves of the device's resident blocks
        m = N * P * Q
        kernel = bias_grad_partials_cuda[dy.dtype]
        splits = wave_splits(K, blocks(m, REDUCE_THREADS * MIN_PER_THREAD), resident_blocks(kernel, REDUCE_THREADS))
        chunk = blocks(blocks(m, splits), REDUCE_THREADS) * REDUCE_THREADS
        splits = blocks(m, chunk)
        partials = device_empty((splits, K), accumulator_dtype(dy.dtype))
        kernel[(splits, K), REDUCE_THREADS, stream()](dy1, partials, N, P * Q, chunk)
        sum_rows_cuda[dy.dtype][blocks(K, THREADS), THREADS, stream()](partials, db)
    else:
        cpu_kernel(bias_grad_nchw_cpu, bias_grad_nchw_serial_cpu, dy.size)(cpu_view(dy1), cpu_view(db), N, P * Q)
