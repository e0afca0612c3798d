"""Every seed robgen derives from a user's --seed: one owner, so each random stream's identity is written once.

The values are part of what users have: runs in flight resume with epoch seeds, shipped samples were drawn with
chunk seeds and shipped start fits chose their images with class seeds. So the three formulas stay exactly as they
were recorded (tests/test_guard.py holds their bytes); a new stream should use `derive`.
"""
from __future__ import annotations

import numpy as np


def derive(seed: int, *stream: int, bits: int = 32) -> int:
    """A seed for the stream named by `stream` (epoch, rank, chunk...) of a run seeded `seed`: NumPy's SeedSequence
    hashes them, so streams are independent and the same on every machine. bits=63 fits torch's manual_seed range
    with 2**31 times more values than 32."""
    state = np.random.SeedSequence([seed, *stream])
    if bits == 32:
        return int(state.generate_state(1)[0])
    if bits == 63:
        return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)
    raise ValueError(f"bits must be 32 or 63, got {bits}")


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of every generator of one training epoch on one rank."""
    return derive(seed, epoch, rank)


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of sample chunk `chunk`, whichever process makes it."""
    return derive(seed, chunk, bits=63)


def class_seed(seed: int, y: int) -> int:
    """The seed that picks class y's images for a start fit. Not `derive`: shipped fits were made with this formula
    (its streams collide across seeds when a dataset has over 1,000 classes; none that robgen reads does)."""
    return seed * 1000 + y
