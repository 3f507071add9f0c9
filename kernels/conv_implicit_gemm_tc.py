"""Implicit-GEMM convolution on tensor cores: the products of ``conv_implicit_gemm.py`` computed
with warp-level MMA instructions (``tensorcore.py``) fed by a multi-stage ``cp.async`` pipeline.

Per group ``gi`` (``Cg = C/groups``, ``Kg = K/groups``, ``RS = R*S``) the three passes are the
products of ``conv_implicit_gemm.py``:

    forward          Y_g[Kg, N*P*Q]   = W_g[Kg, Cg*RS] @ B,      B[(c, r, s), (n, p, q)] = x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]
    backward data    dX_g[Cg, N*H*W]  = A[Cg, Kg*RS] @ B',      A[c, (k, r, s)] = w[gi*Kg + k, c, r, s],
                     B'[(k, r, s), (n, h, w)] = dy[n, gi*Kg + k, (h + ph - r*dh)/sh, (w + pw - s*dw)/sw] (exact, inside)
    backward filter  dW_g[Kg, Cg*RS]  = dY_g[Kg, N*P*Q] @ B^T

with zeros outside the arrays. Precision: float32 operands are rounded to TF32 (10-bit mantissa,
round to nearest even, ``tensorcore.round_tf32``) and multiplied by ``mma.m16n8k8.tf32`` with
fp32 accumulation; float16 operands go to ``mma.m16n8k16.f16`` as they are, with fp32
accumulation (their products are exact in fp32), and the result (+ bias, in fp32) is rounded
once to float16; float64 runs the FP64 tensor-core MMA ``mma.m8n8k4.f64`` (IEEE fp64 FMA, full
precision). The CPU kernels do the same math: float32 operands rounded to TF32 by the same bit
arithmetic (``tensorcore.round_tf32_cpu``), float16 operands widened to float32 (exactly), then
the fp32 implicit-GEMM kernels of ``conv_implicit_gemm.py``, float16 results rounded once;
float64 is plain float64 there. So float16 is not reduced precision here: it is what a float16
convolution computes (fp32 accumulation, as PyTorch's), within ``tolerance(float16)`` of the
float64 result of the same float16 inputs.

TF32 error: each product carries the relative rounding error of two 11-bit significands (at most
2^-11 each); summed over a reduction of length L with random signs the error grows like sqrt(L),
as the result does. Measured against float64 on unit-variance data, forward, CPU: max |err| /
max |ref| 2.6e-4 (L = 27), 2.9e-4 (L = 288), 3.0e-4 (L = 1152), 3.2e-4 (L = 4608); per element
the error's standard deviation is 2.9e-4 * sqrt(L) (0.0015 at L = 27, 0.02 at L = 4608). The
tests compare TF32 results element-wise with ``TOLERANCE``, sized for their unit-variance
operands and reductions of up to ~150 terms (5 standard deviations there).

CUDA: one block per BM x BN tile of a product (groups on grid z; backward filter cuts its long
reduction into slices, ``z = slice * groups + group``, and adds the slices' partial products in
order with ``conv_implicit_gemm.sum_slices_cuda``: deterministic, no atomics). The reduction
runs in BK-deep tiles through STAGES shared-memory buffers: while the warps multiply tile t, the
copies of tiles t+1 .. t+STAGES-1 are in flight (``cp.async`` with zero fill for padding, tails
and phases that miss, so the shared tiles need no predication afterwards). Both operands sit in
shared memory as [row][k] with the 16-byte chunks of a row XOR-swizzled by the row, which keeps
``ldmatrix`` and the fragment loads free of bank conflicts. Gather addresses are the sum of a
per-row or per-column origin, computed once per thread, and an int32 offset per reduction index
(or per filter tap) from a table the launcher builds once per geometry. The epilogue writes the
fp32 (fp64) accumulators straight to the output and adds an optional bias. float16 tiles are
words of two halves along k (see the float16 section below).
"""
import functools
from typing import NamedTuple

import numpy as np
from numba import cuda, float32, float64, int32, uint32
from numba.types import float16

from . import conv_implicit_gemm
from .conv_implicit_gemm import SUM_THREADS, _stride_phases, sum_slices_cuda
from .conv_algorithm import WITH_HALF, ConvAlgorithm, check_conv_arrays
from .cuda_util import (SIMULATOR, array1, blocks, device_constant, device_empty, is_device_array, per_dtype,
                        resident_blocks, stream, wave_splits)
from .elementwise import cast
from .float16 import HALF, accumulator, accumulator_dtype
from .gemm import float32_copy
from .tensorcore import SMEM_ALIGN, cp_async, cp_async_commit, cp_async_wait, ldmatrix_x4, mma_f16_m16n8k16
from .tensorcore import mma_f64_m8n8k4, mma_tf32_m16n8k8, pack_f16x2, round_tf32, round_tf32_cpu, unpack_f16x2


class Tiles(NamedTuple):
    """A CTA tile (bm x bn, reduction tiles bk deep), its warp grid and the pipeline depth."""
    bm: int
    bn: int
    bk: int
    warps_m: int
    warps_n: int
    stages: int

    @property
    def threads(self):
        return 32 * self.warps_m * self.warps_n


# float32 (TF32 m16n8k8): 16 warps of 32 x 32; 3 stages of 2 x 128 x 16 floats = 48 KiB, the
# static shared-memory limit (BK 32 would need 96 KiB). float16 (FP16 m16n8k16): the same
# warps and bytes, BK 32 halves (16 words of two) deep. float64 (m8n8k4): 16 warps of 32 x 16,
# 36 KiB. One block of 512 threads per SM (25 % occupancy) caps registers at 128. The simulator
# runs one warp of tiny tiles (a test runs the GPU's warp tiles, on two warps, simulated).
GPU_TILES = {np.dtype(np.float32): Tiles(128, 128, 16, 4, 4, 3), np.dtype(np.float64): Tiles(128, 64, 8, 4, 4, 3),
             HALF: Tiles(128, 128, 32, 4, 4, 3)}
SIM_TILES = {np.dtype(np.float32): Tiles(16, 32, 8, 1, 1, 3), np.dtype(np.float64): Tiles(8, 32, 8, 1, 1, 3),
             HALF: Tiles(16, 32, 16, 1, 1, 3)}
TILES = SIM_TILES if SIMULATOR else GPU_TILES
THREADS = 32 if SIMULATOR else 512
BLOCKS_PER_SM = 1
NO_ROW = -(1 << 30)          # the window origin of a column past the end: no tap reaches back into range
MIN_SLICE_TILES = 4          # backward filter: reduction tiles per slice, at least
# (rtol, atol) against the float64 reference for float32 (TF32) results; float64 is exact precision
TOLERANCE = {"float32": (1e-2, 2e-2)}
PREFER_MIN_CHANNELS = 32     # auto's heuristic prefers this algorithm on CUDA from this many channels
PREFER_MIN_REDUCTION = 64    # ... and reduction length


def _np_dtype(dt):
    return {float16: HALF, float32: np.dtype(np.float32)}.get(dt, np.dtype(np.float64))


def _jit_options(cfg):
    return {} if SIMULATOR else {"launch_bounds": (cfg.threads, BLOCKS_PER_SM)}


@functools.lru_cache(maxsize=None)
def _parts(dt, cfg):
    """The device functions of a dtype's tile ``cfg``: swizzle, warp MMA step and epilogue, and
    the derived constants (a dict)."""
    BM, BN, BK, STAGES, THREADS = cfg.bm, cfg.bn, cfg.bk, cfg.stages, cfg.threads
    WM, WN = BM // cfg.warps_m, BN // cfg.warps_n
    tf32, half = dt == float32, dt == float16
    at = accumulator(dt)
    MMA_M, REGS = (16, 4) if tf32 or half else (8, 2)
    MT, NT = WM // MMA_M, WN // 8
    # shared tiles are [row][reduction] in 32-bit words: a float16 word holds two reduction indices
    WORDS = BK // 2 if half else BK
    CHUNKS = WORDS // 4 - 1
    assert THREADS % BN == 0 and THREADS % WORDS == 0 and NT % 2 == 0

    @cuda.jit(device=True, inline="always")
    def step_tf32(As, Bs, st, wm0, wn0, lane, acc):
        """acc[i, j] += A[wm0 + 16i .., k] @ B[k, wn0 + 8j ..] over the BK columns of stage st."""
        af = cuda.local.array((MT, 4), float32)
        bf = cuda.local.array((NT, 2), float32)
        q = lane >> 3
        r8 = lane & 7
        for ks in range(BK // 8):
            for i in range(MT):
                # lane l addresses row l % 8 of 8x4 matrix l // 8: (rows +0/+8) x (columns +0/+4)
                row = wm0 + 16 * i + r8 + 8 * (q & 1)
                a = ldmatrix_x4(As, (st, row, (8 * ks + 4 * (q >> 1)) ^ (((row >> 1) & CHUNKS) << 2)))
                for e in range(4):
                    af[i, e] = round_tf32(a[e])
            for j in range(NT // 2):
                row = wn0 + 16 * j + r8 + 8 * (q >> 1)
                b = ldmatrix_x4(Bs, (st, row, (8 * ks + 4 * (q & 1)) ^ (((row >> 1) & CHUNKS) << 2)))
                bf[2 * j, 0] = round_tf32(b[0])
                bf[2 * j, 1] = round_tf32(b[1])
                bf[2 * j + 1, 0] = round_tf32(b[2])
                bf[2 * j + 1, 1] = round_tf32(b[3])
            for i in range(MT):
                for j in range(NT):
                    d = mma_tf32_m16n8k8((af[i, 0], af[i, 1], af[i, 2], af[i, 3]), (bf[j, 0], bf[j, 1]),
                                         (acc[i, j, 0], acc[i, j, 1], acc[i, j, 2], acc[i, j, 3]))
                    for e in range(4):
                        acc[i, j, e] = d[e]

    @cuda.jit(device=True, inline="always")
    def step_f16(As, Bs, st, wm0, wn0, lane, acc):
        """acc[i, j] += A[wm0 + 16i .., k] @ B[k, wn0 + 8j ..] over the BK halves of stage st: the
        fragments of step_tf32 read as words, each word two float16 along k (m16n8k16)."""
        af = cuda.local.array((MT, 4), float32)
        bf = cuda.local.array((NT, 2), float32)
        q = lane >> 3
        r8 = lane & 7
        for ks in range(WORDS // 8):
            for i in range(MT):
                row = wm0 + 16 * i + r8 + 8 * (q & 1)
                a = ldmatrix_x4(As, (st, row, (8 * ks + 4 * (q >> 1)) ^ (((row >> 1) & CHUNKS) << 2)))
                for e in range(4):
                    af[i, e] = a[e]
            for j in range(NT // 2):
                row = wn0 + 16 * j + r8 + 8 * (q >> 1)
                b = ldmatrix_x4(Bs, (st, row, (8 * ks + 4 * (q & 1)) ^ (((row >> 1) & CHUNKS) << 2)))
                bf[2 * j, 0] = b[0]
                bf[2 * j, 1] = b[1]
                bf[2 * j + 1, 0] = b[2]
                bf[2 * j + 1, 1] = b[3]
            for i in range(MT):
                a0, a1 = unpack_f16x2(af[i, 0])
                a2, a3 = unpack_f16x2(af[i, 1])
                a4, a5 = unpack_f16x2(af[i, 2])
                a6, a7 = unpack_f16x2(af[i, 3])
                for j in range(NT):
                    b0, b1 = unpack_f16x2(bf[j, 0])
                    b2, b3 = unpack_f16x2(bf[j, 1])
                    d = mma_f16_m16n8k16((a0, a1, a2, a3, a4, a5, a6, a7), (b0, b1, b2, b3),
                                         (acc[i, j, 0], acc[i, j, 1], acc[i, j, 2], acc[i, j, 3]))
                    for e in range(4):
                        acc[i, j, e] = d[e]

    @cuda.jit(device=True, inline="always")
    def step_f64(As, Bs, st, wm0, wn0, lane, acc):
        """acc[i, j] += A[wm0 + 8i .., k] @ B[k, wn0 + 8j ..] over the BK columns of stage st."""
        af = cuda.local.array(MT, float64)
        bf = cuda.local.array(NT, float64)
        g = lane >> 2
        t = lane & 3
        for ks in range(BK // 4):
            for i in range(MT):
                row = wm0 + 8 * i + g
                af[i] = As[st, uint32(row), uint32((4 * ks + t) ^ (((row >> 1) & CHUNKS) << 2))]
            for j in range(NT):
                row = wn0 + 8 * j + g
                bf[j] = Bs[st, uint32(row), uint32((4 * ks + t) ^ (((row >> 1) & CHUNKS) << 2))]
            for i in range(MT):
                for j in range(NT):
                    d = mma_f64_m8n8k4(af[i], bf[j], (acc[i, j, 0], acc[i, j, 1]))
                    acc[i, j, 0] = d[0]
                    acc[i, j, 1] = d[1]

    @cuda.jit(device=True, inline="always")
    def store(out3, acc, lane, rows, row0, r0, cbase, c0, ncols, span, nw, origin, hstep, wstep, bias, has_bias):
        """For this lane's elements (r, c - cbase) of the warp tile at (r0, c0), r < rows and
        c < ncols: out3[c // span, row0 + r, origin + (e // nw)*hstep + (e % nw)*wstep] = acc
        (+ bias[row0 + r]), e = c % span, rounded once to out3's dtype."""
        g = lane >> 2
        t = lane & 3
        for i in range(MT):
            for j in range(NT):
                for e in range(REGS):
                    r = r0 + MMA_M * i + g + 8 * (e >> 1)
                    c = cbase + c0 + 8 * j + 2 * t + (e & 1)
                    if r < rows and c < ncols:
                        v = acc[i, j, e]
                        if has_bias:
                            v += at(bias[uint32(row0 + r)])
                        pos = c % span
                        out3[uint32(c // span), uint32(row0 + r), uint32(origin + (pos // nw) * hstep + (pos % nw) * wstep)] = v

    step = step_tf32 if tf32 else step_f16 if half else step_f64
    return dict(CHUNKS=CHUNKS, WORDS=WORDS, step=step, store=store, MT=MT, NT=NT, REGS=REGS, WM=WM, WN=WN,
                A_LOADS=BM * WORDS // THREADS, B_LOADS=BN * WORDS // THREADS, wait=cp_async_wait(STAGES - 2))


def _fwd_signature(dt):
    return (array1(dt), array1(dt), dt[:, :, ::1], array1(dt), int32[:, ::1]) + (int32,) * 10


# one block per BM x BN tile of Y_g (warps of WM x WN, one MMA accumulator fragment per lane and
# 16x8 / 8x8 sub-tile): channels m0 + .., pixels col0 + ..; grid z = group
def _fwd_kernel(dt, cfg):
    p = _parts(dt, cfg)
    THREADS = cfg.threads
    CHUNKS, step, store, wait = p["CHUNKS"], p["step"], p["store"], p["wait"]
    BM, BN, BK, STAGES, WM, WN = cfg.bm, cfg.bn, cfg.bk, cfg.stages, p["WM"], p["WN"]
    MT, NT, REGS, A_LOADS, B_LOADS = p["MT"], p["NT"], p["REGS"], p["A_LOADS"], p["B_LOADS"]

    @cuda.jit(device=True, inline="always")
    def load(As, Bs, st, k0, x, w, ftab, L, H, W, asrc, arows, pix, ih0, iw0, tid):
        ka = tid % BK
        l = k0 + ka
        for i in range(A_LOADS):
            m = tid // BK + i * (THREADS // BK)
            ok = i * (THREADS // BK) < arows and l < L
            cp_async(As, (st, m, ka ^ (((m >> 1) & CHUNKS) << 2)), w, asrc + i * (THREADS // BK) * L + l if ok else 0, ok)
        jb = tid % BN
        for i in range(B_LOADS):
            kk = tid // BN + i * (THREADS // BN)
            l = k0 + kk
            ok = l < L
            off = 0
            if ok:
                ih = ih0 + ftab[uint32(l), 1]
                iw = iw0 + ftab[uint32(l), 2]
                ok = ih >= 0 and ih < H and iw >= 0 and iw < W
                off = pix + ftab[uint32(l), 0]
            cp_async(Bs, (st, jb, kk ^ (((jb >> 1) & CHUNKS) << 2)), x, off if ok else 0, ok)

    @cuda.jit(**_jit_options(cfg))
    def kernel(x, w, y3, bias, ftab, C, H, W, Q, sh, sw, ph, pw, groups, has_bias):
        As = cuda.shared.array((STAGES, BM, BK), dt, SMEM_ALIGN)
        Bs = cuda.shared.array((STAGES, BN, BK), dt, SMEM_ALIGN)
        acc = cuda.local.array((MT, NT, REGS), dt)
        N, K, PQ = y3.shape
        L = ftab.shape[0]
        Cg = C // groups
        Kg = K // groups
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        gi = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        # this thread's column of B (one output pixel) for the whole reduction: the origin of its
        # windows (a column past the end gets row NO_ROW, which every tap misses); and its A rows:
        # the first one's offset in w and how many are left in the group
        col = col0 + tid % BN
        n = col // PQ
        pq = col - n * PQ
        ih0 = int32((pq // Q) * sh - ph)
        iw0 = int32((pq % Q) * sw - pw)
        pix = int32((n * C + gi * Cg) * H * W + ih0 * W + iw0)
        if col >= N * PQ:
            ih0 = int32(NO_ROW)
        asrc = int32((gi * Kg + m0 + tid // BK) * L)
        arows = int32(Kg - m0 - tid // BK)
        for i in range(MT):
            for j in range(NT):
                for e in range(REGS):
                    acc[i, j, e] = dt(0)
        tiles = (L + BK - 1) // BK
        for s in range(STAGES - 1):
            if s < tiles:
                load(As, Bs, s, s * BK, x, w, ftab, L, H, W, asrc, arows, pix, ih0, iw0, tid)
            cp_async_commit()
        for t in range(tiles):
            wait()
            cuda.syncthreads()
            nxt = t + STAGES - 1
            if nxt < tiles:
                load(As, Bs, nxt % STAGES, nxt * BK, x, w, ftab, L, H, W, asrc, arows, pix, ih0, iw0, tid)
            cp_async_commit()
            step(As, Bs, t % STAGES, (warp // cfg.warps_n) * WM, (warp % cfg.warps_n) * WN, lane, acc)
        store(y3, acc, lane, Kg - m0, gi * Kg + m0, (warp // cfg.warps_n) * WM, 0, col0 + (warp % cfg.warps_n) * WN,
              N * PQ, PQ, PQ, 0, 0, 1, bias, has_bias)
    return kernel


def _bwd_data_signature(dt):
    return (array1(dt), array1(dt), dt[:, :, ::1], int32[:, ::1], int32[:, :, ::1]) + (int32,) * 8


# one block per BM x BN tile of dX_g restricted to one stride phase (the input pixels
# h = a + i*sh, w = b + j*sw, and only the taps that reach them): input channels m0 + ..,
# the phase's pixels col0 + ..; grid z = phase * groups + group
def _bwd_data_kernel(dt, cfg):
    p = _parts(dt, cfg)
    THREADS = cfg.threads
    CHUNKS, step, store, wait = p["CHUNKS"], p["step"], p["store"], p["wait"]
    BM, BN, BK, STAGES, WM, WN = cfg.bm, cfg.bn, cfg.bk, cfg.stages, p["WM"], p["WN"]
    MT, NT, REGS, A_LOADS, B_LOADS = p["MT"], p["NT"], p["REGS"], p["A_LOADS"], p["B_LOADS"]

    @cuda.jit(device=True, inline="always")
    def load(As, Bs, st, k0, dy, w, dtab, f, L, P, Q, asrc, arows, RS, pix, i, j, tid):
        ka = tid % BK
        l = k0 + ka
        for it in range(A_LOADS):
            m = tid // BK + it * (THREADS // BK)
            ok = it * (THREADS // BK) < arows and l < L
            cp_async(As, (st, m, ka ^ (((m >> 1) & CHUNKS) << 2)), w,
                     asrc + it * (THREADS // BK) * RS + dtab[f, uint32(l), 0] if ok else 0, ok)
        jb = tid % BN
        for it in range(B_LOADS):
            kk = tid // BN + it * (THREADS // BN)
            l = k0 + kk
            ok = l < L
            off = 0
            if ok:
                p = i + dtab[f, uint32(l), 2]
                q = j + dtab[f, uint32(l), 3]
                ok = p >= 0 and p < P and q >= 0 and q < Q
                off = pix + dtab[f, uint32(l), 1]
            cp_async(Bs, (st, jb, kk ^ (((jb >> 1) & CHUNKS) << 2)), dy, off if ok else 0, ok)

    @cuda.jit(**_jit_options(cfg))
    def kernel(dy, w, dx3, ptab, dtab, K, P, Q, Wd, sh, sw, groups, RS):
        As = cuda.shared.array((STAGES, BM, BK), dt, SMEM_ALIGN)
        Bs = cuda.shared.array((STAGES, BN, BK), dt, SMEM_ALIGN)
        acc = cuda.local.array((MT, NT, REGS), dt)
        N, C = dx3.shape[0], dx3.shape[1]
        Cg = C // groups
        Kg = K // groups
        gi = cuda.blockIdx.z % groups
        f = uint32(cuda.blockIdx.z // groups)
        nh = ptab[f, 2]
        nw = ptab[f, 3]
        L = ptab[f, 4]
        span = nh * nw
        col0 = cuda.blockIdx.x * BN
        if col0 >= N * span:
            return
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        m0 = cuda.blockIdx.y * BM
        # this thread's column of B' (input pixel (a + i*sh, b + j*sw) of image n; past the end,
        # row NO_ROW, which every tap misses): tap l reaches it from dy[n, k, i + dtab[f, l, 2],
        # j + dtab[f, l, 3]]; and its A rows, as in the forward kernel
        col = col0 + tid % BN
        n = col // span
        e = col - n * span
        i = int32(e // nw)
        j = int32(e % nw)
        pix = int32((n * K + gi * Kg) * P * Q + i * Q + j)
        if col >= N * span:
            i = int32(NO_ROW)
        asrc = int32(gi * Kg * Cg * RS + (m0 + tid // BK) * RS)
        arows = int32(Cg - m0 - tid // BK)
        for a in range(MT):
            for b in range(NT):
                for r in range(REGS):
                    acc[a, b, r] = dt(0)
        tiles = (L + BK - 1) // BK
        for s in range(STAGES - 1):
            if s < tiles:
                load(As, Bs, s, s * BK, dy, w, dtab, f, L, P, Q, asrc, arows, RS, pix, i, j, tid)
            cp_async_commit()
        for t in range(tiles):
            wait()
            cuda.syncthreads()
            nxt = t + STAGES - 1
            if nxt < tiles:
                load(As, Bs, nxt % STAGES, nxt * BK, dy, w, dtab, f, L, P, Q, asrc, arows, RS, pix, i, j, tid)
            cp_async_commit()
            step(As, Bs, t % STAGES, (warp // cfg.warps_n) * WM, (warp % cfg.warps_n) * WN, lane, acc)
        # the phase's shape is read again here rather than kept in registers through the loop
        nw = ptab[f, 3]
        span = ptab[f, 2] * nw
        store(dx3, acc, lane, Cg - m0, gi * Cg + m0, (warp // cfg.warps_n) * WM, 0, col0 + (warp % cfg.warps_n) * WN,
              N * span, span, nw, ptab[f, 0] * Wd + ptab[f, 1], sh * Wd, sw, dx3[0, 0], 0)
    return kernel


def _bwd_filter_signature(dt):
    return (array1(dt), array1(dt), dt[:, :, ::1], int32[:, ::1]) + (int32,) * 12


# one block per BM x BN tile of one reduction slice of dW_g: output channels m0 + .., taps
# (c, r, s) col0 + ..; grid z = slice * groups + group
def _bwd_filter_kernel(dt, cfg):
    p = _parts(dt, cfg)
    THREADS = cfg.threads
    CHUNKS, step, store, wait = p["CHUNKS"], p["step"], p["store"], p["wait"]
    BM, BN, BK, STAGES, WM, WN = cfg.bm, cfg.bn, cfg.bk, cfg.stages, p["WM"], p["WN"]
    MT, NT, REGS, A_LOADS, B_LOADS = p["MT"], p["NT"], p["REGS"], p["A_LOADS"], p["B_LOADS"]

    @cuda.jit(device=True, inline="always")
    def load(As, Bs, st, k0, dy, x, ftab, red1, K, PQ, Q, C, H, W, sh, sw, ph, pw, asrc, arows, xbase, bcol, bcols,
             tid):
        # both operands run along the reduction (n, p, q): this thread's index in the tile is
        # the same for its A and B copies
        kk = tid % BK
        l = k0 + kk
        lok = l < red1
        n = l // PQ
        pq = l - n * PQ
        for i in range(A_LOADS):
            m = tid // BK + i * (THREADS // BK)
            ok = lok and i * (THREADS // BK) < arows
            cp_async(As, (st, m, kk ^ (((m >> 1) & CHUNKS) << 2)), dy,
                     asrc + i * (THREADS // BK) * PQ + n * K * PQ + pq if ok else 0, ok)
        ih0 = int32((pq // Q) * sh - ph)
        iw0 = int32((pq % Q) * sw - pw)
        pix = int32((n * C + xbase) * H * W + ih0 * W + iw0)
        for i in range(B_LOADS):
            j = tid // BK + i * (THREADS // BK)
            ok = lok and i * (THREADS // BK) < bcols
            off = 0
            if ok:
                tap = uint32(bcol + i * (THREADS // BK))
                ih = ih0 + ftab[tap, 1]
                iw = iw0 + ftab[tap, 2]
                ok = ih >= 0 and ih < H and iw >= 0 and iw < W
                off = pix + ftab[tap, 0]
            cp_async(Bs, (st, j, kk ^ (((j >> 1) & CHUNKS) << 2)), x, off if ok else 0, ok)

    @cuda.jit(**_jit_options(cfg))
    def kernel(dy, x, ws, ftab, N, PQ, C, H, W, Q, sh, sw, ph, pw, groups, slice_len):
        As = cuda.shared.array((STAGES, BM, BK), dt, SMEM_ALIGN)
        Bs = cuda.shared.array((STAGES, BN, BK), dt, SMEM_ALIGN)
        acc = cuda.local.array((MT, NT, REGS), dt)
        K, Lw = ws.shape[1], ws.shape[2]
        Cg = C // groups
        Kg = K // groups
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        gi = cuda.blockIdx.z % groups
        sl = cuda.blockIdx.z // groups
        red0 = sl * slice_len
        red1 = min(N * PQ, red0 + slice_len)
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        # this thread's A rows (output channels) and B rows (taps): the first one's offset and
        # how many are left
        asrc = int32((gi * Kg + m0 + tid // BK) * PQ)
        arows = int32(Kg - m0 - tid // BK)
        bcol = int32(col0 + tid // BK)
        bcols = int32(Lw - bcol)
        for i in range(MT):
            for j in range(NT):
                for e in range(REGS):
                    acc[i, j, e] = dt(0)
        tiles = (red1 - red0 + BK - 1) // BK
        for s in range(STAGES - 1):
            if s < tiles:
                load(As, Bs, s, red0 + s * BK, dy, x, ftab, red1, K, PQ, Q, C, H, W, sh, sw, ph, pw, asrc, arows,
                     gi * Cg, bcol, bcols, tid)
            cp_async_commit()
        for t in range(tiles):
            wait()
            cuda.syncthreads()
            nxt = t + STAGES - 1
            if nxt < tiles:
                load(As, Bs, nxt % STAGES, red0 + nxt * BK, dy, x, ftab, red1, K, PQ, Q, C, H, W, sh, sw, ph, pw,
                     asrc, arows, gi * Cg, bcol, bcols, tid)
            cp_async_commit()
            step(As, Bs, t % STAGES, (warp // cfg.warps_n) * WM, (warp % cfg.warps_n) * WN, lane, acc)
        # plane sl of ws (slices, K, Lw) holds columns [sl*Lw, (sl+1)*Lw) of ws viewed as (K, slices*Lw)
        store(ws, acc, lane, Kg - m0, gi * Kg + m0, (warp // cfg.warps_n) * WM, sl * Lw,
              col0 + (warp % cfg.warps_n) * WN, (sl + 1) * Lw, Lw, Lw, 0, 0, 1, ws[0, 0], 0)
    return kernel



# ---------------------------------------------------------------------------------------------
# float16: FP16 MMA (m16n8k16) with fp32 accumulators
# ---------------------------------------------------------------------------------------------
# The products and the pipeline of the kernels above, with shared tiles of 32-bit words, each two
# float16 consecutive along the reduction (the .f16x2 registers the MMA reads). A thread fills
# whole words: with ``pairs`` (the launcher found every pair of the operand that runs along the
# reduction contiguous and 4-byte aligned: the weights' rows in forward, their taps in backward
# data, dy's planes in backward filter) by one 4-byte cp.async from the operand's float32 view
# ``*32``, otherwise, and for the gathered operand always, by two float16 loads packed into a
# word. The epilogue rounds the fp32 accumulators (+ bias) once to float16; backward filter's
# slices stay fp32 until conv_implicit_gemm.sum_slices_cuda adds them.

def _fwd_half_signature(dt):
    return (array1(dt), array1(dt), array1(float32), dt[:, :, ::1], array1(dt), int32[:, ::1]) + (int32,) * 11


@cuda.jit(device=True, inline="always")
def _tap_value(x, ftab, l, L, H, W, pix, ih0, iw0):
    """x at tap l of the window with origin (ih0, iw0) and offset pix; 0 outside x or past L."""
    v = float16(0)
    if l < L:
        # one unsigned comparison per axis also rejects the negative rows and columns
        if uint32(ih0 + ftab[uint32(l), 1]) < uint32(H) and uint32(iw0 + ftab[uint32(l), 2]) < uint32(W):
            v = x[uint32(pix + ftab[uint32(l), 0])]
    return v


@cuda.jit(device=True, inline="always")
def _row_value(a, row_ok, l, L, off):
    """a[off + l] for a row inside the operand and l < L, else 0."""
    v = float16(0)
    if row_ok and l < L:
        v = a[uint32(off + l)]
    return v


# one block per BM x BN tile of Y_g, as the forward kernel above
def _fwd_half_kernel(dt, cfg):
    p = _parts(dt, cfg)
    THREADS = cfg.threads
    CHUNKS, WORDS, step, store, wait = p["CHUNKS"], p["WORDS"], p["step"], p["store"], p["wait"]
    BM, BN, STAGES, WM, WN = cfg.bm, cfg.bn, cfg.stages, p["WM"], p["WN"]
    MT, NT, REGS, A_LOADS, B_LOADS = p["MT"], p["NT"], p["REGS"], p["A_LOADS"], p["B_LOADS"]

    @cuda.jit(device=True, inline="always")
    def load(As, Bs, st, k0, x, w, w32, ftab, L, H, W, asrc, arows, pix, ih0, iw0, pairs, tid):
        kw = tid % WORDS
        l = k0 + 2 * kw
        for i in range(A_LOADS):
            m = tid // WORDS + i * (THREADS // WORDS)
            row_ok = i * (THREADS // WORDS) < arows
            off = asrc + i * (THREADS // WORDS) * L
            col = kw ^ (((m >> 1) & CHUNKS) << 2)
            if pairs:
                ok = row_ok and l < L
                cp_async(As, (st, m, col), w32, (off + l) >> 1 if ok else 0, ok)
            else:
                As[st, m, col] = pack_f16x2(_row_value(w, row_ok, l, L, off), _row_value(w, row_ok, l + 1, L, off))
        jb = tid % BN
        for i in range(B_LOADS):
            kk = tid // BN + i * (THREADS // BN)
            l = k0 + 2 * kk
            Bs[st, jb, kk ^ (((jb >> 1) & CHUNKS) << 2)] = pack_f16x2(
                _tap_value(x, ftab, l, L, H, W, pix, ih0, iw0), _tap_value(x, ftab, l + 1, L, H, W, pix, ih0, iw0))

    @cuda.jit(**_jit_options(cfg))
    def kernel(x, w, w32, y3, bias, ftab, C, H, W, Q, sh, sw, ph, pw, groups, has_bias, pairs):
        As = cuda.shared.array((STAGES, BM, WORDS), float32, SMEM_ALIGN)
        Bs = cuda.shared.array((STAGES, BN, WORDS), float32, SMEM_ALIGN)
        acc = cuda.local.array((MT, NT, REGS), float32)
        N, K, PQ = y3.shape
        L = ftab.shape[0]
        Cg = C // groups
        Kg = K // groups
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        gi = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        col = col0 + tid % BN
        n = col // PQ
        pq = col - n * PQ
        ih0 = int32((pq // Q) * sh - ph)
        iw0 = int32((pq % Q) * sw - pw)
        pix = int32((n * C + gi * Cg) * H * W + ih0 * W + iw0)
        if col >= N * PQ:
            ih0 = int32(NO_ROW)
        asrc = int32((gi * Kg + m0 + tid // WORDS) * L)
        arows = int32(Kg - m0 - tid // WORDS)
        for i in range(MT):
            for j in range(NT):
                for e in range(REGS):
                    acc[i, j, e] = float32(0)
        tiles = (L + cfg.bk - 1) // cfg.bk
        for s in range(STAGES - 1):
            if s < tiles:
                load(As, Bs, s, s * cfg.bk, x, w, w32, ftab, L, H, W, asrc, arows, pix, ih0, iw0, pairs, tid)
            cp_async_commit()
        for t in range(tiles):
            wait()
            cuda.syncthreads()
            nxt = t + STAGES - 1
            if nxt < tiles:
                load(As, Bs, nxt % STAGES, nxt * cfg.bk, x, w, w32, ftab, L, H, W, asrc, arows, pix, ih0, iw0, pairs,
                     tid)
            cp_async_commit()
            step(As, Bs, t % STAGES, (warp // cfg.warps_n) * WM, (warp % cfg.warps_n) * WN, lane, acc)
        store(y3, acc, lane, Kg - m0, gi * Kg + m0, (warp // cfg.warps_n) * WM, 0, col0 + (warp % cfg.warps_n) * WN,
              N * PQ, PQ, PQ, 0, 0, 1, bias, has_bias)
    return kernel


def _bwd_data_half_signature(dt):
    return (array1(dt), array1(dt), array1(float32), dt[:, :, ::1], int32[:, ::1], int32[:, :, ::1]) + (int32,) * 9


@cuda.jit(device=True, inline="always")
def _phase_value(dy, dtab, f, l, L, P, Q, pix, i, j):
    """dy at tap l of input pixel (i, j) of phase f (offset pix); 0 where it misses dy or past L."""
    v = float16(0)
    if l < L:
        # one unsigned comparison per axis also rejects the negative rows and columns
        if uint32(i + dtab[f, uint32(l), 2]) < uint32(P) and uint32(j + dtab[f, uint32(l), 3]) < uint32(Q):
            v = dy[uint32(pix + dtab[f, uint32(l), 1])]
    return v


@cuda.jit(device=True, inline="always")
def _weight_value(w, dtab, f, row_ok, l, L, off):
    """w[off + the weight offset of tap l of phase f] for a row inside w and l < L, else 0."""
    v = float16(0)
    if row_ok and l < L:
        v = w[uint32(off + dtab[f, uint32(l), 0])]
    return v


# one block per BM x BN tile of dX_g in one stride phase, as the backward-data kernel above
def _bwd_data_half_kernel(dt, cfg):
    p = _parts(dt, cfg)
    THREADS = cfg.threads
    CHUNKS, WORDS, step, store, wait = p["CHUNKS"], p["WORDS"], p["step"], p["store"], p["wait"]
    BM, BN, STAGES, WM, WN = cfg.bm, cfg.bn, cfg.stages, p["WM"], p["WN"]
    MT, NT, REGS, A_LOADS, B_LOADS = p["MT"], p["NT"], p["REGS"], p["A_LOADS"], p["B_LOADS"]

    @cuda.jit(device=True, inline="always")
    def load(As, Bs, st, k0, dy, w, w32, dtab, f, L, P, Q, asrc, arows, RS, pix, i, j, pairs, tid):
        kw = tid % WORDS
        l = k0 + 2 * kw
        for it in range(A_LOADS):
            m = tid // WORDS + it * (THREADS // WORDS)
            row_ok = it * (THREADS // WORDS) < arows
            off = asrc + it * (THREADS // WORDS) * RS
            col = kw ^ (((m >> 1) & CHUNKS) << 2)
            if pairs:
                ok = row_ok and l < L
                cp_async(As, (st, m, col), w32, (off + dtab[f, uint32(l), 0]) >> 1 if ok else 0, ok)
            else:
                As[st, m, col] = pack_f16x2(_weight_value(w, dtab, f, row_ok, l, L, off),
                                            _weight_value(w, dtab, f, row_ok, l + 1, L, off))
        jb = tid % BN
        for it in range(B_LOADS):
            kk = tid // BN + it * (THREADS // BN)
            l = k0 + 2 * kk
            Bs[st, jb, kk ^ (((jb >> 1) & CHUNKS) << 2)] = pack_f16x2(
                _phase_value(dy, dtab, f, l, L, P, Q, pix, i, j), _phase_value(dy, dtab, f, l + 1, L, P, Q, pix, i, j))

    @cuda.jit(**_jit_options(cfg))
    def kernel(dy, w, w32, dx3, ptab, dtab, K, P, Q, Wd, sh, sw, groups, RS, pairs):
        As = cuda.shared.array((STAGES, BM, WORDS), float32, SMEM_ALIGN)
        Bs = cuda.shared.array((STAGES, BN, WORDS), float32, SMEM_ALIGN)
        acc = cuda.local.array((MT, NT, REGS), float32)
        N, C = dx3.shape[0], dx3.shape[1]
        Cg = C // groups
        Kg = K // groups
        gi = cuda.blockIdx.z % groups
        f = uint32(cuda.blockIdx.z // groups)
        nh = ptab[f, 2]
        nw = ptab[f, 3]
        L = ptab[f, 4]
        span = nh * nw
        col0 = cuda.blockIdx.x * BN
        if col0 >= N * span:
            return
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        m0 = cuda.blockIdx.y * BM
        col = col0 + tid % BN
        n = col // span
        e = col - n * span
        i = int32(e // nw)
        j = int32(e % nw)
        pix = int32((n * K + gi * Kg) * P * Q + i * Q + j)
        if col >= N * span:
            i = int32(NO_ROW)
        asrc = int32(gi * Kg * Cg * RS + (m0 + tid // WORDS) * RS)
        arows = int32(Cg - m0 - tid // WORDS)
        for a in range(MT):
            for b in range(NT):
                for r in range(REGS):
                    acc[a, b, r] = float32(0)
        tiles = (L + cfg.bk - 1) // cfg.bk
        for s in range(STAGES - 1):
            if s < tiles:
                load(As, Bs, s, s * cfg.bk, dy, w, w32, dtab, f, L, P, Q, asrc, arows, RS, pix, i, j, pairs, tid)
            cp_async_commit()
        for t in range(tiles):
            wait()
            cuda.syncthreads()
            nxt = t + STAGES - 1
            if nxt < tiles:
                load(As, Bs, nxt % STAGES, nxt * cfg.bk, dy, w, w32, dtab, f, L, P, Q, asrc, arows, RS, pix, i, j,
                     pairs, tid)
            cp_async_commit()
            step(As, Bs, t % STAGES, (warp // cfg.warps_n) * WM, (warp % cfg.warps_n) * WN, lane, acc)
        nw = ptab[f, 3]
        span = ptab[f, 2] * nw
        store(dx3, acc, lane, Cg - m0, gi * Cg + m0, (warp // cfg.warps_n) * WM, 0, col0 + (warp % cfg.warps_n) * WN,
              N * span, span, nw, ptab[f, 0] * Wd + ptab[f, 1], sh * Wd, sw, dx3[0, 0], 0)
    return kernel


def _bwd_filter_half_signature(dt):
    return (array1(dt), array1(float32), array1(dt), float32[:, :, ::1], int32[:, ::1]) + (int32,) * 13


@cuda.jit(device=True, inline="always")
def _plane_value(dy, row_ok, l, red1, PQ, KPQ, off):
    """dy[off + n*K*P*Q + pq] at reduction index l = n*P*Q + pq for a row inside dy and l < red1,
    else 0."""
    v = float16(0)
    if row_ok and l < red1:
        n = l // PQ
        v = dy[uint32(off + n * KPQ + l - n * PQ)]
    return v


@cuda.jit(device=True, inline="always")
def _pixel_origin(l, PQ, Q, C, H, W, sh, sw, ph, pw, xbase):
    """(offset, row, column) in x of the window origin of reduction index l = (n, p, q)."""
    n = l // PQ
    pq = l - n * PQ
    ih0 = int32((pq // Q) * sh - ph)
    iw0 = int32((pq % Q) * sw - pw)
    return int32((n * C + xbase) * H * W + ih0 * W + iw0), ih0, iw0


@cuda.jit(device=True, inline="always")
def _window_value(x, ftab, tap, ok, pix, ih0, iw0, H, W):
    """x at filter tap ``tap`` of the window with origin (ih0, iw0) and offset pix when ok."""
    v = float16(0)
    if ok and uint32(ih0 + ftab[tap, 1]) < uint32(H) and uint32(iw0 + ftab[tap, 2]) < uint32(W):
        v = x[uint32(pix + ftab[tap, 0])]
    return v


# one block per BM x BN tile of one reduction slice of dW_g, as the backward-filter kernel above
# (every slice writes its fp32 partial product)
def _bwd_filter_half_kernel(dt, cfg):
    p = _parts(dt, cfg)
    THREADS = cfg.threads
    CHUNKS, WORDS, step, store, wait = p["CHUNKS"], p["WORDS"], p["step"], p["store"], p["wait"]
    BM, BN, STAGES, WM, WN = cfg.bm, cfg.bn, cfg.stages, p["WM"], p["WN"]
    MT, NT, REGS, A_LOADS, B_LOADS = p["MT"], p["NT"], p["REGS"], p["A_LOADS"], p["B_LOADS"]

    @cuda.jit(device=True, inline="always")
    def load(As, Bs, st, k0, dy, dy32, x, ftab, red1, K, PQ, Q, C, H, W, sh, sw, ph, pw, asrc, arows, xbase, bcol,
             bcols, pairs, tid):
        # both operands run along the reduction (n, p, q): this thread's word is the same for its
        # A and B copies, reduction indices l and l + 1
        kw = tid % WORDS
        l = k0 + 2 * kw
        for i in range(A_LOADS):
            m = tid // WORDS + i * (THREADS // WORDS)
            row_ok = i * (THREADS // WORDS) < arows
            off = asrc + i * (THREADS // WORDS) * PQ
            col = kw ^ (((m >> 1) & CHUNKS) << 2)
            if pairs:
                ok = row_ok and l < red1
                n = l // PQ
                cp_async(As, (st, m, col), dy32, (off + n * K * PQ + l - n * PQ) >> 1 if ok else 0, ok)
            else:
                As[st, m, col] = pack_f16x2(_plane_value(dy, row_ok, l, red1, PQ, K * PQ, off),
                                            _plane_value(dy, row_ok, l + 1, red1, PQ, K * PQ, off))
        pix0, ih00, iw00 = _pixel_origin(l, PQ, Q, C, H, W, sh, sw, ph, pw, xbase)
        pix1, ih01, iw01 = _pixel_origin(l + 1, PQ, Q, C, H, W, sh, sw, ph, pw, xbase)
        for i in range(B_LOADS):
            j = tid // WORDS + i * (THREADS // WORDS)
            tap_ok = i * (THREADS // WORDS) < bcols
            tap = uint32(bcol + i * (THREADS // WORDS)) if tap_ok else uint32(0)
            Bs[st, j, kw ^ (((j >> 1) & CHUNKS) << 2)] = pack_f16x2(
                _window_value(x, ftab, tap, tap_ok and l < red1, pix0, ih00, iw00, H, W),
                _window_value(x, ftab, tap, tap_ok and l + 1 < red1, pix1, ih01, iw01, H, W))

    @cuda.jit(**_jit_options(cfg))
    def kernel(dy, dy32, x, ws, ftab, N, PQ, C, H, W, Q, sh, sw, ph, pw, groups, slice_len, pairs):
        As = cuda.shared.array((STAGES, BM, WORDS), float32, SMEM_ALIGN)
        Bs = cuda.shared.array((STAGES, BN, WORDS), float32, SMEM_ALIGN)
        acc = cuda.local.array((MT, NT, REGS), float32)
        K, Lw = ws.shape[1], ws.shape[2]
        Cg = C // groups
        Kg = K // groups
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        gi = cuda.blockIdx.z % groups
        sl = cuda.blockIdx.z // groups
        red0 = sl * slice_len
        red1 = min(N * PQ, red0 + slice_len)
        m0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        asrc = int32((gi * Kg + m0 + tid // WORDS) * PQ)
        arows = int32(Kg - m0 - tid // WORDS)
        bcol = int32(col0 + tid // WORDS)
        bcols = int32(Lw - bcol)
        for i in range(MT):
            for j in range(NT):
                for e in range(REGS):
                    acc[i, j, e] = float32(0)
        tiles = (red1 - red0 + cfg.bk - 1) // cfg.bk
        for s in range(STAGES - 1):
            if s < tiles:
                load(As, Bs, s, red0 + s * cfg.bk, dy, dy32, x, ftab, red1, K, PQ, Q, C, H, W, sh, sw, ph, pw, asrc,
                     arows, gi * Cg, bcol, bcols, pairs, tid)
            cp_async_commit()
        for t in range(tiles):
            wait()
            cuda.syncthreads()
            nxt = t + STAGES - 1
            if nxt < tiles:
                load(As, Bs, nxt % STAGES, red0 + nxt * cfg.bk, dy, dy32, x, ftab, red1, K, PQ, Q, C, H, W, sh, sw,
                     ph, pw, asrc, arows, gi * Cg, bcol, bcols, pairs, tid)
            cp_async_commit()
            step(As, Bs, t % STAGES, (warp // cfg.warps_n) * WM, (warp % cfg.warps_n) * WN, lane, acc)
        store(ws, acc, lane, Kg - m0, gi * Kg + m0, (warp // cfg.warps_n) * WM, sl * Lw,
              col0 + (warp % cfg.warps_n) * WN, (sl + 1) * Lw, Lw, Lw, 0, 0, 1, ws[0, 0], 0)
    return kernel


def _by_dtype(tf32_or_f64, half):
    """A factory (kernel or signature) for any dtype: ``half`` for float16, else ``tf32_or_f64``."""
    def make(dt, *cfg):
        return (half if dt == float16 else tf32_or_f64)(dt, *cfg)
    return make


_FWD = _by_dtype(_fwd_kernel, _fwd_half_kernel)
_BWD_DATA = _by_dtype(_bwd_data_kernel, _bwd_data_half_kernel)
_BWD_FILTER = _by_dtype(_bwd_filter_kernel, _bwd_filter_half_kernel)


@per_dtype(_by_dtype(_fwd_signature, _fwd_half_signature), threads=THREADS, half=True)
def conv2d_fwd_implicit_gemm_tc_cuda(dt):
    return _FWD(dt, TILES[_np_dtype(dt)])


@per_dtype(_by_dtype(_bwd_data_signature, _bwd_data_half_signature), threads=THREADS, half=True)
def conv2d_bwd_data_implicit_gemm_tc_cuda(dt):
    return _BWD_DATA(dt, TILES[_np_dtype(dt)])


@per_dtype(_by_dtype(_bwd_filter_signature, _bwd_filter_half_signature), threads=THREADS, half=True)
def conv2d_bwd_filter_implicit_gemm_tc_cuda(dt):
    return _BWD_FILTER(dt, TILES[_np_dtype(dt)])


class Build(NamedTuple):
    """The CUDA kernels of the three passes for one choice of tiles ({dtype: Tiles}), by dtype."""
    tiles: dict
    fwd: dict
    bwd_data: dict
    bwd_filter: dict


def build(tiles):
    """The three passes' kernels compiled for ``tiles`` ({dtype: Tiles}, any of float16, float32
    and float64; the registered ones use TILES)."""
    types = {np.dtype(np.float32): float32, np.dtype(np.float64): float64, HALF: float16}

    def each(make):
        return {dtype: make(types[dtype], cfg) for dtype, cfg in tiles.items()}
    return Build(tiles, each(_FWD), each(_BWD_DATA), each(_BWD_FILTER))


BUILD = Build(TILES, conv2d_fwd_implicit_gemm_tc_cuda, conv2d_bwd_data_implicit_gemm_tc_cuda,
              conv2d_bwd_filter_implicit_gemm_tc_cuda)

# ---------------------------------------------------------------------------------------------
# offset tables, CPU path, launchers
# ---------------------------------------------------------------------------------------------

def tap_table(g):
    """(Cg*R*S, 3) int32: for tap l = (c, r, s), its offset ``c*H*W + r*dh*W + s*dw`` in x from a
    window's origin, and ``r*dh``, ``s*dw`` (the rows and columns it reaches past the origin)."""
    c = np.arange(g.C // g.groups)[:, None, None]
    r = np.arange(g.R)[None, :, None] * g.dil_h
    s = np.arange(g.S)[None, None, :] * g.dil_w
    off = c * g.H * g.W + r * g.W + s
    return np.stack([a.reshape(-1) for a in np.broadcast_arrays(off, r, s)], axis=1).astype(np.int32)


def phase_tables(g):
    """Backward data by stride phase f = (a, b) (input rows a + i*sh, columns b + j*sw; see
    ``conv_implicit_gemm._stride_phases``): ``ptab`` (phases, 5) int32 holds a, b, the phase's
    rows nh and columns nw and its number of taps L; ``dtab`` (phases, max L, 4) int32 holds, for
    its l-th tap (k, r, s) (k slowest), the weight offset ``k*Cg*R*S + r*S + s``, the dy offset
    ``k*P*Q + po*Q + qo`` from the pixel's origin, and po, qo: the tap reaches input pixel
    (i, j) of the phase from dy row i + po, column j + qo."""
    Kg, Cg = g.K // g.groups, g.C // g.groups
    rows, _, _ = _stride_phases(g.H, g.P, g.R, g.stride_h, g.pad_h, g.dil_h)
    cols, _, _ = _stride_phases(g.W, g.Q, g.S, g.stride_w, g.pad_w, g.dil_w)
    phases = [(rp, cp) for rp in rows for cp in cols]
    most = max(1, max(Kg * len(rp[2]) * len(cp[2]) for rp, cp in phases))
    ptab = np.zeros((len(phases), 5), np.int32)
    dtab = np.zeros((len(phases), most, 4), np.int32)
    k = np.arange(Kg)[:, None, None]
    for f, ((a, nh, rt, ro), (b, nw, st, so)) in enumerate(phases):
        r, po = np.array(rt)[None, :, None], np.array(ro, np.int64)[None, :, None]
        s, qo = np.array(st)[None, None, :], np.array(so, np.int64)[None, None, :]
        cols4 = np.broadcast_arrays(k * Cg * g.R * g.S + r * g.S + s, k * g.P * g.Q + po * g.Q + qo, po, qo)
        L = cols4[0].size
        ptab[f] = a, b, nh, nw, L
        dtab[f, :L] = np.stack([c.reshape(-1) for c in cols4], axis=1)
    return ptab, dtab


@functools.lru_cache(maxsize=256)
def _device_table(make, g, device):
    """The table (or tuple of tables) ``make(g)`` on the GPU, built once per geometry and device."""
    tables = make(g)
    if isinstance(tables, tuple):
        return tuple(cuda.to_device(t, stream=stream()) for t in tables)
    return cuda.to_device(tables, stream=stream())


def _table(make, g):
    return _device_table(make, g, 0 if SIMULATOR else cuda.get_current_device().id)


def _operand(a):
    """An operand as the tensor cores read it, in the dtype the CPU kernels compute in: float32
    rounded to TF32, float16 widened to float32 (exactly: its products and their fp32 sums are the
    FP16 MMA's), float64 unchanged."""
    if a.dtype == HALF:
        return float32_copy(a)
    if a.dtype != np.float32:
        return a
    out = np.empty_like(a)
    round_tf32_cpu(a.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint32))
    return out


def _fp32_result(out):
    """Where a CPU kernel writes ``out``: ``out`` itself, or for float16 an fp32 array that
    ``_round_into`` rounds into it once."""
    return np.empty(out.shape, np.float32) if out.dtype == HALF else out


def _round_into(result, out):
    if result is not out:
        cast(result, out)


def _fwd_cpu(x, w, y, g, bias):
    out = _fp32_result(y)
    conv_implicit_gemm.conv2d_fwd_implicit_gemm(_operand(x), _operand(w), out, g)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    _round_into(out, y)


def _bwd_data_cpu(dy, w, dx, g):
    out = _fp32_result(dx)
    conv_implicit_gemm.conv2d_bwd_data_implicit_gemm(_operand(dy), _operand(w), out, g)
    _round_into(out, dx)


def _bwd_filter_cpu(dy, x, dw, g):
    out = _fp32_result(dw)
    conv_implicit_gemm.conv2d_bwd_filter_implicit_gemm(_operand(dy), _operand(x), out, g)
    _round_into(out, dw)


def _address(a):
    return a.__array_interface__["data"][0] if SIMULATOR else a.__cuda_array_interface__["data"][0]


def _words(a, pairs):
    """(float32 view of float16 array ``a`` as pairs of elements, 1) when ``pairs`` (the pass's
    operand runs in aligned pairs along the reduction) and ``a`` starts on a 4-byte boundary; else
    (a one-word stand-in, 0): the kernel then loads that operand element by element."""
    flat = a.reshape(-1)
    if pairs and flat.shape[0] % 2 == 0 and _address(flat) % 4 == 0:
        return flat.view(np.float32), 1
    return device_constant("implicit_gemm_tc: no words", lambda: np.zeros(1, np.float32)), 0


@functools.lru_cache(maxsize=256)
def weight_pairs(g):
    """Backward data: whether every phase's weight offsets (``phase_tables``) come in pairs
    (2i, 2i + 1) that are contiguous in w and start at an even offset, for every row of A (rows
    are R*S apart, so R*S must be even): for stride 1 with an even R*S, and for strides whose
    phases keep whole rows of an even S."""
    ptab, dtab = phase_tables(g)
    if g.R * g.S % 2:
        return False
    for f in range(ptab.shape[0]):
        L = ptab[f, 4]
        off = dtab[f, :L, 0]
        if L % 2 or np.any(off[0::2] % 2) or np.any(off[1::2] != off[0::2] + 1):
            return False
    return True


def _fwd_cuda(x, w, y, g, bias, build=BUILD):
    dtype = np.dtype(x.dtype)
    cfg = build.tiles[dtype]
    grid = (blocks(g.N * g.P * g.Q, cfg.bn), blocks(g.K // g.groups, cfg.bm), g.groups)
    has_bias = bias is not None
    operands, flags = (x.reshape(-1), w.reshape(-1)), ()
    if dtype == HALF:
        w32, pairs = _words(w, (g.C // g.groups) * g.R * g.S % 2 == 0)
        operands, flags = operands + (w32,), (pairs,)
    args = (y.reshape(g.N, g.K, g.P * g.Q), bias if has_bias else y.reshape(-1)[:1], _table(tap_table, g), g.C,
            g.H, g.W, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.groups, int(has_bias))
    build.fwd[dtype][grid, cfg.threads, stream()](*operands, *args, *flags)


def _bwd_data_cuda(dy, w, dx, g, build=BUILD):
    dtype = np.dtype(dy.dtype)
    cfg = build.tiles[dtype]
    ptab, dtab = _table(phase_tables, g)
    columns = g.N * blocks(g.H, g.stride_h) * blocks(g.W, g.stride_w)      # of the largest phase
    grid = (blocks(columns, cfg.bn), blocks(g.C // g.groups, cfg.bm), g.groups * ptab.shape[0])
    operands, flags = (dy.reshape(-1), w.reshape(-1)), ()
    if dtype == HALF:
        w32, pairs = _words(w, weight_pairs(g))
        operands, flags = operands + (w32,), (pairs,)
    args = (dx.reshape(g.N, g.C, g.H * g.W), ptab, dtab, g.K, g.P, g.Q, g.W, g.stride_h, g.stride_w, g.groups,
            g.R * g.S)
    build.bwd_data[dtype][grid, cfg.threads, stream()](*operands, *args, *flags)


def _bwd_filter_cuda(dy, x, dw, g, build=BUILD):
    dtype = np.dtype(dy.dtype)
    cfg = build.tiles[dtype]
    Kg, Lw = g.K // g.groups, (g.C // g.groups) * g.R * g.S
    red = g.N * g.P * g.Q
    kernel = build.bwd_filter[dtype]
    tiles_mn = blocks(Lw, cfg.bn) * blocks(Kg, cfg.bm) * g.groups
    most = max(1, min(red // (MIN_SLICE_TILES * cfg.bk), 65535 // g.groups))
    slices = wave_splits(tiles_mn, most, resident_blocks(kernel, cfg.threads))
    slice_len = blocks(blocks(red, slices), cfg.bk) * cfg.bk
    slices = blocks(red, slice_len)
    # float16 keeps even one slice in fp32, rounded once when the slices are added
    direct = slices == 1 and dtype != HALF
    ws = dw.reshape(1, g.K, Lw) if direct else device_empty((slices, g.K, Lw), accumulator_dtype(dtype))
    grid = (blocks(Lw, cfg.bn), blocks(Kg, cfg.bm), g.groups * slices)
    operands, flags = (dy.reshape(-1),), ()
    if dtype == HALF:
        dy32, pairs = _words(dy, g.P * g.Q % 2 == 0)
        operands, flags = operands + (dy32,), (pairs,)
    args = (x.reshape(-1), ws, _table(tap_table, g), g.N, g.P * g.Q, g.C, g.H, g.W, g.Q, g.stride_h, g.stride_w,
            g.pad_h, g.pad_w, g.groups, slice_len)
    kernel[grid, cfg.threads, stream()](*operands, *args, *flags)
    if not direct:
        out = dw.reshape(-1)
        sum_slices_cuda[dtype][blocks(out.shape[0], SUM_THREADS), SUM_THREADS, stream()](ws.reshape(slices, -1), out)


def _check_bias(bias, y, g):
    if bias is None:
        return
    if tuple(bias.shape) != (g.K,) or np.dtype(bias.dtype) != np.dtype(y.dtype) or \
            is_device_array(bias) != is_device_array(y):
        raise ValueError(f"implicit_gemm_tc fwd: bias must be a contiguous ({g.K},) array of {np.dtype(y.dtype)} "
                         f"on the output's device, got shape {tuple(bias.shape)} of {np.dtype(bias.dtype)}")


def conv2d_fwd_implicit_gemm_tc(x, w, y, g, bias=None):
    """Forward conv on tensor cores, ``Y_g = W_g @ B`` per group (+ bias); overwrites ``y``.

    ``y[n, k, p, q] = b[k] + sum_{c, r, s} x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, c, r, s]``
    with float32 operands rounded to TF32 and fp32 accumulation (float16: FP16 products, fp32
    accumulation, the sum + bias rounded once; float64: fp64 throughout).
    ``bias``: None or (K,) of the output's dtype, added in the epilogue.
    """
    check_conv_arrays("implicit_gemm_tc", g, "fwd", x, w, y, WITH_HALF)
    _check_bias(bias, y, g)
    (_fwd_cuda if is_device_array(x) else _fwd_cpu)(x, w, y, g, bias)


def conv2d_bwd_data_implicit_gemm_tc(dy, w, dx, g):
    """Data gradient on tensor cores, ``dX_g = A @ B'`` per group; overwrites ``dx``.

    ``dx[n, c, h, w] = sum over k in c's group and taps (r, s) with p = (h + ph - r*dh)/sh and
    q = (w + pw - s*dw)/sw exact and inside dy of dy[n, k, p, q] * w[k, c - gi*Cg, r, s]``, TF32 for float32,
    FP16 with fp32 accumulation for float16.
    """
    check_conv_arrays("implicit_gemm_tc", g, "bwd_data", dy, w, dx, WITH_HALF)
    (_bwd_data_cuda if is_device_array(dy) else _bwd_data_cpu)(dy, w, dx, g)


def conv2d_bwd_filter_implicit_gemm_tc(dy, x, dw, g):
    """Filter gradient on tensor cores, ``dW_g = dY_g @ B^T`` per group; overwrites ``dw``.

    ``dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] * x[n, gi*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]``,
    TF32 for float32 (float16: FP16, fp32 accumulation), the sum over (n, p, q) cut into fixed slices
    that are added in order.
    """
    check_conv_arrays("implicit_gemm_tc", g, "bwd_filter", dy, x, dw, WITH_HALF)
    (_bwd_filter_cuda if is_device_array(dy) else _bwd_filter_cpu)(dy, x, dw, g)


def _limits(g, device, pass_):
    """int32 offsets: every operand must have fewer than 2**31 elements."""
    big = max(np.prod(s, dtype=np.int64) for s in g.operand_shapes(pass_))
    if big >= 2 ** 31:
        return False, f"implicit_gemm_tc indexes with int32 offsets; this convolution has an operand of {big} elements"
    return True, ""


def _preference(g, device, pass_):
    """On CUDA, 1 for GEMMs big enough for its 128-wide tiles (channels per group on the tile's
    rows and the reduction both at least PREFER_MIN_*); 6 otherwise and on the CPU, where it is
    implicit_gemm plus the rounding of the operands."""
    Cg, Kg = g.C // g.groups, g.K // g.groups
    rows = Cg if pass_ == "bwd_data" else Kg
    reduction = {"fwd": Cg, "bwd_data": Kg, "bwd_filter": g.N * g.P * g.Q}[pass_] * (
        1 if pass_ == "bwd_filter" else g.R * g.S)
    big = rows >= PREFER_MIN_CHANNELS and reduction >= PREFER_MIN_REDUCTION
    return 1 if device == "cuda" and big else 6


ALGORITHM = ConvAlgorithm("implicit_gemm_tc", conv2d_fwd_implicit_gemm_tc, conv2d_bwd_data_implicit_gemm_tc,
                          conv2d_bwd_filter_implicit_gemm_tc, limits=_limits, preference=_preference,
                          reduced_precision=TOLERANCE, dtypes=WITH_HALF,
                          summary="implicit GEMM on tensor cores: TF32 for float32, FP16 MMA with fp32 accumulation "
                                  "for float16, FP64 MMA for float64")
