"""IQ1_S and IQ1_M: 8-weight entries of a ternary (-1/0/1) codebook plus a +-1/8 delta.

IQ1_S: f16 ``d``, 32 low index bytes, then eight uint16 ``qh`` (3 high index bits per
group of 8, a 3-bit sub-scale, the delta's sign). IQ1_M: 32 low index bytes, 16 bytes of
(3 high index bits, delta sign) nibbles, and four uint16 holding 16 3-bit sub-scales and,
in their top nibbles, the f16 super-scale. The codebook is format data taken from
gguf-py. Levels ``grid + delta`` are exact binary fractions, so one float32 product
``dl * (grid + delta)`` reproduces gguf-py bit for bit. A vector quantizer: the grid's
per-weight cells are a relaxation of the codebook. No recipe or quantizer here.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from provenance.codecs.kernels._common import Decoded, DeviceTables, Workspace, f16_field, gather, gguf_codebook, nibble_scales, u16_field
from provenance.codecs.native.fields import f16, u16
from provenance.codecs.quanttype import CompiledKernel, LevelGrid, QuantType
from provenance.jit import kernel

IQ1_DELTA = np.float32(0.125)

TABLES = DeviceTables(
    lambda: {
        "iq1s": torch.from_numpy(np.ascontiguousarray(gguf_codebook(gq.IQ1_S).astype(np.int8))),  # (2048, 8) -1/0/1
        "tri4": torch.tensor([0, 3, 6, 9], dtype=torch.int32),
    }
)

# ---- torch kernels ------------------------------------------------------------------


def _iq1_levels(grid_idx: torch.Tensor, negative_delta: torch.Tensor, ws: Workspace, n: int) -> torch.Tensor:
    """``grid + delta`` as float32 ``(n, 32, 8)``; delta is +-1/8 per group of 8 weights."""
    t = TABLES.on(grid_idx.device)
    grid = gather(t["iq1s"], grid_idx, ws, "grid")
    levels = ws.get("lv", (n, 32, 8), torch.float32)
    levels.copy_(grid)
    delta = ws.get("delta", (n, 32, 1), torch.float32)
    delta.copy_(negative_delta.reshape(n, 32, 1)).mul_(-0.25).add_(0.125)  # 0 -> 0.125, 1 -> -0.125
    return levels.add_(delta)


def iq1_s(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qh = u16_field(blocks, 34, 8, ws, "qh")  # (n, 8) one per 32 weights
    hi = qh.unsqueeze(2).bitwise_right_shift(t["tri4"]).bitwise_and_(7).view(n, 32)
    idx = hi.bitwise_left_shift_(8).bitwise_or_(blocks[:, 2:34])
    neg = qh.bitwise_right_shift(15).unsqueeze(2).expand(n, 8, 4)
    levels = _iq1_levels(idx, neg, ws, n)
    scale = torch.mul(d, qh.bitwise_right_shift(12).bitwise_and_(7).mul_(2).add_(1))
    return Decoded(levels.view(n, 8, 4, 8), scale.view(n, 8, 1, 1))


def iq1_m_scales(blocks: torch.Tensor, ws: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """IQ1_M's f16 super-scale, spread over the top nibbles of 4 uint16 (float32
    ``(n, 1)``), and the raw words (int32 ``(n, 4)``) that also hold 16 3-bit sub-scales."""
    s = u16_field(blocks, 48, 4, ws, "sc")
    bits = (
        s[:, 0:1].bitwise_right_shift(12)
        | s[:, 1:2].bitwise_right_shift(8).bitwise_and_(0x00F0)
        | s[:, 2:3].bitwise_right_shift(4).bitwise_and_(0x0F00)
        | s[:, 3:4].bitwise_and(0xF000)
    )
    bits = torch.where(bits >= 32768, bits - 65536, bits).to(torch.int16)
    return bits.view(torch.float16).to(torch.float32), s


def iq1_m(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d, s = iq1_m_scales(blocks, ws)
    sub = s.unsqueeze(2).bitwise_right_shift(t["tri4"]).bitwise_and_(7).view(n, 16)
    scale = torch.mul(d, sub.mul_(2).add_(1))
    nib = nibble_scales(blocks[:, 32:48])  # (n, 32): one per group of 8
    idx = nib.bitwise_and(7).to(torch.int32).bitwise_left_shift_(8).bitwise_or_(blocks[:, 0:32])
    levels = _iq1_levels(idx, nib.bitwise_right_shift(3), ws, n)
    return Decoded(levels.view(n, 16, 2, 8), scale.view(n, 16, 1, 1))


# ---- compiled CPU kernels (inner loop bounds from out.shape, see provenance.jit) -----


@cache
def iq1_grid() -> np.ndarray:
    return np.ascontiguousarray(gguf_codebook(gq.IQ1_S).astype(np.float32))


@kernel
def iq1_s_compiled(blocks, out, f16_table, grid):  # type: ignore[no-untyped-def]
    group = out.shape[1] // 32
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        for s in range(8):
            qh = u16(b, 34 + 2 * s)
            dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
            delta = -IQ1_DELTA if qh & 0x8000 else IQ1_DELTA
            for g in range(4):
                idx = np.int64(b[2 + 4 * s + g]) | (((qh >> (3 * g)) & 7) << 8)
                for j in range(group):
                    y[32 * s + 8 * g + j] = dl * (grid[idx, j] + delta)


@kernel
def iq1_m_compiled(blocks, out, f16_table, grid):  # type: ignore[no-untyped-def]
    dl = np.empty(16, np.float32)
    group = out.shape[1] // 32
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        # the f16 super-scale is spread over the top nibbles of the four scale words
        bits = ((u16(b, 48) & 0xF000) >> 12) | ((u16(b, 50) & 0xF000) >> 8) | ((u16(b, 52) & 0xF000) >> 4) | (u16(b, 54) & 0xF000)
        d = f16_table[bits]
        for k in range(16):
            dl[k] = d * np.float32(2 * ((u16(b, 48 + 2 * (k >> 2)) >> (3 * (k & 3))) & 7) + 1)
        for g in range(32):
            qh = np.int64(b[32 + (g >> 1)]) >> (4 * (g & 1))
            idx = np.int64(b[g]) | ((qh & 7) << 8)
            delta = -IQ1_DELTA if qh & 8 else IQ1_DELTA
            scale = dl[g >> 1]
            for j in range(group):
                y[8 * g + j] = scale * (grid[idx, j] + delta)


# ---- descriptors ----------------------------------------------------------------------


def iq1_levels() -> torch.Tensor:
    """Every ``grid + delta`` value: {-1, 0, 1} +- 1/8."""
    return torch.tensor([-1.125, -0.875, -0.125, 0.125, 0.875, 1.125])


def iq1_codebook() -> torch.Tensor:
    return TABLES.on(torch.device("cpu"))["iq1s"].clone()


IQ1_GRID = LevelGrid(iq1_levels, iq1_codebook)
IQ1_S = QuantType(T.IQ1_S, iq1_s, IQ1_GRID, (0,), CompiledKernel(iq1_s_compiled, (iq1_grid,)))
IQ1_M = QuantType(T.IQ1_M, iq1_m, IQ1_GRID, compiled=CompiledKernel(iq1_m_compiled, (iq1_grid,)))

TYPES = (IQ1_S, IQ1_M)
