"""The reference carried into a quantized candidate's frame, streamed in chunks of rows.

A candidate's stored codes are cells in *its* frame; a map of the reference into that frame
(permutations, scales: :class:`provenance.quant.rescale.ReferenceFrame`) is applied to chunks
of reference rows gathered through the row permutation, and free row/column scales are fitted
to the candidate's cells in passes over the chunks (:func:`provenance.quant.rescale.refine_factors_streamed`,
bit-identical to the whole-matrix fit). Memory: one chunk of each side and per-row and
per-column vectors, never a whole float64 tensor (a 70B MLP matrix holds 235 M weights).
Used by ``quantcheck --realign`` and by ``compare``'s grid check in the candidate's frame
(docs/lineage.md, "Grid consistency after alignment").
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from provenance.formats.base import Checkpoint
from provenance.quant.rescale import (
    CellChunk,
    ReferenceFrame,
    reference_rows,
    refine_factors_streamed,
    row_inverse,
    widened_cells,
)

#: weights per chunk of rows (~8 MB per float64 array of a chunk)
CHUNK_ELEMS = 1 << 20

CellRows = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""The candidate's rows ``[start, stop)``: lower and upper cell bounds and stored values
(float64, ``(rows, row_length)``)."""
SourceMap = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(rows, index)``: float32 reference rows, and each one's row number in the reference tensor,
as a change upstream left them: a quantization chain (row by row: the index does not matter),
a traced client's watermark (keyed by row number: it does). Any subset of rows, in any order,
maps as the same rows of the whole tensor would."""
Factors = tuple[np.ndarray, np.ndarray]


def rows_per_chunk(row_length: int, chunk_elems: int = CHUNK_ELEMS) -> int:
    """Rows of a chunk of about ``chunk_elems`` weights (at least one)."""
    return max(1, chunk_elems // max(1, row_length))


class FrameRows:
    """Candidate-frame rows of the reference ``name``: gathered through ``frame``'s row
    permutation, mapped by ``source`` (if any) and the frame, its free scales fitted to the
    cells ``cells`` gives, widened by ``tolerance_steps`` (unless ``factors`` were fitted
    before). ``n_rows``: the candidate rows in play (a probe may stop early)."""

    def __init__(self, ref: Checkpoint, name: str, frame: ReferenceFrame, cells: CellRows, n_rows: int, step: int,
                 tolerance_steps: float, source: SourceMap | None = None, factors: Factors | None = None) -> None:
        self.frame, self.cells, self.n_rows, self.step = frame, cells, n_rows, step
        self.tolerance_steps, self.source = tolerance_steps, source
        self.inverse = row_inverse(frame)
        self.reader = ref.row_reader(name, step)
        self.factors = factors
        if factors is None and (frame.row_scale is not None or frame.col_scale is not None):
            self.factors = refine_factors_streamed(self._chunks, n_rows, ref.info(name).row_length,
                                                   frame.row_scale is not None, frame.col_scale is not None)

    def __enter__(self) -> FrameRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unscaled(self, start: int, stop: int) -> np.ndarray:
        index = reference_rows(self.frame, start, stop, self.inverse)
        rows = self.reader.gather(index).numpy()
        if self.source is not None:
            rows = self.source(rows, index)
        return self.frame.unapply_rows(rows.astype(np.float64), index)

    def _chunks(self) -> Iterator[CellChunk]:
        for start in range(0, self.n_rows, self.step):
            stop = min(self.n_rows, start + self.step)
            lo, hi, stored = self.cells(start, stop)
            low, high = widened_cells(lo, hi, self.tolerance_steps)
            yield self._unscaled(start, stop), stored, low, high

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Candidate-frame rows ``[start, stop)`` of the reference, float64, fitted factors applied."""
        x = self._unscaled(start, stop)
        if self.factors is not None:
            r, c = self.factors
            x = x * r[start:stop, None] * c[None, :]
        return x

    def close(self) -> None:
        self.reader.close()
