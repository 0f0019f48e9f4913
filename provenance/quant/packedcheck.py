"""Grid consistency of a packed layout (bitsandbytes, MLX, compressed-tensors int8/fp8) against
its reference: does every reference weight lie in the cell of its stored code?

These writers round each weight to the nearest level of the grid they store (bitsandbytes
the nearest entry of its codebook times the block's absmax, MLX and compressed-tensors the
nearest affine level), so, as for llama.cpp's types (:mod:`provenance.quant.gridcheck`),
given the exact source and the stored grid the codes are predictable: a weight outside
its cell was not rounded from that reference. GPTQ, AWQ and pack-quantized weights (their
error feedback or scale search moves codes on purpose) are not checked here;
``compare`` sets their dequantization error against the grid's rounding noise instead.

The cells come from the layout's codec (:meth:`provenance.codecs.packed.grid.PackedRows.cells`),
on the grid the writer rounded on: where it stores its scales narrower than it used them
(MLX in an f16/bf16 model, bitsandbytes' double-quantized absmax), that grid is recomputed
from the reference by the codec's writer recipe, and the stored scales are checked against
it (``n_blocks_scale_mismatch``: groups or blocks whose stored scale is not the recipe's).
A writer computes in its own float arithmetic (``x / absmax`` in float32, ``(w - bias) /
scale`` in the model's dtype), so a weight within :data:`TOLERANCE_STEPS` of a cell
boundary counts as explained; so does one that lies in its cell once rounded to the source
precision's other neighbour (double rounding, see ``source_variants``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from math import gcd

import torch

from provenance.codecs.packed.bnb import bnb4_writer_grid
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.mlx import mlx_writer_grid
from provenance.formats.packed import PackedTensor
from provenance.quant.error import ErrorStats, error_stats
from provenance.quant.gridcheck import NEAR, CheckCounts, source_variants

Recipe = Callable[[torch.Tensor, PackedRows], tuple[PackedRows, "torch.Tensor | None"]]
"""``(reference rows, stored grid) -> (the grid the writer rounded on, per-group scale check)``."""

TOLERANCE_STEPS = 1e-3
"""Distance outside a cell (in local steps) that the writer's own float arithmetic explains."""


def writer_recipe(packing: PackedTensor) -> Recipe | None:
    """The recipe of a layout whose writer keeps its scales wider than it stores them, else
    None (the stored grid is the one it rounded on)."""
    if packing.layout == "mlx":
        return lambda x, stored: mlx_writer_grid(x, stored, packing.bits, packing.group_size)
    if packing.layout == "bnb-4bit":
        nested = "nested_blocksize" in packing.params
        return lambda x, stored: bnb4_writer_grid(x, stored, packing.group_size, nested)
    return None


def rows_per_check(packing: PackedTensor, rows: int) -> int:
    """``rows`` rounded down to whole writer blocks (bitsandbytes blocks run across rows)."""
    unit = packing.group_size // gcd(packing.shape[1], packing.group_size) if packing.layout == "bnb-4bit" else 1
    return max(unit, rows // unit * unit)


def _written(x: torch.Tensor, stored: PackedRows, recipe: Recipe | None) -> tuple[PackedRows, torch.Tensor | None]:
    """The grid the writer rounded ``x`` on, and its scale check (None: nothing to check)."""
    return recipe(x, stored) if recipe is not None else (stored, None)


def _inside(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return (x >= lo) & (x <= hi)


def check_packed_rows(x: torch.Tensor, grid: PackedRows, precision: str,
                      recipe: Recipe | None = None) -> tuple[CheckCounts, ErrorStats]:
    """Grid consistency of stored rows ``grid`` against reference rows ``x`` (same shape),
    and the dequantization error of the stored values (with the error the writer's own
    rounding of the reference would have: the codes nearest on the grid it rounded on,
    read on the stored scales; equal for an exact quantization). ``recipe`` gives the
    grid the writer rounded on (:func:`writer_recipe`)."""
    x = x.to(torch.float32).reshape(grid.codes.shape)
    near, alt = source_variants(x, precision)
    written, scale_ok = _written(near, grid, recipe)
    lo, hi, step = written.cells()
    if alt is not None:  # the other rounding of a midpoint source, on the grid it implies
        alt_written, alt_ok = _written(alt, grid, recipe)
        alt_lo, alt_hi, _ = alt_written.cells()
        if scale_ok is not None and alt_ok is not None:
            scale_ok = scale_ok | alt_ok
    # the open ends of the range have infinite bounds; a non-finite grid (nan level, zero or
    # infinite scale) has no cells to check
    valid = ~torch.isnan(lo) & ~torch.isnan(hi) & torch.isfinite(step) & (step > 0)
    mismatch = valid & ~_inside(near, lo, hi)
    below = near < lo  # the stored cell lies above the source: the source was larger (an "up" flip)
    outside = torch.where(below, lo - near, near - hi)
    safe_step = torch.where(valid, step, torch.ones_like(step))
    dist = outside / safe_step
    explained = mismatch & (dist <= TOLERANCE_STEPS)
    if alt is not None:
        explained |= mismatch & _inside(alt, alt_lo, alt_hi)
    unexplained = mismatch & ~explained
    inv = torch.where(valid, 1.0 / safe_step, torch.zeros_like(step))
    # margin to the nearer finite boundary of the cell the source lies in (the end cells
    # have one), for the flip-rate amplitude estimate
    margin = torch.minimum(near - lo, hi - near) / safe_step
    on_edge = valid & ~mismatch & (margin < NEAR)
    counts = CheckCounts(
        n_weights=x.numel(),
        n_checked=int(valid.sum()),
        n_mismatch=int(mismatch.sum()),
        n_explained=int(explained.sum()),
        n_unexplained=int(unexplained.sum()),
        n_up=int((unexplained & below).sum()),
        n_down=int((unexplained & ~below).sum()),
        inv_step_sum=float(inv.double().sum()),
        near_sum=float(torch.where(on_edge, inv, torch.zeros_like(inv)).double().sum()) / (2 * NEAR),
        n_blocks_scale_mismatch=0 if scale_ok is None else int((~scale_ok).sum()),
    )
    if counts.n_unexplained:
        counts.distances = dist[unexplained][: CheckCounts.MAX_KEPT].tolist()
    # what the writer would have stored for this reference: its codes on the stored scales
    clean = replace(grid, codes=written.nearest(near).codes).values()
    return counts, error_stats(grid.values(), x, clean, torch.where(valid, step, torch.zeros_like(step)))


__all__ = ["TOLERANCE_STEPS", "check_packed_rows", "rows_per_check", "writer_recipe"]
