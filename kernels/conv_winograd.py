"""Winograd minimal filtering for 3x3, stride-1, dilation-1 convolutions: F(2x2, 3x3) and F(4x4, 3x3).

Output tile size m (2 or 4), input tile size a = m + 2. With the (a x a) input patch ``d`` of an
m x m output tile and a 3x3 filter ``g``, one tile of the correlation is (Lavin & Gray, 2016)

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

with the matrices of ``MATRICES`` (interpolation points 0, ±1 for m = 2 and 0, ±1, ±2 for m = 4,
plus infinity). Tile (th, tw) of image n covers output rows th*m .. th*m + m - 1 and columns
tw*m .. tw*m + m - 1 and reads input rows th*m - ph + i, columns tw*m - pw + j (i, j < a), zero
outside the input; ``TH = ceil(P/m)``, ``TW = ceil(Q/m)``, tiles numbered ``(n*TH + th)*TW + tw``.
Over all tiles and channels the element-wise product is a batched GEMM, one product per
frequency xi = (xi_i, xi_j) and group:

    forward          M[xi, g] (Kg x T)  = U[xi, g] (Kg x Cg)  @ V[xi, g] (Cg x T),  U = G w G^T,  V = B^T d B
                     y tile = A^T M A
    backward data    dx is the forward of dy with every filter rotated 180 degrees, input and output channels
                     swapped per group (``U^T`` in the GEMM) and top/left pads 2 - ph, 2 - pw (negative: the
                     first rows of dy are never read)
    backward filter  S[xi, g] (Kg x Cg) = sum over tiles of Z[xi, g] (Kg x T) @ V[xi, g]^T,  Z = A dY A^T,
                     dw = G^T S G

(backward filter is the adjoint of the forward: the tile map y = A^T (U ⊙ V) A is linear in U,
so dL/dU = (A dY A^T) ⊙ V per tile and dL/dg = G^T (dL/dU) G, summed over tiles; output
positions of a tile past P or Q carry dY = 0).

Every pass is built from the same kernels on both backends: a filter transform (``U``, or ``dw``
from ``S``), a tile transform of the source (``V``; ``Z`` for the output gradient), the
per-frequency GEMM (``gemm.gemm_batched``: BLAS on the CPU, the tiled CUDA GEMM on device
arrays) and the inverse output transform. The tiles run in chunks of whole tile rows, so the
transformed tiles of a chunk (``V`` and ``M``, layout (a*a, channels, tiles), tiles fastest)
stay within a fixed workspace. The launchers allocate the workspace; the kernels never do.

CUDA: one thread per (channel, tile) for the tile transforms and per (k, c) for the filter
transforms; each thread keeps its tile in registers. CPU: a work item is one channel of a
chunk. A 2-D transform is two passes of a 1-D transform applied lane-wise to vectors: a column
pass along the input (or output) rows of each tile row, and a row pass along all tiles of the
chunk at once (reading every m-th column), through a small per-run scratch; filter transforms
are vectorised over input channels. The 1-D transforms (``_bt4`` ...) are one Python source
compiled for both backends.
"""
import numba
import numpy as np
from numba import cuda, int64, njit, prange, uint64

from .conv_algorithm import ConvAlgorithm, check_conv_arrays
from .cuda_util import SIMULATOR, array4, blocks, device_empty, is_device_array, per_dtype, stream
from .gemm import gemm_batched

TILES = (2, 4)
THREADS = 32 if SIMULATOR else 256
# Workspace for one chunk of tiles: the transformed source and output tiles together. On the
# CPU, L2-sized chunks measured no faster than large ones, and every chunk costs a*a*groups
# BLAS calls, each a fork/join of BLAS's threads: large chunks.
CPU_CHUNK_BYTES = 32 << 20
CPU_MIN_TILES = 512          # but at least this many tiles a chunk (the GEMMs' column count)
CUDA_WORKSPACE = (1 << 14) if SIMULATOR else (64 << 20)
CPU_RUNS_PER_THREAD = 4      # CPU transforms split their channels into this many runs per thread
PREFER_MIN_TILES = 32        # auto's heuristic prefers winograd on the CPU from this many F(4x4) tiles

# Constants of the 1-D transforms, exact in float32; a float64 operand promotes them exactly.
TWO = np.float32(2)
FOUR = np.float32(4)
FIVE = np.float32(5)
EIGHT = np.float32(8)
HALF = np.float32(0.5)
QUARTER = np.float32(0.25)
SIX = np.float32(6)
TWELVE = np.float32(12)
TWENTY_FOUR = np.float32(24)


# ---------------------------------------------------------------------------------------------
# 1-D transforms: B^T d, G g, A^T x (forward) and A y, G^T s (their adjoints, backward filter).
# One source, compiled for the CPU kernels and as CUDA device functions.
# ---------------------------------------------------------------------------------------------

# Interpolation points 0, 1, -1 (m = 2) and 0, 1, -1, 2, -2 (m = 4), plus infinity: the
# Toom-Cook matrices (Lavin & Gray), with the first row of F(2)'s G and B^T negated.
def _bt2(d0, d1, d2, d3):
    return d0 - d2, d1 + d2, d2 - d1, d3 - d1


def _g2(g0, g1, g2):
    return g0, (g0 + g1 + g2) * HALF, (g0 - g1 + g2) * HALF, g2


def _at2(x0, x1, x2, x3):
    return x0 + x1 + x2, x1 - x2 + x3


def _a2(y0, y1):
    return y0, y0 + y1, y0 - y1, y1


def _gt2(s0, s1, s2, s3):
    return s0 + (s1 + s2) * HALF, (s1 - s2) * HALF, (s1 + s2) * HALF + s3


def _bt4(d0, d1, d2, d3, d4, d5):
    return (FOUR * d0 - FIVE * d2 + d4,
            d3 + d4 - FOUR * (d1 + d2),
            d4 - d3 + FOUR * (d1 - d2),
            d4 - d2 + TWO * (d3 - d1),
            d4 - d2 - TWO * (d3 - d1),
            FOUR * d1 - FIVE * d3 + d5)


def _g4(g0, g1, g2):
    return (g0 * QUARTER,
            -(g0 + g1 + g2) / SIX,
            (g1 - g0 - g2) / SIX,
            (g0 + TWO * g1 + FOUR * g2) / TWENTY_FOUR,
            (g0 - TWO * g1 + FOUR * g2) / TWENTY_FOUR,
            g2)


def _at4(x0, x1, x2, x3, x4, x5):
    return (x0 + x1 + x2 + x3 + x4,
            x1 - x2 + TWO * (x3 - x4),
            x1 + x2 + FOUR * (x3 + x4),
            x1 - x2 + EIGHT * (x3 - x4) + x5)


def _a4(y0, y1, y2, y3):
    return (y0,
            y0 + y1 + y2 + y3,
            y0 - y1 + y2 - y3,
            y0 + TWO * y1 + FOUR * y2 + EIGHT * y3,
            y0 - TWO * y1 + FOUR * y2 - EIGHT * y3,
            y3)


def _gt4(s0, s1, s2, s3, s4, s5):
    return (s0 * QUARTER - (s1 + s2) / SIX + (s3 + s4) / TWENTY_FOUR,
            (s2 - s1) / SIX + (s3 - s4) / TWELVE,
            (s3 + s4 - s1 - s2) / SIX + s5)


ONE_D = {"bt": {2: _bt2, 4: _bt4}, "g": {2: _g2, 4: _g4}, "at": {2: _at2, 4: _at4},
         "a": {2: _a2, 4: _a4}, "gt": {2: _gt2, 4: _gt4}}


def _matrix(f, n_in):
    """The matrix of the linear map ``f`` of ``n_in`` scalars, column j = f(e_j), in float64."""
    return np.array([f(*np.eye(n_in)[j]) for j in range(n_in)], dtype=np.float64).T


# (A^T, G, B^T) of F(m x m, 3 x 3) per output tile size m, read off the 1-D transforms
MATRICES = {m: (_matrix(ONE_D["at"][m], m + 2), _matrix(ONE_D["g"][m], 3), _matrix(ONE_D["bt"][m], m + 2))
            for m in TILES}


def _cpu(f):
    return njit(inline="always", cache=True)(f)


def _dev(f):
    return cuda.jit(device=True, inline="always")(f)


bt2_cpu, g2_cpu, at2_cpu, a2_cpu, gt2_cpu = (_cpu(f) for f in (_bt2, _g2, _at2, _a2, _gt2))
bt4_cpu, g4_cpu, at4_cpu, a4_cpu, gt4_cpu = (_cpu(f) for f in (_bt4, _g4, _at4, _a4, _gt4))
bt2_dev, g2_dev, at2_dev, a2_dev, gt2_dev = (_dev(f) for f in (_bt2, _g2, _at2, _a2, _gt2))
bt4_dev, g4_dev, at4_dev, a4_dev, gt4_dev = (_dev(f) for f in (_bt4, _g4, _at4, _a4, _gt4))


# ---------------------------------------------------------------------------------------------
# CUDA kernels
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True, inline="always")
def _load2_dev(plane, h, w, z):
    """plane[h, w + j] for j < 2, zero outside the plane."""
    H, W = plane.shape
    ok = h >= 0 and h < H
    return (plane[h, w] if ok and w >= 0 and w < W else z,
            plane[h, w + 1] if ok and w + 1 >= 0 and w + 1 < W else z)


@cuda.jit(device=True, inline="always")
def _load4_dev(plane, h, w, z):
    """plane[h, w + j] for j < 4, zero outside the plane."""
    H, W = plane.shape
    ok = h >= 0 and h < H
    return (plane[h, w] if ok and w >= 0 and w < W else z,
            plane[h, w + 1] if ok and w + 1 >= 0 and w + 1 < W else z,
            plane[h, w + 2] if ok and w + 2 >= 0 and w + 2 < W else z,
            plane[h, w + 3] if ok and w + 3 >= 0 and w + 3 < W else z)


@cuda.jit(device=True, inline="always")
def _load6_dev(plane, h, w, z):
    """plane[h, w + j] for j < 6, zero outside the plane."""
    H, W = plane.shape
    ok = h >= 0 and h < H
    return (plane[h, w] if ok and w >= 0 and w < W else z,
            plane[h, w + 1] if ok and w + 1 >= 0 and w + 1 < W else z,
            plane[h, w + 2] if ok and w + 2 >= 0 and w + 2 < W else z,
            plane[h, w + 3] if ok and w + 3 >= 0 and w + 3 < W else z,
            plane[h, w + 4] if ok and w + 4 >= 0 and w + 4 < W else z,
            plane[h, w + 5] if ok and w + 5 >= 0 and w + 5 < W else z)


@cuda.jit(device=True, inline="always")
def _bt4_row_dev(plane, h, w, z):
    """bt4 of plane[h, w + j], j < 6 (zero outside the plane)."""
    d = _load6_dev(plane, h, w, z)
    return bt4_dev(d[0], d[1], d[2], d[3], d[4], d[5])


@cuda.jit(device=True, inline="always")
def _bt2_row_dev(plane, h, w, z):
    """bt2 of plane[h, w + j], j < 4 (zero outside the plane)."""
    d = _load4_dev(plane, h, w, z)
    return bt2_dev(d[0], d[1], d[2], d[3])


@cuda.jit(device=True, inline="always")
def _a4_row_dev(plane, h, w, z):
    """a4 of plane[h, w + j], j < 4 (zero outside the plane)."""
    d = _load4_dev(plane, h, w, z)
    return a4_dev(d[0], d[1], d[2], d[3])


@cuda.jit(device=True, inline="always")
def _a2_row_dev(plane, h, w, z):
    """a2 of plane[h, w + j], j < 2 (zero outside the plane)."""
    d = _load2_dev(plane, h, w, z)
    return a2_dev(d[0], d[1])


def _filter_signature(dt):
    return (array4(dt), dt[:, :, ::1], int64, int64)


# one thread per filter (k, c): u[xi*a + xj, k, c] = (G g G^T)[xi, xj]
@per_dtype(_filter_signature, threads=THREADS)
def winograd_filter_transform_cuda(dt):
    @cuda.jit
    def kernel(w, u, m, flip):
        K, Cg = w.shape[0], w.shape[1]
        i = cuda.grid(1)
        if i >= K * Cg:
            return
        k = i // Cg
        c = i % Cg
        g = w[k, c]
        # rotated 180 degrees for the data gradient: tap (r, s) reads g[2 - r, 2 - s]
        r0 = 2 if flip else 0
        r2 = 2 - r0
        if m == 4:
            e0 = g4_dev(g[r0, r0], g[r0, 1], g[r0, r2])
            e1 = g4_dev(g[1, r0], g[1, 1], g[1, r2])
            e2 = g4_dev(g[r2, r0], g[r2, 1], g[r2, r2])
            for xj in range(6):
                col = g4_dev(e0[xj], e1[xj], e2[xj])
                for xi in range(6):
                    u[xi * 6 + xj, k, c] = col[xi]
        else:
            e0 = g2_dev(g[r0, r0], g[r0, 1], g[r0, r2])
            e1 = g2_dev(g[1, r0], g[1, 1], g[1, r2])
            e2 = g2_dev(g[r2, r0], g[r2, 1], g[r2, r2])
            for xj in range(4):
                col = g2_dev(e0[xj], e1[xj], e2[xj])
                for xi in range(4):
                    u[xi * 4 + xj, k, c] = col[xi]
    return kernel


def _tiles_signature(dt):
    return (array4(dt), dt[:, :, ::1]) + (int64,) * 6


# one thread per (channel c, tile t of the chunk): v[xi*a + xj, c, t] = (B^T d B)[xi, xj]
@per_dtype(_tiles_signature, threads=THREADS)
def winograd_input_transform_cuda(dt):
    @cuda.jit
    def kernel(src, v, m, row0, TH, TW, ph, pw):
        C = src.shape[1]
        nt = v.shape[2]
        i = cuda.grid(1)
        if i >= C * nt:
            return
        c = i // nt
        t = i % nt
        row = row0 + t // TW
        plane = src[row // TH, c]
        h = (row % TH) * m - ph
        w = (t % TW) * m - pw
        z = dt(0)
        if m == 4:
            e0 = _bt4_row_dev(plane, h, w, z)
            e1 = _bt4_row_dev(plane, h + 1, w, z)
            e2 = _bt4_row_dev(plane, h + 2, w, z)
            e3 = _bt4_row_dev(plane, h + 3, w, z)
            e4 = _bt4_row_dev(plane, h + 4, w, z)
            e5 = _bt4_row_dev(plane, h + 5, w, z)
            for xj in range(6):
                col = bt4_dev(e0[xj], e1[xj], e2[xj], e3[xj], e4[xj], e5[xj])
                for xi in range(6):
                    v[xi * 6 + xj, c, t] = col[xi]
        else:
            e0 = _bt2_row_dev(plane, h, w, z)
            e1 = _bt2_row_dev(plane, h + 1, w, z)
            e2 = _bt2_row_dev(plane, h + 2, w, z)
            e3 = _bt2_row_dev(plane, h + 3, w, z)
            for xj in range(4):
                col = bt2_dev(e0[xj], e1[xj], e2[xj], e3[xj])
                for xi in range(4):
                    v[xi * 4 + xj, c, t] = col[xi]
    return kernel


def _grad_signature(dt):
    return (array4(dt), dt[:, :, ::1]) + (int64,) * 4


# one thread per (output-gradient channel k, tile t of the chunk): v[xi*a + xj, k, t] = (A dY A^T)[xi, xj]
@per_dtype(_grad_signature, threads=THREADS)
def winograd_grad_output_transform_cuda(dt):
    @cuda.jit
    def kernel(dy, v, m, row0, TH, TW):
        K = dy.shape[1]
        nt = v.shape[2]
        i = cuda.grid(1)
        if i >= K * nt:
            return
        k = i // nt
        t = i % nt
        row = row0 + t // TW
        plane = dy[row // TH, k]
        p = (row % TH) * m
        q = (t % TW) * m
        z = dt(0)
        if m == 4:
            e0 = _a4_row_dev(plane, p, q, z)
            e1 = _a4_row_dev(plane, p + 1, q, z)
            e2 = _a4_row_dev(plane, p + 2, q, z)
            e3 = _a4_row_dev(plane, p + 3, q, z)
            for xj in range(6):
                col = a4_dev(e0[xj], e1[xj], e2[xj], e3[xj])
                for xi in range(6):
                    v[xi * 6 + xj, k, t] = col[xi]
        else:
            r0 = _a2_row_dev(plane, p, q, z)
            r1 = _a2_row_dev(plane, p + 1, q, z)
            for xj in range(4):
                col = a2_dev(r0[xj], r1[xj])
                for xi in range(4):
                    v[xi * 4 + xj, k, t] = col[xi]
    return kernel


def _output_signature(dt):
    return (dt[:, :, ::1], array4(dt)) + (int64,) * 4


# one thread per (output channel k, tile t of the chunk): its m x m tile of A^T M A, clipped to P x Q
@per_dtype(_output_signature, threads=THREADS)
def winograd_output_transform_cuda(dt):
    @cuda.jit
    def kernel(mm, dst, m, row0, TH, TW):
        P, Q = dst.shape[2], dst.shape[3]
        K = dst.shape[1]
        nt = mm.shape[2]
        i = cuda.grid(1)
        if i >= K * nt:
            return
        k = i // nt
        t = i % nt
        row = row0 + t // TW
        plane = dst[row // TH, k]
        p = (row % TH) * m
        q = (t % TW) * m
        if m == 4:
            e0 = at4_dev(mm[0, k, t], mm[1, k, t], mm[2, k, t], mm[3, k, t], mm[4, k, t], mm[5, k, t])
            e1 = at4_dev(mm[6, k, t], mm[7, k, t], mm[8, k, t], mm[9, k, t], mm[10, k, t], mm[11, k, t])
            e2 = at4_dev(mm[12, k, t], mm[13, k, t], mm[14, k, t], mm[15, k, t], mm[16, k, t], mm[17, k, t])
            e3 = at4_dev(mm[18, k, t], mm[19, k, t], mm[20, k, t], mm[21, k, t], mm[22, k, t], mm[23, k, t])
            e4 = at4_dev(mm[24, k, t], mm[25, k, t], mm[26, k, t], mm[27, k, t], mm[28, k, t], mm[29, k, t])
            e5 = at4_dev(mm[30, k, t], mm[31, k, t], mm[32, k, t], mm[33, k, t], mm[34, k, t], mm[35, k, t])
            for j in range(4):
                col = at4_dev(e0[j], e1[j], e2[j], e3[j], e4[j], e5[j])
                if q + j < Q:
                    for ii in range(4):
                        if p + ii < P:
                            plane[p + ii, q + j] = col[ii]
        else:
            e0 = at2_dev(mm[0, k, t], mm[1, k, t], mm[2, k, t], mm[3, k, t])
            e1 = at2_dev(mm[4, k, t], mm[5, k, t], mm[6, k, t], mm[7, k, t])
            e2 = at2_dev(mm[8, k, t], mm[9, k, t], mm[10, k, t], mm[11, k, t])
            e3 = at2_dev(mm[12, k, t], mm[13, k, t], mm[14, k, t], mm[15, k, t])
            for j in range(2):
                col = at2_dev(e0[j], e1[j], e2[j], e3[j])
                if q + j < Q:
                    for ii in range(2):
                        if p + ii < P:
                            plane[p + ii, q + j] = col[ii]
    return kernel


def _filter_grad_signature(dt):
    return (dt[:, :, ::1], array4(dt), int64)


# one thread per filter (k, c): dw[k, c] = G^T S G with S[xi, xj] = s[xi*a + xj, k, c]
@per_dtype(_filter_grad_signature, threads=THREADS)
def winograd_filter_grad_transform_cuda(dt):
    @cuda.jit
    def kernel(s, dw, m):
        K, Cg = dw.shape[0], dw.shape[1]
        i = cuda.grid(1)
        if i >= K * Cg:
            return
        k = i // Cg
        c = i % Cg
        if m == 4:
            e0 = gt4_dev(s[0, k, c], s[1, k, c], s[2, k, c], s[3, k, c], s[4, k, c], s[5, k, c])
            e1 = gt4_dev(s[6, k, c], s[7, k, c], s[8, k, c], s[9, k, c], s[10, k, c], s[11, k, c])
            e2 = gt4_dev(s[12, k, c], s[13, k, c], s[14, k, c], s[15, k, c], s[16, k, c], s[17, k, c])
            e3 = gt4_dev(s[18, k, c], s[19, k, c], s[20, k, c], s[21, k, c], s[22, k, c], s[23, k, c])
            e4 = gt4_dev(s[24, k, c], s[25, k, c], s[26, k, c], s[27, k, c], s[28, k, c], s[29, k, c])
            e5 = gt4_dev(s[30, k, c], s[31, k, c], s[32, k, c], s[33, k, c], s[34, k, c], s[35, k, c])
            for j in range(3):
                col = gt4_dev(e0[j], e1[j], e2[j], e3[j], e4[j], e5[j])
                for r in range(3):
                    dw[k, c, r, j] = col[r]
        else:
            e0 = gt2_dev(s[0, k, c], s[1, k, c], s[2, k, c], s[3, k, c])
            e1 = gt2_dev(s[4, k, c], s[5, k, c], s[6, k, c], s[7, k, c])
            e2 = gt2_dev(s[8, k, c], s[9, k, c], s[10, k, c], s[11, k, c])
            e3 = gt2_dev(s[12, k, c], s[13, k, c], s[14, k, c], s[15, k, c])
            for j in range(3):
                col = gt2_dev(e0[j], e1[j], e2[j], e3[j])
                for r in range(3):
                    dw[k, c, r, j] = col[r]
    return kernel


# ---------------------------------------------------------------------------------------------
# CPU kernels. Each pass of a 2-D transform applies a 1-D transform lane-wise along vectors:
# rows of pixels (column passes) or all tiles of a chunk at once (row passes, which read or
# write every m-th element). Every operand is a 2-D array indexed by (row, unsigned column):
# LLVM vectorises those loops (it does not for several streams at run-time offsets into one
# flat array, and making 1-D views costs more than the short loops take). A row outside the
# source reads a row of zeros, so the loops have no branches.
# ---------------------------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _cols_bt4(src, rows, s, dst, d, n):
    """dst[x, d + j] = bt4(src[i][rows[i], s + j] for i < 6)[x], j < n."""
    a0, a1, a2, a3, a4, a5 = src
    r0, r1, r2 = uint64(rows[0]), uint64(rows[1]), uint64(rows[2])
    r3, r4, r5 = uint64(rows[3]), uint64(rows[4]), uint64(rows[5])
    c, e = uint64(s), uint64(d)
    for j in range(n):
        u = uint64(j)
        v = bt4_cpu(a0[r0, c + u], a1[r1, c + u], a2[r2, c + u], a3[r3, c + u], a4[r4, c + u], a5[r5, c + u])
        dst[0, e + u] = v[0]
        dst[1, e + u] = v[1]
        dst[2, e + u] = v[2]
        dst[3, e + u] = v[3]
        dst[4, e + u] = v[4]
        dst[5, e + u] = v[5]


@njit(inline="always", cache=True)
def _cols_bt2(src, rows, s, dst, d, n):
    """dst[x, d + j] = bt2(src[i][rows[i], s + j] for i < 4)[x], j < n."""
    a0, a1, a2, a3 = src
    r0, r1, r2, r3 = uint64(rows[0]), uint64(rows[1]), uint64(rows[2]), uint64(rows[3])
    c, e = uint64(s), uint64(d)
    for j in range(n):
        u = uint64(j)
        v = bt2_cpu(a0[r0, c + u], a1[r1, c + u], a2[r2, c + u], a3[r3, c + u])
        dst[0, e + u] = v[0]
        dst[1, e + u] = v[1]
        dst[2, e + u] = v[2]
        dst[3, e + u] = v[3]


@njit(inline="always", cache=True)
def _cols_a4(src, rows, dst, d, n):
    """dst[x, d + j] = a4(src[i][rows[i], j] for i < 4)[x], j < n."""
    a0, a1, a2, a3 = src
    r0, r1, r2, r3 = uint64(rows[0]), uint64(rows[1]), uint64(rows[2]), uint64(rows[3])
    e = uint64(d)
    for j in range(n):
        u = uint64(j)
        v = a4_cpu(a0[r0, u], a1[r1, u], a2[r2, u], a3[r3, u])
        dst[0, e + u] = v[0]
        dst[1, e + u] = v[1]
        dst[2, e + u] = v[2]
        dst[3, e + u] = v[3]
        dst[4, e + u] = v[4]
        dst[5, e + u] = v[5]


@njit(inline="always", cache=True)
def _cols_a2(src, rows, dst, d, n):
    """dst[x, d + j] = a2(src[i][rows[i], j] for i < 2)[x], j < n."""
    a0, a1 = src
    r0, r1 = uint64(rows[0]), uint64(rows[1])
    e = uint64(d)
    for j in range(n):
        u = uint64(j)
        v = a2_cpu(a0[r0, u], a1[r1, u])
        dst[0, e + u] = v[0]
        dst[1, e + u] = v[1]
        dst[2, e + u] = v[2]
        dst[3, e + u] = v[3]


@njit(inline="always", cache=True)
def _cols_at4(src, s, dst, rows, n):
    """dst[i][rows[i], j] = at4(src[x, s + j] for x < 6)[i], j < n."""
    d0, d1, d2, d3 = dst
    r0, r1, r2, r3 = uint64(rows[0]), uint64(rows[1]), uint64(rows[2]), uint64(rows[3])
    c = uint64(s)
    for j in range(n):
        u = uint64(j)
        v = at4_cpu(src[0, c + u], src[1, c + u], src[2, c + u], src[3, c + u], src[4, c + u], src[5, c + u])
        d0[r0, u] = v[0]
        d1[r1, u] = v[1]
        d2[r2, u] = v[2]
        d3[r3, u] = v[3]


@njit(inline="always", cache=True)
def _cols_at2(src, s, dst, rows, n):
    """dst[i][rows[i], j] = at2(src[x, s + j] for x < 4)[i], j < n."""
    d0, d1 = dst
    r0, r1 = uint64(rows[0]), uint64(rows[1])
    c = uint64(s)
    for j in range(n):
        u = uint64(j)
        v = at2_cpu(src[0, c + u], src[1, c + u], src[2, c + u], src[3, c + u])
        d0[r0, u] = v[0]
        d1[r1, u] = v[1]


@njit(inline="always", cache=True)
def _tiles_bt4(src, nxt, q, dst, x, d, n):
    """dst[x + y, d + t] = bt4(src[q, 4t + j] for j < 4, nxt[q, 4t + j] for j < 2)[y], t < n."""
    r = uint64(q)
    o = uint64(x)
    e = uint64(d)
    for t in range(n):
        u = uint64(t)
        b = uint64(4 * t)
        v = bt4_cpu(src[r, b], src[r, b + 1], src[r, b + 2], src[r, b + 3], nxt[r, b], nxt[r, b + 1])
        dst[o, e + u] = v[0]
        dst[o + 1, e + u] = v[1]
        dst[o + 2, e + u] = v[2]
        dst[o + 3, e + u] = v[3]
        dst[o + 4, e + u] = v[4]
        dst[o + 5, e + u] = v[5]


@njit(inline="always", cache=True)
def _tiles_bt2(src, nxt, q, dst, x, d, n):
    """dst[x + y, d + t] = bt2(src[q, 2t + j], nxt[q, 2t + j] for j < 2)[y], t < n."""
    r = uint64(q)
    o = uint64(x)
    e = uint64(d)
    for t in range(n):
        u = uint64(t)
        b = uint64(2 * t)
        v = bt2_cpu(src[r, b], src[r, b + 1], nxt[r, b], nxt[r, b + 1])
        dst[o, e + u] = v[0]
        dst[o + 1, e + u] = v[1]
        dst[o + 2, e + u] = v[2]
        dst[o + 3, e + u] = v[3]


@njit(inline="always", cache=True)
def _shift_rows(src, q, dst, shift, n):
    """dst[q, j] = src[q, j + shift] for j < n."""
    r = uint64(q)
    f = uint64(shift)
    for j in range(n):
        u = uint64(j)
        dst[r, u] = src[r, u + f]


@njit(inline="always", cache=True)
def _tiles_a4(src, q, dst, x, d, n):
    """dst[x + y, d + t] = a4(src[q, 4t + j] for j < 4)[y], t < n."""
    r = uint64(q)
    o = uint64(x)
    e = uint64(d)
    for t in range(n):
        u = uint64(t)
        b = uint64(4 * t)
        v = a4_cpu(src[r, b], src[r, b + 1], src[r, b + 2], src[r, b + 3])
        dst[o, e + u] = v[0]
        dst[o + 1, e + u] = v[1]
        dst[o + 2, e + u] = v[2]
        dst[o + 3, e + u] = v[3]
        dst[o + 4, e + u] = v[4]
        dst[o + 5, e + u] = v[5]


@njit(inline="always", cache=True)
def _tiles_a2(src, q, dst, x, d, n):
    """dst[x + y, d + t] = a2(src[q, 2t + j] for j < 2)[y], t < n."""
    r = uint64(q)
    o = uint64(x)
    e = uint64(d)
    for t in range(n):
        u = uint64(t)
        b = uint64(2 * t)
        v = a2_cpu(src[r, b], src[r, b + 1])
        dst[o, e + u] = v[0]
        dst[o + 1, e + u] = v[1]
        dst[o + 2, e + u] = v[2]
        dst[o + 3, e + u] = v[3]


@njit(inline="always", cache=True)
def _tiles_at4(src, x, s, dst, q, n):
    """dst[q, 4t + j] = at4(src[x + y, s + t] for y < 6)[j], t < n."""
    o = uint64(x)
    c = uint64(s)
    r = uint64(q)
    for t in range(n):
        u = uint64(t)
        b = uint64(4 * t)
        v = at4_cpu(src[o, c + u], src[o + 1, c + u], src[o + 2, c + u], src[o + 3, c + u], src[o + 4, c + u],
                    src[o + 5, c + u])
        dst[r, b] = v[0]
        dst[r, b + 1] = v[1]
        dst[r, b + 2] = v[2]
        dst[r, b + 3] = v[3]


@njit(inline="always", cache=True)
def _tiles_at2(src, x, s, dst, q, n):
    """dst[q, 2t + j] = at2(src[x + y, s + t] for y < 4)[j], t < n."""
    o = uint64(x)
    c = uint64(s)
    r = uint64(q)
    for t in range(n):
        u = uint64(t)
        b = uint64(2 * t)
        v = at2_cpu(src[o, c + u], src[o + 1, c + u], src[o + 2, c + u], src[o + 3, c + u])
        dst[r, b] = v[0]
        dst[r, b + 1] = v[1]


@njit(inline="always", cache=True)
def _rows_inside(plane, zero, h):
    """Rows h .. h + 5 of ``plane`` as (arrays, rows): ``plane`` and the row, or ``zero`` and 0
    for a row outside the plane."""
    H = plane.shape[0]
    arrays = (plane if h >= 0 and h < H else zero, plane if h + 1 >= 0 and h + 1 < H else zero,
              plane if h + 2 >= 0 and h + 2 < H else zero, plane if h + 3 >= 0 and h + 3 < H else zero,
              plane if h + 4 >= 0 and h + 4 < H else zero, plane if h + 5 >= 0 and h + 5 < H else zero)
    rows = (h if h >= 0 and h < H else 0, h + 1 if h + 1 >= 0 and h + 1 < H else 0,
            h + 2 if h + 2 >= 0 and h + 2 < H else 0, h + 3 if h + 3 >= 0 and h + 3 < H else 0,
            h + 4 if h + 4 >= 0 and h + 4 < H else 0, h + 5 if h + 5 >= 0 and h + 5 < H else 0)
    return arrays, rows


@njit(inline="always", cache=True)
def _put6(extra, r, j, e):
    """extra[r, x, j] = e[x] for x < 6."""
    extra[r, 0, j] = e[0]
    extra[r, 1, j] = e[1]
    extra[r, 2, j] = e[2]
    extra[r, 3, j] = e[3]
    extra[r, 4, j] = e[4]
    extra[r, 5, j] = e[5]


@njit(inline="always", cache=True)
def _put4(extra, r, j, e):
    """extra[r, x, j] = e[x] for x < 4."""
    extra[r, 0, j] = e[0]
    extra[r, 1, j] = e[1]
    extra[r, 2, j] = e[2]
    extra[r, 3, j] = e[3]


@njit(parallel=True, cache=True)
def winograd_input_transform_cpu(src, v, zero, t1s, extras, m, row0, TH, TW, ph, pw):
    """v[xi*a + xj, c, (row - row0)*TW + tw] = (B^T d B)[xi, xj] for the tiles of tile rows
    row = n*TH + th in [row0, row0 + nr), nr = v.shape[2] // TW, with
    d[i, j] = src[n, c, th*m - ph + i, tw*m - pw + j] (0 outside src), a = m + 2.

    Per channel, a column pass (B^T down the a input rows of each tile row) writes tile row r
    into columns r*m*TW .. of t1 = t1s[run, 0] (a, nr*m*TW), and the two grid columns past the
    row into ``extras`` (nr, a, 2); one row pass then transforms every tile of the chunk.
    ``zero``: a (1, W) row of zeros; ``t1s`` (runs, 2, a, nr*m*TW), ``extras``: one per run of channels.
    """
    C, W = src.shape[1], src.shape[3]
    nt = v.shape[2]
    nr = nt // TW
    a = m + 2
    L = m * TW
    runs = t1s.shape[0]
    v2 = v.reshape(a * a, C * nt)
    # tile-grid columns [lo, hi) read input columns lo - pw ...; the others are padding
    lo = min(max(0, pw), L + 2)
    hi = max(lo, min(L + 2, W + pw))
    k = max(0, min(hi, L) - lo)
    z = src.dtype.type(0)
    zeros6 = (z, z, z, z, z, z)
    zeros4 = (z, z, z, z)
    for run in prange(runs):
        t1 = t1s[run, 0]
        nxt = t1s[run, 1]
        extra = extras[run]
        t1[:, :] = 0
        for c in range(run * C // runs, (run + 1) * C // runs):
            for r in range(nr):
                row = row0 + r
                arrays, rows = _rows_inside(src[row // TH, c], zero, (row % TH) * m - ph)
                if m == 4:
                    _cols_bt4(arrays, rows, lo - pw, t1, r * L + lo, k)
                else:
                    _cols_bt2(arrays[:4], rows[:4], lo - pw, t1, r * L + lo, k)
                for j in range(2):
                    col = L + j - pw
                    inside = L + j >= lo and L + j < hi
                    if m == 4:
                        e = bt4_cpu(arrays[0][rows[0], col], arrays[1][rows[1], col], arrays[2][rows[2], col],
                                    arrays[3][rows[3], col], arrays[4][rows[4], col],
                                    arrays[5][rows[5], col]) if inside else zeros6
                        _put6(extra, r, j, e)
                    else:
                        e2 = bt2_cpu(arrays[0][rows[0], col], arrays[1][rows[1], col], arrays[2][rows[2], col],
                                     arrays[3][rows[3], col]) if inside else zeros4
                        _put4(extra, r, j, e2)
            # tile t reads grid columns m*t .. m*t + m + 1 of its row: the first m from t1, the
            # last two from nxt, t1 shifted by one tile and patched with ``extra`` at each row's end
            for xi in range(a):
                _shift_rows(t1, xi, nxt, m, nr * L - m)
                for r in range(nr):
                    nxt[xi, r * L + L - m] = extra[r, xi, 0]
                    nxt[xi, r * L + L - m + 1] = extra[r, xi, 1]
                if m == 4:
                    _tiles_bt4(t1, nxt, xi, v2, 6 * xi, c * nt, nt)
                else:
                    _tiles_bt2(t1, nxt, xi, v2, 4 * xi, c * nt, nt)


@njit(parallel=True, cache=True)
def winograd_grad_output_transform_cpu(dy, v, zero, t1s, m, row0, TH, TW):
    """v[xi*a + xj, k, (row - row0)*TW + tw] = (A Y A^T)[xi, xj] for the tiles of tile rows
    [row0, row0 + v.shape[2] // TW), with Y[i, j] = dy[n, k, th*m + i, tw*m + j] (0 past P, Q).

    Per channel, a column pass (A down the m rows of each tile row) writes tile row r into
    columns r*m*TW .. of t1 (a, nr*m*TW), then one row pass transforms all tiles of the chunk.
    ``zero``: a (1, Q) row of zeros; ``t1s``: one per run of channels.
    """
    K, Q = dy.shape[1], dy.shape[3]
    nt = v.shape[2]
    nr = nt // TW
    a = m + 2
    L = m * TW
    runs = t1s.shape[0]
    v2 = v.reshape(a * a, K * nt)
    for run in prange(runs):
        t1 = t1s[run]
        t1[:, :] = 0
        for k in range(run * K // runs, (run + 1) * K // runs):
            for r in range(nr):
                row = row0 + r
                arrays, rows = _rows_inside(dy[row // TH, k], zero, (row % TH) * m)
                if m == 4:
                    _cols_a4(arrays[:4], rows[:4], t1, r * L, Q)
                else:
                    _cols_a2(arrays[:2], rows[:2], t1, r * L, Q)
            for xi in range(a):
                if m == 4:
                    _tiles_a4(t1, xi, v2, 6 * xi, k * nt, nt)
                else:
                    _tiles_a2(t1, xi, v2, 4 * xi, k * nt, nt)


@njit(parallel=True, cache=True)
def winograd_output_transform_cpu(mm, dst, s1s, m, row0, TH, TW):
    """dst[n, k, th*m + i, tw*m + j] = (A^T M A)[i, j] for the tiles of tile rows
    [row0, row0 + mm.shape[2] // TW), M[xi, xj] = mm[xi*a + xj, k, (row - row0)*TW + tw],
    for the positions inside dst (i < P - th*m, j < Q - tw*m).

    Per channel, one row pass over all tiles of the chunk writes A^T along the tiles' rows into
    s1 (tile row r at columns r*m*TW ..), then a column pass per tile row writes the output
    rows. ``s1s`` (runs, a + 1, nr*m*TW): one per run of channels; the last row is a sink for
    output rows past P.
    """
    K, Q = dst.shape[1], dst.shape[3]
    nt = mm.shape[2]
    nr = nt // TW
    a = m + 2
    L = m * TW
    runs = s1s.shape[0]
    m2 = mm.reshape(a * a, K * nt)
    for run in prange(runs):
        s1 = s1s[run]
        sink = s1[a:]
        for k in range(run * K // runs, (run + 1) * K // runs):
            for xi in range(a):
                if m == 4:
                    _tiles_at4(m2, 6 * xi, k * nt, s1, xi, nt)
                else:
                    _tiles_at2(m2, 4 * xi, k * nt, s1, xi, nt)
            for r in range(nr):
                row = row0 + r
                plane = dst[row // TH, k]
                P = plane.shape[0]
                p = (row % TH) * m
                arrays = (plane, plane if p + 1 < P else sink, plane if p + 2 < P else sink,
                          plane if p + 3 < P else sink)
                rows = (p, p + 1 if p + 1 < P else 0, p + 2 if p + 2 < P else 0, p + 3 if p + 3 < P else 0)
                if m == 4:
                    _cols_at4(s1, r * L, arrays, rows, Q)
                else:
                    _cols_at2(s1, r * L, arrays[:2], rows[:2], Q)


@njit(inline="always", cache=True)
def _cols_g4(src, r, dst, x, step, d, n):
    """dst[x + step*y, d + j] = g4(src[r + i, j] for i < 3)[y], j < n."""
    r0 = uint64(r)
    o, st = uint64(x), uint64(step)
    e = uint64(d)
    for j in range(n):
        u = uint64(j)
        v = g4_cpu(src[r0, u], src[r0 + 1, u], src[r0 + 2, u])
        dst[o, e + u] = v[0]
        dst[o + st, e + u] = v[1]
        dst[o + 2 * st, e + u] = v[2]
        dst[o + 3 * st, e + u] = v[3]
        dst[o + 4 * st, e + u] = v[4]
        dst[o + 5 * st, e + u] = v[5]


@njit(inline="always", cache=True)
def _cols_g2(src, r, dst, x, step, d, n):
    """dst[x + step*y, d + j] = g2(src[r + i, j] for i < 3)[y], j < n."""
    r0 = uint64(r)
    o, st = uint64(x), uint64(step)
    e = uint64(d)
    for j in range(n):
        u = uint64(j)
        v = g2_cpu(src[r0, u], src[r0 + 1, u], src[r0 + 2, u])
        dst[o, e + u] = v[0]
        dst[o + st, e + u] = v[1]
        dst[o + 2 * st, e + u] = v[2]
        dst[o + 3 * st, e + u] = v[3]


@njit(parallel=True, cache=True)
def winograd_filter_transform_cpu(w, u, taps, rowt, m, flip):
    """u[xi*a + xj, k, c] = (G g G^T)[xi, xj] with g = w[k, c], rotated 180 degrees when ``flip``.

    Per k, the taps are transposed to rows over c (``taps`` (runs, 9, Cg)), G is applied along
    the rows of g (``rowt`` (runs, a*3, Cg): row xj*3 + r holds (g G^T)[r, xj]) and then along its
    columns, both vectorised over c.
    """
    K, Cg = w.shape[0], w.shape[1]
    a = m + 2
    runs = taps.shape[0]
    u2 = u.reshape(a * a, K * Cg)
    for run in prange(runs):
        tp = taps[run]
        rt = rowt[run]
        for k in range(run * K // runs, (run + 1) * K // runs):
            g = w[k].reshape(Cg * 9)
            # rotating a 3x3 filter by 180 degrees reverses its 9 taps
            for q in range(9):
                tap = uint64(8 - q if flip else q)
                for c in range(Cg):
                    tp[q, c] = g[uint64(c * 9) + tap]
            for r in range(3):
                if m == 4:
                    _cols_g4(tp, 3 * r, rt, r, 3, 0, Cg)
                else:
                    _cols_g2(tp, 3 * r, rt, r, 3, 0, Cg)
            for xj in range(a):
                if m == 4:
                    _cols_g4(rt, 3 * xj, u2, xj, a, k * Cg, Cg)
                else:
                    _cols_g2(rt, 3 * xj, u2, xj, a, k * Cg, Cg)


@njit(inline="always", cache=True)
def _cols_gt4(src, r, s, dst, x, step, d, n):
    """dst[x + step*y, d + j] = gt4(src[r + i, s + j] for i < 6)[y], j < n."""
    r0 = uint64(r)
    c = uint64(s)
    o, st = uint64(x), uint64(step)
    e = uint64(d)
    for j in range(n):
        u = uint64(j)
        v = gt4_cpu(src[r0, c + u], src[r0 + 1, c + u], src[r0 + 2, c + u], src[r0 + 3, c + u], src[r0 + 4, c + u],
                    src[r0 + 5, c + u])
        dst[o, e + u] = v[0]
        dst[o + st, e + u] = v[1]
        dst[o + 2 * st, e + u] = v[2]


@njit(inline="always", cache=True)
def _cols_gt2(src, r, s, dst, x, step, d, n):
    """dst[x + step*y, d + j] = gt2(src[r + i, s + j] for i < 4)[y], j < n."""
    r0 = uint64(r)
    c = uint64(s)
    o, st = uint64(x), uint64(step)
    e = uint64(d)
    for j in range(n):
        u = uint64(j)
        v = gt2_cpu(src[r0, c + u], src[r0 + 1, c + u], src[r0 + 2, c + u], src[r0 + 3, c + u])
        dst[o, e + u] = v[0]
        dst[o + st, e + u] = v[1]
        dst[o + 2 * st, e + u] = v[2]


@njit(parallel=True, cache=True)
def winograd_filter_grad_transform_cpu(s, dw, rowt, taps, m):
    """dw[k, c] = G^T S G with S[xi, xj] = s[xi*a + xj, k, c].

    Per k, G^T is applied along the rows of S (``rowt`` (runs, 3*a, Cg): row j*a + xi holds
    (S G)[xi, j]), then along its columns (``taps`` (runs, 9, Cg)), both vectorised over c, and
    the 9 taps are transposed into dw.
    """
    K, Cg = dw.shape[0], dw.shape[1]
    a = m + 2
    runs = taps.shape[0]
    s2 = s.reshape(a * a, K * Cg)
    for run in prange(runs):
        rt = rowt[run]
        tp = taps[run]
        for k in range(run * K // runs, (run + 1) * K // runs):
            for xi in range(a):
                if m == 4:
                    _cols_gt4(s2, 6 * xi, k * Cg, rt, xi, 6, 0, Cg)
                else:
                    _cols_gt2(s2, 4 * xi, k * Cg, rt, xi, 4, 0, Cg)
            for j in range(3):
                if m == 4:
                    _cols_gt4(rt, 6 * j, 0, tp, j, 3, 0, Cg)
                else:
                    _cols_gt2(rt, 4 * j, 0, tp, j, 3, 0, Cg)
            out = dw[k].reshape(Cg * 9)
            for q in range(9):
                for c in range(Cg):
                    out[uint64(c * 9 + q)] = tp[q, c]


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _grid(out_h, out_w, m):
    """(TH, TW): tiles per column and per row covering an out_h x out_w output."""
    return -(-out_h // m), -(-out_w // m)


def _chunk_rows(rows, TW, m, channels, itemsize, budget, min_tiles):
    """Tile rows per chunk: as many as keep the chunk's transformed tiles (``channels`` of them
    per tile, source and output together) within ``budget`` bytes, but at least ``min_tiles``
    tiles (the GEMM's column count), at least one row and at most ``rows``."""
    a2 = (m + 2) ** 2
    fit = budget // (a2 * channels * TW * itemsize)
    return max(1, min(rows, max(fit, -(-min_tiles // TW))))


def _runs(items):
    return max(1, min(items, CPU_RUNS_PER_THREAD * numba.get_num_threads()))


class _Tiling:
    """Tiles of an out_h x out_w output of N images cut into chunks of whole tile rows, and the
    chunk workspaces: ``view(buf, channels, nr)`` is a contiguous (a*a, channels, nr*TW) array."""

    def __init__(self, N, out_h, out_w, m, channels, itemsize, budget, min_tiles):
        self.m, self.a2 = m, (m + 2) ** 2
        self.TH, self.TW = _grid(out_h, out_w, m)
        self.rows = N * self.TH
        self.nr = _chunk_rows(self.rows, self.TW, m, channels, itemsize, budget, min_tiles)

    def chunks(self):
        for row0 in range(0, self.rows, self.nr):
            yield row0, min(self.nr, self.rows - row0)

    def size(self, channels):
        return self.a2 * channels * self.nr * self.TW

    def view(self, buf, channels, nr):
        return buf[:self.a2 * channels * nr * self.TW].reshape(self.a2, channels, nr * self.TW)


def _correlate_cpu(src, u, dst, groups, ph, pw, m, trans_a):
    """dst = the stride-1 3x3 correlation of src (top/left pads ph, pw) with the filters whose
    transforms are u (a*a, groups*rows, cols): ``U[xi, g]`` (``U^T`` when trans_a) per group."""
    N, cin, W = src.shape[0], src.shape[1], src.shape[3]
    cout, P, Q = dst.shape[1], dst.shape[2], dst.shape[3]
    a = m + 2
    tl = _Tiling(N, P, Q, m, cin + cout, src.itemsize, CPU_CHUNK_BYTES, CPU_MIN_TILES)
    vbuf, mbuf = np.empty(tl.size(cin), src.dtype), np.empty(tl.size(cout), src.dtype)
    width = tl.nr * tl.TW * m
    t1s = np.empty((_runs(cin), 2, a, width), src.dtype)
    extras = np.empty((_runs(cin), tl.nr, a, 2), src.dtype)
    s1s = np.empty((_runs(cout), a + 1, width), src.dtype)
    zero = np.zeros((1, W), src.dtype)
    u3 = u.reshape(a * a * groups, u.shape[1] // groups, u.shape[2])
    for row0, nr in tl.chunks():
        v, mm = tl.view(vbuf, cin, nr), tl.view(mbuf, cout, nr)
        winograd_input_transform_cpu(src, v, zero, t1s, extras, m, row0, tl.TH, tl.TW, ph, pw)
        gemm_batched(u3, v.reshape(a * a * groups, cin // groups, -1), mm.reshape(a * a * groups, cout // groups, -1),
                     trans_a=trans_a)
        winograd_output_transform_cpu(mm, dst, s1s, m, row0, tl.TH, tl.TW)


def _correlate_cuda(src, u, dst, groups, ph, pw, m, trans_a):
    """``_correlate_cpu`` on device arrays."""
    N, cin = src.shape[0], src.shape[1]
    cout, P, Q = dst.shape[1], dst.shape[2], dst.shape[3]
    a2 = (m + 2) ** 2
    tl = _Tiling(N, P, Q, m, cin + cout, src.dtype.itemsize, CUDA_WORKSPACE, 1)
    vbuf, mbuf = device_empty(tl.size(cin), src.dtype), device_empty(tl.size(cout), src.dtype)
    u3 = u.reshape(a2 * groups, u.shape[1] // groups, u.shape[2])
    for row0, nr in tl.chunks():
        v, mm = tl.view(vbuf, cin, nr), tl.view(mbuf, cout, nr)
        nt = nr * tl.TW
        winograd_input_transform_cuda[src.dtype][blocks(cin * nt, THREADS), THREADS, stream()](
            src, v, m, row0, tl.TH, tl.TW, ph, pw)
        gemm_batched(u3, v.reshape(a2 * groups, cin // groups, nt), mm.reshape(a2 * groups, cout // groups, nt),
                     trans_a=trans_a)
        winograd_output_transform_cuda[src.dtype][blocks(cout * nt, THREADS), THREADS, stream()](
            mm, dst, m, row0, tl.TH, tl.TW)


def _filter_transform(w, m, flip, device):
    """U (a*a, K, Cg) of the filters w (K, Cg, 3, 3), rotated 180 degrees when ``flip``."""
    K, Cg = w.shape[0], w.shape[1]
    shape = ((m + 2) ** 2, K, Cg)
    if device:
        u = device_empty(shape, w.dtype)
        winograd_filter_transform_cuda[w.dtype][blocks(K * Cg, THREADS), THREADS, stream()](w, u, m, int(flip))
    else:
        u = np.empty(shape, w.dtype)
        runs = _runs(K)
        winograd_filter_transform_cpu(w, u, np.empty((runs, 9, Cg), w.dtype),
                                      np.empty((runs, 3 * (m + 2), Cg), w.dtype), m, flip)
    return u


def _filter_grad_cpu(dy, x, dw, g, m):
    """dw = G^T S G, S[xi, g] = sum over the chunks of Z[xi, g] @ V[xi, g]^T (BLAS, beta = 1 after the first)."""
    a = m + 2
    K, C, Cg = g.K, g.C, g.C // g.groups
    tl = _Tiling(g.N, g.P, g.Q, m, C + K, x.itemsize, CPU_CHUNK_BYTES, CPU_MIN_TILES)
    vbuf, zbuf = np.empty(tl.size(C), x.dtype), np.empty(tl.size(K), x.dtype)
    width = tl.nr * tl.TW * m
    t1s = np.empty((_runs(C), 2, a, width), x.dtype)
    extras = np.empty((_runs(C), tl.nr, a, 2), x.dtype)
    t1s_dy = np.empty((_runs(K), a, width), x.dtype)
    zero_x, zero_dy = np.zeros((1, g.W), x.dtype), np.zeros((1, g.Q), x.dtype)
    s = np.empty((a * a, K, Cg), x.dtype)
    s3 = s.reshape(a * a * g.groups, K // g.groups, Cg)
    for row0, nr in tl.chunks():
        v, z = tl.view(vbuf, C, nr), tl.view(zbuf, K, nr)
        winograd_input_transform_cpu(x, v, zero_x, t1s, extras, m, row0, tl.TH, tl.TW, g.pad_h, g.pad_w)
        winograd_grad_output_transform_cpu(dy, z, zero_dy, t1s_dy, m, row0, tl.TH, tl.TW)
        gemm_batched(z.reshape(a * a * g.groups, K // g.groups, -1), v.reshape(a * a * g.groups, Cg, -1),
                     s3, trans_b=True, beta=0 if row0 == 0 else 1)
    runs = _runs(K)
    winograd_filter_grad_transform_cpu(s, dw, np.empty((runs, 3 * a, Cg), x.dtype), np.empty((runs, 9, Cg), x.dtype), m)


def _filter_grad_cuda(dy, x, dw, g, m):
    """``_filter_grad_cpu`` on device arrays."""
    a2 = (m + 2) ** 2
    K, C = g.K, g.C
    tl = _Tiling(g.N, g.P, g.Q, m, C + K, x.dtype.itemsize, CUDA_WORKSPACE, 1)
    vbuf, zbuf = device_empty(tl.size(C), x.dtype), device_empty(tl.size(K), x.dtype)
    s = device_empty((a2, K, C // g.groups), x.dtype)
    s3 = s.reshape(a2 * g.groups, K // g.groups, C // g.groups)
    for row0, nr in tl.chunks():
        v, z = tl.view(vbuf, C, nr), tl.view(zbuf, K, nr)
        nt = nr * tl.TW
        winograd_input_transform_cuda[x.dtype][blocks(C * nt, THREADS), THREADS, stream()](
            x, v, m, row0, tl.TH, tl.TW, g.pad_h, g.pad_w)
        winograd_grad_output_transform_cuda[x.dtype][blocks(K * nt, THREADS), THREADS, stream()](
            dy, z, m, row0, tl.TH, tl.TW)
        gemm_batched(z.reshape(a2 * g.groups, K // g.groups, nt), v.reshape(a2 * g.groups, C // g.groups, nt),
                     s3, trans_b=True, beta=0 if row0 == 0 else 1)
    winograd_filter_grad_transform_cuda[x.dtype][blocks(K * (C // g.groups), THREADS), THREADS, stream()](s, dw, m)


def _check_tile(tile):
    if tile not in TILES:
        raise ValueError(f"winograd: tile must be one of {TILES} (output tile F(m x m, 3 x 3)), got {tile!r}")
    return tile


def conv2d_fwd_winograd(x, w, y, g, tile=None):
    """Forward conv by Winograd F(m x m, 3 x 3); overwrites ``y`` (N, K, P, Q).

    Per tile ``Y = A^T [(G g G^T) ⊙ (B^T d B)] A``, the element-wise products summed over the
    input channels of the group as a GEMM per frequency. ``tile``: m = 2 or 4, default
    ``tile_size(g, "fwd")``.
    """
    check_conv_arrays("winograd", g, "fwd", x, w, y)
    m = _check_tile(tile_size(g, "fwd") if tile is None else tile)
    dev = is_device_array(x)
    u = _filter_transform(w, m, False, dev)
    (_correlate_cuda if dev else _correlate_cpu)(x, u, y, g.groups, g.pad_h, g.pad_w, m, False)


def conv2d_bwd_data_winograd(dy, w, dx, g, tile=None):
    """Data gradient by Winograd; overwrites ``dx`` (N, C, H, W).

    ``dx[n, gi*Cg + c, i, j] = sum_{k < Kg, r, s} dy[n, gi*Kg + k, i - (2 - ph) + r, j - (2 - pw) + s]
    * w[gi*Kg + k, c, 2 - r, 2 - s]`` (0 outside dy): the forward algorithm on dy with the
    rotated filters and input and output channels swapped (``U^T`` in the GEMM).
    """
    check_conv_arrays("winograd", g, "bwd_data", dy, w, dx)
    m = _check_tile(tile_size(g, "bwd_data") if tile is None else tile)
    dev = is_device_array(dy)
    u = _filter_transform(w, m, True, dev)
    (_correlate_cuda if dev else _correlate_cpu)(dy, u, dx, g.groups, 2 - g.pad_h, 2 - g.pad_w, m, True)


def conv2d_bwd_filter_winograd(dy, x, dw, g, tile=None):
    """Filter gradient by Winograd; overwrites ``dw`` (K, Cg, 3, 3).

    ``dw[k, c] = G^T [sum over tiles of (A dY A^T) ⊙ (B^T d B)] G``, the tile sum a GEMM per
    frequency accumulated chunk by chunk of tiles (in tile order).
    """
    check_conv_arrays("winograd", g, "bwd_filter", dy, x, dw)
    m = _check_tile(tile_size(g, "bwd_filter") if tile is None else tile)
    (_filter_grad_cuda if is_device_array(dy) else _filter_grad_cpu)(dy, x, dw, g, m)


def _pass_grid(g, pass_):
    """(N, rows, cols) of the correlation a pass runs: its output, dx for the data gradient."""
    return (g.N, g.H, g.W) if pass_ == "bwd_data" else (g.N, g.P, g.Q)


def tile_size(g, pass_):
    """The output tile m the launchers use by default: 4 where F(4x4) does fewer GEMM
    multiplies than F(2x2), ``36*ceil(P/4)*ceil(Q/4) < 16*ceil(P/2)*ceil(Q/2)`` (its 36/16 more
    per tile must be paid for by fewer tiles: not on outputs of 5 or 6), and has enough tiles,
    ``N*ceil(P/4)*ceil(Q/4) >= Cg*Kg / (4*(Cg + Kg))``, to amortise its 2.25x larger filter
    side (transforming and streaming the a*a*Kg*Cg U, whose cost against the tiles' grows as
    Cg*Kg/(Cg + Kg)); 2 otherwise. (P, Q) is the output of the pass's correlation: dx for
    backward data. Measurements: docs/conv-algorithms.md."""
    n, rows, cols = _pass_grid(g.as_2d(), pass_)
    cg, kg = g.C // g.groups, g.K // g.groups
    th4, tw4 = _grid(rows, cols, 4)
    th2, tw2 = _grid(rows, cols, 2)
    fewer_multiplies = 36 * th4 * tw4 < 16 * th2 * tw2
    return 4 if fewer_multiplies and 4 * n * th4 * tw4 * (cg + kg) >= cg * kg else 2


def _limits(g, device, pass_):
    g = g.as_2d()
    if g.kernel != (3, 3):
        return False, f"winograd needs a 3x3 filter, got {'x'.join(map(str, g.kernel))}"
    if g.stride != (1, 1):
        return False, f"winograd needs stride 1, got {g.stride}"
    if g.dilation != (1, 1):
        return False, f"winograd needs dilation 1, got {g.dilation}"
    return True, ""


def _preference(g, device, pass_):
    """1 (ahead of implicit_gemm's 2) on the CPU where the pass runs F(4x4) with at least
    PREFER_MIN_TILES tiles per GEMM and the reduction is not short (Cg*9 > 75, where direct
    wins: vgg16.conv1_1), else 5. Measured (docs/conv-algorithms.md): there it beats direct,
    im2col and implicit_gemm; with fewer tiles, or on the small outputs that get F(2x2), its
    margin is within a few percent either way. Not measured on a GPU."""
    if device != "cpu" or not _limits(g, device, pass_)[0] or (g.C // g.groups) * 9 <= 75:
        return 5
    n, rows, cols = _pass_grid(g.as_2d(), pass_)
    th, tw = _grid(rows, cols, 4)
    return 1 if tile_size(g, pass_) == 4 and n * th * tw >= PREFER_MIN_TILES else 5


ALGORITHM = ConvAlgorithm("winograd", conv2d_fwd_winograd, conv2d_bwd_data_winograd, conv2d_bwd_filter_winograd,
                          ranks=(2,), limits=_limits, preference=_preference,
                          summary="Winograd F(2x2 or 4x4, 3x3): tile transforms and one GEMM per frequency")
