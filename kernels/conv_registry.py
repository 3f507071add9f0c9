"""The convolution algorithms: the only list of them in convkern.

Everything that needs to know which algorithms exist reads ``ALGORITHMS``: ``conv_algorithms``,
``auto`` (the heuristic and the autotuner), ``convkern bench`` and the shared test grid. Adding
an algorithm is one kernel file that ends with ``ALGORITHM = ConvAlgorithm(...)`` (see
``conv_algorithm.py``) and one line here; the order is the heuristic's tie-break.
"""
from . import conv_direct, conv_fft, conv_implicit_gemm, conv_implicit_gemm_tc, conv_winograd, im2col

ALGORITHMS = (
    conv_direct.ALGORITHM,
    im2col.ALGORITHM,
    conv_implicit_gemm.ALGORITHM,
    conv_winograd.ALGORITHM,
    conv_fft.ALGORITHM,
    conv_implicit_gemm_tc.ALGORITHM,
)

BY_NAME = {a.name: a for a in ALGORITHMS}
