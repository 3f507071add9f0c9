"""Argument checking shared by the public ops: every message names the argument and what
was expected."""
import numbers

import numpy as np

from convkern import backend
from convkern.autograd import Tensor, tensor


def as_tensor(value, name, op):
    """Accept a Tensor, a NumPy array or a CUDA device array; anything else is a TypeError."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) or backend.device_of(value) == "cuda" or backend.has_cuda_array_interface(value):
        try:
            return tensor(value)
        except (TypeError, ValueError) as e:  # unsupported dtype, non-contiguous CUDA array: name the argument
            raise type(e)(f"{op}: {name}: {str(e).removeprefix('data: ')}") from None
    raise TypeError(f"{op}: {name} must be a convkern Tensor, a NumPy array or a CUDA array (Numba device array "
                    f"or an object with __cuda_array_interface__), got {type(value).__name__}")


HALF_OPS = ("conv1d, conv2d and their transposes (algorithm direct or implicit_gemm_tc), linear, the "
            "arithmetic ops (+ - * / **, sum, mean), relu, tanh, sigmoid, dropout, flatten, cat, bias_add, "
            "every pooling op, batch_norm, softmax, log_softmax and cross_entropy")


def check_float(t, name, op, half=False):
    """float32 or float64; also float16 where the op takes it (``half=True``)."""
    if half and t.dtype == backend.HALF:
        return
    if t.dtype == backend.HALF:
        raise TypeError(f"{op}: {name} is float16, which {op} does not take; the ops that take float16 are "
                        f"{HALF_OPS}. Convert with .float() first")
    if t.dtype not in backend.FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be {'float16, ' if half else ''}float32 or float64, got {t.dtype}")


def check_same(t, ref, name, ref_name, op):
    """Same dtype and device as ``ref``."""
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on device {t.device!r} but {ref_name} is on {ref.device!r}; "
                         f"move it with .to({ref.device!r})")
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_rank(t, rank, name, layout, op):
    if t.ndim != rank:
        raise ValueError(f"{op}: {name} must be {rank}-D {layout}, got shape {t.shape}")


def int_tuple(value, rank, name, op, minimum):
    """An int or a tuple/list of ``rank`` ints, each >= minimum, as a tuple of ``rank`` ints."""
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if is_int(value):
        values = (int(value),) * rank
    elif isinstance(value, (tuple, list)) and len(value) == rank and all(is_int(v) for v in value):
        values = tuple(int(v) for v in value)
    else:
        what = {1: "an int or a tuple of 1 int", 2: "an int or a pair of ints"}.get(rank, f"an int or a tuple of {rank} ints")
        raise TypeError(f"{op}: {name} must be {what}, got {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return values


def int_pair(value, name, op, minimum):
    """An int or a pair of ints, each >= minimum, as a pair."""
    return int_tuple(value, 2, name, op, minimum)
