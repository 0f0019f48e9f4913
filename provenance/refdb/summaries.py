"""Layout-invariant summaries of a weight matrix: they survive transposition and permutation.

For a matrix ``W`` the summary is the quantiles of its sorted row norms, the quantiles of
its sorted column norms and its top singular values. Permuting rows or columns changes
none of them; transposing swaps the row and column parts, so comparing a candidate both
as stored and as transposed tells which layout it has. A 1-D tensor's summary is the
quantiles of its sorted values (invariant to permuting the residual stream).

Random matrices of one shape and scale have near-identical summaries, so a summary
match is *supporting* evidence and a layout detector, never an identification alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

N_QUANTILES = 17
N_SINGULAR = 4
MAX_SVD_ELEMENTS = 1 << 22
"""Exact singular values are computed only up to this size (same rule on both sides)."""
_Q = np.linspace(0.0, 1.0, N_QUANTILES)


@dataclass
class Summary:
    row_norms: np.ndarray
    col_norms: np.ndarray
    singular: np.ndarray

    def vector(self) -> np.ndarray:
        return np.concatenate([self.row_norms, self.col_norms, self.singular]).astype(np.float64)

    def transposed(self) -> "Summary":
        return Summary(self.col_norms, self.row_norms, self.singular)


def summarize_matrix(matrix: np.ndarray) -> Summary:
    """Summary of a 2-D float matrix (1-D tensors: pass shape ``(1, n)``; see :func:`summarize_vector`)."""
    t = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).to(torch.float64)
    rows = torch.linalg.vector_norm(t, dim=1).numpy()
    cols = torch.linalg.vector_norm(t, dim=0).numpy()
    if t.numel() <= MAX_SVD_ELEMENTS and min(t.shape) > 1:
        singular = torch.linalg.svdvals(t)[:N_SINGULAR].numpy()
    else:
        singular = np.zeros(0)
    return Summary(np.quantile(rows, _Q), np.quantile(cols, _Q), singular)


def summarize_vector(values: np.ndarray) -> Summary:
    flat = np.asarray(values, np.float64).reshape(-1)
    return Summary(np.quantile(flat, _Q), np.zeros(0), np.zeros(0))


def summarize(values: np.ndarray, shape: tuple[int, ...]) -> Summary:
    if len(shape) < 2:
        return summarize_vector(values)
    return summarize_matrix(np.asarray(values).reshape(-1, shape[-1]))


def distance(ref: Summary, cand: Summary) -> float:
    """Relative distance between two summaries (0 = equal); inf if they are not comparable."""
    a, b = ref.vector(), cand.vector()
    if a.shape != b.shape:
        n = min(len(ref.singular), len(cand.singular))
        a = np.concatenate([ref.row_norms, ref.col_norms, ref.singular[:n]])
        b = np.concatenate([cand.row_norms, cand.col_norms, cand.singular[:n]])
        if a.shape != b.shape:
            return float("inf")
    scale = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else (0.0 if not np.any(b) else float("inf"))
