"""Kernel plumbing (kernels/cuda_util.py): wave-filling split counts against hand-computed cases,
resident-block counts, per_dtype's block-size check, the device constants and the block sum, on the
CUDA path."""
import numpy as np
import pytest
from numba import cuda

from convkern.kernels import cuda_util
from convkern.kernels.cuda_util import SIMULATOR, block_sum, stream, wave_splits

# wave_splits(tiles, max_splits, slots): s pieces cost ceil(tiles*s / slots) / s block-times; the
# answer is the smallest s in [1, min(max_splits, slots)] within 2 % of the cheapest.
WAVE_CASES = [
    # ResNet's 64->64 backward-filter: 270 tiles on 264 slots (132 SMs x 2). s=1: ceil(270/264) = 2 waves
    # for 1 tile-time each -> 2.0 (the 6-block second wave doubles the time). Any s < 264 needs at least
    # s+1 waves (270s/264 > s), so cost >= 1 + 1/s; the floor is 270/264 = 1.0227 (s=44: 11880/264 = 45
    # waves / 44); within 2 % means cost <= 1.0432, i.e. 1 + 1/s <= 1.0432 -> s >= 24, and s=24 has
    # ceil(6480/264) = 25 waves -> 25/24 = 1.0417.
    ((270, 1000, 264), 24),
    # the same capped at 4 pieces: s=1 2.0, s=2 ceil(540/264)=3 -> 1.5, s=3 4/3 = 1.333, s=4 5/4 = 1.25
    ((270, 4, 264), 4),
    # capped at 8: s=7 ceil(1890/264)=8 -> 1.1429, s=8 ceil(2160/264)=9 -> 1.125; 1.1429 <= 1.125 x 1.02
    # = 1.1475, so the smaller s=7 wins
    ((270, 8, 264), 7),
    # batch-norm's 64 channels on a 132-SM GPU, one block per SM, up to 4 pieces: s=1 1 wave -> 1.0,
    # s=2 ceil(128/132)=1 -> 0.5, s=3 ceil(192/132)=2 -> 0.667, s=4 ceil(256/132)=2 -> 0.5 -> s=2
    ((64, 4, 132), 2),
    # up to 100 pieces: s=33 fills 64 x 33 = 2112 = 16 x 132 blocks exactly, 16/33 = 0.4848; every
    # s < 33 leaves at least 1/33 of a wave empty, which costs more than the 2 % tolerance
    ((64, 100, 132), 33),
    # a single tile (one output tile, a long reduction) on 132 slots: cost 1/s, so the most pieces
    # allowed; with 1000 allowed, s is at most 132 and 1/s <= 1.02/132 -> s >= 130
    ((1, 8, 132), 8),
    ((1, 1000, 132), 130),
    # already whole waves: 264 tiles on 264 slots, or 132 on 132 SMs: every s costs the same, s=1
    ((264, 8, 264), 1),
    ((132, 16, 132), 1),
    # no split allowed
    ((270, 1, 264), 1),
    # a 4-SM device (the simulator's): 6 tiles, s=1 ceil(6/4)=2 -> 2.0, s=2 3 waves / 2 = 1.5,
    # s=3 ceil(18/4)=5 -> 1.667, s=4 6/4 = 1.5, s=5 ceil(30/4)=8 -> 1.6 -> s=2
    ((6, 5, 4), 2),
]


@pytest.mark.parametrize("args, expected", WAVE_CASES, ids=[f"{t}tiles-max{m}-{s}slots" for (t, m, s), _ in WAVE_CASES])
def test_wave_splits_against_hand_computed_cases(args, expected):
    assert wave_splits(*args) == expected


@pytest.mark.parametrize("slots", [4, 108, 132, 264, 528])
def test_wave_splits_never_costs_more_than_not_splitting(slots):
    for tiles in (1, 5, 63, 64, 100, 270, 1000):
        s = wave_splits(tiles, 64, slots)
        assert 1 <= s <= min(64, slots)
        assert -(-tiles * s // slots) / s <= -(-tiles // slots)


def test_wave_splits_clamps_degenerate_sizes():
    assert wave_splits(0, 0, 0) == 1


def test_sm_count_and_resident_blocks():
    from convkern.kernels import batchnorm
    kernel = batchnorm.batchnorm_partials_cuda[np.dtype(np.float32)]
    slots = cuda_util.resident_blocks(kernel, batchnorm.REDUCE_THREADS)
    if SIMULATOR:
        assert cuda_util.sm_count() == cuda_util.SIM_SM_COUNT and slots == cuda_util.SIM_SM_COUNT
    else:
        assert cuda_util.sm_count() >= 1 and slots >= cuda_util.sm_count()


def test_per_dtype_refuses_an_impossible_block_size():
    before = len(cuda_util.REGISTRY)
    with pytest.raises(ValueError, match=r"threads must be a block size in \[1, 1024\], got 2048"):
        cuda_util.per_dtype(lambda dt: (), threads=2048)
    assert len(cuda_util.REGISTRY) == before


def test_device_constant_uploads_once():
    calls = []

    def make():
        calls.append(1)
        return np.arange(5, dtype=np.int32)
    a = cuda_util.device_constant(("test_cuda_util", 5), make)
    b = cuda_util.device_constant(("test_cuda_util", 5), make)
    assert a is b and len(calls) == 1
    np.testing.assert_array_equal(a.copy_to_host(stream=stream()), np.arange(5))


THREADS = 8 if SIMULATOR else 64


def make_block_sum_kernel(dt):
    # one block per output: out[b] = the sum of x over block b's threads (zero past the end).
    # A plain cuda.jit, not per_dtype: REGISTRY must list only the package's kernels.
    @cuda.jit
    def kernel(x, out):
        buf = cuda.shared.array(THREADS, dt)
        i = cuda.grid(1)
        value = x[i] if i < x.size else dt(0)
        total = block_sum(buf, value)
        if cuda.threadIdx.x == 0:
            out[cuda.blockIdx.x] = total
    return kernel


@pytest.mark.parametrize("dtype, nb_dtype", cuda_util.FLOAT_TYPES, ids=["float32", "float64"])
def test_block_sum(dtype, nb_dtype):
    x = np.arange(3 * THREADS - 2, dtype=dtype)
    xd = cuda.to_device(x, stream=stream())
    out = cuda.device_array(3, dtype, stream=stream())
    make_block_sum_kernel(nb_dtype)[3, THREADS, stream()](xd, out)
    want = [x[b * THREADS:(b + 1) * THREADS].sum() for b in range(3)]
    np.testing.assert_array_equal(out.copy_to_host(stream=stream()), np.array(want, dtype))
