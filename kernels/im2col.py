"""Convolution as a matrix product: im2col + GEMM, and col2im for the data gradient.

Column matrix layout (one chunk of ``nb`` images starting at image ``n0``)::

    col[(c*R + r)*S + s, (n*P + p)*Q + q] = x[n0 + n, c, p*sh - ph + r*dh, q*sw - pw + s*dw]

(zero where the read falls outside the input). Rows run over all C input channels, so group
``gi``'s rows are the contiguous block ``[gi*Cg*R*S, (gi+1)*Cg*R*S)`` and the matrix reshapes
to ``(groups, Cg*R*S, nb*P*Q)`` for a batched GEMM with no copy. With the weight viewed as
``W[groups, Kg, Cg*R*S]`` and ``Yt[k, (n, p, q)] = y[n0 + n, k, p, q]``:

    forward          Yt_g   = W_g @ col_g, then Yt swapped to NCHW (swap01)
    backward data    dcol_g = W_g^T @ dYt_g, then dx = col2im(dcol)
    backward filter  dW_g   = sum over the chunks of dYt_g @ col_g^T

A one-image chunk needs no swap: ``Yt`` is then ``y[n0]`` itself.
``col2im`` is the adjoint of ``im2col``: ``dx[n, c, h, w]`` is the sum of every column entry
that ``im2col`` would have read from ``x[n, c, h, w]``. Both are gather forms with one owner
per written element, so the results are deterministic. The batch is processed in chunks so
that the column matrix plus the GEMM output stay within ``max_workspace`` bytes (at least one
image per chunk). CUDA runs ``gemm_tiled_cuda``, the CPU NumPy's BLAS.

Pointwise layers on the CPU (1 x 1, unpadded, one group, float32 or float64) skip the column
matrix: it is the input itself (every ``s``-th pixel when strided, copied once), so each pass is
one stack of BLAS products over the images (``gemm.matmul_cpu``, on BLAS's threads): ``Y[n] = W @ X[n]``,
``dX[n] = W^T @ dY[n]`` (scattered back to every ``s``-th pixel, zeros elsewhere) and
``dW = sum_n dY[n] @ X[n]^T``. (ResNet-50's 1 x 1 layers: 1.5-2x the column-matrix path.)
"""
import numpy as np
from numba import cuda, int64, njit, prange, uint64

from .conv_algorithm import ConvAlgorithm, check_conv_arrays
from .cuda_util import SIMULATOR, array2, array4, blocks, device_empty, is_device_array, per_dtype, stream
from .gemm import gemm_batched, matmul_cpu

THREADS = 32 if SIMULATOR else 256
MAX_BLOCKS = 2 if SIMULATOR else 2**31 - 1    # the simulator pays per thread: few threads, long loops
CUDA_WORKSPACE = 64 << 20
CPU_WORKSPACE = 1 << 20            # a chunk's column matrix stays in the L2 cache


def _im2col_signature(dt):
    return (array4(dt), array2(dt)) + (int64,) * 11


# one thread per column-matrix element (row (c, r, s), column (n, p, q)), grid-stride
@per_dtype(_im2col_signature, threads=THREADS)
def im2col_cuda(dt):
    @cuda.jit
    def kernel(x, col, n0, R, S, P, Q, sh, sw, ph, pw, dh, dw):
        cols = col.shape[1]
        for i in range(cuda.grid(1), col.shape[0] * cols, cuda.gridsize(1)):
            row = i // cols
            j = i - row * cols
            c = row // (R * S)
            r = (row // S) % R
            s = row % S
            n = j // (P * Q)
            p = (j // Q) % P
            q = j % Q
            ih = p * sh - ph + r * dh
            iw = q * sw - pw + s * dw
            v = dt(0)
            if ih >= 0 and ih < x.shape[2] and iw >= 0 and iw < x.shape[3]:
                v = x[n0 + n, c, ih, iw]
            col[row, j] = v
    return kernel


@njit(cache=True)
def _valid_range(out_len, in_len, offset, stride):
    """[lo, hi): the outputs o whose input index o*stride + offset lies in [0, in_len)."""
    lo = min(out_len, max(0, -(offset // stride)))
    hi = min(out_len, max(0, (in_len - 1 - offset) // stride + 1))
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def im2col_cpu(x, col, n0, R, S, P, Q, sh, sw, ph, pw, dh, dw):
    """CPU twin of ``im2col_cuda``: one iteration per (row (c, r, s), image n) fills that
    image's P*Q stretch of the row; the padding is zeroed outside the copy loops, so they
    have no branches."""
    H, W = x.shape[2], x.shape[3]
    nb = col.shape[1] // (P * Q)
    for t in prange(col.shape[0] * nb):
        row = t // nb
        n = t - row * nb
        c = row // (R * S)
        r = (row // S) % R
        s = row % S
        off_h = r * dh - ph
        off_w = s * dw - pw
        p_lo, p_hi = _valid_range(P, H, off_h, sh)
        q_lo, q_hi = _valid_range(Q, W, off_w, sw)
        dst = col[row]
        src = x[n0 + n, c]
        # unsigned indices: Numba then drops the negative-index wraparound that blocks vectorisation
        for j in range(n * P * Q, (n * P + p_lo) * Q):
            dst[uint64(j)] = 0
        for j in range((n * P + p_hi) * Q, (n + 1) * P * Q):
            dst[uint64(j)] = 0
        for p in range(p_lo, p_hi):
            ih = uint64(p * sh + off_h)
            base = (n * P + p) * Q
            for q in range(q_lo):
                dst[uint64(base + q)] = 0
            for q in range(q_lo, q_hi):
                dst[uint64(base + q)] = src[ih, uint64(q * sw + off_w)]
            for q in range(q_hi, Q):
                dst[uint64(base + q)] = 0


def _col2im_signature(dt):
    return (array2(dt), array4(dt)) + (int64,) * 12


# one thread per image element (n, c, h, w) of the chunk, grid-stride; it gathers the column
# entries im2col read from it
@per_dtype(_col2im_signature, threads=THREADS)
def col2im_cuda(dt):
    @cuda.jit
    def kernel(dcol, dx, n0, nb, R, S, P, Q, sh, sw, ph, pw, dh, dw):
        C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
        for i in range(cuda.grid(1), nb * C * H * W, cuda.gridsize(1)):
            w = i % W
            h = (i // W) % H
            c = (i // (W * H)) % C
            n = i // (W * H * C)
            acc = dt(0)
            for r in range(R):
                th = h + ph - r * dh
                if th >= 0 and th % sh == 0 and th // sh < P:
                    p = th // sh
                    for s in range(S):
                        tw = w + pw - s * dw
                        if tw >= 0 and tw % sw == 0 and tw // sw < Q:
                            acc += dcol[(c * R + r) * S + s, (n * P + p) * Q + tw // sw]
            dx[n0 + n, c, h, w] = acc
    return kernel


@njit(parallel=True, cache=True)
def col2im_cpu(dcol, dx, n0, nb, R, S, P, Q, sh, sw, ph, pw, dh, dw):
    """CPU twin of ``col2im_cuda``: each iteration owns one (n, c) plane of ``dx`` and adds the
    column rows into it in a fixed (r, s, p, q) order."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    for t in prange(nb * C):
        n = t // C
        c = t - n * C
        plane = dx[n0 + n, c]
        plane[:, :] = 0
        for r in range(R):
            off_h = r * dh - ph
            p_lo, p_hi = _valid_range(P, H, off_h, sh)
            for s in range(S):
                src = dcol[(c * R + r) * S + s]
                off_w = s * dw - pw
                q_lo, q_hi = _valid_range(Q, W, off_w, sw)
                for p in range(p_lo, p_hi):
                    ih = uint64(p * sh + off_h)
                    base = (n * P + p) * Q
                    for q in range(q_lo, q_hi):
                        plane[ih, uint64(q * sw + off_w)] += src[uint64(base + q)]


def _swap01_signature(dt):
    return (dt[:, :, ::1], dt[:, :, ::1])


# one thread per destination element (b, a, l), grid-stride
@per_dtype(_swap01_signature, threads=THREADS)
def swap01_cuda(dt):
    @cuda.jit
    def kernel(src, dst):
        B, A, L = dst.shape[0], dst.shape[1], dst.shape[2]
        for i in range(cuda.grid(1), B * A * L, cuda.gridsize(1)):
            l = i % L
            a = (i // L) % A
            b = i // (L * A)
            dst[b, a, l] = src[a, b, l]
    return kernel


@njit(parallel=True, cache=True)
def swap01_cpu(src, dst):
    """``dst[b, a, l] = src[a, b, l]``: one iteration per (b, a), a contiguous copy of length L."""
    B, A = dst.shape[0], dst.shape[1]
    for t in prange(B * A):
        b = t // A
        a = t - b * A
        dst[b, a, :] = src[a, b, :]


def _geometry_args(g):
    return (g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w)


def _grid(n):
    return min(blocks(n, THREADS), MAX_BLOCKS)


def im2col(x, col, n0, g):
    """Fill ``col`` (C*R*S, nb*P*Q) from images [n0, n0+nb) of ``x`` (layout in the module
    docstring) on the array's device."""
    if is_device_array(x):
        im2col_cuda[x.dtype][_grid(col.size), THREADS, stream()](x, col, n0, *_geometry_args(g))
    else:
        im2col_cpu(x, col, n0, *_geometry_args(g))


def col2im(dcol, dx, n0, nb, g):
    """Overwrite images [n0, n0+nb) of ``dx`` with the adjoint of ``im2col`` applied to ``dcol``."""
    if is_device_array(dx):
        size = nb * g.C * g.H * g.W
        col2im_cuda[dx.dtype][_grid(size), THREADS, stream()](dcol, dx, n0, nb, *_geometry_args(g))
    else:
        col2im_cpu(dcol, dx, n0, nb, *_geometry_args(g))


def _swap01(src, dst):
    if is_device_array(dst):
        swap01_cuda[dst.dtype][_grid(dst.size), THREADS, stream()](src, dst)
    else:
        swap01_cpu(src, dst)


def _by_group(m, groups):
    """View a (rows, cols) matrix as (groups, rows/groups, cols)."""
    return m.reshape(groups, m.shape[0] // groups, m.shape[1])


class _Plan:
    """Chunks of the batch and the workspace for one: the column matrix (C*R*S, nb*P*Q) and a
    (K, nb*P*Q) output-channel matrix, carved per chunk from two flat buffers."""

    def __init__(self, g, like, max_workspace):
        self.g = g
        if max_workspace is None:
            max_workspace = CUDA_WORKSPACE if is_device_array(like) else CPU_WORKSPACE
        self.rows = g.C * g.R * g.S
        self.pq = g.P * g.Q
        self.nb = max(1, min(g.N, max_workspace // ((self.rows + g.K) * self.pq * like.dtype.itemsize)))
        empty = device_empty if is_device_array(like) else np.empty
        self.col_buf = empty(self.rows * self.nb * self.pq, like.dtype)
        self.kmat_buf = empty(g.K * self.nb * self.pq, like.dtype) if self.nb > 1 else None

    def chunks(self):
        """(n0, nb): the first image and the number of images of each chunk."""
        for n0 in range(0, self.g.N, self.nb):
            yield n0, min(self.nb, self.g.N - n0)

    def col(self, nb):
        return self.col_buf[:self.rows * nb * self.pq].reshape(self.rows, nb * self.pq)

    def kmat(self, nb, nchw, n0):
        """(K, nb*P*Q) matrix of output channels: image n0 of ``nchw`` itself when nb == 1."""
        if nb == 1:
            return nchw[n0].reshape(self.g.K, self.pq)
        return self.kmat_buf[:self.g.K * nb * self.pq].reshape(self.g.K, nb * self.pq)

    def weight(self, w):
        """The weight (K, Cg, R, S) as (groups, Kg, Cg*R*S)."""
        return _by_group(w.reshape(self.g.K, self.rows // self.g.groups), self.g.groups)


def _pointwise_cpu(g, x):
    """Whether the CPU takes the pointwise path (module docstring) for ``g`` on data like ``x``."""
    return (not is_device_array(x) and x.dtype in (np.float32, np.float64) and g.groups == 1
            and all(k == 1 for k in g.kernel) and not any(g.pad_before) and not any(g.pad_after))


def _pixels(x, g):
    """(N, C, P*Q): the input pixels a pointwise layer reads (every stride-th one, copied once)."""
    if any(s != 1 for s in g.stride):
        x = np.ascontiguousarray(x[:, :, ::g.stride[0], ::g.stride[1]])
    return x.reshape(g.N, g.C, -1)


def conv2d_fwd_im2col(x, w, y, g, max_workspace=None):
    """``y[n,k,p,q] = sum_{c,r,s} x[n, gi*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw] * w[k,c,r,s]``
    (gi = k // Kg) as im2col + GEMM per chunk of images. Overwrites ``y``."""
    check_conv_arrays("im2col", g, "fwd", x, w, y)
    if _pointwise_cpu(g, x):
        matmul_cpu(w.reshape(g.K, g.C), _pixels(x, g), y.reshape(g.N, g.K, -1), split=False)
        return
    plan = _Plan(g, x, max_workspace)
    for n0, nb in plan.chunks():
        col = plan.col(nb)
        im2col(x, col, n0, g)
        yt = plan.kmat(nb, y, n0)
        gemm_batched(plan.weight(w), _by_group(col, g.groups), _by_group(yt, g.groups))
        if nb > 1:
            _swap01(yt.reshape(g.K, nb, plan.pq), y[n0:n0 + nb].reshape(nb, g.K, plan.pq))


def _dy_chunk(plan, dy, n0, nb):
    """dY of images [n0, n0+nb) as the (K, nb*P*Q) matrix."""
    dyt = plan.kmat(nb, dy, n0)
    if nb > 1:
        g = plan.g
        _swap01(dy[n0:n0 + nb].reshape(nb, g.K, plan.pq), dyt.reshape(g.K, nb, plan.pq))
    return dyt


def conv2d_bwd_data_im2col(dy, w, dx, g, max_workspace=None):
    """``dx[n,c,h,w] = sum dy[n,k,p,q] * w[k,c',r,s]`` over the k of c's group and the (r,s,p,q)
    with ``h = p*sh-ph+r*dh``, ``w = q*sw-pw+s*dw``: GEMM ``W_g^T @ dY_g`` then col2im.
    Overwrites ``dx``."""
    check_conv_arrays("im2col", g, "bwd_data", dy, w, dx)
    if _pointwise_cpu(g, dy):
        strided = any(s != 1 for s in g.stride)
        out = np.empty((g.N, g.C, g.P * g.Q), dx.dtype) if strided else dx.reshape(g.N, g.C, -1)
        matmul_cpu(w.reshape(g.K, g.C).T, dy.reshape(g.N, g.K, -1), out, split=False)
        if strided:
            dx[...] = 0
            dx[:, :, ::g.stride[0], ::g.stride[1]] = out.reshape(g.N, g.C, g.P, g.Q)
        return
    plan = _Plan(g, dy, max_workspace)
    for n0, nb in plan.chunks():
        dcol = plan.col(nb)
        dyt = _dy_chunk(plan, dy, n0, nb)
        gemm_batched(plan.weight(w), _by_group(dyt, g.groups), _by_group(dcol, g.groups), trans_a=True)
        col2im(dcol, dx, n0, nb, g)


def conv2d_bwd_filter_im2col(dy, x, dw, g, max_workspace=None):
    """``dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, gi*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw]``:
    ``dY_g @ col_g^T`` summed over the chunks of images. Overwrites ``dw``."""
    check_conv_arrays("im2col", g, "bwd_filter", dy, x, dw)
    if _pointwise_cpu(g, x):
        per_image = np.empty((g.N, g.K, g.C), dw.dtype)
        matmul_cpu(dy.reshape(g.N, g.K, -1), _pixels(x, g).transpose(0, 2, 1), per_image, split=False)
        np.sum(per_image, axis=0, out=dw.reshape(g.K, g.C))
        return
    plan = _Plan(g, x, max_workspace)
    for n0, nb in plan.chunks():
        col = plan.col(nb)
        im2col(x, col, n0, g)
        dyt = _dy_chunk(plan, dy, n0, nb)
        gemm_batched(_by_group(dyt, g.groups), _by_group(col, g.groups), plan.weight(dw),
                     trans_b=True, beta=0 if n0 == 0 else 1)


def _preference(g, device, pass_):
    """1x1 layers on the CPU: the column matrix is the input itself (subsampled when strided)
    and the product is one stack of BLAS calls (the pointwise path)."""
    return 0 if device == "cpu" and all(k == 1 for k in g.kernel) else 9


ALGORITHM = ConvAlgorithm("im2col", conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_filter_im2col,
                          ranks=(2,), preference=_preference,
                          summary="column matrix per chunk of images, then a GEMM (BLAS on the CPU)")
