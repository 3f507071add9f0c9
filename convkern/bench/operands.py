"""The conv layer of a suite row: its geometry, its operands on a device and the float64 reference."""
import numpy as np

from convkern import backend, reference
from convkern.ops.conv import conv_geometry


def _geometry(layer):
    x_shape = (layer["N"], layer["C"], layer["H"], layer["W"])
    w_shape = (layer["K"], layer["C"] // layer["groups"], layer["R"], layer["S"])
    return conv_geometry(x_shape, w_shape, tuple(layer["stride"]), tuple(layer["pad"]),
                         tuple(layer["dilation"]), layer["groups"], op="bench")


def _relative_error(result, ref):
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(result.astype(np.float64) - ref))) / scale


class _Operands:
    """Inputs of one layer on one device, and the float64 reference per pass (made lazily)."""

    def __init__(self, g, dtype, device, seed=0):
        rng = np.random.default_rng(seed)
        self.g, self.dtype, self.device = g, np.dtype(dtype), device
        self.host = dict(x=rng.standard_normal((g.N, g.C, g.H, g.W)).astype(dtype),
                         w=rng.standard_normal((g.K, g.C // g.groups, g.R, g.S)).astype(dtype),
                         dy=rng.standard_normal((g.N, g.K, g.P, g.Q)).astype(dtype))
        self.dev = {k: backend.to_device(v, device) for k, v in self.host.items()}
        self._refs = {}

    def out_shape(self, pass_):
        g = self.g
        return {"fwd": (g.N, g.K, g.P, g.Q), "bwd_data": (g.N, g.C, g.H, g.W),
                "bwd_filter": (g.K, g.C // g.groups, g.R, g.S)}[pass_]

    def args(self, pass_):
        d = self.dev
        return {"fwd": (d["x"], d["w"]), "bwd_data": (d["dy"], d["w"]), "bwd_filter": (d["dy"], d["x"])}[pass_]

    def ref(self, pass_):
        if pass_ not in self._refs:
            h, g = self.host, self.g
            self._refs[pass_] = {"fwd": lambda: reference.conv_fwd(h["x"], h["w"], g),
                                 "bwd_data": lambda: reference.conv_bwd_data(h["dy"], h["w"], g),
                                 "bwd_filter": lambda: reference.conv_bwd_filter(h["dy"], h["x"], g)}[pass_]()
        return self._refs[pass_]
