"""Read the fingerprint's sampled values from a checkpoint, touching only the blocks needed.

For each span only the stored blocks under it are read (one ``pread``) and decoded, so a
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
from provenance.names.qk_permute import llama_qk_row_order
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


def _stored_rows(info: TensorInfo, rows: np.ndarray) -> np.ndarray:
    # HF q/k rows are stored in rotate-half order; canonical row r lives at stored row order[r].
    if info.qk_heads is None:
        return rows
    return llama_qk_row_order(info.n_rows, info.qk_heads)[rows]


def _decode(ckpt: Checkpoint, info: TensorInfo, raw: np.ndarray) -> np.ndarray:
    """``(n, k blocks' bytes)`` -> ``(n, k * block_size)`` float32 with the reader's own decoder."""
    return ckpt.decode_blocks(info.name, raw)


def read_blocks(ckpt: Checkpoint, info: TensorInfo, rows: np.ndarray, first_block: np.ndarray,
                n_blocks: int, meter: ReadMeter) -> np.ndarray:
    """Decode ``n_blocks`` blocks starting at ``first_block`` of each canonical row: ``(len(rows), n_blocks * block_size)``."""
    stored = _stored_rows(info, rows)
    n_bytes = n_blocks * info.block_bytes
    raw = np.empty((len(rows), n_bytes), np.uint8)
    for i, (row, block) in enumerate(zip(stored.tolist(), first_block.tolist(), strict=True)):
        offset = info.offset + row * info.row_bytes + block * info.block_bytes
        raw[i] = ckpt.raw_blocks(info.name, row, block, n_blocks)
        meter.add(info.file, offset, n_bytes)
    return _decode(ckpt, info, raw)


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
    rows, cols = np.divmod(flat.astype(np.int64), info.row_length)
    blocks = cols // info.block_size
    keys = rows * (info.row_length // info.block_size + 1) + blocks
    unique, inverse = np.unique(keys, return_inverse=True)
    first_index = np.zeros(len(unique), np.int64)
    first_index[inverse[::-1]] = np.arange(len(keys))[::-1]
    values = read_blocks(ckpt, info, rows[first_index], blocks[first_index], 1, meter)
    return values[inverse, cols % info.block_size]
