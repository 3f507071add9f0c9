"""Plain float64 NumPy references the tests compare every kernel against.

Written for clarity, not speed: explicit loops over the filter taps, padding done by
``np.pad``, no shared code with the kernels under test.
"""
import numpy as np


def conv_out(size, k, s, pad_before, pad_after, d):
    return (size + pad_before + pad_after - d * (k - 1) - 1) // s + 1


def conv2d_fwd_ref(x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """y[n,k,p,q] = sum_{c,r,s} xpad[n, g*Cg + c, p*sh + r*dh, q*sw + s*dw] * w[k,c,r,s].

    ``pad`` is (top, bottom, left, right)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    P = conv_out(H, R, sh, pt, pb, dh)
    Q = conv_out(W, S, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    Kg = K // groups
    y = np.zeros((N, K, P, Q))
    for g in range(groups):
        xg = xp[:, g * Cg:(g + 1) * Cg]
        wg = w[g * Kg:(g + 1) * Kg]
        for r in range(R):
            for s in range(S):
                patch = xg[:, :, r * dh: r * dh + (P - 1) * sh + 1: sh, s * dw: s * dw + (Q - 1) * sw + 1: sw]
                y[:, g * Kg:(g + 1) * Kg] += np.einsum("nchw,kc->nkhw", patch, wg[:, :, r, s])
    return y


def conv2d_bwd_data_ref(dy, w, x_shape, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """dx = d(sum(y * dy))/dx: scatter each output gradient back through the filter taps."""
    dy = np.asarray(dy, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x_shape
    K, Cg, R, S = w.shape
    _, _, P, Q = dy.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Kg = K // groups
    dxp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    for g in range(groups):
        wg = w[g * Kg:(g + 1) * Kg]
        dyg = dy[:, g * Kg:(g + 1) * Kg]
        for r in range(R):
            for s in range(S):
                contrib = np.einsum("nkhw,kc->nchw", dyg, wg[:, :, r, s])
                dxp[:, g * Cg:(g + 1) * Cg, r * dh: r * dh + (P - 1) * sh + 1: sh,
                    s * dw: s * dw + (Q - 1) * sw + 1: sw] += contrib
    return dxp[:, :, pt:pt + H, pl:pl + W]


def conv2d_bwd_filter_ref(dy, x, w_shape, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xpad[n, g*Cg + c, p*sh + r*dh, q*sw + s*dw]."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    K, Cg, R, S = w_shape
    _, _, P, Q = dy.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    Kg = K // groups
    dwt = np.zeros(w_shape)
    for g in range(groups):
        xg = xp[:, g * Cg:(g + 1) * Cg]
        dyg = dy[:, g * Kg:(g + 1) * Kg]
        for r in range(R):
            for s in range(S):
                patch = xg[:, :, r * dh: r * dh + (P - 1) * sh + 1: sh, s * dw: s * dw + (Q - 1) * sw + 1: sw]
                dwt[g * Kg:(g + 1) * Kg, :, r, s] = np.einsum("nkhw,nchw->kc", dyg, patch)
    return dwt


def tolerance(dtype):
    """(rtol, atol) for comparing a kernel's result in ``dtype`` with the float64 reference."""
    return (1e-4, 1e-4) if np.dtype(dtype) == np.float32 else (1e-10, 1e-10)
