"""Legacy 32-weight block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Byte layouts (ggml ``block_q*``), one f16 scale ``d`` (and f16 min ``m`` for the _1
types) then the codes; a nibble byte ``j`` holds weight ``j`` (low) and ``j+16`` (high);
Q5 keeps the fifth bit of weight ``j`` in bit ``j`` of a little-endian uint32 ``qh``.
"""
from __future__ import annotations

import torch

from provenance.quant.kernels._common import Decoded, DeviceTables, Workspace, f16_field, field, nibbles

_TABLES = DeviceTables(lambda: {"bit8": torch.arange(8, dtype=torch.uint8)})


def _nibble_codes(blocks: torch.Tensor, start: int, ws: Workspace) -> torch.Tensor:
    """uint8 ``(n, 32)`` codes 0..15 from 16 nibble bytes at ``start``."""
    n = blocks.shape[0]
    lv = ws.get("lv", (n, 2, 16), torch.uint8)
    nibbles(blocks[:, start:start + 16], lv[:, 0], lv[:, 1])
    return lv.view(n, 32)


def _add_fifth_bit(codes: torch.Tensor, blocks: torch.Tensor, start: int, ws: Workspace) -> None:
    """OR bit ``j`` of the uint32 at ``start`` into code ``j`` as its bit 4."""
    n = blocks.shape[0]
    bits = ws.get("qh.bits", (n, 4, 8), torch.uint8)
    shifts = _TABLES.on(blocks.device)["bit8"]
    qh = field(blocks, start, start + 4, ws, "qh")
    torch.bitwise_right_shift(qh.unsqueeze(-1), shifts, out=bits)
    bits.bitwise_and_(1).bitwise_left_shift_(4)
    codes.bitwise_or_(bits.view(n, 32))


def q4_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    codes = _nibble_codes(blocks, 2, ws).view(torch.int8).sub_(8)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1))


def q4_1(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    m = f16_field(blocks, 2, ws, "m")
    codes = _nibble_codes(blocks, 4, ws)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1), m.view(n, 1, 1))


def q5_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    codes = _nibble_codes(blocks, 6, ws)
    _add_fifth_bit(codes, blocks, 2, ws)
    return Decoded(codes.view(torch.int8).sub_(16).view(n, 1, 32), d.view(n, 1, 1))


def q5_1(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    m = f16_field(blocks, 2, ws, "m")
    codes = _nibble_codes(blocks, 8, ws)
    _add_fifth_bit(codes, blocks, 4, ws)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1), m.view(n, 1, 1))


def q8_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    # The int8 codes are used in place: a strided view, no copy.
    codes = blocks[:, 2:34].view(torch.int8)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1))
