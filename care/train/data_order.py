"""Deterministic data order: which prompts go into RL iteration i (or SFT step i).

The order is a pure function of (seed, sample ids, batch size, index): each epoch is a permutation of the sorted
sample ids drawn from ``numpy.random.default_rng([seed, epoch])``; batches are consecutive slices, running over
epoch boundaries. A resumed or re-run stage therefore sees exactly the batch the uninterrupted run saw, with no
iterator state to restore; the checkpoint records the cursor (epoch, offset) only for inspection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Cursor:
    epoch: int
    offset: int

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}


@lru_cache(maxsize=8)
def _epoch_order(ids: tuple[str, ...], seed: int, epoch: int) -> tuple[str, ...]:
    perm = np.random.default_rng([seed, epoch]).permutation(len(ids))
    return tuple(ids[i] for i in perm)


def batch_ids(sample_ids: Sequence[str], *, batch_size: int, index: int, seed: int) -> list[str]:
    """Sample ids of batch ``index`` (0-based).

    >>> ids = ["a", "b", "c", "d", "e"]
    >>> b0 = batch_ids(ids, batch_size=2, index=0, seed=1); b1 = batch_ids(ids, batch_size=2, index=1, seed=1)
    >>> len(set(b0 + b1)), b0 == batch_ids(list(reversed(ids)), batch_size=2, index=0, seed=1)
    (4, True)
    """
    if not sample_ids:
        raise ValueError("no samples to draw batches from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = tuple(sorted(set(sample_ids)))
    n = len(ids)
    out: list[str] = []
    pos = index * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        out.append(_epoch_order(ids, seed, epoch)[offset])
        pos += 1
    return out


def cursor_after(n_samples: int, *, batch_size: int, index: int) -> Cursor:
    """Where the data order stands after batch ``index`` has been consumed."""
    epoch, offset = divmod((index + 1) * batch_size, n_samples)
    return Cursor(epoch=epoch, offset=offset)
