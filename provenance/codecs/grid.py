"""Quantization grids: what each stored weight *is* on its type's grid, not only its value.

For every block-quantized ggml type the stored value of weight ``i`` is

    value[i] = fl( fl(scale[s] * L(code[i])) + offset[s] )        (float32, s = sub-block of i)

where ``fl`` is float32 rounding. ``L`` is the identity for the *uniform* types (Q*_0,
Q*_1, Q*_K, TQ*): ``code`` is then the signed integer level, e.g. -8..7 for Q4_0,
-32..31 for Q6_K, 0..15 for Q4_K. For the *non-uniform* types (IQ*, MXFP4, NVFP4) ``code``
indexes the sorted per-weight level table ``levels`` (IQ4's non-linear 16 levels, the
+-{8,25,43} of IQ2's codebooks, IQ1's grid+delta values ...).

Offsets: ``Q4_1``/``Q5_1`` store a min ``m`` and ``offset = m``; the K-quants with mins
(Q2_K, Q4_K, Q5_K) store ``dmin * m`` that llama.cpp *subtracts*, so here
``offset = -(dmin * m)``, and adding it is bit-identical to the subtraction. Types without
an offset have ``offset is None``.

IQ2/IQ3/IQ1 are *vector* quantizers: 4 or 8 weights share one codebook entry, so the
per-weight cells from :meth:`QuantGrid.cell_bounds` are a relaxation (the quantizer could
not choose every per-weight level combination); ``codebook`` holds the real entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from provenance.codecs.dequant import as_torch
from provenance.codecs.kernels import workspace
from provenance.codecs.native.gridcheck import level_cell_ends
from provenance.codecs.quanttype import LevelGrid, UniformGrid
from provenance.codecs.registry import find_quant_type, quant_type
from provenance.codecs.types import type_info


def level_table(ggml_type: int) -> torch.Tensor | None:
    """Sorted distinct per-weight levels of a non-uniform type (float32); None if uniform."""
    grid = quant_type(ggml_type).grid
    return grid.levels() if isinstance(grid, LevelGrid) else None


def codebook(ggml_type: int) -> torch.Tensor | None:
    """The vector codebook (entries x weights per entry, unsigned magnitudes; IQ1: -1/0/1)
    of an IQ vector type, else None. Signs are separate (7-bit even-parity or 8-bit)."""
    qt = find_quant_type(ggml_type)
    if qt is None or not isinstance(qt.grid, LevelGrid) or qt.grid.codebook is None:
        return None
    return qt.grid.codebook()


@dataclass
class QuantGrid:
    """Stored grid of ``rows`` rows of one tensor (see the module docstring for the formula)."""

    qtype: str
    codes: torch.Tensor
    """``(rows, row_length)`` int16: the integer level (uniform) or an index into ``levels``."""
    scale: torch.Tensor
    """``(rows, n_sub)`` float32, one per sub-block of ``sub_size`` weights."""
    offset: torch.Tensor | None
    """``(rows, n_sub)`` float32 or None."""
    sub_size: int
    levels: torch.Tensor | None
    """Sorted level table of a non-uniform type, else None."""
    qmin: int
    qmax: int
    """Code range (indices into ``levels`` for non-uniform types)."""

    @property
    def uniform(self) -> bool:
        return self.levels is None

    def _per_weight(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(self.sub_size, dim=1)

    def scale_per_weight(self) -> torch.Tensor:
        return self._per_weight(self.scale)

    def offset_per_weight(self) -> torch.Tensor | None:
        return None if self.offset is None else self._per_weight(self.offset)

    def level_values(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """``L(code)`` as float32 (exact)."""
        codes = self.codes if codes is None else codes
        if self.levels is None:
            return codes.to(torch.float32)
        return self.levels.to(codes.device)[codes.long()]

    def value_of(self, levels: torch.Tensor) -> torch.Tensor:
        """``fl(fl(scale * levels) + offset)`` for per-weight float32 ``levels``."""
        value = self.scale_per_weight() * levels
        offset = self.offset_per_weight()
        return value if offset is None else value + offset

    def values(self) -> torch.Tensor:
        """The dequantized weights; bit-identical to :func:`provenance.quant.dequantize_rows`."""
        return self.value_of(self.level_values())

    def step(self) -> torch.Tensor:
        """Width of each weight's cell in value units (``|scale|`` for uniform types)."""
        lo, hi = self.cell_bounds(clip=False)
        return hi - lo

    def cell_bounds(self, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-weight ``(lower, upper)`` value boundaries of the cell of the stored code:
        the midpoints to the neighbouring levels. With ``clip`` the outermost cells are
        open (-inf / +inf); without, they are as wide as the inner neighbour gap."""
        if self.levels is None:
            level = self.codes.to(torch.float32)
            below, above = level - 0.5, level + 0.5
            first, last = self.codes == self.qmin, self.codes == self.qmax
        else:
            table = self.levels.to(self.codes.device)
            lo_mid, hi_mid = level_cell_ends(table)  # mirrored gap at the ends
            idx = self.codes.long()
            below, above = lo_mid[idx], hi_mid[idx]
            first, last = idx == 0, idx == len(table) - 1
        a, b = self.value_of(below), self.value_of(above)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        if clip:
            positive = self.scale_per_weight() >= 0
            # The open end is the one beyond the extreme level, whichever way scale points.
            lo = torch.where((first & positive) | (last & ~positive), torch.full_like(lo, -np.inf), lo)
            hi = torch.where((last & positive) | (first & ~positive), torch.full_like(hi, np.inf), hi)
        return lo, hi


def quant_grid(raw: np.ndarray | torch.Tensor, ggml_type: int, chunk_elems: int = 1 << 18) -> QuantGrid:
    """Grid of ``(rows, row_bytes)`` stored blocks of a block-quantized type."""
    qt = find_quant_type(ggml_type)
    if qt is None:
        raise NotImplementedError(f"no grid for {type_info(ggml_type).name}")
    x = raw if isinstance(raw, torch.Tensor) else as_torch(np.asarray(raw, dtype=np.uint8))
    if x.dim() == 1:
        x = x.view(1, -1)
    rows, row_bytes = x.shape
    blocks = x.reshape(-1, qt.type_size)
    n_blocks = blocks.shape[0]
    row_length = row_bytes // qt.type_size * qt.block_size
    table = qt.grid.levels() if isinstance(qt.grid, LevelGrid) else None
    ws = workspace(x.device)
    codes = torch.empty((n_blocks, qt.block_size), dtype=torch.int16, device=x.device)
    scale = offset = None
    step = max(1, chunk_elems // qt.block_size)
    for start in range(0, n_blocks, step):
        stop = min(start + step, n_blocks)
        dec = qt.decode(blocks[start:stop], ws)
        levels = dec.levels.reshape(stop - start, qt.block_size)
        if table is None:
            codes[start:stop].copy_(levels)
        else:
            codes[start:stop].copy_(torch.searchsorted(table.to(x.device), levels.to(torch.float32).contiguous()))
        sc = dec.scale.reshape(stop - start, -1)
        if scale is None:
            scale = torch.empty((n_blocks, sc.shape[1]), dtype=torch.float32, device=x.device)
            if dec.offset is not None:
                offset = torch.empty_like(scale)
        scale[start:stop].copy_(sc)
        if offset is not None and dec.offset is not None:
            off = dec.offset.reshape(stop - start, -1)
            offset[start:stop].copy_(-off if dec.subtract_offset else off)
    assert scale is not None
    n_sub = scale.shape[1]
    qmin, qmax = (qt.grid.qmin, qt.grid.qmax) if isinstance(qt.grid, UniformGrid) else (0, len(table) - 1)
    return QuantGrid(
        qtype=qt.name,
        codes=codes.view(rows, row_length),
        scale=scale.view(rows, -1),
        offset=None if offset is None else offset.view(rows, -1),
        sub_size=qt.block_size // n_sub,
        levels=table,
        qmin=qmin,
        qmax=qmax,
    )
