"""IQ4_NL and IQ4_XS: 4-bit codes into the non-linear 16-level table ``kvalues_iq4nl``.

IQ4_NL has 32-weight blocks with one f16 scale; IQ4_XS 256-weight super-blocks with an
f16 ``d`` and eight signed 6-bit sub-scales. A nibble byte ``j`` of a 32-weight run holds
weight ``j`` (low) and ``16 + j`` (high). The level table is format data taken from
gguf-py, not retyped.

Recipe: ``best_index_int8(values, idl*x)`` with ``idl = 1/(d*l)`` where ``d`` is the *f32*
super-scale before its f16 rounding, which the file does not keep; a code is therefore
only determined up to the f16 rounding of ``d`` (relative 2^-11), and mismatches within
that tolerance are *explained* (a tolerant recipe). Reference quantizers:
:mod:`provenance.codecs.quantize_iq4`.
"""
from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from provenance.codecs.kernels._common import Decoded, DeviceTables, Workspace, f16_field, gather, u16_field
from provenance.codecs.native.fields import f16, split_nibbles, u16
from provenance.codecs.native.floats import safe_inverse as inverse32
from provenance.codecs.native.gridcheck import cell_tables, cells, check, check_tables
from provenance.codecs.prediction import F16_REL, Prediction, best_index, safe_inverse
from provenance.codecs.quantize_iq4 import quantize_iq4_nl_compiled, quantize_iq4_xs_compiled
from provenance.codecs.quanttype import CompiledKernel, LevelGrid, QuantType, Recipe
from provenance.codecs.types import type_info
from provenance.jit import inline, kernel

if TYPE_CHECKING:
    from provenance.codecs.grid import QuantGrid


def _build() -> dict[str, torch.Tensor]:
    values = np.array(gq.IQ4_NL.kvalues, dtype=np.int8)
    lo, hi = np.arange(256) & 15, np.arange(256) >> 4
    return {
        # byte -> (level of low nibble, level of high nibble)
        "iq4.pair": torch.from_numpy(np.ascontiguousarray(np.stack([values[lo], values[hi]], axis=1))),
        "pair16": torch.tensor([0, 2, 4, 6, 8, 10, 12, 14], dtype=torch.int32),
    }


TABLES = DeviceTables(_build)

# ---- torch kernels ------------------------------------------------------------------


def iq4_nl(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    pairs = gather(TABLES.on(blocks.device)["iq4.pair"], blocks[:, 2:18], ws, "lv")  # (n, 16, 2)
    return Decoded(pairs.transpose(1, 2).unsqueeze(1), d.view(n, 1, 1, 1))


def iq4_xs_scales(blocks: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """The 8 signed 6-bit sub-block scales of IQ4_XS, int8 ``(n, 8)``."""
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    low = blocks[:, 4:8]
    lo = torch.stack([low.bitwise_and(0x0F), low.bitwise_right_shift(4)], dim=2).view(n, 8)
    sh = u16_field(blocks, 2, 1, ws, "sh")
    hi = sh.bitwise_right_shift(t["pair16"]).bitwise_and_(3).to(torch.uint8)
    return lo.bitwise_or_(hi.bitwise_left_shift_(4)).view(torch.int8).sub_(32)


def iq4_xs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    scale = torch.mul(d, iq4_xs_scales(blocks, ws))
    pairs = gather(TABLES.on(blocks.device)["iq4.pair"], blocks[:, 8:136].view(n, 8, 16), ws, "lv")
    return Decoded(pairs.transpose(2, 3), scale.view(n, 8, 1, 1))


# ---- compiled CPU kernels (inner loop bounds from out.shape, see provenance.jit) -----


@cache
def iq4_values() -> np.ndarray:
    return np.array(gq.IQ4_NL.kvalues, dtype=np.float32)


@kernel
def iq4_nl_compiled(blocks, out, f16_table, values):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        for j in range(half):
            q = np.int32(b[2 + j])
            y[j] = d * values[q & 0xF]
            y[half + j] = d * values[q >> 4]


@kernel
def iq4_xs_compiled(blocks, out, f16_table, values):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 16
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        high_bits = u16(b, 2)
        for s in range(8):
            low = (np.int64(b[4 + (s >> 1)]) >> (4 * (s & 1))) & 0xF
            high = (high_bits >> (2 * s)) & 3
            dl = d * np.float32((low | (high << 4)) - 32)
            for j in range(half):
                q = np.int32(b[8 + 16 * s + j])
                y[32 * s + j] = dl * values[q & 0xF]
                y[32 * s + half + j] = dl * values[q >> 4]


# ---- recipe ---------------------------------------------------------------------------


def predict_iq4(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    """Nearest level of ``x/dl`` (ties up); ``raw`` (the stored blocks) sharpens the
    tolerance where the stored f16 super-scale is subnormal."""
    assert grid.levels is not None
    dl = grid.scale_per_weight()
    v = x * safe_inverse(dl)
    values = grid.levels.to(x.device)
    level = values[best_index(values, v)]
    # The codes were chosen with the f32 super-scale d; the file keeps fp16(d), which is
    # off by at most half an f16 spacing: relative 2^-11 for normal f16, but an absolute
    # 2^-25 for subnormal ones (common: d = max_scale/32 is often below 6.1e-5).
    rel = torch.full_like(v, F16_REL)
    if raw is not None:
        d16 = _stored_super_scale(raw, grid).abs()
        rel = torch.maximum(rel, torch.where(d16 > 0, 2.0 ** -25 / d16, torch.zeros_like(d16)))
    tolerance = v.abs() * (2 * rel) + 1e-4
    return Prediction(level, v, dl != 0, tolerance=tolerance)


def _stored_super_scale(raw: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Per weight, the block's stored f16 super-scale (bytes 0..1 of IQ4 blocks)."""
    rows = grid.codes.shape[0]
    info = type_info(grid.qtype)
    blocks = raw.reshape(-1, info.type_size)[:, 0:2].contiguous().view(torch.float16).to(torch.float32)
    return blocks.view(rows, -1).repeat_interleave(info.block_size, dim=1)


def iq4_levels() -> torch.Tensor:
    return torch.from_numpy(iq4_values()).unique()  # sorted


IQ4_RECIPE = Recipe(predict_iq4, tolerant=True)

# ---- compiled grids, recipe and grid checks (codecs/native/gridcheck.py) -------------
# IQ4's level table is sorted, so a nibble is its level's index in ``levels`` too.


@inline
def _iq4_nl_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    split_nibbles(b[2:18], g.code, 0)


@inline
def _iq4_xs_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    d = f16(b, 0, f16_table)
    high_bits = u16(b, 2)
    for s in range(8):
        low = (np.int64(b[4 + (s >> 1)]) >> (4 * (s & 1))) & 0xF
        high = (high_bits >> (2 * s)) & 3
        g.scale[s] = d * np.float32((low | (high << 4)) - 32)
        split_nibbles(b[8 + 16 * s:24 + 16 * s], g.code[32 * s:32 * s + 32], 0)


@inline
def _best_index(values, v):  # type: ignore[no-untyped-def]
    """:func:`provenance.codecs.prediction.best_index` (torch's searchsorted form; NaN -> last)."""
    n = values.shape[0]
    hi = 0
    for t in range(n):
        hi += values[t] <= v
    if v != v:
        hi = n
    hi = min(max(hi, 1), n - 1)
    pick = hi - 1 if np.float32(v - values[hi - 1]) < np.float32(values[hi] - v) else hi
    if v <= values[0]:
        pick = 0
    if v >= values[n - 1]:
        pick = n - 1
    return pick


@inline
def _predict_iq4_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    """:func:`predict_iq4` on one block, with the stored super-scale (bytes 0..1) sharpening
    the tolerance where it is subnormal."""
    d16 = abs(f16(b, 0, f16_table))
    rel = np.float32(F16_REL)
    if d16 > np.float32(0.0):
        rel = max(rel, np.float32(np.float32(2.0 ** -25) / d16))
    sub = x.shape[0] // g.scale.shape[0]
    for k in range(g.scale.shape[0]):
        dl = g.scale[k]
        inv = inverse32(dl)
        at = k * sub  # 0-based views (gridcheck.cell_block)
        xk, u, idx, level = x[at:at + sub], p.u[at:at + sub], p.idx[at:at + sub], p.level[at:at + sub]
        valid, tol = p.valid[at:at + sub], p.tol[at:at + sub]
        for j in range(sub):
            v = np.float32(xk[j] * inv)
            i = _best_index(levels, v)
            u[j] = v
            idx[j] = i
            level[j] = levels[i]
            valid[j] = dl != np.float32(0.0)
            tol[j] = np.float32(np.float32(abs(v) * np.float32(rel + rel)) + np.float32(1e-4))
    return True


@kernel
def iq4_nl_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, levels):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _iq4_nl_grid, _predict_iq4_block,
          1, False, False, True, levels, 0, 15)


@kernel
def iq4_xs_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, levels):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _iq4_xs_grid, _predict_iq4_block,
          8, False, False, True, levels, 0, 15)


@kernel
def iq4_nl_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, lo_mid, hi_mid):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _iq4_nl_grid, 1, False, False, 0, 15, lo_mid, hi_mid)


@kernel
def iq4_xs_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, lo_mid, hi_mid):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _iq4_xs_grid, 8, False, False, 0, 15, lo_mid, hi_mid)


# ---- descriptors ----------------------------------------------------------------------

IQ4_NL = QuantType(T.IQ4_NL, iq4_nl, LevelGrid(iq4_levels), (0,), CompiledKernel(iq4_nl_compiled, (iq4_values,)), IQ4_RECIPE,
                   CompiledKernel(quantize_iq4_nl_compiled, (iq4_values,)), cells=CompiledKernel(iq4_nl_cells, cell_tables(iq4_levels)),
                   check=CompiledKernel(iq4_nl_check, check_tables(iq4_levels)))
IQ4_XS = QuantType(T.IQ4_XS, iq4_xs, LevelGrid(iq4_levels), (0,), CompiledKernel(iq4_xs_compiled, (iq4_values,)), IQ4_RECIPE,
                   CompiledKernel(quantize_iq4_xs_compiled, (iq4_values,)), cells=CompiledKernel(iq4_xs_cells, cell_tables(iq4_levels)),
                   check=CompiledKernel(iq4_xs_check, check_tables(iq4_levels)))

TYPES = (IQ4_NL, IQ4_XS)
