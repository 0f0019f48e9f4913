"""Read the fingerprint's sampled values from a checkpoint, touching only the blocks needed.

For each span only the stored blocks under it are read and decoded by the reader
(:meth:`provenance.formats.base.Checkpoint.read_blocks`, one ``pread`` each), so a
Q4_K candidate dequantizes a few 144-byte super-blocks per tensor, not whole rows. Every
read goes through a :class:`ReadMeter`, which is how ``identify`` reports (and the tests
bound) the share of the candidate it touched.

Two layouts are understood:

* ``as-is``: the candidate stores the tensor in the reference's canonical layout;
* ``transposed``: the candidate's element stream is the reference matrix transposed
  (a re-layout such as ``stories260K.transpose.bin``, whose header still claims the
  untransposed shape, or a converter that stored ``W.T``): reference ``(r, c)`` of an
  ``R x C`` matrix is element ``c * R + r`` of the candidate's canonical element order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from provenance.formats.base import Checkpoint, TensorInfo
from provenance.refdb.positions import Spans

PAGE = 4096
TRANSPOSED_VALUES_PER_SPAN = 32
"""Under the transposed layout every sampled value sits in a different stored row, so each
costs one block read; a span contributes only its first values to keep reads bounded."""


@dataclass
class ReadMeter:
    """Bytes and reads a fingerprint pass asked of a checkpoint."""

    bytes_read: int = 0
    reads: int = 0
    pages: set[tuple[str, int]] = field(default_factory=set)

    def add(self, path: str, offset: int, n_bytes: int) -> None:
        self.bytes_read += n_bytes
        self.reads += 1
        for page in range(offset // PAGE, (offset + max(n_bytes, 1) - 1) // PAGE + 1):
            self.pages.add((path, page))

    @property
    def page_bytes(self) -> int:
        """Bytes of the distinct 4 KiB pages touched: what a cold disk would really read."""
        return len(self.pages) * PAGE


def read_blocks(ckpt: Checkpoint, info: TensorInfo, rows: np.ndarray, first_block: np.ndarray,
                n_blocks: int, meter: ReadMeter) -> np.ndarray:
    """Decode ``n_blocks`` blocks starting at ``first_block`` of each canonical row: ``(len(rows), n_blocks * block_size)``."""
    return ckpt.read_blocks(info.name, rows, first_block, n_blocks, observe=meter.add)


def read_spans(ckpt: Checkpoint, info: TensorInfo, spans: Spans, meter: ReadMeter) -> np.ndarray:
    """Values at ``spans`` in the candidate's own layout: ``(n_spans, length)`` float32."""
    bs = info.block_size
    first = spans.starts // bs
    last = (spans.starts + spans.length + bs - 1) // bs  # exclusive
    widths = last - first
    out = np.empty((len(spans.rows), spans.length), np.float32)
    for width in np.unique(widths).tolist():
        sel = np.flatnonzero(widths == width)
        values = read_blocks(ckpt, info, spans.rows[sel], first[sel], int(width), meter)
        offsets = spans.starts[sel] - first[sel] * bs
        for j, i in enumerate(sel.tolist()):
            out[i] = values[j, offsets[j] : offsets[j] + spans.length]
    return out


def transposed_positions(spans: Spans, ref_shape: tuple[int, ...], per_span: int = TRANSPOSED_VALUES_PER_SPAN) -> tuple[np.ndarray, int]:
    """Flat element indices, in a transposed-layout candidate, of the first ``per_span`` values of each span."""
    n_rows = int(np.prod(ref_shape[:-1]))
    take = min(per_span, spans.length)
    cols = spans.starts[:, None] + np.arange(take)[None, :]
    return (cols * n_rows + spans.rows[:, None]).reshape(-1), take


def read_flat(ckpt: Checkpoint, info: TensorInfo, flat: np.ndarray, meter: ReadMeter) -> np.ndarray:
    """Values at flat canonical element indices, one block read per distinct block."""
    return ckpt.read_elements(info.name, flat, observe=meter.add)
