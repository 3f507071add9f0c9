"""The explicit-vector micro-kernels and packing behind every CPU implicit GEMM (kernels/simd.py)."""
import numpy as np
import pytest

from convkern.kernels import simd


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_gemm_accumulates_a_product_of_packed_panels(dtype, rng):
    mr, nr = simd.MR, simd.panel_width(dtype)
    rows, panels, kc = 3 * mr, 4, 37                     # kc not a multiple of anything
    a = rng.standard_normal((1, rows, kc)).astype(dtype)
    b = rng.standard_normal((kc, panels * nr)).astype(dtype)
    bp = np.ascontiguousarray(b.reshape(kc, panels, nr).transpose(1, 0, 2)).reshape(-1)
    ct = rng.standard_normal((rows, panels * nr + 5)).astype(dtype)   # extra columns stay untouched
    expected = ct.copy()
    expected[:, :panels * nr] += a[0].astype(np.float64) @ b.astype(np.float64)
    simd.panel_gemm(kc, simd.pack_rows(a), 0, kc * mr, bp, panels, ct)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ct, expected, rtol=tol, atol=tol * kc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("one_vector", [False, True], ids=["NB", "one-vector"])
def test_gather_fma_broadcasts_its_rows_from_the_source(dtype, one_vector, rng):
    """c[i, :] += sum_l src[base[i0 + i] + idx[l0 + l]] * B[l, :] for PR rows at column c0 of c,
    B one packed panel NB wide (``gather_fma``) or one vector wide (``gather_fma1``); the rest of
    c untouched."""
    pr, nb = simd.PR, simd.lanes(dtype) if one_vector else simd.gather_panel_width(dtype)
    kc, i0, l0, c0, ldc = 23, 3, 5, nb, 3 * nb
    src = rng.standard_normal(500).astype(dtype)
    base = rng.integers(0, 200, i0 + pr + 2)
    idx = rng.integers(0, 300, l0 + kc + 4)
    b = rng.standard_normal((kc, nb)).astype(dtype)
    bp = np.concatenate([np.zeros(7, dtype), b.reshape(-1)])
    c = rng.standard_normal((pr + 1, ldc)).astype(dtype)
    a = src[base[i0:i0 + pr, None] + idx[None, l0:l0 + kc]].astype(np.float64)
    expected = c.copy()
    expected[:pr, c0:c0 + nb] += a @ b.astype(np.float64)
    (simd.gather_fma1 if one_vector else simd.gather_fma)(kc, src, base, i0, idx, l0, bp, 7, c.reshape(-1), c0, ldc)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * kc)


def test_panel_gemm_reads_a_row_block_and_a_reduction_window_of_a(rng):
    """The offsets implicit_gemm_cpu passes: A's panels from row block r0, reduction steps from l0."""
    mr, nr = simd.MR, simd.panel_width(np.float64)
    groups, rows, L = 2, 4 * mr, 29
    a = rng.standard_normal((groups, rows, L))
    ap = simd.pack_rows(a)
    gi, r0, l0, kc = 1, mr, 7, 11
    b = rng.standard_normal((kc, nr))
    ct = np.zeros((2 * mr, nr))
    simd.panel_gemm(kc, ap, (gi * rows + r0) * L + l0 * mr, L * mr, b.reshape(-1), 1, ct)
    np.testing.assert_allclose(ct, a[gi, r0:r0 + 2 * mr, l0:l0 + kc] @ b, rtol=1e-12, atol=1e-12)


def test_pack_rows_pads_each_group_to_whole_micro_panels(rng):
    a = rng.standard_normal((3, simd.MR + 3, 5))
    packed = simd.pack_rows(a).reshape(3, 2, 5, simd.MR)
    rows = packed.transpose(0, 1, 3, 2).reshape(3, 2 * simd.MR, 5)
    np.testing.assert_array_equal(rows[:, :simd.MR + 3], a)
    assert not rows[:, simd.MR + 3:].any()


def test_vector_width_follows_the_isa():
    assert simd.VECTOR_BYTES in (16, 32, 64)
    assert simd.lanes(np.float32) == 2 * simd.lanes(np.float64) == simd.VECTOR_BYTES // 4
    assert simd.MR == (8 if simd.VECTOR_BYTES == 64 else 4)


_OTHER_ISA_CHECK = """
import numpy as np
from convkern.kernels import simd
assert simd.VECTOR_BYTES == {bytes}, simd.VECTOR_BYTES
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    nr = simd.panel_width(dt)
    a = rng.standard_normal((2, 2 * simd.MR + 1, 13)).astype(dt)
    b = rng.standard_normal((13, 2 * nr)).astype(dt)
    bp = np.ascontiguousarray(b.reshape(13, 2, nr).transpose(1, 0, 2)).reshape(-1)
    rows = simd.round_up(a.shape[1], simd.MR)
    ct = np.zeros((rows, 2 * nr), dt)
    simd.panel_gemm(13, simd.pack_rows(a), rows * 13, 13 * simd.MR, bp, 2, ct)      # group 1
    np.testing.assert_allclose(ct[:a.shape[1]], a[1] @ b, rtol=1e-4, atol=1e-4)
print("ok", simd.MR)
"""


@pytest.mark.parametrize("vector_bytes", [32, 16])
def test_the_narrower_isas_micro_kernel_in_a_subprocess(vector_bytes, tmp_path):
    """The machine running the tests compiles one register tile; the others (MR = 4 with 16
    vector registers) are compiled here for AVX2 or SSE by masking the CPU features Numba sees."""
    import os
    import subprocess
    import sys

    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not features.get("avx2"):
        pytest.skip("needs an x86 host with AVX2 to emulate the narrower ISAs")
    drop = ("avx512", "amx", "evex512") if vector_bytes == 32 else ("avx", "amx", "fma", "f16c", "evex512", "vaes",
                                                                     "vpclmulqdq", "gfni", "xsave")
    flags = ",".join(("-" if k.startswith(drop) or not v else "+") + k for k, v in features.items())
    env = dict(os.environ, NUMBA_CPU_NAME="haswell" if vector_bytes == 32 else "x86-64", NUMBA_CPU_FEATURES=flags,
               NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _OTHER_ISA_CHECK.format(bytes=vector_bytes)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "4"]
