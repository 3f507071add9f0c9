"""The conv configuration grid every algorithm's kernel test walks.

Each case: (N, C, H, W, K, R, S, stride, pad(top, bottom, left, right), dilation, groups).
Small enough for the CUDA simulator; together they cover stride 1-3, symmetric,
asymmetric ("same") and zero padding, dilation 1-2, groups 1/2/depthwise, odd and even
sizes, kernels 1x1 to 5x5 and non-square, batch 1 and > 1.
"""
import numpy as np

from convkern.kernels.shapes import ConvGeometry
from tests.reference import conv_out

CASES = [
    # N  C  H  W  K  R  S  stride   pad           dil     groups
    (2, 3, 7, 7, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 2, 6, 8, 3, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 4, 9, 8, 4, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 2),
    (1, 3, 8, 7, 2, 2, 3, (3, 2), (0, 1, 1, 1), (1, 1), 1),    # "same"-style asymmetric
    (2, 4, 8, 8, 4, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 4),    # depthwise, dilated
    (1, 4, 7, 9, 6, 3, 2, (2, 1), (1, 1, 0, 0), (2, 1), 2),
    (3, 1, 5, 5, 2, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1),    # kernel = input
    (1, 2, 10, 6, 2, 4, 1, (3, 3), (3, 2, 0, 0), (1, 1), 1),
]


def case_id(case):
    N, C, H, W, K, R, S, st, pad, dil, g = case
    return f"n{N}c{C}h{H}w{W}k{K}r{R}s{S}st{st[0]}{st[1]}p{''.join(map(str, pad))}d{dil[0]}{dil[1]}g{g}"


def geometry(case):
    N, C, H, W, K, R, S, (sh, sw), (pt, pb, pl, pr), (dh, dw), g = case
    P = conv_out(H, R, sh, pt, pb, dh)
    Q = conv_out(W, S, sw, pl, pr, dw)
    return ConvGeometry(N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, g)


def random_operands(case, dtype, seed=0):
    """x, w, dy for a case, as contiguous arrays of ``dtype``."""
    g = geometry(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g.N, g.C, g.H, g.W)).astype(dtype)
    w = rng.standard_normal((g.K, g.C // g.groups, g.R, g.S)).astype(dtype)
    dy = rng.standard_normal((g.N, g.K, g.P, g.Q)).astype(dtype)
    return x, w, dy
