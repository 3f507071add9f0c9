"""General matrix multiply: ``c = alpha * op(a) @ op(b) + beta * c``.

``op(a)`` is ``a`` or ``a.T`` (``trans_a``), likewise for ``b``; ``op(a)`` is (M, K), ``op(b)``
is (K, N), ``c`` is (M, N). The batched form applies the same product to every matrix of a
stack: ``c[z] = alpha * op(a[z]) @ op(b[z]) + beta * c[z]``. With ``beta == 0`` the old
contents of ``c`` are never read (NaN garbage in ``c`` does not leak into the result).

CUDA: a tiled shared-memory kernel. Each block owns a BM x BN tile of ``c`` and walks the
K dimension in BK-deep tiles staged in shared memory; each thread keeps a TM x TN register
micro-tile. The tile loads read ``a`` and ``b`` in their stored order (coalesced whether or
not the operand is transposed) and write the tiles K-major. When the M x N tiles alone
would leave the GPU idle (a weight gradient: small M x N, long K), the K range is split over
``split_k`` blocks that write partial products, and a second kernel adds them in a fixed
order (deterministic, no atomics).
CPU: NumPy's BLAS (``np.matmul``), which beats a hand-written Numba loop there; stacks are split
over the CPU threads (``matmul_cpu``).
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import cuda, int64
from threadpoolctl import ThreadpoolController

from .cuda_util import SIMULATOR, blocks, is_device_array, per_dtype

if SIMULATOR:
    BM, BN, BK, TM, TN = 8, 32, 8, 4, 16
else:
    BM, BN, BK, TM, TN = 64, 64, 8, 4, 4
TY = BM // TM                      # thread rows per block
TX = BN // TN                      # thread columns per block
THREADS = TX * TY
A_LOADS = BM * BK // THREADS       # shared-tile elements each thread stages per K-tile
B_LOADS = BN * BK // THREADS
A_PITCH = BM + 1                   # the padding column spreads K-major stores over the banks
B_PITCH = BN + 1
SPLIT_K_BLOCKS = 4 if SIMULATOR else 264     # ~2 blocks per SM on an H100: split K below this
SPLIT_K_MIN_LEN = 2 * BK if SIMULATOR else 256
REDUCE_THREADS = 32 if SIMULATOR else 256


def _gemm_signature(dt):
    return (dt[:, :, ::1], dt[:, :, ::1], dt[:, :, ::1]) + (int64,) * 7 + (dt, dt)


# one block per (BM x BN tile, matrix z, K-split ks) writing c[z*splits + ks];
# thread (ty, tx) owns rows ty + i*TY, columns tx + j*TX of the tile
@per_dtype(_gemm_signature)
def gemm_tiled_cuda(dt):
    @cuda.jit
    def kernel(a, b, c, M, N, K, k_len, splits, trans_a, trans_b, alpha, beta):
        a_tile = cuda.shared.array((BK, A_PITCH), dt)
        b_tile = cuda.shared.array((BK, B_PITCH), dt)
        acc = cuda.local.array((TM, TN), dt)
        a_reg = cuda.local.array(TM, dt)
        b_reg = cuda.local.array(TN, dt)
        zc = cuda.blockIdx.z
        z = zc // splits
        k_begin = (zc % splits) * k_len
        k_end = min(K, k_begin + k_len)
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = dt(0)
        for k0 in range(k_begin, k_end, BK):
            for l in range(A_LOADS):
                e = tid + l * THREADS
                if trans_a:
                    row = e % BM
                    kk = e // BM
                else:
                    row = e // BK
                    kk = e % BK
                m = m0 + row
                k = k0 + kk
                v = dt(0)
                if m < M and k < k_end:
                    v = a[z, k, m] if trans_a else a[z, m, k]
                a_tile[kk, row] = v
            for l in range(B_LOADS):
                e = tid + l * THREADS
                if trans_b:
                    col = e // BK
                    kk = e % BK
                else:
                    col = e % BN
                    kk = e // BN
                n = n0 + col
                k = k0 + kk
                v = dt(0)
                if n < N and k < k_end:
                    v = b[z, n, k] if trans_b else b[z, k, n]
                b_tile[kk, col] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    a_reg[i] = a_tile[kk, ty + i * TY]
                for j in range(TN):
                    b_reg[j] = b_tile[kk, tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        for i in range(TM):
            m = m0 + ty + i * TY
            if m < M:
                for j in range(TN):
                    n = n0 + tx + j * TX
                    if n < N:
                        if beta == dt(0):
                            c[zc, m, n] = alpha * acc[i, j]
                        else:
                            c[zc, m, n] = alpha * acc[i, j] + beta * c[zc, m, n]
    return kernel


def _reduce_signature(dt):
    return (dt[:, :, ::1], dt[:, :, ::1], int64, dt, dt)


# one thread per element (z, m, n) of c; it adds the split-K partials in split order
@per_dtype(_reduce_signature)
def gemm_splitk_reduce_cuda(dt):
    @cuda.jit
    def kernel(partial, c, splits, alpha, beta):
        i = cuda.grid(1)
        Z, M, N = c.shape[0], c.shape[1], c.shape[2]
        if i >= Z * M * N:
            return
        n = i % N
        m = (i // N) % M
        z = i // (N * M)
        acc = dt(0)
        for ks in range(splits):
            acc += partial[z * splits + ks, m, n]
        if beta == dt(0):
            c[z, m, n] = alpha * acc
        else:
            c[z, m, n] = alpha * acc + beta * c[z, m, n]
    return kernel


def matmul_cpu(a, b, out):
    """``out = a @ b`` on NumPy arrays through BLAS; ``out`` C-contiguous.

    A stack of at least as many matrices as the CPU has threads (the per-frequency products of
    Winograd and FFT, grouped im2col) is split over the threads by its first axis, each part a
    loop of single-threaded BLAS calls: one fork/join for the whole stack instead of one per
    matrix, which measured 1.1-2x faster on 2 cores and does not stall when a core is busy.
    A K = 1 product is an outer product, which np.matmul runs through a slow non-BLAS loop."""
    if a.shape[-1] == 1:
        np.multiply(a, b, out=out)
        return
    parts = min(numba.get_num_threads(), out.shape[0]) if out.ndim >= 3 else 1
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


def _k_splits(M, N, K, Z, split_k):
    """(splits, k_len): K cut into ``splits`` ranges of ``k_len`` (whole K-tiles). By default
    enough splits for SPLIT_K_BLOCKS blocks in all, each at least SPLIT_K_MIN_LEN long."""
    if split_k is None:
        tiles = blocks(N, BN) * blocks(M, BM) * Z
        split_k = min(-(-SPLIT_K_BLOCKS // tiles), K // SPLIT_K_MIN_LEN)
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
    dt = c.dtype.type
    Z = c.shape[0]
    splits, k_len = _k_splits(M, N, K, Z, split_k)
    out = c if splits == 1 else cuda.device_array((Z * splits, M, N), c.dtype)
    grid = (blocks(N, BN), blocks(M, BM), Z * splits)
    scale = (dt(alpha), dt(beta)) if splits == 1 else (dt(1), dt(0))
    gemm_tiled_cuda[c.dtype][grid, (TX, TY)](a, b, out, M, N, K, k_len, splits, int(trans_a), int(trans_b), *scale)
    if splits > 1:
        size = Z * M * N
        gemm_splitk_reduce_cuda[c.dtype][blocks(size, REDUCE_THREADS), REDUCE_THREADS](
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
