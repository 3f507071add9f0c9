"""Plain float64 NumPy references the tests compare every kernel against.

Written for clarity, not speed: explicit loops over the filter taps, padding done by
``np.pad``, no shared code with the kernels under test.
"""
import numpy as np


def conv_out(size, k, s, pad_before, pad_after, d):
    return (size + pad_before + pad_after - d * (k - 1) - 1) // s + 1


def _tap_slices(tap, out, stride, dilation):
    """Slices of the padded input read by filter tap ``tap`` (a tuple) for every output position."""
    return tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, o, s, d in zip(tap, out, stride, dilation))


def _pad_width(pads):
    """np.pad widths, and slices undoing negative padding (rows that are never read are cut)."""
    return [(0, 0), (0, 0)] + [(max(0, b), max(0, a)) for b, a in pads]


def _padded(x, pads):
    """x padded by ``pads`` ((before, after) per spatial axis; negative values cut)."""
    xp = np.pad(x, _pad_width(pads))
    cut = (slice(None), slice(None)) + tuple(slice(max(0, -b), xp.shape[2 + i] - max(0, -a))
                                              for i, (b, a) in enumerate(pads))
    return xp[cut]


def conv_fwd_ref(x, w, stride, pads, dilation, groups=1):
    """N-d convolution, any spatial rank: ``y[n, k, o] = sum_{c, t} xpad[n, gi*Cg + c, o*stride + t*dilation] * w[k, c, t]``.

    ``pads``: (before, after) per spatial axis."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    K, Cg, *kernel = w.shape
    xp = _padded(x, pads)
    out = [conv_out(n, k, s, 0, 0, d) for n, k, s, d in zip(xp.shape[2:], kernel, stride, dilation)]
    Kg = K // groups
    y = np.zeros((x.shape[0], K, *out))
    for g in range(groups):
        xg = xp[:, g * Cg:(g + 1) * Cg]
        wg = w[g * Kg:(g + 1) * Kg]
        for tap in np.ndindex(*kernel):
            patch = xg[(slice(None), slice(None)) + _tap_slices(tap, out, stride, dilation)]
            y[:, g * Kg:(g + 1) * Kg] += np.einsum("nc...,kc->nk...", patch, wg[(slice(None), slice(None)) + tap])
    return y


def conv_bwd_data_ref(dy, w, x_shape, stride, pads, dilation, groups=1):
    """dx = d(sum(y * dy))/dx: scatter each output gradient back through the filter taps (any rank)."""
    dy = np.asarray(dy, np.float64)
    w = np.asarray(w, np.float64)
    K, Cg, *kernel = w.shape
    out = dy.shape[2:]
    Kg = K // groups
    full = [n + max(0, b) + max(0, a) for n, (b, a) in zip(x_shape[2:], pads)]
    dxp = np.zeros((x_shape[0], x_shape[1], *full))
    for g in range(groups):
        wg = w[g * Kg:(g + 1) * Kg]
        dyg = dy[:, g * Kg:(g + 1) * Kg]
        for tap in np.ndindex(*kernel):
            # with negative padding the tap window starts later by the cut amount
            sl = tuple(slice(t * d + max(0, -b), t * d + max(0, -b) + (o - 1) * s + 1, s)
                       for t, o, s, d, (b, a) in zip(tap, out, stride, dilation, pads))
            dxp[(slice(None), slice(g * Cg, (g + 1) * Cg)) + sl] += np.einsum(
                "nk...,kc->nc...", dyg, wg[(slice(None), slice(None)) + tap])
    crop = tuple(slice(max(0, b), max(0, b) + n) for n, (b, a) in zip(x_shape[2:], pads))
    return dxp[(slice(None), slice(None)) + crop]


def conv_bwd_filter_ref(dy, x, w_shape, stride, pads, dilation, groups=1):
    """dw[k, c, t] = sum_{n, o} dy[n, k, o] * xpad[n, gi*Cg + c, o*stride + t*dilation] (any rank)."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    K, Cg, *kernel = w_shape
    out = dy.shape[2:]
    xp = _padded(x, pads)
    Kg = K // groups
    dw = np.zeros(w_shape)
    for g in range(groups):
        xg = xp[:, g * Cg:(g + 1) * Cg]
        dyg = dy[:, g * Kg:(g + 1) * Kg]
        for tap in np.ndindex(*kernel):
            patch = xg[(slice(None), slice(None)) + _tap_slices(tap, out, stride, dilation)]
            axes = [0] + list(range(2, dy.ndim))
            dw[(slice(g * Kg, (g + 1) * Kg), slice(None)) + tap] = np.tensordot(dyg, patch, axes=(axes, axes))
    return dw


def conv_transpose_ref(x, w, stride, padding, output_padding, dilation, groups=1):
    """Transposed convolution by its definition, any rank: every input element scatters
    ``x[n, k, i] * w[k, c, t]`` to output position ``i*stride - padding + t*dilation`` of channel
    ``gi*Cout_g + c``; output size ``(in-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1``."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    Cin, Cout_g, *kernel = w.shape
    size = x.shape[2:]
    out = [(i - 1) * s - 2 * p + d * (k - 1) + o + 1
           for i, s, p, d, k, o in zip(size, stride, padding, dilation, kernel, output_padding)]
    # scatter into a buffer padded by `padding` on the front and the kernel span behind, then crop
    full = [o + 2 * p + d * (k - 1) + s for o, p, d, k, s in zip(out, padding, dilation, kernel, stride)]
    yp = np.zeros((x.shape[0], Cout_g * groups, *full))
    Kg = Cin // groups
    for g in range(groups):
        xg = x[:, g * Kg:(g + 1) * Kg]
        for tap in np.ndindex(*kernel):
            sl = tuple(slice(t * d, t * d + (n - 1) * s + 1, s) for t, d, n, s in zip(tap, dilation, size, stride))
            yp[(slice(None), slice(g * Cout_g, (g + 1) * Cout_g)) + sl] += np.einsum(
                "nk...,kc->nc...", xg, w[(slice(g * Kg, (g + 1) * Kg), slice(None)) + tap])
    crop = tuple(slice(p, p + o) for p, o in zip(padding, out))
    return yp[(slice(None), slice(None)) + crop]


def _pairs(pad):
    """(top, bottom, left, right) as ((top, bottom), (left, right))."""
    return ((pad[0], pad[1]), (pad[2], pad[3]))


def conv2d_fwd_ref(x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """2-D ``conv_fwd_ref`` with ``pad`` = (top, bottom, left, right)."""
    return conv_fwd_ref(x, w, stride, _pairs(pad), dilation, groups)


def conv2d_bwd_data_ref(dy, w, x_shape, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    return conv_bwd_data_ref(dy, w, x_shape, stride, _pairs(pad), dilation, groups)


def conv2d_bwd_filter_ref(dy, x, w_shape, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    return conv_bwd_filter_ref(dy, x, w_shape, stride, _pairs(pad), dilation, groups)


def tolerance(dtype):
    """(rtol, atol) for comparing a kernel's result in ``dtype`` with the float64 reference (for
    float16: of the same float16 inputs, so the error is the output's rounding, 2^-11 relative,
    plus float32 accumulation)."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return (2e-3, 2e-3)
    return (1e-4, 1e-4) if dtype == np.float32 else (1e-10, 1e-10)
