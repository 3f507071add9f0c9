"""The warp-level instructions of kernels/tensorcore.py: each simulator model against a NumPy
matmul in a one-warp kernel that loads its fragments by the PTX ISA's layout tables (written out
here, not taken from the module), cp.async's zero fill and group ordering, and the TF32 rounding
against an independent float64 reference."""
from fractions import Fraction

import numpy as np
import pytest
from numba import cuda

from convkern.kernels import tensorcore as T

pytestmark = pytest.mark.skipif(not T.SIMULATOR, reason="runs the simulator models (no GPU in CI)")

# ---------------------------------------------------------------- one-warp kernels
# In each kernel below lane l has g = l >> 2 and t = l & 3, the PTX ISA's groupID and
# threadID_in_group; the index expressions are its fragment tables ("Matrix fragments for mma").


# one warp: lane l loads its A (16x8), B (8x8), C (16x8) fragments, one m16n8k8 TF32 MMA, stores its D
@cuda.jit
def _mma_tf32_kernel(a, b, c, d, rounded):
    lane = cuda.threadIdx.x
    g, t = lane >> 2, lane & 3
    fa = (a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4])
    fb = (b[t, g], b[t + 4, g])
    if rounded:
        fa = tuple(T.round_tf32(v) for v in fa)
        fb = tuple(T.round_tf32(v) for v in fb)
    fd = T.mma_tf32_m16n8k8(fa, fb, (c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1]))
    d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = fd


# one warp: lane l loads its A (16x16), B (16x8) float16 and C (16x8) fragments, one m16n8k16 MMA, stores D
@cuda.jit
def _mma_f16_kernel(a, b, c, d):
    lane = cuda.threadIdx.x
    g, t = lane >> 2, lane & 3
    k = 2 * t
    fa = (a[g, k], a[g, k + 1], a[g + 8, k], a[g + 8, k + 1],
          a[g, k + 8], a[g, k + 9], a[g + 8, k + 8], a[g + 8, k + 9])
    fb = (b[k, g], b[k + 1, g], b[k + 8, g], b[k + 9, g])
    fd = T.mma_f16_m16n8k16(fa, fb, (c[g, k], c[g, k + 1], c[g + 8, k], c[g + 8, k + 1]))
    d[g, k], d[g, k + 1], d[g + 8, k], d[g + 8, k + 1] = fd


# one warp: lane l loads A[g, t], B[t, g] and C[g, 2t..2t+1], one m8n8k4 FP64 MMA, stores D[g, 2t..2t+1]
@cuda.jit
def _mma_f64_kernel(a, b, c, d):
    lane = cuda.threadIdx.x
    g, t = lane >> 2, lane & 3
    fd = T.mma_f64_m8n8k4(a[g, t], b[t, g], (c[g, 2 * t], c[g, 2 * t + 1]))
    d[g, 2 * t], d[g, 2 * t + 1] = fd


# one warp: the block copies src (32, 4) to shared memory; lane l points ldmatrix at shared row
# rows[l] and stores the 4 registers it gets to out[l]
@cuda.jit
def _ldmatrix_kernel(src, rows, out):
    sm = cuda.shared.array((32, 4), np.float32)
    lane = cuda.threadIdx.x
    for j in range(4):
        sm[lane, j] = src[lane, j]
    cuda.syncthreads()
    r = T.ldmatrix_x4(sm, (rows[lane], 0))
    for m in range(4):
        out[lane, m] = r[m]


# one warp: A (16x8) staged row-major in shared memory and loaded by ldmatrix_x4 as the conv
# kernels do (lane l addresses row l % 8 + 8*((l >> 3) & 1), columns 4*(l >> 4) ..), B and C by
# the fragment table; one TF32 MMA
@cuda.jit
def _ldmatrix_mma_kernel(a, b, c, d):
    sm = cuda.shared.array((16, 8), np.float32)
    lane = cuda.threadIdx.x
    g, t = lane >> 2, lane & 3
    for j in range(4):
        sm[lane >> 1, 4 * (lane & 1) + j] = a[lane >> 1, 4 * (lane & 1) + j]
    cuda.syncthreads()
    q = lane >> 3
    fa = T.ldmatrix_x4(sm, ((lane & 7) + 8 * (q & 1), 4 * (q >> 1)))
    fd = T.mma_tf32_m16n8k8(fa, (b[t, g], b[t + 4, g]), (c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t],
                                                         c[g + 8, 2 * t + 1]))
    d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = fd


def _run(kernel, *args, threads=32):
    dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    kernel[1, threads](*dev)
    return [d.copy_to_host() if isinstance(a, np.ndarray) else None for a, d in zip(args, dev)]


def _ints(rng, shape, dtype):
    """Small integers: every product and sum exact, so any summation order gives the same result."""
    return rng.integers(-8, 9, shape).astype(dtype)


def test_mma_tf32_fragment_layout_is_a_matmul(rng):
    a, b, c = _ints(rng, (16, 8), np.float32), _ints(rng, (8, 8), np.float32), _ints(rng, (16, 8), np.float32)
    d = _run(_mma_tf32_kernel, a, b, c, np.zeros((16, 8), np.float32), False)[3]
    np.testing.assert_array_equal(d, a @ b + c)


def _tf32_nearest(x):
    return _tf32_reference(np.asarray(x, np.float32)).view(np.float32)


def test_mma_tf32_reads_19_bits_and_round_tf32_rounds_them(rng):
    """Full float32 operands: the MMA ignores their 13 low mantissa bits; round_tf32 first gives
    the operands rounded to nearest. Both: products exact, fp32 result of the exact sum."""
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    chopped = (a.view(np.uint32) & 0xFFFFE000).view(np.float32), (b.view(np.uint32) & 0xFFFFE000).view(np.float32)
    for rounded, (ta, tb) in ((False, chopped), (True, (_tf32_nearest(a), _tf32_nearest(b)))):
        d = _run(_mma_tf32_kernel, a, b, c, np.zeros((16, 8), np.float32), rounded)[3]
        expected = (ta.astype(np.float64) @ tb.astype(np.float64) + c).astype(np.float32)
        np.testing.assert_array_equal(d, expected)
    assert not np.array_equal(chopped[0], _tf32_nearest(a))   # the data tells truncation and rounding apart


def test_mma_f16_fragment_layout_is_a_matmul(rng):
    a, b, c = _ints(rng, (16, 16), np.float16), _ints(rng, (16, 8), np.float16), _ints(rng, (16, 8), np.float32)
    d = _run(_mma_f16_kernel, a, b, c, np.zeros((16, 8), np.float32))[3]
    np.testing.assert_array_equal(d, a.astype(np.float32) @ b.astype(np.float32) + c)


def test_mma_f16_accumulates_in_fp32():
    """2048 + 16 products of 1/32: float16 (ulp 2 at 2048) would return 2048; fp32 gives 2048.5."""
    a = np.full((16, 16), 0.25, np.float16)
    b = np.full((16, 8), 0.125, np.float16)
    c = np.full((16, 8), 2048, np.float32)
    d = _run(_mma_f16_kernel, a, b, c, np.zeros((16, 8), np.float32))[3]
    np.testing.assert_array_equal(d, np.full((16, 8), 2048.5, np.float32))


def test_mma_f64_fragment_layout_is_a_matmul(rng):
    a, b, c = _ints(rng, (8, 4), np.float64), _ints(rng, (4, 8), np.float64), _ints(rng, (8, 8), np.float64)
    d = _run(_mma_f64_kernel, a, b, c, np.zeros((8, 8)))[3]
    np.testing.assert_array_equal(d, a @ b + c)


def test_mma_f64_is_a_chain_of_fused_multiply_adds(rng):
    """d = fma(a3, b3, fma(a2, b2, fma(a1, b1, fma(a0, b0, c)))), each step rounded once (the
    reference rounds exact rationals); (1 + 2^-30)(1 - 2^-30) - 1 = -2^-60 survives only an FMA."""
    a = rng.standard_normal((8, 4))
    b = rng.standard_normal((4, 8))
    c = rng.standard_normal((8, 8))
    a[0, 0], b[0, 0], c[0, 0] = 1 + 2.0 ** -30, 1 - 2.0 ** -30, -1.0
    a[0, 1:] = 0
    d = _run(_mma_f64_kernel, a, b, c, np.zeros((8, 8)))[3]
    expected = np.empty((8, 8))
    for i in range(8):
        for j in range(8):
            acc = c[i, j]
            for k in range(4):
                acc = float(Fraction(a[i, k]) * Fraction(b[k, j]) + Fraction(acc))
            expected[i, j] = acc
    np.testing.assert_array_equal(d, expected)
    assert d[0, 0] == -2.0 ** -60


def test_ldmatrix_x4_delivers_element_l_mod_4_of_row_l_div_4(rng):
    src = np.arange(128, dtype=np.float32).reshape(32, 4)
    for rows in (np.arange(32, dtype=np.int32), rng.permutation(32).astype(np.int32)):
        out = _run(_ldmatrix_kernel, src, rows, np.zeros((32, 4), np.float32))[2]
        # matrix m is the rows lanes 8m .. 8m+7 pointed at; lane l gets its row l // 4, element l % 4
        lane = np.arange(32)
        for m in range(4):
            np.testing.assert_array_equal(out[:, m], src[rows[8 * m + lane // 4], lane % 4])


def test_ldmatrix_x4_loads_the_tf32_a_fragment(rng):
    a, b, c = _ints(rng, (16, 8), np.float32), _ints(rng, (8, 8), np.float32), _ints(rng, (16, 8), np.float32)
    d = _run(_ldmatrix_mma_kernel, a, b, c, np.zeros((16, 8), np.float32))[3]
    np.testing.assert_array_equal(d, a @ b + c)


@pytest.mark.parametrize("layout, count, table", [
    (T.tf32_a_layout, 4, lambda g, t: [(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]),
    (T.tf32_b_layout, 2, lambda g, t: [(t, g), (t + 4, g)]),
    (T.acc_layout, 4, lambda g, t: [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]),
    (T.f16_a_layout, 8, lambda g, t: [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1),
                                      (g, 2 * t + 8), (g, 2 * t + 9), (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]),
    (T.f16_b_layout, 4, lambda g, t: [(2 * t, g), (2 * t + 1, g), (2 * t + 8, g), (2 * t + 9, g)]),
    (T.f64_a_layout, 1, lambda g, t: [(g, t)]),
    (T.f64_b_layout, 1, lambda g, t: [(t, g)]),
    (T.f64_acc_layout, 2, lambda g, t: [(g, 2 * t), (g, 2 * t + 1)]),
], ids=["tf32_a", "tf32_b", "acc", "f16_a", "f16_b", "f64_a", "f64_b", "f64_acc"])
def test_layout_functions_match_the_ptx_tables(layout, count, table):
    for lane in range(32):
        assert [layout(lane, i) for i in range(count)] == table(lane >> 2, lane & 3), lane


# ---------------------------------------------------------------- cp.async

# one warp: two groups of copies (the second zero-filling odd lanes), then what each lane reads
# back after wait_group 1 (only the first group landed) and wait_group 0 (both)
@cuda.jit
def _cp_async_kernel(src, seen):
    first = cuda.shared.array(32, np.float32)
    second = cuda.shared.array(32, np.float32)
    lane = cuda.threadIdx.x
    T.cp_async(first, lane, src, lane, True)
    T.cp_async_commit()
    T.cp_async(second, lane, src, 32 + lane, lane % 2 == 0)
    T.cp_async_commit()
    T.cp_async_wait(1)()
    seen[0, lane] = first[lane]
    seen[1, lane] = second[lane]
    T.cp_async_wait(0)()
    seen[2, lane] = first[lane]
    seen[3, lane] = second[lane]


def test_cp_async_groups_land_in_commit_order_and_zero_fill():
    src = np.arange(1, 65, dtype=np.float32)
    seen = _run(_cp_async_kernel, src, np.zeros((4, 32), np.float32))[1]
    lane = np.arange(32)
    np.testing.assert_array_equal(seen[0], src[:32])
    assert np.isnan(seen[1]).all()          # still in flight: undefined on a GPU, NaN in the model
    np.testing.assert_array_equal(seen[2], src[:32])
    np.testing.assert_array_equal(seen[3], np.where(lane % 2 == 0, src[32:], 0))


# one thread: a copy whose source index lies outside the source, not valid
@cuda.jit
def _cp_async_outside_kernel(src):
    dst = cuda.shared.array(4, np.float32)
    T.cp_async(dst, 0, src, src.shape[0], False)


def test_cp_async_needs_an_in_range_source_even_when_zero_filling():
    with pytest.raises(IndexError, match="outside the source"):
        _cp_async_outside_kernel[1, 1](cuda.to_device(np.zeros(4, np.float32)))


def test_warp_instruction_needs_a_full_warp():
    a, b, c = np.zeros((16, 8), np.float32), np.zeros((8, 8), np.float32), np.zeros((16, 8), np.float32)
    with pytest.raises(RuntimeError, match="full warp of 32 threads"):
        _run(_mma_tf32_kernel, a, b, c, np.zeros((16, 8), np.float32), False, threads=16)


# one warp: lane 0 waits at syncthreads while the other lanes execute an MMA
@cuda.jit
def _diverged_kernel(d):
    lane = cuda.threadIdx.x
    if lane == 0:
        cuda.syncthreads()
    else:
        d[lane] = T.mma_f64_m8n8k4(1.0, 1.0, (0.0, 0.0))[0]


def test_a_diverged_warp_is_an_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(T, "STUCK_SECONDS", 0.3)
    with pytest.raises(RuntimeError, match=r"lane\(s\) \[0\] of warp 0 wait at syncthreads .* the warp diverged"):
        _diverged_kernel[1, 32](cuda.to_device(np.zeros(32)))


# ---------------------------------------------------------------- TF32 rounding

def _tf32_reference(x):
    """The uint32 bits of float32 ``x`` rounded to TF32, from float64 arithmetic: the quantum is
    2^(e - 11) for |x| in [2^(e-1), 2^e) and 2^-136 below 2^-126 (TF32 denormals keep 10 fraction
    bits), np.rint rounds half to even, past the largest float32 it is infinity; NaN and
    infinity keep their bits."""
    x = np.asarray(x, np.float32)
    finite = np.isfinite(x)
    x64 = np.where(finite, x, 1).astype(np.float64)
    _, e = np.frexp(x64)
    quantum = np.ldexp(1.0, np.maximum(e, -125) - 11)
    with np.errstate(over="ignore"):
        rounded = (np.rint(x64 / quantum) * quantum).astype(np.float32)
    return np.where(finite, rounded.view(np.uint32), x.view(np.uint32))


def _special_values():
    one = 0x3F800000
    bits = [
        one, one | 0x1000, one | 0x1001, one | 0x3000, one | 0x2FFF, one | 0x1FFF,   # ties to even, above, below
        0x3F7FF000, 0x3FFFF000,                 # the carry into the next binade
        0x7F7FFFFF, 0x7F7FEFFF, 0x7F7FF000,     # largest float32: rounds to infinity; and just below
        0x7F800000, 0xFF800000,                 # infinities
        0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF,   # NaNs, quiet and signalling, payloads kept
        0x00000000, 0x80000000,                 # zeros
        0x00000001, 0x00001000, 0x00001001, 0x00003000, 0x007FFFFF, 0x007FF000,   # denormals, incl. ties
        0x00800000, 0x00800FFF, 0x80801000,     # smallest normals
    ]
    return np.array(bits + [b | 0x80000000 for b in bits], np.uint32)


def test_tf32_reference_is_right_on_known_values():
    one = np.float32(1)
    assert _tf32_reference(np.float32(1 + 2 ** -11)) == one.view(np.uint32)        # tie, even stays
    assert _tf32_reference(np.float32(1 + 3 * 2 ** -11)) == np.float32(1 + 2 ** -9).view(np.uint32)
    assert _tf32_reference(np.float32(3.4028235e38)) == np.float32(np.inf).view(np.uint32)


def _bit_patterns(rng, count):
    return np.concatenate([_special_values(), rng.integers(0, 2 ** 32, count, dtype=np.uint64).astype(np.uint32)])


def test_round_tf32_cpu_is_bit_exact(rng):
    src = _bit_patterns(rng, 200_000)
    dst = np.empty_like(src)
    T.round_tf32_cpu(src, dst)
    np.testing.assert_array_equal(dst, _tf32_reference(src.view(np.float32)))


def test_round_tf32_model_is_bit_exact(rng):
    src = _bit_patterns(rng, 2_000)
    got = np.array([np.float32(T.round_tf32(np.float32(v))) for v in src.view(np.float32)]).view(np.uint32)
    np.testing.assert_array_equal(got, _tf32_reference(src.view(np.float32)))
