"""FFT convolution (stride 1, dilation 1, any kernel size and padding, any groups).

Every pass is one correlation with an origin offset ``d`` (per axis) and a kernel ``ker``::

    out[n, gi*Ko + k, p, q] = sum_{c<Ci, r, s} src[n, gi*Ci + c, p + r + d_h, q + s + d_w] * ker[gi*Ko + k, c, r, s]

(0 outside ``src``). In frequency space it is a product per frequency ``f`` and a reduction over
channels, ``OUT_k = sum_c SRC_c * conj(KER_kc)``:

    forward          src = x,  ker = w,                       d = -pad_before,  out = y
    backward data    src = dy, ker = w rotated by 180 degrees with K and C/groups swapped,
                     ker[gi*Cg + c, k, r, s] = w[gi*Kg + k, c, R-1-r, S-1-s],
                     d = pad_before - (R-1, S-1) (may be > 0: the first rows of dy are cut off), out = dx
    backward filter  dw[k, c, r, s] = sum_{n,p,q} dy[n, k, p, q] * x[n, gi*Cg + c, p + r - ph, q + s - pw],
                     DW_kc = sum_n conj(DY_nk) * X_nc, evaluated at the lags [0, R) x [0, S)

CPU: whole planes. Per axis the sum is a circular correlation of an FFT-friendly length ``L``
(the next ``2^a 3^b 5^c``; ``_Axis``): the source rows that any output reads are placed at 0 and
the output is read at a circular offset, which costs no padding rows (a "same" conv's fwd, a
"valid" conv's bwd_data save ``pad`` and ``R-1`` rows over a zero-padded placement).
``numpy.fft.rfft2`` gives the planes' half spectra, ``F = Lh * (Lw//2 + 1)`` frequencies; the
channel reduction is one batched complex matmul per (group, frequency) through BLAS;
``numpy.fft.irfft2`` and a gather of the outputs finish. The filter has only ``R x S`` taps, so
its spectrum (and the lag read-out of the filter gradient) are two small DFT-matrix products
instead of FFTs of mostly-zero planes. The batch (and, for a large filter spectrum, the output
channels) run in chunks so that the spectra stay within ``CPU_WORKSPACE``.

CUDA (as cuDNN's FFT_TILING; there is no cuFFT binding): overlap-save on ``TILE x TILE`` tiles.
An input tile of side ``TILE`` at stride ``V = TILE - R + 1`` yields ``V`` valid outputs per
axis. ``fft_tiles_cuda`` transforms tiles in shared memory, ``TILES_PER_BLOCK`` per block
(radix-2, rows then columns, precomputed twiddles), and stores each one's Hermitian half,
``FREQS = TILE*(TILE//2 + 1)`` frequencies; ``fft_filter_cuda`` does the same for the filter
planes; ``cgemm_cuda`` reduces over channels per frequency; ``ifft_tiles_cuda`` rebuilds each
tile's full spectrum from the half, transforms back and writes the valid outputs;
``ifft_filter_cuda`` writes the lags of the filter gradient. Backward filter correlates
``TILE`` windows of x with ``V``-sized tiles of dy (zero-padded to ``TILE``) and sums over
(image, tile) in the GEMM. Spectra are stored as ``(2, FREQS, rows, cols)``: real and imaginary
planes, one matrix per frequency. Each output element has one owner that sums in a fixed
order: no atomics, deterministic results.
"""
from typing import NamedTuple

import numpy as np
from numba import cuda, float32, int64

from .conv_algorithm import ConvAlgorithm, check_conv_arrays
from .cuda_util import SIMULATOR, array2, array4, blocks, device_constant, device_empty, is_device_array, per_dtype, stream
from .gemm import matmul_cpu

# CUDA: the tile side (a power of two), its Hermitian half and the block size of the FFT kernels
TILE = 8 if SIMULATOR else 32
TILE_BITS = TILE.bit_length() - 1
HALF = TILE // 2 + 1                 # stored frequencies per tile row: 0 .. TILE/2
TWIDDLES = TILE // 2
FREQS = TILE * HALF
PITCH = TILE + 1                     # shared tile rows padded: a column walk hits distinct banks
TILES_PER_BLOCK = 8 if SIMULATOR else 1    # the simulator pays per barrier: share each among tiles
FFT_THREADS = 8 if SIMULATOR else 256
# CUDA complex GEMM: block tile, reduction tile, complex micro-tile per thread
if SIMULATOR:
    GBM, GBN, GBK, GTM, GTN = 4, 4, 4, 2, 2
else:
    GBM, GBN, GBK, GTM, GTN = 64, 64, 8, 4, 4
GTY = GBM // GTM
GTX = GBN // GTN
GEMM_THREADS = GTX * GTY
FREQS_PER_BLOCK = 8 if SIMULATOR else 1    # again: fewer simulated barriers
GA_PITCH = GBM + 1                   # the K-major tile stores (kk fastest) then spread over the banks
GB_PITCH = GBN + 1
A_LOADS = GBM * GBK // GEMM_THREADS
B_LOADS = GBN * GBK // GEMM_THREADS
CUDA_WORKSPACE = 256 << 20           # spectra of one chunk of images (the filter spectrum comes on top)
CPU_WORKSPACE = 256 << 20            # half for the filter spectrum chunk, half for a chunk of images


# ---------------------------------------------------------------------------------------------
# CUDA: the tile FFT in shared memory
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True, inline="always")
def _bitrev_cuda(i):
    """i with its TILE_BITS low bits reversed."""
    r = 0
    for _ in range(TILE_BITS):
        r = (r << 1) | (i & 1)
        i >>= 1
    return r


@cuda.jit(device=True, inline="always")
def _load_twiddles_cuda(tw, tw_re, tw_im, tid):
    for t in range(tid, TWIDDLES, FFT_THREADS):
        tw_re[t] = tw[0, t]
        tw_im[t] = tw[1, t]


@cuda.jit(device=True, inline="always")
def _fft2_cuda(re, im, tw_re, tw_im, inverse, tid):
    """In place, for each of the block's TILES_PER_BLOCK tiles: the tile (re, im), loaded in
    bit-reversed row and column order, becomes ``Z[u, v] = sum_{i,j} z[i, j] e^{-+2 pi i (ui + vj)/TILE}``
    in natural order (sign + when ``inverse``, unscaled). Radix-2 decimation in time along rows,
    then along columns, one barrier per stage; the twiddle of butterfly ``pos`` in a span of
    ``2h`` is ``e^{-+2 pi i pos/(2h)}``, entry ``pos*TILE/(2h)`` of ``tw_re + i tw_im = e^{2 pi i t/TILE}``.
    Consecutive threads take consecutive rows (row stages) or columns (column stages), which
    the padded pitch puts in distinct banks."""
    for axis in range(2):
        for stage in range(TILE_BITS):
            h = 1 << stage
            step = TILE >> (stage + 1)
            for e in range(tid, TILES_PER_BLOCK * TILE * TILE // 2, FFT_THREADS):
                lt = e // (TILE * TILE // 2)
                line = e % TILE
                b = (e // TILE) % (TILE // 2)
                pos = b & (h - 1)
                i0 = 2 * b - pos
                i1 = i0 + h
                wr = tw_re[pos * step]
                wi = tw_im[pos * step] if inverse else -tw_im[pos * step]
                r0, c0, r1, c1 = (line, i0, line, i1) if axis == 0 else (i0, line, i1, line)
                xr = re[lt, r1, c1]
                xi = im[lt, r1, c1]
                vr = xr * wr - xi * wi
                vi = xr * wi + xi * wr
                ur = re[lt, r0, c0]
                ui = im[lt, r0, c0]
                re[lt, r0, c0] = ur + vr
                im[lt, r0, c0] = ui + vi
                re[lt, r1, c1] = ur - vr
                im[lt, r1, c1] = ui - vi
            cuda.syncthreads()


@cuda.jit(device=True, inline="always")
def _store_half_cuda(re, im, spec, item0, items, cols, tid):
    """spec[:, u*HALF + v, row, col] = Z[u, v] for v <= TILE/2 (the half a real tile needs), for
    the block's tiles, tile lt being plane ``item0 + lt = row*cols + col`` of ``items``."""
    for e in range(tid, TILES_PER_BLOCK * FREQS, FFT_THREADS):
        lt = e // FREQS
        f = e - lt * FREQS
        if item0 + lt < items:
            row = (item0 + lt) // cols
            u = f // HALF
            spec[0, f, row, item0 + lt - row * cols] = re[lt, u, f - u * HALF]
            spec[1, f, row, item0 + lt - row * cols] = im[lt, u, f - u * HALF]


@cuda.jit(device=True, inline="always")
def _load_full_cuda(spec, item0, items, re, im, tid, zero):
    """The full spectra of the block's tiles (plane ``item0 + lt = row*cols + col`` of spec) from
    their stored halves, bit-reversed for ``_fft2_cuda``: ``Z[u, v] = conj(Z[-u mod TILE, TILE - v])``
    for ``v > TILE/2`` (a real tile's spectrum); zeros past the last plane."""
    cols = spec.shape[3]
    for e in range(tid, TILES_PER_BLOCK * TILE * TILE, FFT_THREADS):
        lt = e // (TILE * TILE)
        u = (e // TILE) % TILE
        v = e % TILE
        zr = zero
        zi = zero
        if item0 + lt < items:
            row = (item0 + lt) // cols
            col = item0 + lt - row * cols
            if v < HALF:
                f = u * HALF + v
                zr = spec[0, f, row, col]
                zi = spec[1, f, row, col]
            else:
                f = ((TILE - u) % TILE) * HALF + TILE - v
                zr = spec[0, f, row, col]
                zi = -spec[1, f, row, col]
        re[lt, _bitrev_cuda(u), _bitrev_cuda(v)] = zr
        im[lt, _bitrev_cuda(u), _bitrev_cuda(v)] = zi


def _fft_tiles_signature(dt):
    return (array4(dt), array4(dt), array2(dt)) + (int64,) * 9


# one block per TILES_PER_BLOCK consecutive planes (c, t) of spec (channel c, tile t of the chunk):
# the TILE x TILE window of src at (a*step_h + off_h, b*step_w + off_w), its first lim_h x lim_w
# entries kept, transformed to spec[:, :, c, t]
@per_dtype(_fft_tiles_signature, threads=FFT_THREADS)
def fft_tiles_cuda(dt):
    @cuda.jit
    def kernel(src, spec, tw, n0, tiles_h, tiles_w, step_h, step_w, off_h, off_w, lim_h, lim_w):
        re = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        im = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        tw_re = cuda.shared.array(TWIDDLES, dt)
        tw_im = cuda.shared.array(TWIDDLES, dt)
        H, W = src.shape[2], src.shape[3]
        cols = spec.shape[3]
        items = spec.shape[2] * cols
        item0 = cuda.blockIdx.x * TILES_PER_BLOCK
        tid = cuda.threadIdx.x
        _load_twiddles_cuda(tw, tw_re, tw_im, tid)
        for e in range(tid, TILES_PER_BLOCK * TILE * TILE, FFT_THREADS):
            lt = e // (TILE * TILE)
            i = (e // TILE) % TILE
            j = e % TILE
            c = (item0 + lt) // cols
            t = item0 + lt - c * cols
            h = (t // tiles_w) % tiles_h * step_h + off_h + i
            w = t % tiles_w * step_w + off_w + j
            v = dt(0)
            if item0 + lt < items and i < lim_h and j < lim_w and h >= 0 and h < H and w >= 0 and w < W:
                v = src[n0 + t // (tiles_h * tiles_w), c, h, w]
            re[lt, _bitrev_cuda(i), _bitrev_cuda(j)] = v
            im[lt, _bitrev_cuda(i), _bitrev_cuda(j)] = dt(0)
        cuda.syncthreads()
        _fft2_cuda(re, im, tw_re, tw_im, False, tid)
        _store_half_cuda(re, im, spec, item0, items, cols, tid)
    return kernel


def _fft_filter_signature(dt):
    return (array4(dt), array4(dt), array2(dt), int64, int64)


# one block per TILES_PER_BLOCK consecutive planes (row, col) of spec: the filter plane
# w[row, col] (rotate == 0; spec rows K, cols Cg) or w[gi*Kg + col, c] rotated by 180 degrees
# (rotate == 1; row = gi*Cg + c, cols Kg), zero-padded to TILE x TILE and transformed
@per_dtype(_fft_filter_signature, threads=FFT_THREADS)
def fft_filter_cuda(dt):
    @cuda.jit
    def kernel(w, spec, tw, groups, rotate):
        re = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        im = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        tw_re = cuda.shared.array(TWIDDLES, dt)
        tw_im = cuda.shared.array(TWIDDLES, dt)
        R, S = w.shape[2], w.shape[3]
        cols = spec.shape[3]
        items = spec.shape[2] * cols
        Cg = spec.shape[2] // groups
        item0 = cuda.blockIdx.x * TILES_PER_BLOCK
        tid = cuda.threadIdx.x
        _load_twiddles_cuda(tw, tw_re, tw_im, tid)
        for e in range(tid, TILES_PER_BLOCK * TILE * TILE, FFT_THREADS):
            lt = e // (TILE * TILE)
            i = (e // TILE) % TILE
            j = e % TILE
            row = (item0 + lt) // cols
            col = item0 + lt - row * cols
            v = dt(0)
            if item0 + lt < items and i < R and j < S:
                if rotate:
                    gi = row // Cg
                    v = w[gi * cols + col, row - gi * Cg, R - 1 - i, S - 1 - j]
                else:
                    v = w[row, col, i, j]
            re[lt, _bitrev_cuda(i), _bitrev_cuda(j)] = v
            im[lt, _bitrev_cuda(i), _bitrev_cuda(j)] = dt(0)
        cuda.syncthreads()
        _fft2_cuda(re, im, tw_re, tw_im, False, tid)
        _store_half_cuda(re, im, spec, item0, items, cols, tid)
    return kernel


def _ifft_tiles_signature(dt):
    return (array4(dt), array4(dt), array2(dt)) + (int64,) * 5


# one block per TILES_PER_BLOCK consecutive planes (k, t) of spec (channel k, tile t of the chunk):
# the inverse transform, its first step_h x step_w entries (the valid outputs) to out[n, k] at
# (a*step_h, b*step_w), cut at the edge of out
@per_dtype(_ifft_tiles_signature, threads=FFT_THREADS)
def ifft_tiles_cuda(dt):
    @cuda.jit
    def kernel(spec, out, tw, n0, tiles_h, tiles_w, step_h, step_w):
        re = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        im = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        tw_re = cuda.shared.array(TWIDDLES, dt)
        tw_im = cuda.shared.array(TWIDDLES, dt)
        P, Q = out.shape[2], out.shape[3]
        cols = spec.shape[3]
        items = spec.shape[2] * cols
        item0 = cuda.blockIdx.x * TILES_PER_BLOCK
        tid = cuda.threadIdx.x
        _load_twiddles_cuda(tw, tw_re, tw_im, tid)
        _load_full_cuda(spec, item0, items, re, im, tid, dt(0))
        cuda.syncthreads()
        _fft2_cuda(re, im, tw_re, tw_im, True, tid)
        scale = dt(1.0 / (TILE * TILE))
        for e in range(tid, TILES_PER_BLOCK * step_h * step_w, FFT_THREADS):
            lt = e // (step_h * step_w)
            i = (e // step_w) % step_h
            j = e % step_w
            k = (item0 + lt) // cols
            t = item0 + lt - k * cols
            p = (t // tiles_w) % tiles_h * step_h + i
            q = t % tiles_w * step_w + j
            if item0 + lt < items and p < P and q < Q:
                out[n0 + t // (tiles_h * tiles_w), k, p, q] = re[lt, i, j] * scale
    return kernel


def _ifft_filter_signature(dt):
    return (array4(dt), array4(dt), array2(dt))


# one block per TILES_PER_BLOCK consecutive filter planes (k, c) of spec: the inverse transform,
# lags [0,R) x [0,S) to dw[k, c]
@per_dtype(_ifft_filter_signature, threads=FFT_THREADS)
def ifft_filter_cuda(dt):
    @cuda.jit
    def kernel(spec, dw, tw):
        re = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        im = cuda.shared.array((TILES_PER_BLOCK, TILE, PITCH), dt)
        tw_re = cuda.shared.array(TWIDDLES, dt)
        tw_im = cuda.shared.array(TWIDDLES, dt)
        R, S = dw.shape[2], dw.shape[3]
        cols = spec.shape[3]
        items = spec.shape[2] * cols
        item0 = cuda.blockIdx.x * TILES_PER_BLOCK
        tid = cuda.threadIdx.x
        _load_twiddles_cuda(tw, tw_re, tw_im, tid)
        _load_full_cuda(spec, item0, items, re, im, tid, dt(0))
        cuda.syncthreads()
        _fft2_cuda(re, im, tw_re, tw_im, True, tid)
        scale = dt(1.0 / (TILE * TILE))
        for e in range(tid, TILES_PER_BLOCK * R * S, FFT_THREADS):
            lt = e // (R * S)
            r = (e // S) % R
            s = e % S
            k = (item0 + lt) // cols
            if item0 + lt < items:
                dw[k, item0 + lt - k * cols, r, s] = re[lt, r, s] * scale
    return kernel


# ---------------------------------------------------------------------------------------------
# CUDA: the per-frequency complex GEMM
# ---------------------------------------------------------------------------------------------

def _cgemm_jit_options(dt):
    """Launch bounds: two resident float32 blocks per SM cap ptxas at 128 registers (it takes
    ~150 otherwise); float64's 32 accumulators need more, so it gets one. Not in the simulator."""
    return {} if SIMULATOR else {"launch_bounds": (GEMM_THREADS, 2 if dt == float32 else 1)}


def _cgemm_signature(dt):
    return (array4(dt), array4(dt), array4(dt), int64, int64, int64)


# one block per (GBM x GBN tile of c, group g, FREQS_PER_BLOCK frequencies), grid x =
# (frequency block*groups + g)*col_tiles + col tile; thread (tx, ty, tz) owns complex rows
# ty + i*GTY and columns tx + j*GTX of the tile at frequency (frequency block)*FREQS_PER_BLOCK + tz
@per_dtype(_cgemm_signature, threads=GTX * GTY * FREQS_PER_BLOCK)
def cgemm_cuda(dt):
    @cuda.jit(**_cgemm_jit_options(dt))
    def kernel(a, b, c, groups, trans_b, accumulate):
        ar_s = cuda.shared.array((FREQS_PER_BLOCK, GBK, GA_PITCH), dt)
        ai_s = cuda.shared.array((FREQS_PER_BLOCK, GBK, GA_PITCH), dt)
        br_s = cuda.shared.array((FREQS_PER_BLOCK, GBK, GB_PITCH), dt)
        bi_s = cuda.shared.array((FREQS_PER_BLOCK, GBK, GB_PITCH), dt)
        acc_r = cuda.local.array((GTM, GTN), dt)
        acc_i = cuda.local.array((GTM, GTN), dt)
        a_r = cuda.local.array(GTM, dt)
        a_i = cuda.local.array(GTM, dt)
        b_r = cuda.local.array(GTN, dt)
        b_i = cuda.local.array(GTN, dt)
        M = a.shape[2] // groups
        L = a.shape[3]
        N = c.shape[3]
        col_tiles = (N + GBN - 1) // GBN
        z = cuda.blockIdx.x // col_tiles
        n0 = (cuda.blockIdx.x - z * col_tiles) * GBN
        m0 = cuda.blockIdx.y * GBM
        fz = cuda.threadIdx.z
        f = z // groups * FREQS_PER_BLOCK + fz
        g = z % groups
        live = f < FREQS
        a_row = g * M
        b_row = g * N if trans_b else g * L
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * GTX + tx
        for i in range(GTM):
            for j in range(GTN):
                acc_r[i, j] = dt(0)
                acc_i[i, j] = dt(0)
        for k0 in range(0, L, GBK):
            for s in range(A_LOADS):
                e = tid + s * GEMM_THREADS
                row = e // GBK
                kk = e % GBK
                vr = dt(0)
                vi = dt(0)
                if live and m0 + row < M and k0 + kk < L:
                    vr = a[0, f, a_row + m0 + row, k0 + kk]
                    vi = a[1, f, a_row + m0 + row, k0 + kk]
                ar_s[fz, kk, row] = vr
                ai_s[fz, kk, row] = vi
            for s in range(B_LOADS):
                e = tid + s * GEMM_THREADS
                if trans_b:
                    col = e // GBK
                    kk = e % GBK
                else:
                    col = e % GBN
                    kk = e // GBN
                vr = dt(0)
                vi = dt(0)
                if live and n0 + col < N and k0 + kk < L:
                    if trans_b:
                        vr = b[0, f, b_row + n0 + col, k0 + kk]
                        vi = b[1, f, b_row + n0 + col, k0 + kk]
                    else:
                        vr = b[0, f, b_row + k0 + kk, n0 + col]
                        vi = b[1, f, b_row + k0 + kk, n0 + col]
                br_s[fz, kk, col] = vr
                bi_s[fz, kk, col] = vi
            cuda.syncthreads()
            for kk in range(GBK):
                for i in range(GTM):
                    a_r[i] = ar_s[fz, kk, ty + i * GTY]
                    a_i[i] = ai_s[fz, kk, ty + i * GTY]
                for j in range(GTN):
                    b_r[j] = br_s[fz, kk, tx + j * GTX]
                    b_i[j] = bi_s[fz, kk, tx + j * GTX]
                for i in range(GTM):
                    for j in range(GTN):
                        acc_r[i, j] += a_r[i] * b_r[j] + a_i[i] * b_i[j]
                        acc_i[i, j] += a_r[i] * b_i[j] - a_i[i] * b_r[j]
            cuda.syncthreads()
        for i in range(GTM):
            m = m0 + ty + i * GTY
            if live and m < M:
                for j in range(GTN):
                    n = n0 + tx + j * GTX
                    if n < N:
                        if accumulate:
                            c[0, f, a_row + m, n] += acc_r[i, j]
                            c[1, f, a_row + m, n] += acc_i[i, j]
                        else:
                            c[0, f, a_row + m, n] = acc_r[i, j]
                            c[1, f, a_row + m, n] = acc_i[i, j]
    return kernel


# ---------------------------------------------------------------------------------------------
# CPU: whole-plane FFTs (numpy.fft) and BLAS products
# ---------------------------------------------------------------------------------------------

def fft_length(n):
    """The smallest ``2^a 3^b 5^c >= n``: lengths pocketfft transforms fast."""
    m = max(1, n)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


class _Axis(NamedTuple):
    """One axis of ``out[p] = sum_{t<k} src[p + t + d] * ker[t]`` (``p < n_out``) as a circular
    correlation of length ``L``: the source rows ``[j0, j1)`` that any output reads sit at
    ``[0, j1 - j0)``, the kernel at ``[0, k)``, and output ``p`` is entry ``(p + a) mod L``,
    ``a = d - j0 <= 0``. Reads ``i = p + t + a`` span ``[a, a + n_out + k - 1)``; those below 0
    wrap to ``[L + a, L)``, which holds zeros when ``L >= j1 - j0 - a``, and none wraps past the
    end when ``L >= a + n_out + k - 1``."""
    j0: int
    j1: int
    a: int
    L: int

    @classmethod
    def plan(cls, n_src, n_out, k, d):
        j0 = max(0, d)
        j1 = max(j0, min(n_src, d + n_out + k - 1))
        a = d - j0
        return cls(j0, j1, a, fft_length(max(a + n_out + k - 1, j1 - j0 - a, k)))

    def taps(self, n):
        """Where outputs ``0 .. n-1`` sit in the circular result."""
        return (np.arange(n) + self.a) % self.L


def _dft(rows, cols, length, dtype):
    """``E[i, j] = exp(2 pi i rows[i] cols[j] / length)`` for index vectors (or counts, meaning
    ``arange``), rounded once from float64."""
    rows, cols = (np.arange(v) if np.isscalar(v) else v for v in (rows, cols))
    return np.exp(2j * np.pi * (np.outer(rows, cols) % length) / length).astype(dtype)


def _complex(dtype):
    return np.complex64 if np.dtype(dtype) == np.float32 else np.complex128


def _filter_spectrum(wk, Lh, Lw):
    """``wt[g, u*Lw2 + v, c, k] = conj(DFT(wk[g, k, c]))[u, v]
    = sum_{r,s} wk[g, k, c, r, s] e^{2 pi i (ur/Lh + vs/Lw)}`` for ``v < Lw2 = Lw//2 + 1`` (w is
    real): the conjugated half spectrum of each filter plane zero-padded to ``Lh x Lw``, as
    (groups, F, Ci, kb) for the product with the data spectra. Two DFT-matrix products over the
    ``S`` and ``R`` taps, far cheaper than FFTs of the mostly-zero planes."""
    G, kb, ci, R, S = wk.shape
    Lw2 = Lw // 2 + 1
    cdt = _complex(wk.dtype)
    t = wk.reshape(-1, S) @ _dft(S, Lw2, Lw, cdt)
    t = np.ascontiguousarray(t.reshape(G, kb, ci, R, Lw2).transpose(0, 3, 4, 2, 1)).reshape(G, R, -1)
    return (_dft(Lh, R, Lh, cdt) @ t).reshape(G, Lh * Lw2, ci, kb)


def _filter_lags(spec, rows, cols, R, S, dtype):
    """``dw[g, k, c, r, s] = sum_{u,v} spec[g, u*Lw2 + v, k, c] e^{2 pi i (u r'/Lh + v s'/Lw)}`` over
    the full ``Lh x Lw`` spectrum (the stored half and its conjugate mirror), for the lags
    ``r < R, s < S`` at their circular positions ``r', s'`` only (``_Axis.taps``):
    ``sum_u e^{2 pi i u r'/Lh}`` over the rows, then the half-spectrum inverse
    ``sum_v c_v Re(G_v e^{2 pi i v s'/Lw})`` with ``c_v = 1`` at ``v = 0`` and the Nyquist column,
    else 2 (what irfft does), both as small matrix products. ``spec`` is a product of two
    ortho-normalised spectra, so it already carries irfft2's ``1/(Lh*Lw)``."""
    (G, F, kb, ci), Lh, Lw = spec.shape, rows.L, cols.L
    Lw2 = F // Lh
    t = _dft(rows.taps(R), Lh, Lh, _complex(dtype)) @ spec.reshape(G, Lh, -1)
    t = np.ascontiguousarray(t.reshape(G, R, Lw2, kb, ci).transpose(0, 3, 4, 1, 2))
    weight = np.full(Lw2, 2.0)
    weight[0] = 1
    if Lw % 2 == 0:
        weight[-1] = 1
    e = _dft(Lw2, cols.taps(S), Lw, np.complex128) * weight[:, None]
    # Re(t @ e) as one real product: t viewed as interleaved (re, im) against rows (Re e, -Im e)
    er = np.empty((2 * Lw2, S), dtype)
    er[0::2] = e.real
    er[1::2] = -e.imag
    return t.view(dtype).reshape(G, kb, ci, R, 2 * Lw2) @ er


def _channel_product(xt, wt):
    """(groups, F, m, Ci) @ (groups, F, Ci, kb) per frequency, split over the threads by
    ``gemm.matmul_cpu``."""
    G, F, m, ci = xt.shape
    out = np.empty((G * F, m, wt.shape[-1]), np.result_type(xt, wt))
    matmul_cpu(xt.reshape(G * F, m, ci), np.broadcast_to(wt, (G, F) + wt.shape[2:]).reshape(G * F, ci, -1), out)
    return out.reshape(G, F, m, -1)


def _chunks(N, Ko, groups, Ci, C, shape, itemsize):
    """(output channels per group per chunk, images per chunk): the filter spectrum chunk
    (groups*kb*Ci*F complex) within half of CPU_WORKSPACE, an image chunk's planes and spectra
    (source planes, spectrum and its transposed copy, the same for the outputs) within the other."""
    Lh, Lw = shape
    F = Lh * (Lw // 2 + 1)
    csz = 2 * itemsize
    kb = max(1, min(Ko, CPU_WORKSPACE // 2 // (groups * Ci * F * csz)))
    kb = -(-Ko // -(-Ko // kb))      # even chunks: a small last one would redo the image spectra for little
    per_image = C * (Lh * Lw * itemsize + 2 * F * csz) + groups * kb * (2 * F * csz + Lh * Lw * itemsize)
    return kb, max(1, min(N, CPU_WORKSPACE // 2 // per_image))


def _plane_spectra(planes, shape, groups):
    """The ortho-normalised half spectra of planes (m, channels, <= Lh, <= Lw), zero-padded at
    the end to ``shape``, as (m, groups, channels/groups, F). norm="ortho" (on the inverse too)
    keeps the overall 1/(Lh*Lw) and float32 planes in numpy's float32 loop: the default forward
    scale, the int 1, runs them through the float64 one, 2-3x slower."""
    m, channels = planes.shape[:2]
    return np.fft.rfft2(planes, s=shape, norm="ortho").reshape(m, groups, channels // groups, -1)


def correlate_cpu(src, ker, out, groups, off):
    """``out[n, gi*Ko + k, p, q] = sum_{c<Ci, r, s} src[n, gi*Ci + c, p + r + off_h, q + s + off_w]
    * ker[gi*Ko + k, c, r, s]`` (0 outside src) for NumPy arrays, by whole-plane FFTs; overwrites
    ``out`` (N, groups*Ko, Po, Qo)."""
    N, C = src.shape[:2]
    K, Ci, R, S = ker.shape
    Po, Qo = out.shape[2:]
    Ko = K // groups
    rows = _Axis.plan(src.shape[2], Po, R, off[0])
    cols = _Axis.plan(src.shape[3], Qo, S, off[1])
    shape = (rows.L, cols.L)
    kb, nb = _chunks(N, Ko, groups, Ci, C, shape, src.dtype.itemsize)
    wg = ker.reshape(groups, Ko, Ci, R, S)
    outg = out.reshape(N, groups, Ko, Po, Qo)
    at = np.ix_(rows.taps(Po), cols.taps(Qo))
    for k0 in range(0, Ko, kb):
        kn = min(kb, Ko - k0)
        wt = _filter_spectrum(wg[:, k0:k0 + kn], *shape)
        for n0 in range(0, N, nb):
            m = min(nb, N - n0)
            xs = _plane_spectra(src[n0:n0 + m, :, rows.j0:rows.j1, cols.j0:cols.j1], shape, groups)
            yt = _channel_product(np.ascontiguousarray(xs.transpose(1, 3, 0, 2)), wt)
            ys = yt.reshape(groups, rows.L, -1, m, kn).transpose(3, 0, 4, 1, 2)
            outg[n0:n0 + m, :, k0:k0 + kn] = np.fft.irfft2(ys, s=shape, norm="ortho")[(Ellipsis,) + at]


def _fwd_cpu(x, w, y, g):
    correlate_cpu(x, w, y, g.groups, (-g.pad_h, -g.pad_w))


def rotated_filter(w, groups):
    """``wr[gi*Cg + c, k, r, s] = w[gi*Kg + k, c, R-1-r, S-1-s]``: the backward-data kernel (NumPy)."""
    K, Cg, R, S = w.shape
    Kg = K // groups
    wr = w.reshape(groups, Kg, Cg, R, S)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wr).reshape(groups * Cg, Kg, R, S)


def _bwd_data_cpu(dy, w, dx, g):
    correlate_cpu(dy, rotated_filter(w, g.groups), dx, g.groups, (g.pad_h - g.R + 1, g.pad_w - g.S + 1))


def _bwd_filter_cpu(dy, x, dw, g):
    """``dw[k, c, r, s] = sum_{p,q} x[., r + p - ph, s + q - pw] * dy[., p, q]``: per axis the
    correlation of x with dy as the kernel (``_Axis`` with R outputs and P taps), ``DW_kc = sum_n
    conj(DY_nk) * X_nc`` per frequency with the image chunks added in order, then the lags."""
    Cg, Kg = g.C // g.groups, g.K // g.groups
    rows = _Axis.plan(g.H, g.R, g.P, -g.pad_h)
    cols = _Axis.plan(g.W, g.S, g.Q, -g.pad_w)
    shape = (rows.L, cols.L)
    kb, nb = _chunks(g.N, Kg, g.groups, Cg, g.C, shape, x.dtype.itemsize)
    dyg = dy.reshape(g.N, g.groups, Kg, g.P, g.Q)
    dwg = dw.reshape(g.groups, Kg, Cg, g.R, g.S)
    for k0 in range(0, Kg, kb):
        kn = min(kb, Kg - k0)
        acc = None
        for n0 in range(0, g.N, nb):
            m = min(nb, g.N - n0)
            xs = _plane_spectra(x[n0:n0 + m, :, rows.j0:rows.j1, cols.j0:cols.j1], shape, g.groups)
            ds = _plane_spectra(dyg[n0:n0 + m, :, k0:k0 + kn].reshape(m, -1, g.P, g.Q), shape, g.groups)
            dt = np.ascontiguousarray(ds.transpose(1, 3, 2, 0))
            part = _channel_product(np.conj(dt, out=dt), np.ascontiguousarray(xs.transpose(1, 3, 0, 2)))
            acc = part if acc is None else np.add(acc, part, out=acc)
        dwg[:, k0:k0 + kn] = _filter_lags(acc, rows, cols, g.R, g.S, x.dtype)


# ---------------------------------------------------------------------------------------------
# CUDA launchers
# ---------------------------------------------------------------------------------------------

def _twiddles(dtype):
    """Device table ``(cos, sin)(2 pi t / TILE)`` for ``t < TILE/2``, rounded once from float64."""
    def table():
        t = 2 * np.pi * np.arange(TILE // 2) / TILE
        return np.stack([np.cos(t), np.sin(t)]).astype(dtype)
    return device_constant(("fft_twiddles", TILE, np.dtype(dtype).str), table)


def _spectra(buf, rows, cols):
    """A (2, FREQS, rows, cols) view of the front of a flat device buffer."""
    return buf[:2 * FREQS * rows * cols].reshape(2, FREQS, rows, cols)


def _fft_grid(spec):
    """Blocks of the FFT kernels: TILES_PER_BLOCK planes of spec (2, FREQS, rows, cols) each."""
    return blocks(spec.shape[2] * spec.shape[3], TILES_PER_BLOCK)


def _cgemm(a, b, c, groups, trans_b, accumulate):
    """``c[:, f, g*M + m, n] (+)= sum_l conj(a[f, g*M + m, l]) * op(b)[f, l, n]`` on device spectra;
    ``op(b)[l, n]`` is ``b[f, g*L + l, n]``, or ``b[f, g*N + n, l]`` with ``trans_b``."""
    M, N = a.shape[2] // groups, c.shape[3]
    grid = (blocks(FREQS, FREQS_PER_BLOCK) * groups * blocks(N, GBN), blocks(M, GBM))
    cgemm_cuda[c.dtype][grid, (GTX, GTY, FREQS_PER_BLOCK), stream()](a, b, c, groups, int(trans_b), int(accumulate))


def _tiling(out_h, out_w, R, S):
    """(valid outputs per tile along h and w, tiles along h and w)."""
    vh, vw = TILE - R + 1, TILE - S + 1
    return vh, vw, blocks(out_h, vh), blocks(out_w, vw)


def _image_chunk(N, channels, tiles, itemsize):
    """Images per chunk: their spectra (every channel of ``channels``) within CUDA_WORKSPACE."""
    return max(1, min(N, CUDA_WORKSPACE // (2 * FREQS * channels * tiles * itemsize)))


def correlate_cuda(src, wspec, out, groups, off, R, S):
    """``correlate_cpu``'s sum on device arrays by overlap-save tiles, with the kernel given as its
    spectrum ``wspec`` (2, FREQS, groups*Ko, Ci) (``fft_filter_cuda``); overwrites ``out``."""
    N, C = src.shape[0], src.shape[1]
    K, P, Q = out.shape[1], out.shape[2], out.shape[3]
    vh, vw, th, tw = _tiling(P, Q, R, S)
    nb = _image_chunk(N, C + K, th * tw, src.dtype.itemsize)
    xbuf = device_empty(2 * FREQS * C * nb * th * tw, src.dtype)
    ybuf = device_empty(2 * FREQS * K * nb * th * tw, src.dtype)
    table = _twiddles(src.dtype)
    for n0 in range(0, N, nb):
        cols = min(nb, N - n0) * th * tw
        xs, ys = _spectra(xbuf, C, cols), _spectra(ybuf, K, cols)
        fft_tiles_cuda[src.dtype][_fft_grid(xs), FFT_THREADS, stream()](src, xs, table, n0, th, tw, vh, vw,
                                                              off[0], off[1], TILE, TILE)
        _cgemm(wspec, xs, ys, groups, False, False)
        ifft_tiles_cuda[src.dtype][_fft_grid(ys), FFT_THREADS, stream()](ys, out, table, n0, th, tw, vh, vw)


def _filter_spectra_cuda(w, rows, cols, groups, rotate):
    spec = device_empty((2, FREQS, rows, cols), w.dtype)
    fft_filter_cuda[w.dtype][_fft_grid(spec), FFT_THREADS, stream()](w, spec, _twiddles(w.dtype), groups, int(rotate))
    return spec


def _fwd_cuda(x, w, y, g):
    wspec = _filter_spectra_cuda(w, g.K, g.C // g.groups, g.groups, False)
    correlate_cuda(x, wspec, y, g.groups, (-g.pad_h, -g.pad_w), g.R, g.S)


def _bwd_data_cuda(dy, w, dx, g):
    wspec = _filter_spectra_cuda(w, g.C, g.K // g.groups, g.groups, True)
    correlate_cuda(dy, wspec, dx, g.groups, (g.pad_h - g.R + 1, g.pad_w - g.S + 1), g.R, g.S)


def _bwd_filter_cuda(dy, x, dw, g):
    """x windows of TILE at stride V against dy tiles of V (zero-padded), ``DW_kc = sum over
    (image, tile) of conj(DY) * X`` per frequency with chunks added in order, then the lags."""
    vh, vw, th, tw = _tiling(g.P, g.Q, g.R, g.S)
    nb = _image_chunk(g.N, g.C + g.K, th * tw, x.dtype.itemsize)
    xbuf = device_empty(2 * FREQS * g.C * nb * th * tw, x.dtype)
    dbuf = device_empty(2 * FREQS * g.K * nb * th * tw, x.dtype)
    dws = device_empty((2, FREQS, g.K, g.C // g.groups), x.dtype)
    table = _twiddles(x.dtype)
    for n0 in range(0, g.N, nb):
        cols = min(nb, g.N - n0) * th * tw
        xs, ds = _spectra(xbuf, g.C, cols), _spectra(dbuf, g.K, cols)
        fft_tiles_cuda[x.dtype][_fft_grid(xs), FFT_THREADS, stream()](x, xs, table, n0, th, tw, vh, vw,
                                                            -g.pad_h, -g.pad_w, TILE, TILE)
        fft_tiles_cuda[x.dtype][_fft_grid(ds), FFT_THREADS, stream()](dy, ds, table, n0, th, tw, vh, vw, 0, 0, vh, vw)
        _cgemm(ds, xs, dws, g.groups, True, n0 > 0)
    ifft_filter_cuda[x.dtype][_fft_grid(dws), FFT_THREADS, stream()](dws, dw, table)


# ---------------------------------------------------------------------------------------------
# Launchers and the registry entry
# ---------------------------------------------------------------------------------------------

def conv2d_fwd_fft(x, w, y, g):
    """Forward conv by FFT, ``Y_k = sum_c X_c * conj(W_kc)`` per frequency; overwrites ``y``.

    ``y[n, k, p, q] = sum_{c, r, s} x[n, gi*Cg + c, p - ph + r, q - pw + s] * w[k, c, r, s]``
    (stride 1, dilation 1). NumPy arrays run on the CPU, CUDA device arrays on the GPU.
    """
    check_conv_arrays("fft", g, "fwd", x, w, y)
    (_fwd_cuda if is_device_array(x) else _fwd_cpu)(x, w, y, g)


def conv2d_bwd_data_fft(dy, w, dx, g):
    """Data gradient by FFT: dy correlated with the 180-degree-rotated filter (K and C/groups
    swapped) at origin ``pad_before - (R-1, S-1)``; overwrites ``dx``.

    ``dx[n, gi*Cg + c, h, w] = sum_{k<Kg, r, s} dy[n, gi*Kg + k, h + ph - r, w + pw - s] * w[gi*Kg + k, c, r, s]``.
    """
    check_conv_arrays("fft", g, "bwd_data", dy, w, dx)
    (_bwd_data_cuda if is_device_array(dy) else _bwd_data_cpu)(dy, w, dx, g)


def conv2d_bwd_filter_fft(dy, x, dw, g):
    """Filter gradient by FFT, ``DW_kc = sum_n conj(DY_nk) * X_nc`` per frequency at the lags
    ``[0, R) x [0, S)``; overwrites ``dw``.

    ``dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] * x[n, gi*Cg + c, p - ph + r, q - pw + s]``.
    """
    check_conv_arrays("fft", g, "bwd_filter", dy, x, dw)
    (_bwd_filter_cuda if is_device_array(dy) else _bwd_filter_cpu)(dy, x, dw, g)


def _limits(g, device, pass_):
    if any(s != 1 for s in g.stride):
        return False, f"fft needs stride 1, got {g.stride}"
    if any(d != 1 for d in g.dilation):
        return False, f"fft needs dilation 1, got {g.dilation}"
    g2 = g.as_2d()
    if device == "cuda" and (g2.R > TILE - 1 or g2.S > TILE - 1):
        return False, (f"fft on cuda needs a kernel of at most {TILE - 1}x{TILE - 1} (its {TILE}x{TILE} "
                       f"tiles), got {g2.R}x{g2.S}")
    return True, ""


def _preference(g, device, pass_):
    """Rank 1 (ahead of implicit_gemm's 2) on the CPU where docs/conv-algorithms.md measured fft
    ahead: kernels of 7x7 taps or more, at least 64 input and output channels per group, and
    N*R*S >= 400 (the filter spectrum, K*Cg*L^2 per call whatever the batch, must be shared by
    enough work). 9 elsewhere, and on CUDA, where it has not been measured: never picked untimed."""
    g = g.as_2d()
    if (device == "cpu" and g.R * g.S >= 49 and min(g.C // g.groups, g.K // g.groups) >= 64
            and g.N * g.R * g.S >= 400):
        return 1
    return 9


ALGORITHM = ConvAlgorithm("fft", conv2d_fwd_fft, conv2d_bwd_data_fft, conv2d_bwd_filter_fft, ranks=(2,),
                          limits=_limits, preference=_preference,
                          summary="spectra multiplied per frequency: whole planes on the CPU, "
                                  "overlap-save tiles on CUDA")
