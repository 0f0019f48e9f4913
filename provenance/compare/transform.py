"""A per-tensor map from the candidate's frame into the reference's.

Row ``i`` of the aligned candidate is ``row_scale[i] * C[row_index[i], col_index] *
col_scale``. Alignment builds one of these for every tensor that shares a permuted or
rescaled index, so a permutation recovered from MLP features is applied to the rows of
gate and up and the columns of down alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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

    def apply_numpy(self, full: np.ndarray) -> np.ndarray:
        """The whole (2-D) candidate tensor mapped into the reference frame, in ``full``'s
        float dtype (float64 where a residual must keep a 1e-3 watermark intact)."""
        out = full if self.row_index is None else full[self.row_index]
        if self.col_index is not None:
            out = out[:, self.col_index]
        if self.row_scale is not None:
            out = out * self.row_scale[:, None].astype(full.dtype)
        if self.col_scale is not None:
            out = out * self.col_scale[None, :].astype(full.dtype)
        return np.ascontiguousarray(out)

    def unapply_numpy(self, aligned: np.ndarray) -> np.ndarray:
        """The inverse map: a reference-frame matrix expressed in the candidate's frame."""
        out = aligned
        if self.col_scale is not None:
            out = out / self.col_scale[None, :]
        if self.row_scale is not None:
            out = out / self.row_scale[:, None]
        if self.col_index is not None:
            moved = np.empty_like(out)
            moved[:, self.col_index] = out
            out = moved
        if self.row_index is not None:
            moved = np.empty_like(out)
            moved[self.row_index] = out
            out = moved
        return out

    def apply_signs(self, signs: np.ndarray) -> np.ndarray:
        """Per-weight signs (e.g. directions of quantization flips) of the candidate moved
        into the reference frame: permuted, and reversed where a scale is negative."""
        out = signs if self.row_index is None else signs[self.row_index]
        if self.col_index is not None:
            out = out[:, self.col_index]
        if self.row_scale is not None:
            out = out * np.sign(self.row_scale)[:, None]
        if self.col_scale is not None:
            out = out * np.sign(self.col_scale)[None, :]
        return out

    def summary(self) -> dict[str, Any]:
        def perm_info(p: np.ndarray | None) -> Any:
            if p is None:
                return None
            return {"moved": int((p != np.arange(len(p))).sum()), "of": len(p)}

        def scale_info(s: np.ndarray | None) -> Any:
            if s is None:
                return None
            a = np.abs(s)
            return {"min": float(a.min()), "max": float(a.max()), "negative": int((s < 0).sum())}

        return {"rows": perm_info(self.row_index), "row_scale": scale_info(self.row_scale),
                "cols": perm_info(self.col_index), "col_scale": scale_info(self.col_scale)}
