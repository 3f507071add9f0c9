"""The strided block copies behind concatenation.

Concatenating along a dimension d views each input as (outer, width_i) with
``outer = prod(shape[:d])`` and ``width_i = prod(shape_i[d:])``, and the output as
(outer, total_width); input i lands in the columns ``[offset_i, offset_i + width_i)``.

- ``concat_fwd(src, dst, offset)``: ``dst[o, offset + j] = src[o, j]`` (one input into the output).
- ``concat_bwd(src, dst, offset)``: ``dst[o, j] = src[o, offset + j]`` (the slice of the output
  gradient that belongs to one input).

float16 arrays are copied as they are (the CPU kernels move their uint16 bits, ``cpu_view``).
The CPU kernels split each row into chunks of ``CPU_CHUNK`` columns so that a concatenation
along dimension 0 (a single row) is still copied in parallel.
"""
from numba import cuda, int64, njit, prange

from .cuda_util import SIMULATOR, array2, blocks, is_device_array, per_dtype, stream
from .float16 import cpu_view

THREADS = 32 if SIMULATOR else 256               # elementwise block size
CPU_CHUNK = 1 << 14                              # columns per parallel CPU task


# one thread per element (o, j) of src
@per_dtype(lambda dt: (array2(dt), array2(dt), int64), threads=THREADS, half=True)
def concat_fwd_cuda(dt):
    @cuda.jit
    def kernel(src, dst, offset):
        i = cuda.grid(1)
        width = src.shape[1]
        if i < src.shape[0] * width:
            o = i // width
            j = i - o * width
            dst[o, offset + j] = src[o, j]
    return kernel


@njit(parallel=True, cache=True)
def concat_fwd_cpu(src, dst, offset):
    outer, width = src.shape
    chunks = (width + CPU_CHUNK - 1) // CPU_CHUNK
    for task in prange(outer * chunks):
        o = task // chunks
        j0 = (task - o * chunks) * CPU_CHUNK
        j1 = min(j0 + CPU_CHUNK, width)
        s = src[o, j0:j1]
        d = dst[o, offset + j0:offset + j1]
        for j in range(s.shape[0]):
            d[j] = s[j]


# one thread per element (o, j) of dst
@per_dtype(lambda dt: (array2(dt), array2(dt), int64), threads=THREADS, half=True)
def concat_bwd_cuda(dt):
    @cuda.jit
    def kernel(src, dst, offset):
        i = cuda.grid(1)
        width = dst.shape[1]
        if i < dst.shape[0] * width:
            o = i // width
            j = i - o * width
            dst[o, j] = src[o, offset + j]
    return kernel


@njit(parallel=True, cache=True)
def concat_bwd_cpu(src, dst, offset):
    outer, width = dst.shape
    chunks = (width + CPU_CHUNK - 1) // CPU_CHUNK
    for task in prange(outer * chunks):
        o = task // chunks
        j0 = (task - o * chunks) * CPU_CHUNK
        j1 = min(j0 + CPU_CHUNK, width)
        s = src[o, offset + j0:offset + j1]
        d = dst[o, j0:j1]
        for j in range(d.shape[0]):
            d[j] = s[j]


def _check(name, part, whole, offset):
    """``part`` (outer, width) and ``whole`` (outer, total) with ``offset + width <= total``;
    returns whether they are CUDA device arrays."""
    if len(part.shape) != 2 or len(whole.shape) != 2:
        raise ValueError(f"{name}: expected 2-D (outer, width) arrays, got {part.shape} and {whole.shape}")
    if part.dtype not in concat_fwd_cuda:
        raise TypeError(f"{name}: arrays must be float16, float32 or float64, got {part.dtype}")
    on_device = is_device_array(part)
    if whole.dtype != part.dtype or is_device_array(whole) != on_device:
        raise TypeError(f"{name}: both arrays must have dtype {part.dtype} and be "
                        f"{'CUDA device' if on_device else 'NumPy'} arrays")
    if not on_device and not (part.flags.c_contiguous and whole.flags.c_contiguous):
        raise ValueError(f"{name}: arrays must be C-contiguous")
    if part.shape[0] != whole.shape[0] or not 0 <= offset <= whole.shape[1] - part.shape[1]:
        raise ValueError(f"{name}: a block of shape {part.shape} at column offset {offset} does not fit "
                         f"in an array of shape {whole.shape}")
    return on_device


def concat_fwd(src, dst, offset):
    """``dst[:, offset:offset + src.shape[1]] = src`` for 2-D ``src`` (outer, width), ``dst`` (outer, total)."""
    on_device = _check("concat_fwd", src, dst, offset)
    if src.size == 0:
        return
    if on_device:
        concat_fwd_cuda[src.dtype][blocks(src.size, THREADS), THREADS, stream()](src, dst, offset)
    else:
        concat_fwd_cpu(cpu_view(src), cpu_view(dst), offset)


def concat_bwd(src, dst, offset):
    """``dst = src[:, offset:offset + dst.shape[1]]`` for 2-D ``src`` (outer, total), ``dst`` (outer, width)."""
    on_device = _check("concat_bwd", dst, src, offset)
    if dst.size == 0:
        return
    if on_device:
        concat_bwd_cuda[dst.dtype][blocks(dst.size, THREADS), THREADS, stream()](src, dst, offset)
    else:
        concat_bwd_cpu(cpu_view(src), cpu_view(dst), offset)
