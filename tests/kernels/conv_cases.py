"""The one conv test harness: the configuration grid every registered algorithm walks, the
operands, the float64 reference per pass, and ``run_pass`` that runs a launcher on a NaN-filled
output (so a launcher that leaves elements unwritten fails).

Cases are small enough for the CUDA simulator. The 2-D grid covers stride 1-3, symmetric,
asymmetric ("same") and zero padding, dilation 1-2, groups 1/2/depthwise, odd and even sizes,
kernels 1x1 to 5x5 and non-square, batch 1 and > 1, and the 3x3 stride-1 and stride-1 shapes
that Winograd and FFT take. The 3-D grid does the same on volumes.
"""
from typing import NamedTuple, Tuple

import numpy as np
from numba import cuda

from convkern.kernels.shapes import ConvGeometry
from tests.reference import conv_bwd_data_ref, conv_bwd_filter_ref, conv_fwd_ref, tolerance

DTYPES = [np.float32, np.float64]
PASSES = ["fwd", "bwd_data", "bwd_filter"]


class Case(NamedTuple):
    N: int
    C: int
    size: Tuple[int, ...]
    K: int
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    pads: Tuple[Tuple[int, int], ...]     # (before, after) per spatial axis
    dilation: Tuple[int, ...]
    groups: int


def case2d(N, C, H, W, K, R, S, stride, pad, dil, groups):
    """A 2-D case from the flat form (..., stride (h, w), pad (top, bottom, left, right), dilation, groups)."""
    return Case(N, C, (H, W), K, (R, S), tuple(stride), ((pad[0], pad[1]), (pad[2], pad[3])), tuple(dil), groups)


CASES = [case2d(*c) for c in [
    # N  C  H  W  K  R  S  stride   pad           dil     groups
    (2, 3, 7, 7, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 2, 6, 8, 3, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 4, 9, 8, 4, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 2),
    (1, 3, 8, 7, 2, 2, 3, (3, 2), (0, 1, 1, 1), (1, 1), 1),    # "same"-style asymmetric
    (2, 4, 8, 8, 4, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 4),    # depthwise, dilated
    (1, 4, 7, 9, 6, 3, 2, (2, 1), (1, 1, 0, 0), (2, 1), 2),
    (3, 1, 5, 5, 2, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1),    # kernel = input
    (1, 2, 10, 6, 2, 4, 1, (3, 3), (3, 2, 0, 0), (1, 1), 1),
    (1, 4, 9, 11, 6, 3, 3, (1, 1), (0, 1, 2, 1), (1, 1), 2),   # 3x3 stride 1: uneven and > 1 padding, groups
    (2, 3, 6, 5, 2, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),    # 3x3 stride 1, no padding, odd output
    (1, 2, 9, 7, 3, 4, 2, (1, 1), (2, 1, 0, 1), (1, 1), 1),    # stride 1, even kernel, uneven padding
]]

CASES_3D = [
    Case(2, 2, (5, 6, 4), 3, (3, 3, 2), (1, 1, 1), ((1, 1), (1, 1), (0, 1)), (1, 1, 1), 1),
    Case(1, 4, (7, 5, 6), 4, (2, 3, 3), (2, 1, 2), ((0, 1), (1, 1), (1, 1)), (1, 2, 1), 2),
    Case(1, 3, (4, 6, 5), 3, (3, 1, 3), (1, 2, 1), ((2, 2), (0, 0), (1, 0)), (2, 1, 1), 3),   # depthwise
]


def case_id(case):
    def t(v):
        return "x".join(map(str, v))
    pads = "_".join(f"{b}{a}" for b, a in case.pads)
    return (f"n{case.N}c{case.C}in{t(case.size)}k{case.K}f{t(case.kernel)}s{t(case.stride)}p{pads}"
            f"d{t(case.dilation)}g{case.groups}")


def geometry(case):
    return ConvGeometry.make(case.N, case.C, case.K, case.size, case.kernel, case.stride,
                             [b for b, _ in case.pads], [a for _, a in case.pads], case.dilation, case.groups)


def random_operands(case, dtype, seed=0):
    """x, w, dy for a case, as contiguous arrays of ``dtype``."""
    g = geometry(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g.x_shape).astype(dtype)
    w = rng.standard_normal(g.w_shape).astype(dtype)
    dy = rng.standard_normal(g.y_shape).astype(dtype)
    return x, w, dy


def reference(pass_, case, x, w, dy):
    """The float64 result of ``pass_`` (tests/reference.py)."""
    kw = dict(stride=case.stride, pads=case.pads, dilation=case.dilation, groups=case.groups)
    if pass_ == "fwd":
        return conv_fwd_ref(x, w, **kw)
    if pass_ == "bwd_data":
        return conv_bwd_data_ref(dy, w, x.shape, **kw)
    return conv_bwd_filter_ref(dy, x, w.shape, **kw)


def to_device(device, *arrays):
    return arrays if device == "cpu" else tuple(cuda.to_device(a) for a in arrays)


def to_host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def run_pass(launch, pass_, case, dtype, device, seed=0):
    """Run ``launch(a, b, out, g)`` for ``pass_`` on a NaN-filled output on ``device``; return
    (result on the host, float64 reference)."""
    g = geometry(case)
    x, w, dy = random_operands(case, dtype, seed)
    a, b = {"fwd": (x, w), "bwd_data": (dy, w), "bwd_filter": (dy, x)}[pass_]
    out_shape = g.operand_shapes(pass_)[2]
    a, b, out = to_device(device, a, b, np.full(out_shape, np.nan, dtype))
    launch(a, b, out, g)
    return to_host(out), reference(pass_, case, x, w, dy)


def assert_pass_matches(launch, pass_, case, dtype, device, tol=None):
    out, ref = run_pass(launch, pass_, case, dtype, device)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ref, *(tol or tolerance(dtype)), err_msg=f"{pass_} {case_id(case)}")


def tiny_cpu_tiles(monkeypatch, turned=None):
    """Shrink the CPU implicit GEMM's tiling (both ranks share it): one column micro-panel (or
    micro-tile) per work item, tap blocks of one micro-panel, reduction chunks of MR steps
    (several per item), the backward-filter reduction split into slices, and, with ``turned``,
    every product turned round ("nb": ``*_rows_cpu`` kernels with NB-wide panels, "vector": with
    one-vector panels, rows in blocks of one panel each) or none (False)."""
    from convkern.kernels import conv_implicit_gemm as G
    monkeypatch.setattr(G, "CPU_PANEL_BYTES", 1)
    monkeypatch.setattr(G, "CPU_TURNED_PANEL_BYTES", 1)
    monkeypatch.setattr(G, "CPU_TILE_PANELS", 1)
    monkeypatch.setattr(G, "CPU_FILTER_PANELS", 1)
    monkeypatch.setattr(G, "CPU_PIXEL_MICRO_TILES", 1)
    monkeypatch.setattr(G, "CPU_TAP_MICRO_TILES", 1)
    monkeypatch.setattr(G, "CPU_MIN_ITEMS", 1000)
    width = {False: lambda dtype: 0, "nb": G.gather_panel_width, "vector": G.lanes}
    if turned is not None:
        monkeypatch.setattr(G, "_turned_round", lambda rows, length, dtype: width[turned](dtype))
    if turned:
        plan = G._pixel_rows_plan

        def one_panel_blocks(rows, cols, groups, nb):
            tile, _, _ = plan(rows, cols, groups, nb)
            return tile, nb, groups * -(-cols // tile) * -(-rows // nb)
        monkeypatch.setattr(G, "_pixel_rows_plan", one_panel_blocks)
