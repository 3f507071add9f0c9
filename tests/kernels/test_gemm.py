import numpy as np
import pytest
from numba import cuda

import convkern as ck
import convkern.functional as F
from convkern.kernels import gemm as G
from tests.reference import tolerance

# float16: storage, fp32 products and sums, rounded once (against the float64 product of the
# float16 operands)
DTYPES = [np.float16, np.float32, np.float64]
# (M, N, K): several tiles in every dimension, none a multiple of the tile; a single row; a single
# column; an outer product
SHAPES = [(G.BM + 5, G.BN + 3, 2 * G.BK + 1), (1, 17, 5), (19, 1, 21), (7, 9, 1)]
TRANS = [(False, False), (True, False), (False, True), (True, True)]


def _operands(M, N, K, trans_a, trans_b, dtype, batch=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    a = rng.standard_normal(lead + ((K, M) if trans_a else (M, K))).astype(dtype)
    b = rng.standard_normal(lead + ((N, K) if trans_b else (K, N))).astype(dtype)
    c = rng.standard_normal(lead + (M, N)).astype(dtype)
    return a, b, c


def _expected(a, b, c, trans_a, trans_b, alpha, beta):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    op_a = np.swapaxes(a, -1, -2) if trans_a else a
    op_b = np.swapaxes(b, -1, -2) if trans_b else b
    out = alpha * (op_a @ op_b)
    return out if beta == 0 else out + beta * np.asarray(c, np.float64)


def _run(fn, a, b, c, device, **kw):
    if device == "cpu":
        fn(a, b, c, **kw)
        return c
    dc = cuda.to_device(c)
    fn(cuda.to_device(a), cuda.to_device(b), dc, **kw)
    return dc.copy_to_host()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_gemm_overwrites(M, N, K, trans_a, trans_b, dtype, device):
    a, b, c = _operands(M, N, K, trans_a, trans_b, dtype)
    c[:] = np.nan
    got = _run(G.gemm, a, b, c, device, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_allclose(got, _expected(a, b, c, trans_a, trans_b, 1, 0), *tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True)])
@pytest.mark.parametrize("alpha,beta", [(0.5, 0.0), (1.0, 1.0), (-2.0, 0.25)])
def test_gemm_alpha_beta(alpha, beta, trans_a, trans_b, dtype, device):
    a, b, c = _operands(10, 9, 11, trans_a, trans_b, dtype)
    want = _expected(a, b, c, trans_a, trans_b, alpha, beta)
    got = _run(G.gemm, a, b, c.copy(), device, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    np.testing.assert_allclose(got, want, *tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANS)
def test_gemm_batched(trans_a, trans_b, dtype, device):
    a, b, c = _operands(9, 10, 7, trans_a, trans_b, dtype, batch=3)
    want = _expected(a, b, c, trans_a, trans_b, 1.5, 0.5)
    got = _run(G.gemm_batched, a, b, c.copy(), device, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=0.5)
    np.testing.assert_allclose(got, want, *tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k", [2, 5])
def test_gemm_split_k(split_k, dtype, device):
    """Split-K partial products and their reduction; on the CPU the argument is ignored."""
    a, b, c = _operands(9, 7, 4 * G.BK + 3, True, False, dtype)
    want = _expected(a, b, c, True, False, 0.5, 2.0)
    got = _run(G.gemm, a, b, c.copy(), device, trans_a=True, alpha=0.5, beta=2.0, split_k=split_k)
    np.testing.assert_allclose(got, want, *tolerance(dtype))


def test_gemm_empty_k(device):
    a, b, c = _operands(3, 4, 0, False, False, np.float64)
    got = _run(G.gemm, a, b, c.copy(), device, beta=0.5)
    np.testing.assert_allclose(got, 0.5 * c)


def test_gemm_rejects_bad_shapes():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        G.gemm(a, np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="do not chain"):
        G.gemm(a, np.zeros((4, 2), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        G.gemm(a[None], np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        G.gemm(a, np.zeros((4, 2), np.float64), np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("a_shape,b_shape", [((5, 3, 4), (5, 4, 6)), ((1, 3, 4), (7, 4, 2)), ((3, 4), (6, 4, 5)),
                                             ((6, 3, 1), (6, 1, 4)), ((2, 3, 4), (4, 5))])
def test_matmul_cpu_splits_stacks_over_threads_exactly(a_shape, b_shape):
    """The stack is cut over the threads with one BLAS thread each: the same products as np.matmul,
    operands broadcast along the stack included."""
    import numba
    rng = np.random.default_rng(1)
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal(b_shape)
    want = np.matmul(a, b)
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        numba.set_num_threads(threads)
        out = np.full(want.shape, np.nan)
        G.matmul_cpu(a, b, out)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_gemm_float16_accumulates_in_float32(device):
    """1 + 64 * 2^-11 is 1 + 2^-5 in fp32, 1 in float16 (each 2^-11 is half an ulp of 1)."""
    a = np.full((1, 65), 2.0 ** -11, np.float16)
    a[0, 0] = 1
    got = _run(G.gemm, a, np.ones((65, 1), np.float16), np.full((1, 1), np.nan, np.float16), device)
    assert got.tolist() == [[1 + 2.0 ** -5]]


# ---------------------------------------------------------------- linear on float16

def test_linear_float16_forward_and_gradients(device):
    rng = np.random.default_rng(4)
    x, w, b = (rng.standard_normal(s).astype(np.float16) for s in ((2, 3, 20), (7, 20), (7,)))
    ts = [ck.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    y = F.linear(*ts)
    dy = rng.standard_normal(y.shape).astype(np.float16)
    y.backward(ck.tensor(dy, device=device))
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    want = (x64 @ w64.T + b.astype(np.float64), dy64 @ w64, dy64.reshape(-1, 7).T @ x64.reshape(-1, 20),
            dy64.reshape(-1, 7).sum(axis=0))
    for name, mine, ref in zip(("y", "dx", "dw", "db"), (y, *(t.grad for t in ts)), want):
        assert mine.dtype == np.float16, name
        np.testing.assert_allclose(mine.numpy(), ref, *tolerance(np.float16), err_msg=name)


def test_linear_float16_needs_float16_weight():
    with pytest.raises(TypeError, match="linear: weight has dtype float32 but input has dtype float16"):
        F.linear(np.zeros((2, 3), np.float16), np.zeros((4, 3), np.float32))
