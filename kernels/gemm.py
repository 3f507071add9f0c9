"""General matrix multiply: ``c = alpha * op(a) @ op(b) + beta * c``.

``op(a)`` is ``a`` or ``a.T`` (``trans_a``), likewise for ``b``; ``op(a)`` is (M, K), ``op(b)``
is (K, N), ``c`` is (M, N). The batched form applies the same product to every matrix of a
stack: ``c[z] = alpha * op(a[z]) @ op(b[z]) + beta * c[z]``. With ``beta == 0`` the old
contents of ``c`` are never read (NaN garbage in ``c`` does not leak into the result).

CUDA: a tiled shared-memory kernel. Each block of 16 x 16 threads owns a BM x BN = 128 x 128
tile of ``c`` and walks K in BK = 8 deep tiles through two K-major shared buffers: every thread
loads its share of tile t+1 into registers (reading ``a`` and ``b`` in their stored order,
coalesced whether or not the operand is transposed) while it multiplies tile t, then stores it
into the other buffer; one barrier per tile. Each thread keeps an 8 x 8 register tile of
scalars (``tile_fma``) and reads its 8 + 8 operands per K-step as four 128-bit shared loads
(``fragment``); the 8 K-steps are written out (``tile_step``). Index math is uint32, so operands
must have fewer than 2**31 elements. ``conv_implicit_gemm`` runs the same mainloop on gathered
tiles. When the M x N tiles alone would leave the GPU idle (a weight gradient: small M x N,
long K), the K range is split over ``split_k`` blocks that write partial products, and a second
kernel adds them in a fixed order (deterministic, no atomics). The split count fills whole
waves of the blocks the device holds at once (``cuda_util.wave_splits``, from its SM count and
this kernel's occupancy).
CPU: NumPy's BLAS (``np.matmul``), which beats a hand-written Numba loop there; stacks are split
over the CPU threads (``matmul_cpu``).
float16 (storage only, ``float16.py``): the CUDA kernel widens the operands to float32 as it
stages them and multiplies in fp32; its fp32 partial products (one K-split at least) are added
and rounded once to float16 by the reduction kernel. The CPU widens both operands to float32 and
runs SGEMM, then rounds once.
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import cuda, float32, int32, int64, uint32
from threadpoolctl import ThreadpoolController

from .cuda_util import (SIMULATOR, array1, blocks, device_empty, is_device_array, per_dtype, resident_blocks, stream,
                        wave_splits)
from .elementwise import cast
from .float16 import HALF, accumulator, accumulator_dtype

TX = TY = 2 if SIMULATOR else 16        # threads per block along the tile's columns and rows
BK = 8                             # reduction depth of a shared tile (tile_step is written out for 8)
TM = TN = 8                        # per-thread register tile, written out as scalars (tile_fma)
BM = TM * TY                       # block tile rows
BN = TN * TX                       # block tile columns
THREADS = TX * TY
assert BM == BN and (THREADS % BM == 0 or BM % THREADS == 0) and (THREADS % BK == 0 or BK % THREADS == 0)
A_LOADS = BM * BK // THREADS       # shared-tile elements each thread stages per K-tile (BM == BN)
# K-major shared tiles; 4 pad columns keep every row 16-byte aligned for the 128-bit fragment
# loads and put the 8 rows a warp stores at once on different banks
A_PITCH = BM + 4
B_PITCH = BN + 4
SMEM_ALIGN = None if SIMULATOR else 16     # the simulator rejects an alignment argument
SPLIT_K_MIN_LEN = 2 * BK if SIMULATOR else 256
REDUCE_THREADS = 32 if SIMULATOR else 256
INDEX_LIMIT = 2 ** 31              # the CUDA kernels index with 32-bit offsets
u32 = uint32


def jit_options(dt):
    """Launch bounds for the 8 x 8-tile kernels: two resident float32 blocks per SM hold ptxas to
    128 registers (64 accumulators, 16 fragment values, the staged loads, addresses); float64's
    accumulators alone take 128, so it gets one block and up to 255. None under the simulator."""
    return {} if SIMULATOR else {"launch_bounds": (THREADS, 2 if dt == float32 else 1)}


@cuda.jit(device=True, inline="always")
def _row_fma(c, a, b):
    return (c[0] + a * b[0], c[1] + a * b[1], c[2] + a * b[2], c[3] + a * b[3],
            c[4] + a * b[4], c[5] + a * b[5], c[6] + a * b[6], c[7] + a * b[7])


@cuda.jit(device=True, inline="always")
def tile_fma(acc, a, b):
    """acc[i][j] + a[i] * b[j] for the 8 x 8 register tile (a tuple of 8 rows of 8 scalars): 64 FFMAs."""
    return (_row_fma(acc[0], a[0], b), _row_fma(acc[1], a[1], b), _row_fma(acc[2], a[2], b),
            _row_fma(acc[3], a[3], b), _row_fma(acc[4], a[4], b), _row_fma(acc[5], a[5], b),
            _row_fma(acc[6], a[6], b), _row_fma(acc[7], a[7], b))


@cuda.jit(device=True, inline="always")
def zero_tile(z):
    r = (z, z, z, z, z, z, z, z)
    return (r, r, r, r, r, r, r, r)


@cuda.jit(device=True, inline="always")
def fragment(s, buf, kk, t, half):
    """s[buf, kk, 4t + i] and s[buf, kk, half + 4t + i] for i < 4: a thread's 8 rows (or columns) of
    the register tile, two groups of 4 consecutive, 16-byte aligned values (two 128-bit loads)."""
    i = u32(4) * t
    j = u32(half) + i
    return (s[buf, kk, i], s[buf, kk, i + u32(1)], s[buf, kk, i + u32(2)], s[buf, kk, i + u32(3)],
            s[buf, kk, j], s[buf, kk, j + u32(1)], s[buf, kk, j + u32(2)], s[buf, kk, j + u32(3)])


@cuda.jit(device=True, inline="always")
def _k_step(a_s, b_s, buf, kk, ty, tx, acc):
    return tile_fma(acc, fragment(a_s, buf, kk, ty, BM // 2), fragment(b_s, buf, kk, tx, BN // 2))


@cuda.jit(device=True, inline="always")
def tile_step(a_s, b_s, buf, ty, tx, acc):
    """acc += the products of one BK-deep pair of shared tiles, written out for BK = 8 (NVVM
    unrolls a range(8) loop of this size only partly)."""
    acc = _k_step(a_s, b_s, buf, 0, ty, tx, acc)
    acc = _k_step(a_s, b_s, buf, 1, ty, tx, acc)
    acc = _k_step(a_s, b_s, buf, 2, ty, tx, acc)
    acc = _k_step(a_s, b_s, buf, 3, ty, tx, acc)
    acc = _k_step(a_s, b_s, buf, 4, ty, tx, acc)
    acc = _k_step(a_s, b_s, buf, 5, ty, tx, acc)
    acc = _k_step(a_s, b_s, buf, 6, ty, tx, acc)
    return _k_step(a_s, b_s, buf, 7, ty, tx, acc)


@cuda.jit(device=True, inline="always")
def _put(c, e, v, alpha, beta):
    if beta == 0:
        c[e] = alpha * v
    else:
        c[e] = alpha * v + beta * c[e]


@cuda.jit(device=True, inline="always")
def _put4(c, off, col, N, v0, v1, v2, v3, alpha, beta):
    """c[off + col + j] = alpha * v_j (+ beta * c[...]) for the columns col + j below N."""
    if col < N:
        _put(c, off + col, v0, alpha, beta)
    if col + u32(1) < N:
        _put(c, off + col + u32(1), v1, alpha, beta)
    if col + u32(2) < N:
        _put(c, off + col + u32(2), v2, alpha, beta)
    if col + u32(3) < N:
        _put(c, off + col + u32(3), v3, alpha, beta)


@cuda.jit(device=True, inline="always")
def _put_row(c, m, M, N, row_off, col, row, alpha, beta):
    """Row ``m`` (below M) of a thread's register tile: columns col + j and col + BN/2 + j, j < 4."""
    if m < M:
        _put4(c, row_off + m * N, col, N, row[0], row[1], row[2], row[3], alpha, beta)
        _put4(c, row_off + m * N, col + u32(BN // 2), N, row[4], row[5], row[6], row[7], alpha, beta)


@cuda.jit(device=True, inline="always")
def stage(src, regs, zero, origin, row_step, k_step, row_left, k_left, k_major):
    """regs[l] = src[origin + dr*row_step + dk*k_step], or 0 when dr >= row_left or dk >= k_left
    (outside op(src)), for the elements l of this thread's share of a BK x BM (= BN) tile;
    (dr, dk) = element(l, k_major) are compile-time constants, ``origin`` addresses the
    thread's first element, the distances to the operand's edges are signed (they may be < 0)."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        v = zero
        if dr < row_left and dk < k_left:
            v = src[origin + u32(dr) * row_step + u32(dk) * k_step]
        regs[l] = v


@cuda.jit(device=True, inline="always")
def unstage(regs, tile, buf, row, kk, k_major):
    """tile[buf, kk + dk, row + dr] = regs[l]: the staged elements into a K-major shared tile."""
    for l in range(A_LOADS):
        dr, dk = element(l, k_major)
        tile[buf, kk + u32(dk), row + u32(dr)] = regs[l]


@cuda.jit(device=True, inline="always")
def element(l, k_major):
    """Where element e = tid + l*THREADS of a tile lies from element tid, as (rows, reduction
    indices): consecutive threads take consecutive addresses of the stored operand, along a row
    of the tile when it is stored K-major (row = e % BM, kk = e // BM), else along the reduction
    (kk = e % BK, row = e // BK). Exact because THREADS and BM (BK) divide one another."""
    if k_major:
        return (l * THREADS) % BM, (l * THREADS) // BM
    return (l * THREADS) // BK, (l * THREADS) % BK


@cuda.jit(device=True, inline="always")
def tile_origin(tid, k_major):
    """(row, kk) of element e = tid of a tile, in ``element``'s order."""
    if k_major:
        return tid % u32(BM), tid // u32(BM)
    return tid // u32(BK), tid % u32(BK)


def _gemm_signature(dt):
    at = accumulator(dt)
    return (array1(dt), array1(dt), array1(at)) + (int64,) * 7 + (at, at)


# one block per (BM x BN tile, matrix z, K-split ks) writing c[z*splits + ks]; thread (ty, tx)
# owns rows 4ty + i and BM/2 + 4ty + i, columns 4tx + j and BN/2 + 4tx + j (i, j < 4) of the tile.
# float16 operands are widened when they are staged: tiles, registers and c are float32 (fp32
# partial products that gemm_splitk_reduce_cuda rounds once)
@per_dtype(_gemm_signature, threads=THREADS, half=True)
def gemm_tiled_cuda(dt):
    at = accumulator(dt)

    @cuda.jit(**jit_options(at))
    def kernel(a, b, c, M, N, K, k_len, splits, trans_a, trans_b, alpha, beta):
        # two buffers: tile t+1 is staged while tile t is multiplied, one barrier per tile
        a_s = cuda.shared.array((2, BK, A_PITCH), at, SMEM_ALIGN)
        b_s = cuda.shared.array((2, BK, B_PITCH), at, SMEM_ALIGN)
        ra = cuda.local.array(A_LOADS, at)     # constant indices only: kept in registers
        rb = cuda.local.array(A_LOADS, at)
        M = u32(M)
        N = u32(N)
        K = u32(K)
        zc = u32(cuda.blockIdx.z)
        z = zc // u32(splits)
        k_begin = u32(zc % u32(splits) * u32(k_len))
        k_end = u32(min(K, k_begin + u32(k_len)))
        tiles = u32(k_end - k_begin + u32(BK - 1)) // u32(BK)
        m0 = u32(cuda.blockIdx.y * u32(BM))
        n0 = u32(cuda.blockIdx.x * u32(BN))
        tx = u32(cuda.threadIdx.x)
        ty = u32(cuda.threadIdx.y)
        tid = u32(ty * u32(TX) + tx)
        # op(a) is (M, K): a[z] is stored (M, K), or (K, M) when transposed (then K-major);
        # op(b) is (K, N): b[z] is stored (K, N) (K-major for the tile's columns), or (N, K)
        ta = trans_a != 0
        tb = trans_b == 0
        a_row, a_k = (u32(1), M) if ta else (K, u32(1))
        b_row, b_k = (u32(1), N) if tb else (K, u32(1))
        ar, akk = tile_origin(tid, ta)
        br, bkk = tile_origin(tid, tb)
        # int32 (possibly negative) distances to the operand's edges from this thread's first element
        a_rows_left = int32(int32(M - m0) - int32(ar))
        b_rows_left = int32(int32(N - n0) - int32(br))
        a_origin = z * M * K + (m0 + ar) * a_row + (k_begin + akk) * a_k
        b_origin = z * N * K + (n0 + br) * b_row + (k_begin + bkk) * b_k
        k_count = int32(k_end - k_begin)
        zero = at(0)
        stage(a, ra, zero, a_origin, a_row, a_k, a_rows_left, int32(k_count - int32(akk)), ta)
        stage(b, rb, zero, b_origin, b_row, b_k, b_rows_left, int32(k_count - int32(bkk)), tb)
        unstage(ra, a_s, 0, ar, akk, ta)
        unstage(rb, b_s, 0, br, bkk, tb)
        cuda.syncthreads()
        acc = zero_tile(zero)
        for t in range(tiles):
            buf = u32(t) % u32(2)
            more = u32(t) + u32(1) < tiles
            if more:
                kt = (u32(t) + u32(1)) * u32(BK)
                stage(a, ra, zero, a_origin + kt * a_k, a_row, a_k, a_rows_left, int32(k_count - int32(akk + kt)), ta)
                stage(b, rb, zero, b_origin + kt * b_k, b_row, b_k, b_rows_left, int32(k_count - int32(bkk + kt)), tb)
            acc = tile_step(a_s, b_s, buf, ty, tx, acc)
            if more:
                unstage(ra, a_s, buf ^ u32(1), ar, akk, ta)
                unstage(rb, b_s, buf ^ u32(1), br, bkk, tb)
            cuda.syncthreads()
        off = zc * M * N
        col = n0 + u32(4) * tx
        m = m0 + u32(4) * ty
        h = m + u32(BM // 2)
        _put_row(c, m, M, N, off, col, acc[0], alpha, beta)
        _put_row(c, m + u32(1), M, N, off, col, acc[1], alpha, beta)
        _put_row(c, m + u32(2), M, N, off, col, acc[2], alpha, beta)
        _put_row(c, m + u32(3), M, N, off, col, acc[3], alpha, beta)
        _put_row(c, h, M, N, off, col, acc[4], alpha, beta)
        _put_row(c, h + u32(1), M, N, off, col, acc[5], alpha, beta)
        _put_row(c, h + u32(2), M, N, off, col, acc[6], alpha, beta)
        _put_row(c, h + u32(3), M, N, off, col, acc[7], alpha, beta)
    return kernel


def _reduce_signature(dt):
    at = accumulator(dt)
    return (at[:, :, ::1], dt[:, :, ::1], int64, at, at)


# one thread per element (z, m, n) of c; it adds the split-K partials in split order (in the
# accumulator dtype, rounded once to c's)
@per_dtype(_reduce_signature, threads=REDUCE_THREADS, half=True)
def gemm_splitk_reduce_cuda(dt):
    at = accumulator(dt)

    @cuda.jit
    def kernel(partial, c, splits, alpha, beta):
        i = cuda.grid(1)
        Z, M, N = c.shape[0], c.shape[1], c.shape[2]
        if i >= Z * M * N:
            return
        n = i % N
        m = (i // N) % M
        z = i // (N * M)
        acc = at(0)
        for ks in range(splits):
            acc += partial[z * splits + ks, m, n]
        if beta == at(0):
            c[z, m, n] = dt(alpha * acc)
        else:
            c[z, m, n] = dt(alpha * acc + beta * at(c[z, m, n]))
    return kernel


def matmul_cpu(a, b, out, split=True):
    """``out = a @ b`` on NumPy arrays through BLAS; ``out`` C-contiguous.

    A stack of at least as many matrices as the CPU has threads (the per-frequency products of
    Winograd and FFT, grouped im2col) is split over the threads by its first axis, each part a
    loop of single-threaded BLAS calls: one fork/join for the whole stack instead of one per
    matrix, which measured 1.1-2x faster on 2 cores and does not stall when a core is busy.
    ``split=False`` leaves a stack of few large products to BLAS's own threads (im2col's
    pointwise layers: 0.62 against 0.76 ms for four 64 x 64 x 3136 products on 2 cores).
    A K = 1 product is an outer product, which np.matmul runs through a slow non-BLAS loop."""
    if a.shape[-1] == 1:
        np.multiply(a, b, out=out)
        return
    parts = min(numba.get_num_threads(), out.shape[0]) if out.ndim >= 3 and split else 1
    if parts < 2:
        np.matmul(a, b, out=out)
        return
    cuts = [out.shape[0] * i // parts for i in range(parts + 1)]

    def cut(m, lo, hi):     # an operand broadcast along the stack is passed whole
        return m[lo:hi] if m.ndim == out.ndim and m.shape[0] == out.shape[0] else m

    def part(lo, hi):
        np.matmul(cut(a, lo, hi), cut(b, lo, hi), out=out[lo:hi])
    with _blas_threads(1):
        for f in [_pool(parts).submit(part, lo, hi) for lo, hi in zip(cuts, cuts[1:])]:
            f.result()


_POOLS = {}


def _pool(workers):
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="convkern-blas")
    return _POOLS[workers]


_BLAS = []


def _blas_threads(n):
    """Context manager limiting BLAS (NumPy's OpenBLAS/MKL) to ``n`` threads meanwhile."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=n, user_api="blas")


def gemm_cpu(a, b, c, trans_a=False, trans_b=False, alpha=1, beta=0):
    """``c = alpha * op(a) @ op(b) + beta * c`` on NumPy arrays (2-D, or stacks of matrices) via BLAS."""
    if c.dtype == HALF:
        # NumPy has no BLAS for float16 (np.matmul runs a plain loop on it); float16 widens to
        # float32 exactly, so SGEMM computes the float16 product with fp32 accumulation, and the
        # result is rounded once
        c32 = float32_copy(c) if beta != 0 else np.empty(c.shape, np.float32)
        gemm_cpu(float32_copy(a), float32_copy(b), c32, trans_a, trans_b, alpha, beta)
        cast(c32, c)
        return
    op_a = np.swapaxes(a, -1, -2) if trans_a else a
    op_b = np.swapaxes(b, -1, -2) if trans_b else b
    dt = c.dtype.type
    if beta == 0:
        matmul_cpu(op_a, op_b, c)
        if alpha != 1:
            c *= dt(alpha)
        return
    ab = np.empty_like(c)
    matmul_cpu(op_a, op_b, ab)
    if alpha != 1:
        ab *= dt(alpha)
    if beta != 1:
        c *= dt(beta)
    c += ab


def float32_copy(a):
    """A float32 copy of the NumPy array ``a`` (float16 widens exactly), converted by
    ``elementwise.cast``: about 20x NumPy's astype from float16 (measured on 1M elements)."""
    out = np.empty(a.shape, np.float32)
    cast(np.ascontiguousarray(a), out)
    return out


def _check(a, b, c, trans_a, trans_b, rank):
    if a.ndim != rank or b.ndim != rank or c.ndim != rank:
        raise ValueError(f"gemm: a, b, c must be {rank}-D, got {a.ndim}-D, {b.ndim}-D, {c.ndim}-D")
    if not (a.dtype == b.dtype == c.dtype):
        raise TypeError(f"gemm: dtype mismatch: a {a.dtype}, b {b.dtype}, c {c.dtype}")
    a_rows, a_cols = a.shape[rank - 2], a.shape[rank - 1]
    b_rows, b_cols = b.shape[rank - 2], b.shape[rank - 1]
    M, K = (a_cols, a_rows) if trans_a else (a_rows, a_cols)
    Kb, N = (b_cols, b_rows) if trans_b else (b_rows, b_cols)
    lead = tuple(a.shape[:rank - 2])
    if (Kb != K or tuple(c.shape) != lead + (M, N)
            or not (lead == tuple(b.shape[:rank - 2]) == tuple(c.shape[:rank - 2]))):
        raise ValueError(f"gemm: shapes do not chain: op(a) {(M, K)}, op(b) {(Kb, N)}, c {tuple(c.shape)}"
                         f" (a {tuple(a.shape)}, b {tuple(b.shape)})")
    return M, N, K


def _k_splits(M, N, K, Z, split_k, slots):
    """(splits, k_len): K cut into ``splits`` ranges of ``k_len`` (whole K-tiles). By default the
    count that fills whole waves of ``slots`` resident blocks (``wave_splits``), each range at
    least SPLIT_K_MIN_LEN long."""
    if split_k is None:
        tiles = blocks(N, BN) * blocks(M, BM) * Z
        split_k = wave_splits(tiles, K // SPLIT_K_MIN_LEN, slots)
    splits = max(1, min(int(split_k), K))
    k_len = BK * -(-max(1, -(-K // splits)) // BK)
    return max(1, -(-K // k_len)), k_len


def gemm_batched(a, b, c, trans_a=False, trans_b=False, alpha=1, beta=0, split_k=None):
    """``c[z] = alpha * op(a[z]) @ op(b[z]) + beta * c[z]`` for C-contiguous stacks (Z, rows, cols).

    NumPy arrays run on the CPU (BLAS), CUDA device arrays on ``gemm_tiled_cuda``. ``split_k``
    (CUDA only) splits the K range over that many blocks per output tile, plus a
    deterministic reduction; ``None`` chooses from the shape.
    """
    M, N, K = _check(a, b, c, trans_a, trans_b, 3)
    if not is_device_array(c):
        gemm_cpu(a, b, c, trans_a, trans_b, alpha, beta)
        return
    if not (a.is_c_contiguous() and b.is_c_contiguous() and c.is_c_contiguous()):
        raise ValueError("gemm: CUDA operands must be C-contiguous")
    dt = accumulator_dtype(c.dtype).type
    Z = c.shape[0]
    kernel = gemm_tiled_cuda[c.dtype]
    splits, k_len = _k_splits(M, N, K, Z, split_k, resident_blocks(kernel, THREADS) if split_k is None else 1)
    if max(a.size, b.size, Z * splits * M * N) >= INDEX_LIMIT:
        raise ValueError(f"gemm: the CUDA kernel indexes with 32-bit offsets: a ({a.size}), b ({b.size}) and c "
                         f"({Z * M * N}, times {splits} K-splits) must each have fewer than 2**31 elements")
    # float16 products go through fp32 partials even unsplit, so that c is rounded once
    direct = splits == 1 and c.dtype != HALF
    out = c if direct else device_empty((Z * splits, M, N), dt)
    grid = (blocks(N, BN), blocks(M, BM), Z * splits)
    scale = (dt(alpha), dt(beta)) if direct else (dt(1), dt(0))
    kernel[grid, (TX, TY), stream()](a.reshape(-1), b.reshape(-1), out.reshape(-1), M, N, K, k_len, splits,
                                     int(trans_a), int(trans_b), *scale)
    if not direct:
        size = Z * M * N
        gemm_splitk_reduce_cuda[c.dtype][blocks(size, REDUCE_THREADS), REDUCE_THREADS, stream()](
            out, c, splits, dt(alpha), dt(beta))


def gemm(a, b, c, trans_a=False, trans_b=False, alpha=1, beta=0, split_k=None):
    """``c = alpha * op(a) @ op(b) + beta * c`` for 2-D C-contiguous arrays, ``op(x) = x.T if trans_x``.

    ``op(a)`` is (M, K), ``op(b)`` is (K, N), ``c`` is (M, N); all the same dtype. NumPy arrays
    run on the CPU (BLAS), CUDA device arrays on ``gemm_tiled_cuda`` (``split_k``: see
    ``gemm_batched``). Overwrites ``c`` when ``beta == 0``.
    """
    _check(a, b, c, trans_a, trans_b, 2)
    gemm_batched(a.reshape((1,) + a.shape), b.reshape((1,) + b.shape), c.reshape((1,) + c.shape),
                 trans_a, trans_b, alpha, beta, split_k)
