"""A per-tensor map from the candidate's frame into the reference's.

Row ``i`` of the aligned candidate is ``row_scale[i] * C[row_index[i], col_index] *
col_scale``. Alignment builds one of these for every tensor that shares a permuted or
rescaled index, so a permutation recovered from MLP features is applied to the rows of
gate and up and the columns of down alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from provenance.compare.result import IndexMove, ScaleRange, TransformSummary


@dataclass(frozen=True)
class Transform:
    row_index: np.ndarray | None = None
    row_scale: np.ndarray | None = None
    col_index: np.ndarray | None = None
    col_scale: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return all(x is None for x in (self.row_index, self.row_scale, self.col_index, self.col_scale))

    @property
    def permutes_rows(self) -> bool:
        return self.row_index is not None

    def candidate_rows(self, start: int, stop: int) -> np.ndarray:
        """Candidate rows that land in reference rows ``[start, stop)``."""
        if self.row_index is None:
            return np.arange(start, stop)
        return self.row_index[start:stop]

    def apply(self, rows: torch.Tensor, start: int) -> torch.Tensor:
        """Columns and scales for candidate rows already gathered for reference rows from ``start``."""
        out = rows
        if self.col_index is not None:
            out = out[:, torch.from_numpy(self.col_index)]
        if self.row_scale is not None:
            rs = torch.from_numpy(self.row_scale[start:start + out.shape[0]].astype(np.float32))
            out = out * rs[:, None]
        if self.col_scale is not None:
            out = out * torch.from_numpy(self.col_scale.astype(np.float32))[None, :]
        return out

    def _gathered(self, x: np.ndarray, row_factor: np.ndarray | None, col_factor: np.ndarray | None) -> np.ndarray:
        """``x`` (a whole 2-D candidate-frame array) permuted into the reference frame, times
        per-row and per-column factors."""
        out = x if self.row_index is None else x[self.row_index]
        if self.col_index is not None:
            out = out[:, self.col_index]
        if row_factor is not None:
            out = out * row_factor[:, None]
        if col_factor is not None:
            out = out * col_factor[None, :]
        return out

    def apply_numpy(self, full: np.ndarray) -> np.ndarray:
        """The whole (2-D) candidate tensor mapped into the reference frame, in ``full``'s
        float dtype (float64 where a residual must keep a 1e-3 watermark intact)."""
        def cast(scale: np.ndarray | None) -> np.ndarray | None:
            return None if scale is None else scale.astype(full.dtype)

        return np.ascontiguousarray(self._gathered(full, cast(self.row_scale), cast(self.col_scale)))

    def unapply_numpy(self, aligned: np.ndarray) -> np.ndarray:
        """The inverse map: a reference-frame matrix expressed in the candidate's frame."""
        out = self.unapply_rows(aligned, np.arange(aligned.shape[0]))
        if self.row_index is not None:
            moved = np.empty_like(out)
            moved[self.row_index] = out
            out = moved
        return out

    def unapply_rows(self, rows: np.ndarray, reference_index: np.ndarray) -> np.ndarray:
        """Reference rows ``reference_index`` (``rows``, one per index) in the candidate's frame,
        scales undone and columns moved back; the candidate rows they become are those whose
        ``row_index`` entry they are (a streamed :meth:`unapply_numpy`)."""
        out = rows
        if self.col_scale is not None:
            out = out / self.col_scale[None, :]
        if self.row_scale is not None:
            out = out / self.row_scale[reference_index][:, None]
        if self.col_index is not None:
            moved = np.empty_like(out)
            moved[:, self.col_index] = out
            out = moved
        return out

    def apply_signs(self, signs: np.ndarray) -> np.ndarray:
        """Per-weight signs (e.g. directions of quantization flips) of the candidate moved
        into the reference frame: permuted, and reversed where a scale is negative."""
        def sign(scale: np.ndarray | None) -> np.ndarray | None:
            return None if scale is None else np.sign(scale)

        return self._gathered(signs, sign(self.row_scale), sign(self.col_scale))

    def summary(self) -> TransformSummary:
        def moves(p: np.ndarray | None) -> IndexMove | None:
            return None if p is None else IndexMove(int((p != np.arange(len(p))).sum()), len(p))

        def spread(s: np.ndarray | None) -> ScaleRange | None:
            if s is None:
                return None
            a = np.abs(s)
            return ScaleRange(float(a.min()), float(a.max()), int((s < 0).sum()))

        return TransformSummary(moves(self.row_index), spread(self.row_scale), moves(self.col_index), spread(self.col_scale))
