import numpy as np
import pytest
from numba import cuda

from convkern.kernels import gemm as G
from tests.reference import tolerance

DTYPES = [np.float32, np.float64]
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
