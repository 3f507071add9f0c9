"""Softmax, log-softmax and the fused softmax cross-entropy.

Softmax runs over the middle axis of an array viewed as ``(outer, C, inner)`` (any axis of
any rank reshapes to that), max-subtracted so that no ``exp`` overflows:

- ``softmax_fwd(mode, x, y)``: ``y = exp(x - m) / s`` (mode "softmax") or
  ``y = (x - m) - log(s)`` (mode "log_softmax"), with ``m = max_c x`` and
  ``s = sum_c exp(x - m)`` per ``(outer, inner)`` position.
- ``softmax_bwd(mode, y, g, dx)`` from the saved output: softmax ``dx = y (g - sum_c g y)``;
  log-softmax ``dx = g - exp(y) sum_c g``.
- ``cross_entropy_fwd(x, labels, ignore_index, loss, stats, counted)`` for logits ``x`` (N, C)
  and int64 labels (N,): ``loss[n] = (m - x[n, label]) + log(s)`` with ``m = max_c x[n, c]``
  and ``s = sum_c exp(x[n, c] - m)`` (0 where ``label == ignore_index``); ``stats[n] = (m, log s)``
  for the backward pass; ``counted[n]`` 1 where the row counts, 0 where ignored. A label
  outside ``[0, C)`` that is not ignored raises (on CUDA at the next host read).
- ``cross_entropy_bwd(x, stats, labels, ignore_index, g, scale, dx)``:
  ``dx[n, c] = (exp((x[n, c] - m) - log s) - [c == label]) * g[n] * scale`` (0 on ignored
  rows); ``g`` has one element per row, or a single element shared by all rows (mean, sum).
- ``argmax_hits(x, labels, hits)``: ``hits[n] = 1`` where the first maximum of ``x[n]`` is at
  ``labels[n]``, else 0 (a batch's correct predictions, counted without reading logits on the host).

The log-sum-exp ``m + log s`` is never rounded as one number: for large logits its absolute
rounding error (half an ulp of ``|m|``) would swamp a small loss, so ``m`` and ``log s`` are
kept apart and subtracted from ``x`` one after the other.

CUDA: one block per row (one ``(outer, inner)`` position, or one sample); the block's
threads stride over the C entries and combine their partial max and sum in a shared-memory
tree, so a row of classifier logits is read coalesced. The block is the smallest power of
two covering C, between MIN_ROW_THREADS and ROW_THREADS. The cross-entropy gradient needs
no reduction (the row statistics are saved): one thread per element.
CPU: rows (``inner == 1``, the classifier case) and the cross-entropy kernels run one
contiguous row per ``prange`` iteration; other views run ``prange`` over the outer index with
the inner index innermost (contiguous), the running max and sum kept in small per-position
workspaces that the launcher allocates.
Every reduction is in a fixed order: results are bitwise reproducible.

float16 logits and gradients are storage only (kernels/float16.py): every kernel reads them into
float32, computes in float32 and rounds each output element once; the per-row arrays of the
cross-entropy (loss, stats, counted, the incoming gradient g) and argmax_hits' hits are float32
then (their accumulator dtype), so a mean over many rows neither rounds each loss to float16
nor counts rows in float16 (exact only up to 2048). On the CPU a float32 or float64 softmax
keeps ``exp(x - m)`` in ``y`` between its passes; a float16 ``y`` cannot hold it unrounded, so
the last pass evaluates it again (``reuse`` false).
"""
import math

import numpy as np
from numba import cuda, int64, njit, prange

from .cpu_util import cpu_kernel
from .cuda_util import (SIMULATOR, array1, array2, block_sum, blocks, check_flag, device_check, is_device_array, per_dtype,
                        stream)
from .float16 import HALF, accumulator, accumulator_dtype, cpu_view, narrow, widen, zero

ROW_THREADS = 8 if SIMULATOR else 256          # most threads per row block, a power of two
MIN_ROW_THREADS = 2 if SIMULATOR else 32       # one warp
THREADS = 32 if SIMULATOR else 256             # one-thread-per-element kernels

SOFTMAX, LOG_SOFTMAX = range(2)
MODES = {"softmax": SOFTMAX, "log_softmax": LOG_SOFTMAX}


def _array3(dt):
    return dt[:, :, ::1]


@cuda.jit(device=True, inline="always")
def _block_max(buf, v):
    t = cuda.threadIdx.x
    buf[t] = v
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            buf[t] = max(buf[t], buf[t + half])
        cuda.syncthreads()
        half //= 2
    v = buf[0]
    cuda.syncthreads()
    return v


# one block per row (o, i); thread t handles c = t, t + blockDim.x, ...
@per_dtype(lambda dt: (int64, _array3(dt), _array3(dt)), threads=ROW_THREADS, half=True)
def softmax_fwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(mode, x, y):
        buf = cuda.shared.array(ROW_THREADS, acc)
        C = x.shape[1]
        inner = x.shape[2]
        o = cuda.blockIdx.x // inner
        i = cuda.blockIdx.x - o * inner
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        m = acc(-math.inf)
        for c in range(t, C, nt):
            m = max(m, acc(x[o, c, i]))
        m = _block_max(buf, m)
        s = acc(0)
        for c in range(t, C, nt):
            s += math.exp(acc(x[o, c, i]) - m)
        s = block_sum(buf, s)
        if mode == SOFTMAX:
            inv = acc(1) / s
            for c in range(t, C, nt):
                y[o, c, i] = dt(math.exp(acc(x[o, c, i]) - m) * inv)
        else:
            log_s = math.log(s)
            for c in range(t, C, nt):
                y[o, c, i] = dt((acc(x[o, c, i]) - m) - log_s)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def softmax_fwd_cpu(mode, reuse, x, y, m, s):
    C = x.shape[1]
    inner = x.shape[2]
    for o in prange(x.shape[0]):
        xo = x[o]
        yo = y[o]
        mo = m[o]
        so = s[o]
        for j in range(inner):
            mo[j] = widen(xo[0, j])
            so[j] = 0
        for c in range(1, C):
            xc = xo[c]
            for j in range(inner):
                mo[j] = max(mo[j], widen(xc[j]))
        for c in range(C):
            xc = xo[c]
            yc = yo[c]
            for j in range(inner):
                e = math.exp(widen(xc[j]) - mo[j])
                if reuse:
                    yc[j] = narrow(e, yc)
                so[j] += e
        if mode == SOFTMAX:
            for j in range(inner):
                so[j] = s.dtype.type(1) / so[j]
            for c in range(C):
                xc = xo[c]
                yc = yo[c]
                for j in range(inner):
                    e = widen(yc[j]) if reuse else math.exp(widen(xc[j]) - mo[j])
                    yc[j] = narrow(e * so[j], yc)
        else:
            for j in range(inner):
                so[j] = math.log(so[j])
            for c in range(C):
                xc = xo[c]
                yc = yo[c]
                for j in range(inner):
                    yc[j] = narrow((widen(xc[j]) - mo[j]) - so[j], yc)



@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def softmax_fwd_rows_cpu(mode, reuse, x, y):
    for o in prange(x.shape[0]):
        xr = x[o]
        yr = y[o]
        m = widen(xr[0])
        for c in range(1, xr.shape[0]):
            m = max(m, widen(xr[c]))
        s = zero(x)
        for c in range(xr.shape[0]):
            e = math.exp(widen(xr[c]) - m)
            if reuse:
                yr[c] = narrow(e, yr)
            s += e
        if mode == SOFTMAX:
            inv = np.float32(1) / s     # a float32 1: the division runs in s's type
            for c in range(xr.shape[0]):
                e = widen(yr[c]) if reuse else math.exp(widen(xr[c]) - m)
                yr[c] = narrow(e * inv, yr)
        else:
            log_s = math.log(s)
            for c in range(xr.shape[0]):
                yr[c] = narrow((widen(xr[c]) - m) - log_s, yr)

# one block per row (o, i); thread t handles c = t, t + blockDim.x, ...
@per_dtype(lambda dt: (int64, _array3(dt), _array3(dt), _array3(dt)), threads=ROW_THREADS, half=True)
def softmax_bwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(mode, y, g, dx):
        buf = cuda.shared.array(ROW_THREADS, acc)
        C = y.shape[1]
        inner = y.shape[2]
        o = cuda.blockIdx.x // inner
        i = cuda.blockIdx.x - o * inner
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        total = acc(0)
        if mode == SOFTMAX:
            for c in range(t, C, nt):
                total += acc(g[o, c, i]) * acc(y[o, c, i])
            total = block_sum(buf, total)
            for c in range(t, C, nt):
                dx[o, c, i] = dt(acc(y[o, c, i]) * (acc(g[o, c, i]) - total))
        else:
            for c in range(t, C, nt):
                total += acc(g[o, c, i])
            total = block_sum(buf, total)
            for c in range(t, C, nt):
                dx[o, c, i] = dt(acc(g[o, c, i]) - math.exp(acc(y[o, c, i])) * total)
    return kernel


@njit(parallel=True, cache=True, error_model="numpy")
def softmax_bwd_cpu(mode, y, g, dx, w):
    C = y.shape[1]
    inner = y.shape[2]
    for o in prange(y.shape[0]):
        yo = y[o]
        go = g[o]
        dxo = dx[o]
        wo = w[o]
        for j in range(inner):
            wo[j] = 0
        if mode == SOFTMAX:
            for c in range(C):
                yc = yo[c]
                gc = go[c]
                for j in range(inner):
                    wo[j] += widen(gc[j]) * widen(yc[j])
            for c in range(C):
                yc = yo[c]
                gc = go[c]
                dxc = dxo[c]
                for j in range(inner):
                    dxc[j] = narrow(widen(yc[j]) * (widen(gc[j]) - wo[j]), dxc)
        else:
            for c in range(C):
                gc = go[c]
                for j in range(inner):
                    wo[j] += widen(gc[j])
            for c in range(C):
                yc = yo[c]
                gc = go[c]
                dxc = dxo[c]
                for j in range(inner):
                    dxc[j] = narrow(widen(gc[j]) - math.exp(widen(yc[j])) * wo[j], dxc)



@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def softmax_bwd_rows_cpu(mode, y, g, dx):
    for o in prange(y.shape[0]):
        yr = y[o]
        gr = g[o]
        dxr = dx[o]
        acc = zero(y)
        if mode == SOFTMAX:
            for c in range(yr.shape[0]):
                acc += widen(gr[c]) * widen(yr[c])
            for c in range(yr.shape[0]):
                dxr[c] = narrow(widen(yr[c]) * (widen(gr[c]) - acc), dxr)
        else:
            for c in range(yr.shape[0]):
                acc += widen(gr[c])
            for c in range(yr.shape[0]):
                dxr[c] = narrow(widen(gr[c]) - math.exp(widen(yr[c])) * acc, dxr)

# one block per sample n; thread t handles c = t, t + blockDim.x, ...
@per_dtype(lambda dt: (array2(dt), array1(int64), int64, array1(accumulator(dt)), array2(accumulator(dt)),
                       array1(accumulator(dt)), array1(int64)), threads=ROW_THREADS, half=True)
def cross_entropy_fwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, labels, ignore_index, loss, stats, counted, bad):
        buf = cuda.shared.array(ROW_THREADS, acc)
        n = cuda.blockIdx.x
        C = x.shape[1]
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        m = acc(-math.inf)
        for c in range(t, C, nt):
            m = max(m, acc(x[n, c]))
        m = _block_max(buf, m)
        s = acc(0)
        for c in range(t, C, nt):
            s += math.exp(acc(x[n, c]) - m)
        s = block_sum(buf, s)
        if t == 0:
            log_s = math.log(s)
            stats[n, 0] = m
            stats[n, 1] = log_s
            label = labels[n]
            if label == ignore_index:
                loss[n] = acc(0)
                counted[n] = acc(0)
            elif label >= 0 and label < C:
                loss[n] = (m - acc(x[n, label])) + log_s
                counted[n] = acc(1)
            else:
                loss[n] = acc(math.nan)
                counted[n] = acc(1)
                bad[0] = 1
    return kernel


@njit(inline="always")
def _cross_entropy_fwd_body(x, labels, ignore_index, loss, stats, counted):
    """Returns the number of labels outside [0, C) that are not ignore_index (their loss is NaN)."""
    C = x.shape[1]
    bad = 0
    for n in prange(x.shape[0]):
        xn = x[n]
        m = widen(xn[0])
        for c in range(1, C):
            m = max(m, widen(xn[c]))
        s = zero(x)
        for c in range(C):
            s += math.exp(widen(xn[c]) - m)
        log_s = math.log(s)
        stats[n, 0] = m
        stats[n, 1] = log_s
        label = labels[n]
        if label == ignore_index:
            loss[n] = 0
            counted[n] = 0
        elif label >= 0 and label < C:
            loss[n] = (m - widen(xn[label])) + log_s
            counted[n] = 1
        else:
            loss[n] = math.nan
            counted[n] = 1
            bad += 1
    return bad


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def cross_entropy_fwd_cpu(x, labels, ignore_index, loss, stats, counted):
    return _cross_entropy_fwd_body(x, labels, ignore_index, loss, stats, counted)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def cross_entropy_fwd_serial_cpu(x, labels, ignore_index, loss, stats, counted):
    return _cross_entropy_fwd_body(x, labels, ignore_index, loss, stats, counted)


# one thread per element (n, c)
@per_dtype(lambda dt: (array2(dt), array2(accumulator(dt)), array1(int64), int64, array1(accumulator(dt)),
                       accumulator(dt), array2(dt)), threads=THREADS, half=True)
def cross_entropy_bwd_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, stats, labels, ignore_index, g, scale, dx):
        e = cuda.grid(1)
        C = x.shape[1]
        if e < dx.size:
            n = e // C
            c = e - n * C
            label = labels[n]
            if label == ignore_index:
                dx[n, c] = dt(0)
            else:
                gn = (g[n] if g.shape[0] > 1 else g[0]) * scale
                p = math.exp((acc(x[n, c]) - stats[n, 0]) - stats[n, 1])
                dx[n, c] = dt((p - acc(1) if c == label else p) * gn)
    return kernel


@njit(inline="always")
def _cross_entropy_bwd_body(x, stats, labels, ignore_index, g, scale, dx):
    C = x.shape[1]
    for n in prange(x.shape[0]):
        xn = x[n]
        dxn = dx[n]
        label = labels[n]
        if label == ignore_index:
            for c in range(C):
                dxn[c] = 0
        else:
            gn = (g[n] if g.shape[0] > 1 else g[0]) * scale
            m = stats[n, 0]
            log_s = stats[n, 1]
            for c in range(C):
                dxn[c] = narrow(math.exp((widen(xn[c]) - m) - log_s) * gn, dxn)
            dxn[label] = narrow((math.exp((widen(xn[label]) - m) - log_s) - stats.dtype.type(1)) * gn, dxn)


@njit(parallel=True, cache=True, error_model="numpy")
def cross_entropy_bwd_cpu(x, stats, labels, ignore_index, g, scale, dx):
    _cross_entropy_bwd_body(x, stats, labels, ignore_index, g, scale, dx)


@njit(cache=True, error_model="numpy")
def cross_entropy_bwd_serial_cpu(x, stats, labels, ignore_index, g, scale, dx):
    _cross_entropy_bwd_body(x, stats, labels, ignore_index, g, scale, dx)


def _row_threads(C):
    """Threads per row block: the smallest power of two >= C within [MIN_ROW_THREADS, ROW_THREADS]."""
    return min(ROW_THREADS, max(MIN_ROW_THREADS, 1 << max(0, int(C) - 1).bit_length()))


def _check(name, arrays, kinds):
    """Check that ``arrays`` share a device and are C-contiguous, the "data" ones of the first
    array's float dtype (float16, float32 or float64), the "acc" ones of its accumulator dtype
    (float32 for float16 data, else the same) and the "int" ones int64; returns the device flag."""
    first = arrays[0]
    if first.dtype not in softmax_fwd_cuda:
        raise TypeError(f"{name}: expected float16, float32 or float64 arrays, got {first.dtype}")
    on_device = is_device_array(first)
    wants = {"data": np.dtype(first.dtype), "acc": accumulator_dtype(first.dtype), "int": np.dtype(np.int64)}
    for a, kind in zip(arrays, kinds):
        want = wants[kind]
        if a.dtype != want or is_device_array(a) != on_device:
            what = {"data": "data", "acc": "per-row", "int": "index"}[kind]
            raise TypeError(f"{name}: every operand must be a {'CUDA device' if on_device else 'NumPy'} array "
                            f"and the {what} ones of dtype {want} for {first.dtype} data, got one of dtype {a.dtype}")
        contiguous = a.is_c_contiguous() if on_device else a.flags.c_contiguous
        if not contiguous:
            raise ValueError(f"{name}: operands must be C-contiguous")
    return on_device


def _view3(name, shapes):
    """The common shape of rank 3 (outer, C, inner) of the arrays ``shapes`` (all the same)."""
    if len(shapes[0]) != 3 or any(tuple(s) != tuple(shapes[0]) for s in shapes):
        raise ValueError(f"{name}: expected arrays of one shape (outer, C, inner), got {[tuple(s) for s in shapes]}")
    if shapes[0][1] < 1:
        raise ValueError(f"{name}: the softmax axis must not be empty, got shape {tuple(shapes[0])}")
    return shapes[0]


def _mode(mode, name):
    if mode not in MODES:
        raise ValueError(f"{name}: unknown mode {mode!r}, expected one of {sorted(MODES)}")
    return MODES[mode]


def softmax_fwd(mode, x, y):
    """``y`` = softmax or log-softmax of ``x`` over axis 1 of the (outer, C, inner) arrays."""
    code = _mode(mode, "softmax_fwd")
    outer, C, inner = _view3("softmax_fwd", (x.shape, y.shape))
    if _check("softmax_fwd", (x, y), ("data", "data")):
        if outer * inner:
            softmax_fwd_cuda[y.dtype][outer * inner, _row_threads(C), stream()](code, x, y)
        return
    reuse, work = y.dtype != HALF, accumulator_dtype(y.dtype)
    x, y = cpu_view(x), cpu_view(y)
    if inner == 1:
        softmax_fwd_rows_cpu(code, reuse, x.reshape((outer, C)), y.reshape((outer, C)))
    else:
        softmax_fwd_cpu(code, reuse, x, y, np.empty((outer, inner), work), np.empty((outer, inner), work))


def softmax_bwd(mode, y, g, dx):
    """``dx`` from the forward output ``y`` and its gradient ``g`` (all (outer, C, inner))."""
    code = _mode(mode, "softmax_bwd")
    outer, C, inner = _view3("softmax_bwd", (y.shape, g.shape, dx.shape))
    if _check("softmax_bwd", (y, g, dx), ("data",) * 3):
        if outer * inner:
            softmax_bwd_cuda[dx.dtype][outer * inner, _row_threads(C), stream()](code, y, g, dx)
        return
    work = accumulator_dtype(y.dtype)
    y, g, dx = cpu_view(y), cpu_view(g), cpu_view(dx)
    if inner == 1:
        softmax_bwd_rows_cpu(code, y.reshape((outer, C)), g.reshape((outer, C)), dx.reshape((outer, C)))
    else:
        softmax_bwd_cpu(code, y, g, dx, np.empty((outer, inner), work))


def _ce_shapes(name, x, labels, loss, stats, counted=None):
    N = x.shape[0]
    if (len(x.shape) != 2 or x.shape[1] < 1 or labels.shape != (N,) or (loss is not None and loss.shape != (N,))
            or stats.shape != (N, 2) or (counted is not None and counted.shape != (N,))):
        raise ValueError(f"{name}: expected logits (N, C) with C >= 1, labels, loss and counted (N,) and stats "
                         f"(N, 2), got {tuple(x.shape)}, {tuple(labels.shape)}, "
                         f"{None if loss is None else tuple(loss.shape)}, {tuple(stats.shape)}")


CE_CHECK = device_check("cross_entropy")


def cross_entropy_fwd(x, labels, ignore_index, loss, stats, counted):
    """Per-row loss ``logsumexp(x[n]) - x[n, label]`` (0 on ignored rows) of logits (N, C),
    ``stats[n] = (max_c x[n, c], log sum_c exp(x[n, c] - max))`` for the backward pass and
    ``counted[n]`` = 1 for the rows that count (label != ignore_index), else 0, so that a mean
    needs no host round-trip.

    Labels (int64) must lie in ``[0, C)`` or equal ``ignore_index``. A label outside gets a NaN
    loss and raises ValueError: at once on the CPU; on CUDA the kernel flags it and the next host
    read raises ``DeviceCheckError`` (a ValueError).
    """
    _ce_shapes("cross_entropy_fwd", x, labels, loss, stats, counted)
    on_device = _check("cross_entropy_fwd", (x, labels, loss, stats, counted), ("data", "int", "acc", "acc", "acc"))
    N, C = x.shape
    if not N:
        return
    message = (f"cross_entropy: target values must be class indices in [0, {C - 1}] (C = {C}) or "
               f"ignore_index={ignore_index}; the CUDA kernel found one outside")
    if on_device:
        bad = check_flag(CE_CHECK, message)
        cross_entropy_fwd_cuda[x.dtype][N, _row_threads(C), stream()](x, labels, ignore_index, loss, stats, counted,
                                                                       bad)
    elif cpu_kernel(cross_entropy_fwd_cpu, cross_entropy_fwd_serial_cpu, x.size)(cpu_view(x), labels, ignore_index,
                                                                                  loss, stats, counted):
        raise ValueError(message.replace("the CUDA kernel", "the CPU kernel"))


def cross_entropy_bwd(x, stats, labels, ignore_index, g, scale, dx):
    """``dx[n, c] = (softmax(x)[n, c] - [c == label[n]]) * g[n or 0] * scale``; 0 on ignored rows.

    ``stats`` comes from ``cross_entropy_fwd``; ``g`` has shape (N,) (reduction "none") or (1,)
    (one gradient for every row: "sum", "mean").
    """
    _ce_shapes("cross_entropy_bwd", x, labels, None, stats)
    if dx.shape != x.shape or g.shape not in ((1,), (x.shape[0],)):
        raise ValueError(f"cross_entropy_bwd: dx must have the logits' shape {tuple(x.shape)} and g shape (1,) "
                         f"or ({x.shape[0]},), got {tuple(dx.shape)} and {tuple(g.shape)}")
    on_device = _check("cross_entropy_bwd", (x, stats, labels, g, dx), ("data", "acc", "int", "acc", "data"))
    scale = accumulator_dtype(x.dtype).type(scale)
    if not x.size:
        return
    if on_device:
        cross_entropy_bwd_cuda[x.dtype][blocks(x.size, THREADS), THREADS, stream()](x, stats, labels, ignore_index, g,
                                                                           scale, dx)
    else:
        kernel = cpu_kernel(cross_entropy_bwd_cpu, cross_entropy_bwd_serial_cpu, x.size)
        kernel(cpu_view(x), stats, labels, ignore_index, g, scale, cpu_view(dx))


# one thread per row n
@per_dtype(lambda dt: (array2(dt), array1(int64), array1(accumulator(dt))), threads=THREADS, half=True)
def argmax_hits_cuda(dt):
    acc = accumulator(dt)

    @cuda.jit
    def kernel(x, labels, hits):
        n = cuda.grid(1)
        if n < x.shape[0]:
            best = 0
            top = acc(x[n, 0])
            for c in range(1, x.shape[1]):
                v = acc(x[n, c])
                if v > top:
                    best = c
                    top = v
            hits[n] = acc(1) if best == labels[n] else acc(0)
    return kernel


@njit(parallel=True, cache=True)
def argmax_hits_cpu(x, labels, hits):
    for n in prange(x.shape[0]):
        xn = x[n]
        best = 0
        top = widen(xn[0])
        for c in range(1, xn.shape[0]):
            v = widen(xn[c])
            if v > top:
                best = c
                top = v
        hits[n] = 1 if best == labels[n] else 0


def argmax_hits(x, labels, hits):
    """``hits[n] = 1`` where the first maximum of the logits ``x[n]`` (N, C) is at ``labels[n]``
    (int64), else 0; ``hits`` (N,) has the logits' accumulator dtype (float32 for float16 logits,
    so that a sum of hits counts exactly past 2048)."""
    N = x.shape[0]
    if len(x.shape) != 2 or x.shape[1] < 1 or labels.shape != (N,) or hits.shape != (N,):
        raise ValueError(f"argmax_hits: expected logits (N, C) with C >= 1 and labels, hits (N,), got "
                         f"{tuple(x.shape)}, {tuple(labels.shape)}, {tuple(hits.shape)}")
    on_device = _check("argmax_hits", (x, labels, hits), ("data", "int", "acc"))
    if not N:
        return
    if on_device:
        argmax_hits_cuda[x.dtype][blocks(N, THREADS), THREADS, stream()](x, labels, hits)
    else:
        argmax_hits_cpu(cpu_view(x), labels, hits)
