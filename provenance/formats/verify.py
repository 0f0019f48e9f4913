"""Read what the analyses read, a little of everything: the gate ``check`` runs and the fuzz
harnesses run, so a file that opens but fails later is caught at the gate.

Opening validates every header; what remains is what is computed or read later: the
architecture record, the tokenizer (the files beside an HF model are read only when asked
for), and each tensor's decoding path (the codec its storage type needs, the HF q/k row
order, a block read of the sampling path). All of it depends on the tables, not on the
values, so the first and last rows of each tensor and one sampled element are enough:
a few small reads per tensor, whatever the model's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import numpy as np

from provenance.formats.base import Checkpoint
from provenance.formats.vocabulary import checkpoint_vocabulary


@dataclass(frozen=True)
class ReadCheck:
    """What :func:`verify_readable` read."""

    tensors: int
    rows: int
    vocabulary: int | None
    """Tokens in the checkpoint's tokenizer, None when it has none."""


def verify_readable(checkpoint: Checkpoint, max_tensors: int | None = None) -> ReadCheck:
    """Read the architecture, the vocabulary, and for each tensor (the first ``max_tensors``)
    its first and last canonical rows, their stored bytes and its last element through the
    sampling path. Any problem raises the reader's :class:`~provenance.errors.CheckpointError`."""
    from provenance.formats.packed_read import PackedRowReader  # torch: only once rows are read

    checkpoint.architecture  # noqa: B018 (computed on access by some readers)
    vocabulary = checkpoint_vocabulary(checkpoint)
    rows = tensors = 0
    for name in islice(checkpoint.tensors, max_tensors):
        info = checkpoint.tensors[name]
        tensors += 1
        if info.n_rows == 0 or info.row_length == 0:
            continue
        with checkpoint.row_reader(name, 1) as reader:
            for row in sorted({0, info.n_rows - 1}):
                reader.read(row, row + 1)
                if isinstance(reader, PackedRowReader):  # no stored rows: its codes and grid (quantcheck's read)
                    reader.grid(row, row + 1)
                else:
                    reader.raw(row, row + 1)
                rows += 1
        checkpoint.read_elements(name, np.array([info.n_elements - 1]))
    return ReadCheck(tensors=tensors, rows=rows, vocabulary=len(vocabulary) if vocabulary is not None else None)
