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

from provenance.threads import torch_threads

N_QUANTILES = 17
N_SINGULAR = 4
MAX_SVD_ELEMENTS = 1 << 20
"""Exact singular values are computed only up to this size (same rule on both sides)."""
_Q = np.linspace(0.0, 1.0, N_QUANTILES)


@dataclass
class Summary:
    row_norms: np.ndarray
    col_norms: np.ndarray
    singular: np.ndarray

    def vector(self) -> np.ndarray:
        return np.concatenate([self.row_norms, self.col_norms, self.singular]).astype(np.float64)

    def transposed(self) -> Summary:
        return Summary(self.col_norms, self.row_norms, self.singular)


class SummaryAccumulator:
    """A tensor's summary from its rows streamed in chunks (canonical order), in bounded memory:
    per-row norms as chunks arrive, column sums of squares accumulated in float64, and the
    whole matrix kept only when it is small enough for exact singular values (``MAX_SVD_ELEMENTS``).
    1-D tensors keep their values (quantiles need them all; they are a row of the model's width)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.matrix = len(shape) >= 2
        self.n_elements = int(np.prod(shape)) if shape else 1
        self.row_norms: list[np.ndarray] = []
        self.col_squares: np.ndarray | None = None
        self.kept: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        if not self.matrix:
            self.kept.append(np.asarray(rows, np.float64).reshape(-1))
            return
        m = np.asarray(rows, dtype=np.float64)  # one chunk's float64 copy, never the whole tensor's
        self.row_norms.append(np.sqrt(np.einsum("ij,ij->i", m, m)))
        squares = np.einsum("ij,ij->j", m, m)
        self.col_squares = squares if self.col_squares is None else self.col_squares + squares
        if self.n_elements <= MAX_SVD_ELEMENTS:
            self.kept.append(m)

    def result(self) -> Summary:
        if not self.matrix:
            return Summary(np.quantile(np.concatenate(self.kept), _Q), np.zeros(0), np.zeros(0))
        assert self.col_squares is not None
        rows = np.concatenate(self.row_norms)
        singular = np.zeros(0)
        if self.kept:
            whole = np.concatenate(self.kept)
            if min(whole.shape) > 1:
                singular = top_singular_values(whole)
        return Summary(np.quantile(rows, _Q), np.quantile(np.sqrt(self.col_squares), _Q), singular)


def summarize_matrix(matrix: np.ndarray) -> Summary:
    """Summary of a 2-D float matrix held in memory (1-D tensors: see :func:`summarize_vector`)."""
    acc = SummaryAccumulator(matrix.shape)
    acc.add(matrix)
    return acc.result()


def top_singular_values(m: np.ndarray, k: int = N_SINGULAR, iterations: int = 60) -> np.ndarray:
    """The ``k`` largest singular values by block subspace iteration on the smaller Gram matrix.

    Deterministic (fixed start block), float64; Rayleigh-Ritz values converge fast even
    where the singular vectors of a random-like matrix do not.
    """
    import torch  # here, not at module level: identify on a tokenizer alone never loads torch (~1 s)

    with torch_threads(1):  # 11 ms on one thread, 440 ms on two under load
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64))
        gram = t.T @ t if t.shape[1] <= t.shape[0] else t @ t.T
        if not bool(torch.isfinite(gram).all()):
            # NaN or infinite weights (a file may hold any bits) have no spectrum: the summary
            # says so with NaN, which compares equal to nothing, instead of failing the solver.
            return np.full(min(k, gram.shape[0]), np.nan)
        block = min(2 * k, gram.shape[0])
        generator = torch.Generator().manual_seed(0)
        basis = torch.randn(gram.shape[0], block, dtype=torch.float64, generator=generator)
        for _ in range(iterations):
            basis, _ = torch.linalg.qr(gram @ basis)
        ritz = torch.linalg.eigvalsh(basis.T @ gram @ basis).flip(0)[:k]
        return ritz.clamp(min=0.0).sqrt().numpy()


def summarize_vector(values: np.ndarray) -> Summary:
    acc = SummaryAccumulator((int(np.asarray(values).size),))
    acc.add(values)
    return acc.result()


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
