"""Float64 NumPy convolution used by ``convkern bench`` to check every timed result.

Independent of the kernels: one BLAS contraction per filter tap over strided views of the
padded input, fast enough for full-size benchmark layers.
"""
import numpy as np


def _tap_view(xp, g, r, s):
    """xp[:, :, r*dh + p*sh, s*dw + q*sw] for all p < P, q < Q."""
    h0, w0 = r * g.dil_h, s * g.dil_w
    return xp[:, :, h0:h0 + (g.P - 1) * g.stride_h + 1:g.stride_h, w0:w0 + (g.Q - 1) * g.stride_w + 1:g.stride_w]


def _padded_shape(g):
    """Padded input extent the output grid touches (bottom/right padding beyond it is never read)."""
    return ((g.P - 1) * g.stride_h + g.dil_h * (g.R - 1) + 1, (g.Q - 1) * g.stride_w + g.dil_w * (g.S - 1) + 1)


def _pad(x, g):
    hp, wp = _padded_shape(g)
    xp = np.zeros(x.shape[:2] + (max(hp, g.pad_h + g.H), max(wp, g.pad_w + g.W)))
    xp[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W] = x
    return xp


def conv_fwd(x, w, g):
    xp = _pad(np.asarray(x, np.float64), g)
    w = np.asarray(w, np.float64)
    cg, kg = g.C // g.groups, g.K // g.groups
    y = np.zeros((g.N, g.K, g.P, g.Q))
    for gi in range(g.groups):
        for r in range(g.R):
            for s in range(g.S):
                patch = _tap_view(xp[:, gi * cg:(gi + 1) * cg], g, r, s)
                y[:, gi * kg:(gi + 1) * kg] += np.einsum("nchw,kc->nkhw", patch, w[gi * kg:(gi + 1) * kg, :, r, s],
                                                          optimize=True)
    return y


def conv_bwd_data(dy, w, g):
    dy = np.asarray(dy, np.float64)
    w = np.asarray(w, np.float64)
    cg, kg = g.C // g.groups, g.K // g.groups
    dxp = _pad(np.zeros((g.N, g.C, g.H, g.W)), g)
    for gi in range(g.groups):
        for r in range(g.R):
            for s in range(g.S):
                view = _tap_view(dxp[:, gi * cg:(gi + 1) * cg], g, r, s)
                view += np.einsum("nkhw,kc->nchw", dy[:, gi * kg:(gi + 1) * kg], w[gi * kg:(gi + 1) * kg, :, r, s],
                                  optimize=True)
    return dxp[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W]


def conv_bwd_filter(dy, x, g):
    xp = _pad(np.asarray(x, np.float64), g)
    dy = np.asarray(dy, np.float64)
    cg, kg = g.C // g.groups, g.K // g.groups
    dw = np.zeros((g.K, cg, g.R, g.S))
    for gi in range(g.groups):
        for r in range(g.R):
            for s in range(g.S):
                patch = _tap_view(xp[:, gi * cg:(gi + 1) * cg], g, r, s)
                dw[gi * kg:(gi + 1) * kg, :, r, s] = np.einsum("nkhw,nchw->kc", dy[:, gi * kg:(gi + 1) * kg], patch,
                                                               optimize=True)
    return dw
