"""convkern's global random state: ``manual_seed(s)`` makes parameter initialisation, dropout
masks and data shuffling reproducible on both devices."""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Seed the global generator (a NumPy ``Generator``); returns it."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator():
    """The global NumPy ``Generator`` (reseeded by ``manual_seed``)."""
    return _generator


def next_seed():
    """A fresh 63-bit seed from the global generator, for kernels with their own counter-based RNG."""
    return int(_generator.integers(0, 2**63 - 1))
