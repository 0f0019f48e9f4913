"""The orthogonal polar factor of a square matrix in two ``d x d`` buffers: Procrustes without an SVD.

The rotation refit of :mod:`.rotgrid` is an orthogonal Procrustes problem: ``Q = U V^T`` for the
SVD ``M = U S V^T`` of the ``d x d`` cross product, i.e. the orthogonal factor of the polar
decomposition ``M = Q H``. LAPACK's divide-and-conquer SVD (what torch and numpy call) needs the
input's copy, ``U``, ``V^T`` and a workspace of about ``3 d^2``: ~790 MB at a 7B width (4096) in
float64, ~3.2 GB at a 70B width (8192); its QR-iteration driver (``gesvd``) needs less but ran
13x slower here. Higham's scaled Newton iteration ``X <- (z X + X^-T / z) / 2`` (N. J. Higham,
"Computing the polar decomposition - with applications", SIAM J. Sci. Stat. Comput. 7, 1986)
converges quadratically to the same ``Q`` using only an inverse per step (torch's ``inv_ex`` into a
work buffer, with one LU copy of ``X`` inside): three ``d x d`` buffers at the peak, no workspace
beyond them. (SciPy's in-place ``getri`` would save the LU copy but ran 8x slower than torch's
inverse at 2048 x 2048.)

The precision follows the width (:func:`polar_dtype`): float64 while the three buffers stay within
:data:`FLOAT64_BUDGET_BYTES` (a 7B width: 384 MB), float32 above it (a 70B width: 768 MB instead of
1.5 GB in float64). docs/lineage.md gives the measured distance of both from the SVD's ``U V^T``.
"""
from __future__ import annotations

import numpy as np
import torch

#: the three ``d x d`` buffers of the iteration in float64 up to this many bytes (d <= 4096),
#: float32 beyond (a 70B width, 8192: 3 x 256 MB)
FLOAT64_BUDGET_BYTES = 3 * 4096 * 4096 * 8
#: iterations at most (scaled Newton needs ~10 even at condition numbers of 1e12)
MAX_ITERATIONS = 60
#: columns updated per step of the in-place update (bounds its temporaries to ``d x 256``)
_UPDATE_COLUMNS = 256


class SingularMatrixError(ValueError):
    """The matrix has no inverse at working precision: its polar factor is not unique."""


def polar_dtype(width: int) -> type[np.floating]:
    """float64 when the iteration's three ``width x width`` buffers fit :data:`FLOAT64_BUDGET_BYTES`."""
    return np.float64 if 3 * width * width * 8 <= FLOAT64_BUDGET_BYTES else np.float32


def orthogonal_polar_factor(x: np.ndarray) -> np.ndarray:
    """The orthogonal ``Q`` of ``x = Q H`` (``H`` symmetric positive definite), computed in place:
    ``x`` (square, Fortran-ordered float32 or float64) is overwritten with ``Q`` and returned.
    Raises :class:`SingularMatrixError` when ``x`` (or an iterate) is singular."""
    if x.ndim != 2 or x.shape[0] != x.shape[1] or x.dtype not in (np.float32, np.float64) or not x.flags.f_contiguous:
        raise ValueError("orthogonal_polar_factor needs a square Fortran-ordered float32/float64 array")
    eps = float(np.finfo(x.dtype).eps)
    # quadratic convergence: once a step moves X by sqrt(eps), the next lands at rounding level
    settle = np.sqrt(eps)
    work = np.empty_like(x, order="F")
    x_t, inv_t = torch.from_numpy(x), torch.from_numpy(work)  # views: torch writes the inverse into work
    status = torch.empty((), dtype=torch.int32)
    scaled, last = True, False
    for _ in range(MAX_ITERATIONS):
        torch.linalg.inv_ex(x_t, out=(inv_t, status))  # LU of one internal copy of x, solved into work
        inv_norm = float(np.linalg.norm(work)) if int(status) == 0 else float("inf")  # BLAS dot: no d x d temporary
        if not np.isfinite(inv_norm):
            raise SingularMatrixError("the cross product is singular: its polar factor is not unique")
        # Frobenius-norm scaling (Higham 1986) while far from orthogonal: fewer steps at high
        # condition numbers; plain Newton near the end, where z ~ 1 anyway
        zeta = float(np.sqrt(inv_norm / np.linalg.norm(x))) if scaled else 1.0
        change = _newton_step(x, work, zeta)
        if last:
            break
        if change <= settle:
            last = True  # one more step
        elif change <= 1e-2:
            scaled = False
    else:
        raise SingularMatrixError(f"no convergence in {MAX_ITERATIONS} Newton steps")
    return x


def _newton_step(x: np.ndarray, inv: np.ndarray, zeta: float) -> float:
    """``x <- (zeta x + inv^T / zeta) / 2`` in place, a block of columns at a time; returns
    ``||x_new - x_old||_F / ||x_new||_F``."""
    moved = total = 0.0
    a, b = zeta / 2, 1 / (2 * zeta)
    for start in range(0, x.shape[1], _UPDATE_COLUMNS):
        cols = slice(start, min(x.shape[1], start + _UPDATE_COLUMNS))
        new = a * x[:, cols] + b * inv[cols, :].T
        moved += float(np.sum((new - x[:, cols]) ** 2))
        total += float(np.sum(new ** 2))
        x[:, cols] = new
    return float(np.sqrt(moved / total)) if total > 0 else 0.0
