"""Fit per-row and per-column factors of a reference to a quantized tensor's stored cells.

A rescaled copy (MLP units: up rows x s, down columns / s; norm gains folded into the
columns of the matrices after them) computes the same function. Scales recovered from
weights are estimates (norm ratios); the stored cells pin the true ones down far more
tightly. Alternately, each free row (column) takes the factor closest to its least-squares
fit to the stored values that puts all its weights inside their cells, when such a factor
exists. Weights stored in the cell of zero are left out of the least-squares fit (a pruned
weight would mislead it) and out of the bounds only where no factor keeps every weight
inside. When every weight ends up inside, that scaling is a witness: the stored codes are
what the quantizer makes of the rescaled reference (docs/lineage.md, "Grid consistency after
alignment"; used by ``compare`` and ``quantcheck --realign``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

#: rounds of alternating row/column refinement
REFINE_ROUNDS = 12
#: tolerance of a cell check, in steps (the quantizer's own float arithmetic)
CELL_TOLERANCE_STEPS = 0.05


class ReferenceFrame(Protocol):
    """Maps a reference-frame matrix into the candidate's frame (permutations, scales):
    :class:`provenance.compare.transform.Transform` is one."""

    row_index: np.ndarray | None
    row_scale: np.ndarray | None
    col_scale: np.ndarray | None

    def unapply_numpy(self, aligned: np.ndarray) -> np.ndarray: ...

    def unapply_rows(self, rows: np.ndarray, reference_index: np.ndarray) -> np.ndarray: ...


CellChunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""One chunk of consecutive rows of a tensor in the candidate's frame: the reference ``x``, the
stored values and the lower / upper cell bounds (float64, all the chunk's shape)."""
CellChunks = Callable[[], Iterable[CellChunk]]
"""A fresh pass over a tensor's :data:`CellChunk` s, first row to last (called once per round)."""


def reference_in_frame(reference: np.ndarray, frame: ReferenceFrame, lo: np.ndarray, hi: np.ndarray,
                       stored: np.ndarray, tolerance_steps: float = CELL_TOLERANCE_STEPS) -> np.ndarray:
    """The whole reference tensor carried into the candidate's frame, its free row/column
    scales fitted to the candidate's cells ``[lo, hi]`` widened by ``tolerance_steps`` (float64,
    the cells' shape)."""
    x = frame.unapply_numpy(reference.astype(np.float64)).reshape(lo.shape)
    rows, cols = frame.row_scale is not None, frame.col_scale is not None
    if rows or cols:
        low, high = widened_cells(lo, hi, tolerance_steps)
        r, c = refine_factors(x, stored.reshape(x.shape), low, high, rows, cols)
        x = x * r[:, None] * c[None, :]
    return x


def widened_cells(lo: np.ndarray, hi: np.ndarray, tolerance_steps: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells ``[lo, hi]`` widened by ``tolerance_steps`` of their width (open cells stay open)."""
    width = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    tol = tolerance_steps * width
    return lo - tol, hi + tol


def reference_rows(frame: ReferenceFrame, start: int, stop: int, inverse: np.ndarray | None) -> np.ndarray:
    """The reference rows that land in the candidate's rows ``[start, stop)`` under ``frame``
    (``inverse``: the inverse of ``frame.row_index``, computed once per tensor)."""
    return np.arange(start, stop) if inverse is None else inverse[start:stop]


def row_inverse(frame: ReferenceFrame) -> np.ndarray | None:
    """The inverse of ``frame``'s row permutation (None when it permutes no rows)."""
    return None if frame.row_index is None else np.argsort(frame.row_index, kind="stable")


def _factor_bounds(y: np.ndarray, low: np.ndarray, high: np.ndarray, free: np.ndarray,
                   axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row (axis 1) or column (axis 0): the positive factors f with f*y inside [low, high]
    at every ``free`` weight (the others constrain nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = low / y, high / y
    lower = np.where(free & (y > 0), a, np.where(free & (y < 0), b, -np.inf))
    upper = np.where(free & (y > 0), b, np.where(free & (y < 0), a, np.inf))
    # a zero reference weight stays zero under any factor: it constrains nothing (or is outside anyway)
    return np.nan_to_num(lower, nan=-np.inf).max(axis=axis), np.nan_to_num(upper, nan=np.inf).min(axis=axis)


def _bound_parts(y: np.ndarray, low: np.ndarray, high: np.ndarray, free: np.ndarray,
                 axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Factor bounds from every weight and from the ``free`` weights only (maxima and minima:
    chunks of rows combine in any order)."""
    return (*_factor_bounds(y, low, high, np.ones_like(free), axis), *_factor_bounds(y, low, high, free, axis))


def _bounds_of(lower: np.ndarray, upper: np.ndarray, lower_free: np.ndarray,
               upper_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factor bounds from every weight where some factor puts all of them inside (a witness
    must keep the zero cell's weights in it too: a factor read off the other weights alone
    can push one out); from the ``free`` weights only where none does (a pruned weight,
    stored as 0 though the reference's was not, would leave no factor at all)."""
    feasible = (np.maximum(lower, 0.0) <= upper) & (upper > 0)
    return np.where(feasible, lower, lower_free), np.where(feasible, upper, upper_free)


def _settle(fit: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The factor closest to the least-squares ``fit`` in the middle half of [lower, upper] (an
    end point would land on a cell boundary and float rounding could put it outside), where
    that interval is non-empty and positive; the fit itself where it is not (the reference
    and the stored values then differ by more than a rescaling: noise, or a change)."""
    lower = np.maximum(lower, 0.0)
    ok = (lower <= upper) & (upper > 0)
    margin = np.where(np.isfinite(upper - lower), 0.25 * (upper - lower), 0.0)
    with np.errstate(invalid="ignore"):
        return np.where(ok, np.clip(fit, lower + margin, upper - margin), fit)


def _ls_parts(y: np.ndarray, stored: np.ndarray, free: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row (axis 1) or column (axis 0): the sums ``sum(y stored)`` and ``sum(y y)`` over the
    ``free`` weights of the least-squares factor."""
    yf = np.where(free, y, 0.0)
    return (yf * stored).sum(axis=axis), (yf * yf).sum(axis=axis)


def _ls_of(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """The factor f minimising ||f y - stored|| from its sums (1 where ``y`` is all zero)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def _free(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    # a weight stored in the cell of 0 says nothing of the scale (and a pruned one would mislead it)
    return ~((low <= 0) & (high >= 0))


class _ColumnFit:
    """The column factors' sums and bounds, accumulated over chunks of rows. A column sum
    continues from the rows before (the running total is the first row of the next sum):
    numpy sums a column row after row, so the streamed sums equal the whole matrix's bit for bit."""

    def __init__(self) -> None:
        self.sums: tuple[np.ndarray, np.ndarray] | None = None
        self.bounds: tuple[np.ndarray, ...] | None = None

    def add(self, y: np.ndarray, stored: np.ndarray, low: np.ndarray, high: np.ndarray, free: np.ndarray) -> None:
        if self.sums is None:
            self.sums = _ls_parts(y, stored, free, 0)
        else:
            num, den = self.sums
            yf = np.where(free, y, 0.0)
            self.sums = (np.vstack([num[None], yf * stored]).sum(axis=0), np.vstack([den[None], yf * yf]).sum(axis=0))
        parts = _bound_parts(y, low, high, free, 0)
        if self.bounds is None:
            self.bounds = parts
        else:
            lower, upper, lower_free, upper_free = self.bounds
            self.bounds = (np.maximum(lower, parts[0]), np.minimum(upper, parts[1]),
                           np.maximum(lower_free, parts[2]), np.minimum(upper_free, parts[3]))

    def factors(self) -> np.ndarray:
        assert self.sums is not None and self.bounds is not None
        return _settle(_ls_of(*self.sums), *_bounds_of(*self.bounds))


def refine_factors(x: np.ndarray, stored: np.ndarray, low: np.ndarray, high: np.ndarray, rows: bool,
                   cols: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row and column factors (1 where not free) putting ``r_i c_j x_ij`` inside ``[low, high]``
    wherever possible, starting from least squares against the ``stored`` values
    (alternating projections; module docstring); one chunk of :func:`refine_factors_streamed`."""
    return refine_factors_streamed(lambda: ((x, stored, low, high),), x.shape[0], x.shape[1], rows, cols)


def refine_factors_streamed(chunks: CellChunks, n_rows: int, n_cols: int, rows: bool,
                            cols: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`refine_factors` over a tensor read in chunks of rows (memory: one chunk, whatever
    the tensor; one pass per round). A round's row factors need only their own rows and the
    column factors; its column factors are sums over all rows, so they are settled at the end
    of the pass, and whether the round put every weight inside is seen on the next pass
    (which then keeps the factors it started from)."""
    r, c = np.ones(n_rows), np.ones(n_cols)
    for round_ in range(REFINE_ROUNDS):
        before = (r.copy(), c)
        inside = round_ > 0
        column = _ColumnFit()
        a = 0
        for x, stored, low, high in chunks():
            b = a + x.shape[0]
            free = _free(low, high)
            if inside:  # the previous round's check, on the factors this pass starts from
                v = x * r[a:b, None] * c[None, :]
                inside = bool(((v >= low) & (v <= high)).all())
            if rows:
                y = x * c[None, :]
                num, den = _ls_parts(y, stored, free, 1)
                r[a:b] = _settle(_ls_of(num, den), *_bounds_of(*_bound_parts(y, low, high, free, 1)))
            if cols:
                column.add(x * r[a:b, None], stored, low, high, free)
            a = b
        if inside:
            return before
        if cols:
            c = column.factors()
    return r, c
