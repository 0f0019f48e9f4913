"""The blocks a detection pass scores, in a seeded random order.

A block is a run of whole rows of one tensor holding about :data:`BLOCK_ELEMS` weights. The
order is a permutation drawn from the seed alone (never from the data or any key), so the
sequential test (:mod:`.sequential`) sees, after any number of blocks, an unbiased sample
of the whole model: a mark is found after a small fraction of the model wherever it is, and
an adversary cannot know which part is read first unless he knows the seed (the default is
public: a leaker who damaged exactly the first blocks would only delay the decision).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from provenance.formats.base import TensorInfo

#: weights per block: 16 MB of float32 per model and signal, a few ms of work per key
BLOCK_ELEMS = 1 << 22


@dataclass(frozen=True)
class Block:
    tensor: str
    start: int
    stop: int
    part: int
    """Position of the block in its tensor (names the block's decoy stream)."""

    def n_elements(self, info: TensorInfo) -> int:
        return (self.stop - self.start) * info.row_length


def tensor_blocks(info: TensorInfo, block_elems: int = BLOCK_ELEMS) -> list[Block]:
    rows = max(1, block_elems // max(1, info.row_length))
    return [Block(info.name, a, min(info.n_rows, a + rows), k) for k, a in enumerate(range(0, info.n_rows, rows))]


def row_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``parts`` nonempty consecutive ranges (work for threads)."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def block_order(infos: Iterable[TensorInfo], seed: int, block_elems: int = BLOCK_ELEMS) -> list[Block]:
    """Every block of ``infos``, in the random order of ``seed``."""
    blocks = [b for info in infos for b in tensor_blocks(info, block_elems)]
    order = np.random.default_rng([seed, 0x5EC]).permutation(len(blocks))
    return [blocks[i] for i in order]
