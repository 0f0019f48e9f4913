"""Legacy 32-weight block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Byte layouts (ggml ``block_q*``): one f16 scale ``d`` (and f16 min ``m`` for the _1
types) then the codes; a nibble byte ``j`` holds weight ``j`` (low) and ``j+16`` (high);
Q5 keeps the fifth bit of weight ``j`` in bit ``j`` of a little-endian uint32 ``qh``.
"""
from __future__ import annotations

import torch

from provenance.codecs.kernels._common import (
    Decoded,
    Workspace,
    assemble,
    block_words,
    f16_field,
    f16_pair,
    plane,
    spread_bits,
)


def _nibble_codes(blocks: torch.Tensor, start: int, ws: Workspace) -> torch.Tensor:
    """Codes 0..15 of the 16 nibble bytes at ``start``: uint8 ``(n, 32)`` in weight order."""
    w = block_words(blocks)
    lo = plane(w, blocks.shape[0], 0, 0x0F, ws, "lo")
    hi = plane(w, blocks.shape[0], 4, 0x0F, ws, "hi")
    codes = ws.get("lv", (blocks.shape[0], 32), torch.uint8)
    return assemble([lo[:, start:start + 16], hi[:, start:start + 16]], codes)


def _add_fifth_bit(codes: torch.Tensor, blocks: torch.Tensor, start: int, ws: Workspace) -> None:
    """OR bit ``j`` of the uint32 at ``start`` into code ``j`` as its bit 4."""
    high = spread_bits(blocks, start, start + 4, ws, "qh", shift=4)  # (n, 4) words of 0/16 bytes
    codes.view(torch.int64).bitwise_or_(high)


def q4_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    codes = _nibble_codes(blocks, 2, ws).view(torch.int8).sub_(8)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1))


def q4_1(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    dm = f16_pair(blocks, 0, ws, "dm")
    d, m = dm[:, 0], dm[:, 1]
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
    dm = f16_pair(blocks, 0, ws, "dm")
    d, m = dm[:, 0], dm[:, 1]
    codes = _nibble_codes(blocks, 8, ws)
    _add_fifth_bit(codes, blocks, 4, ws)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1), m.view(n, 1, 1))


def q8_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    # The int8 codes are used in place: a strided view, no copy.
    codes = blocks[:, 2:34].view(torch.int8)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1))
