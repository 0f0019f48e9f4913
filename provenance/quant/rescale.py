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

from typing import Protocol

import numpy as np

#: rounds of alternating row/column refinement
REFINE_ROUNDS = 12
#: tolerance of a cell check, in steps (the quantizer's own float arithmetic)
CELL_TOLERANCE_STEPS = 0.05


class ReferenceFrame(Protocol):
    """Maps a reference-frame matrix into the candidate's frame (permutations, scales):
    :class:`provenance.compare.transform.Transform` is one."""

    row_scale: np.ndarray | None
    col_scale: np.ndarray | None

    def unapply_numpy(self, aligned: np.ndarray) -> np.ndarray: ...


def reference_in_frame(reference: np.ndarray, frame: ReferenceFrame, lo: np.ndarray, hi: np.ndarray,
                       stored: np.ndarray, tolerance_steps: float = CELL_TOLERANCE_STEPS) -> np.ndarray:
    """The whole reference tensor carried into the candidate's frame, its free row/column
    scales fitted to the candidate's cells ``[lo, hi]`` widened by ``tolerance_steps`` (float64,
    the cells' shape)."""
    x = frame.unapply_numpy(reference.astype(np.float64)).reshape(lo.shape)
    rows, cols = frame.row_scale is not None, frame.col_scale is not None
    if rows or cols:
        width = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
        tol = tolerance_steps * width
        r, c = refine_factors(x, stored.reshape(x.shape), lo - tol, hi + tol, rows, cols)
        x = x * r[:, None] * c[None, :]
    return x


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


def _bounds(y: np.ndarray, low: np.ndarray, high: np.ndarray, free: np.ndarray,
            axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor bounds from every weight where some factor puts all of them inside (a witness
    must keep the zero cell's weights in it too: a factor read off the other weights alone
    can push one out); from the ``free`` weights only where none does (a pruned weight,
    stored as 0 though the reference's was not, would leave no factor at all)."""
    lower, upper = _factor_bounds(y, low, high, np.ones_like(free), axis)
    lower_free, upper_free = _factor_bounds(y, low, high, free, axis)
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


def _ls_factor(y: np.ndarray, stored: np.ndarray, free: np.ndarray, axis: int) -> np.ndarray:
    """Per row (axis 1) or column (axis 0): the factor f minimising ||f y - stored|| over ``free`` weights."""
    yf = np.where(free, y, 0.0)
    num, den = (yf * stored).sum(axis=axis), (yf * yf).sum(axis=axis)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def refine_factors(x: np.ndarray, stored: np.ndarray, low: np.ndarray, high: np.ndarray, rows: bool,
                   cols: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row and column factors (1 where not free) putting ``r_i c_j x_ij`` inside ``[low, high]``
    wherever possible, starting from least squares against the ``stored`` values
    (alternating projections; module docstring)."""
    r, c = np.ones(x.shape[0]), np.ones(x.shape[1])
    # a weight stored in the cell of 0 says nothing of the scale (and a pruned one would mislead it)
    free = ~((low <= 0) & (high >= 0))
    for _ in range(REFINE_ROUNDS):
        if rows:
            y = x * c[None, :]
            r = _settle(_ls_factor(y, stored, free, 1), *_bounds(y, low, high, free, axis=1))
        if cols:
            y = x * r[:, None]
            c = _settle(_ls_factor(y, stored, free, 0), *_bounds(y, low, high, free, axis=0))
        v = x * r[:, None] * c[None, :]
        if bool(((v >= low) & (v <= high)).all()):
            break
    return r, c


