"""The key-free signals ``y`` the statistics correlate with a key, compiled, a block of rows
at a time (docs/watermark.md, "Detection").

``y`` is stored as float32 (the key is float32 too), and every ``sum(y**2)`` is taken over
the stored float32 ``y``, so numerator and denominator of ``z = sum(k y) / sqrt(sum(y**2))``
see the same values: any rounding in how ``y`` was computed (row means, deviations, weights)
is just another key-free ``y``, and the null stays exactly N(0, 1).

Sums are float32 BLAS dot products over one row (or :data:`SUM_CHUNK` values), added in
float64: without fast-math (:mod:`provenance.jit`) the compiler may not reorder a float
reduction, so a plain loop would sum one value per cycle; BLAS sums in vector lanes. Their
relative rounding (~1e-7 to 1e-6) only scales a row's ``y`` or moves the statistic by far
less than its null standard deviation.
"""
from __future__ import annotations

import numpy as np

from provenance.jit import inline, kernel

WEIGHTING_INVERSE_VARIANCE = 0
WEIGHTING_SIGMA = 1
#: values per float32 partial sum (longer rows are summed in pieces, added in float64)
SUM_CHUNK = 4096


@inline
def dot64(a: np.ndarray, b: np.ndarray) -> np.float64:
    """``sum(a * b)`` of two float32 vectors: float32 partial sums of :data:`SUM_CHUNK`
    values, added in float64."""
    total = 0.0
    for i in range(0, a.shape[0], SUM_CHUNK):
        total += np.float64(np.dot(a[i:i + SUM_CHUNK], b[i:i + SUM_CHUNK]))
    return total


@inline
def affine(x: np.ndarray, w: np.ndarray, shift: np.float32, factor: np.float32, out: np.ndarray) -> None:
    """``out = (x - w - shift) * factor`` in float32, elementwise (vectorized)."""
    for i in range(x.shape[0]):
        out[i] = (x[i] - w[i] - shift) * factor


@inline
def constant_rows(cols: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 row of ones and one of zeros, the constant operands of :func:`row_moments`
    and :func:`affine` (allocated once per call, not per row)."""
    return np.ones(cols, dtype=np.float32), np.zeros(cols, dtype=np.float32)


@inline
def row_moments(x: np.ndarray, ones: np.ndarray, zero: np.ndarray, scratch: np.ndarray) -> tuple[np.float64, np.float64]:
    """Mean and standard deviation (ddof 0) of a float32 row: two passes (``scratch``: the
    row's deviations from the first-pass mean; ``ones``, ``zero``: rows of 1s and 0s)."""
    n = x.shape[0]
    mean = dot64(x, ones[:n]) / n
    affine(x, zero[:n], np.float32(mean), np.float32(1.0), scratch)
    dev = dot64(scratch, ones[:n])
    var = (dot64(scratch, scratch) - dev * dev / n) / n  # the first-pass mean's rounding, corrected
    return mean + dev / n, np.sqrt(max(var, 0.0))


@kernel
def blind_signal(x: np.ndarray, out: np.ndarray) -> float:
    """``out = (x - mean_row) / std_row`` (0 on constant rows) as float32; returns ``sum(out**2)``."""
    ones, zero = constant_rows(x.shape[1])
    q = 0.0
    for r in range(x.shape[0]):
        mean, std = row_moments(x[r], ones, zero, out[r])
        affine(x[r], zero, np.float32(mean), np.float32(1.0 / std if std > 0 else 0.0), out[r])
        q += dot64(out[r], out[r])
    return q


@kernel
def reference_signal(x: np.ndarray, w: np.ndarray, weighting: int, out: np.ndarray) -> float:
    """The residual ``r = x - w`` weighted per row, as float32 ``out``; returns ``sum(out**2)``.

    ``inverse-variance``: ``r * sigma_row(w) / mean_row(r**2)``, the optimal linear weight
    for a mark ``a sigma k`` in residual noise of variance ``mean(r**2)`` (rows where the
    residual vanishes carry nothing: 0); ``sigma``: ``r / sigma_row(w)``."""
    cols = x.shape[1]
    ones, zero = constant_rows(cols)
    q = 0.0
    for r in range(x.shape[0]):
        _, sigma = row_moments(w[r], ones, zero, out[r])
        affine(x[r], w[r], np.float32(0.0), np.float32(1.0), out[r])
        if weighting == WEIGHTING_INVERSE_VARIANCE:
            v = dot64(out[r], out[r]) / cols
            factor = sigma / v if v > 0 else 0.0
        else:
            factor = 1.0 / sigma if sigma > 0 else 0.0
        affine(out[r], zero, np.float32(0.0), np.float32(factor), out[r])
        q += dot64(out[r], out[r])
    return q


@kernel
def square_sum(y: np.ndarray) -> float:
    """``sum(y**2)`` of a float32 matrix (for signals computed elsewhere)."""
    q = 0.0
    for r in range(y.shape[0]):
        q += dot64(y[r], y[r])
    return q
