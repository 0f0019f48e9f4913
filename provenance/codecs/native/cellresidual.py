"""The cell residual of sampled rows in one compiled pass over a decoded grid.

``compare`` keeps 128 rows of each changed matrix and asks, per weight, how far the
reference weight lies outside the stored cell of the candidate's code (the shape of the
change, docs/lineage.md "The shape of the difference"). In torch ops that is a dozen
whole-sample float32 tensors per matrix (the cell bounds twice, clipped and not, the
tolerance, the f16 rounding, the clamp, the masks): ~50-100 ns per sampled weight, a fifth
of a 7B ``compare``'s CPU time. This kernel computes the same three outputs per weight from
the decoded grid (:class:`provenance.codecs.grid.QuantGrid`'s codes, scales and offsets)
with the same float32 operations as :meth:`QuantGrid.cell_bounds` /
:func:`provenance.compare.shape.cell_residual` (the cell bounds through
:func:`provenance.codecs.native.gridcheck.cell_bounds_of`, which the cells kernels use too),
so the outputs are the torch path's values (the tests hold them to it, NaN and infinite
cells included).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from provenance.codecs.native.floats import round_f16
from provenance.codecs.native.gridcheck import NO_TABLE, cell_bounds_of, code_cell, level_cell_ends
from provenance.jit import inline, kernel

if TYPE_CHECKING:
    from provenance.codecs.grid import QuantGrid

_F0 = np.float32(0.0)
_NAN = np.float32(np.nan)


@inline
def _clamp(x, low, high):  # type: ignore[no-untyped-def]
    """``torch.clamp(x, low, high)`` with tensor bounds: NaN when any of the three is NaN,
    else ``min(max(x, low), high)`` (``high`` when the bounds cross)."""
    if x != x or low != low or high != high:
        return _NAN
    v = low if x < low else x
    return high if v > high else v


@kernel
def cell_residuals(codes, scale, offset, has_offset, uniform, qmin, qmax, lo_mid, hi_mid, x, tol_steps, exact16,  # type: ignore[no-untyped-def]
                   moved, zeroed, width):
    """Per weight of ``x`` ``(rows, n)`` float32 in the cells of ``codes`` ``(rows, n)``
    (the signed level of a uniform type, the index into the level table otherwise; the
    caller checked the indices) with ``scale`` / ``offset`` ``(rows, n_sub)``: ``moved``,
    the smallest move into the cell widened by ``tol_steps`` steps (0 inside, or when the
    f16 rounding of ``x`` is inside; ``exact16``: ``x`` holds f16 values); ``zeroed``,
    whether the weight lies outside and 0 inside the cell (then ``moved`` is 0); ``width``,
    the open-ended cell's width (0 where infinite or NaN)."""
    rows, n = x.shape
    n_sub = scale.shape[1]
    sub = n // n_sub
    top = lo_mid.shape[0] - 1
    for r in range(rows):
        for k in range(n_sub):
            sc = scale[r, k]
            off = offset[r, k] if has_offset else _F0
            positive = sc >= _F0
            at = k * sub  # 0-based views (gridcheck.cell_block)
            codes_k, x_k, zeroed_k, moved_k, width_k = codes[r, at:at + sub], x[r, at:at + sub], zeroed[r, at:at + sub], \
                moved[r, at:at + sub], width[r, at:at + sub]
            for j in range(sub):
                below, above, first, last = code_cell(codes_k[j], uniform, qmin, qmax, lo_mid, hi_mid, top)
                lo, hi, step = cell_bounds_of(below, above, first, last, sc, off, has_offset, positive)
                tol = np.float32(tol_steps * step)
                low = np.float32(lo - tol)
                high = np.float32(hi + tol)
                v = x_k[j]
                inside = (v >= low) & (v <= high)
                if not exact16 and not inside:
                    v16 = round_f16(v)
                    inside = (v16 >= low) & (v16 <= high)
                out = ~inside & (low <= _F0) & (high >= _F0) & (v != _F0)
                zeroed_k[j] = out
                moved_k[j] = _F0 if inside or out else np.float32(_clamp(v, low, high) - v)
                w = np.float32(hi - lo)
                width_k[j] = w if np.isfinite(w) else _F0


def grid_cell_residual(grid: QuantGrid, x: torch.Tensor, tol_steps: float,
                       exact16: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(moved, zeroed, width)`` of float32 rows ``x`` (CPU) in the cells of ``grid`` (the
    same rows), widened by ``tol_steps`` steps: the values of
    ``cell_residual(x, lo, hi, tol_steps * step, f16(x))`` with ``lo, hi = grid.cell_bounds()``,
    ``step = |grid.step()|`` and the width of the open-ended cell, in :func:`cell_residuals`."""
    xs = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    codes = np.ascontiguousarray(grid.codes.numpy())
    if xs.shape != codes.shape or xs.ndim != 2:
        raise ValueError(f"rows of shape {xs.shape} against a grid of {codes.shape}")
    scale = np.ascontiguousarray(grid.scale.numpy(), dtype=np.float32)
    if scale.shape[0] != xs.shape[0] or not scale.shape[1] or xs.shape[1] != scale.shape[1] * grid.sub_size:
        raise ValueError(f"grid scales of shape {scale.shape} for rows of {xs.shape[1]} in sub-blocks of {grid.sub_size}")
    offset = scale if grid.offset is None else np.ascontiguousarray(grid.offset.numpy(), dtype=np.float32)
    if grid.levels is None:
        lo_mid = hi_mid = NO_TABLE
    else:
        ends = level_cell_ends(grid.levels.to(torch.float32))
        lo_mid, hi_mid = (np.ascontiguousarray(e.numpy(), dtype=np.float32) for e in ends)
        # the kernel indexes the table unchecked: a code past it is refused here
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= lo_mid.shape[0]):
            raise ValueError(f"{grid.qtype}: level index outside its table of {lo_mid.shape[0]}")
    moved = np.empty_like(xs)
    zeroed = np.empty(xs.shape, dtype=np.bool_)
    width = np.empty_like(xs)
    cell_residuals(codes, scale, offset, grid.offset is not None, grid.levels is None, grid.qmin, grid.qmax,
                   lo_mid, hi_mid, xs, np.float32(tol_steps), exact16, moved, zeroed, width)
    return torch.from_numpy(moved), torch.from_numpy(zeroed), torch.from_numpy(width)
