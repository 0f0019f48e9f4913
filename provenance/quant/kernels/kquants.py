"""K-quants (Q2_K..Q6_K) and the ternary TQ1_0 / TQ2_0: 256-weight super-blocks.

Element orders follow ggml's ``dequantize_row_q*_K``: a 2-bit plane byte ``j`` of half
``h`` holds weights ``h*128 + s*32 + j`` in bits ``2s``; a high-bit byte ``j`` holds
bit ``b`` of weight ``b*32 + j``; Q4_K/Q5_K nibble byte ``c*32 + j`` holds weights
``c*64 + j`` (low) and ``c*64 + 32 + j`` (high). Because every plane is a run of 32
consecutive weights, the unpacking is done eight byte lanes at a time on int64 words.
"""
from __future__ import annotations

import torch

from provenance.quant.kernels._common import (
    LO1,
    LO2,
    Decoded,
    DeviceTables,
    Workspace,
    f16_field,
    field,
    swar_bits,
    swar_crumbs,
    swar_nibbles,
    words,
)

_TABLES = DeviceTables(
    lambda: {
        "crumb4": torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 4, 1),
        "pow5": torch.tensor([1, 3, 9, 27, 81], dtype=torch.uint8).view(1, 5, 1),
        "pow4": torch.tensor([1, 3, 9, 27], dtype=torch.uint8).view(1, 4, 1),
    }
)


def _planes2(blocks: torch.Tensor, start: int, ws: Workspace) -> torch.Tensor:
    """2-bit codes of 64 bytes at ``start`` -> int64 ``(n, 2, 4, 4)``: 256 byte lanes in weight order."""
    n = blocks.shape[0]
    qs = words(blocks, start, start + 64, ws, "qs").view(n, 2, 4)
    return swar_crumbs(qs, ws.get("lv", (n, 2, 4, 4), torch.int64))


def _high_bits(blocks: torch.Tensor, start: int, ws: Workspace, shift_to: int) -> torch.Tensor:
    """Bit ``b`` of byte ``j`` of 32 bytes at ``start`` -> lane ``b*32 + j`` (int64
    ``(n, 8, 4)``), moved to bit ``shift_to``."""
    n = blocks.shape[0]
    w = words(blocks, start, start + 32, ws, "qh")
    out = swar_bits(w, ws.get("hbit", (n, 8, 4), torch.int64))
    return out.bitwise_left_shift_(shift_to) if shift_to else out


def q2_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    sc = blocks[:, 0:16]
    d = f16_field(blocks, 80, ws, "d")
    dmin = f16_field(blocks, 82, ws, "dmin")
    codes = _planes2(blocks, 16, ws).view(torch.uint8)
    scale = torch.mul(d, sc.bitwise_and(0x0F))
    mins = torch.mul(dmin, sc.bitwise_right_shift(4))
    return Decoded(codes.view(n, 16, 16), scale.view(n, 16, 1), mins.view(n, 16, 1), subtract_offset=True)


def q3_k_scales(blocks: torch.Tensor) -> torch.Tensor:
    """The 16 signed 6-bit sub-block scales of Q3_K (bytes 96..107), int8 ``(n, 16)``."""
    n = blocks.shape[0]
    low = blocks[:, 96:104]
    high = blocks[:, 104:108]
    lo = torch.cat([low.bitwise_and(0x0F), low.bitwise_right_shift(4)], dim=1)
    shifts = _TABLES.on(blocks.device)["crumb4"]
    hi = high.unsqueeze(1).bitwise_right_shift(shifts).bitwise_and_(3).reshape(n, 16)
    return lo.bitwise_or_(hi.bitwise_left_shift_(4)).view(torch.int8).sub_(32)


def q3_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 108, ws, "d")
    codes = _planes2(blocks, 32, ws)
    # level = low2 - 4 when the hmask bit is clear, low2 when it is set.
    codes.view(n, 8, 4).bitwise_or_(_high_bits(blocks, 0, ws, 2))
    levels = codes.view(torch.int8).sub_(4)
    scale = torch.mul(d, q3_k_scales(blocks))
    return Decoded(levels.view(n, 16, 16), scale.view(n, 16, 1))


def k_scale_min(blocks: torch.Tensor, ws: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: the 12 packed bytes at 4..15 -> 8 six-bit scales and 8 six-bit mins,
    uint8 ``(n, 8)`` each. As three little-endian words ``a, b, c``:
    scales = ``a & 63`` (x4), ``(c & 15) | ((a >> 2) & 48)`` (x4); mins likewise from
    ``b`` and ``c >> 4``. Done four byte lanes at a time on int32 words."""
    n = blocks.shape[0]
    w = field(blocks, 4, 16, ws, "kscales").view(torch.int32)  # (n, 3)
    a, b, c = w[:, 0], w[:, 1], w[:, 2]
    out = ws.get("kscales.out", (2, n, 2), torch.int32)
    torch.bitwise_and(a, 0x3F3F3F3F, out=out[0, :, 0])
    torch.bitwise_and(b, 0x3F3F3F3F, out=out[1, :, 0])
    hi = torch.bitwise_right_shift(a, 2).bitwise_and_(0x30303030)
    torch.bitwise_and(c, 0x0F0F0F0F, out=out[0, :, 1]).bitwise_or_(hi)
    hi = torch.bitwise_right_shift(b, 2).bitwise_and_(0x30303030)
    torch.bitwise_right_shift(c, 4, out=out[1, :, 1]).bitwise_and_(0x0F0F0F0F).bitwise_or_(hi)
    both = out.view(torch.uint8).view(2, n, 8)
    return both[0], both[1]


_HALF_BITS = DeviceTables(lambda: {"q5k": torch.tensor([[0, 2, 4, 6], [1, 3, 5, 7]], dtype=torch.int64).view(2, 1, 4, 1)})


def _q45_k(blocks: torch.Tensor, ws: Workspace, qs_start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes as int64 words ``(2, n, 4, 4)`` (plane s = low/high nibble of 32-byte group c),
    and the per-32 scales and mins ``(n, 4, 2, 1)`` in the same (c, s) order."""
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    dmin = f16_field(blocks, 2, ws, "dmin")
    sc, mn = k_scale_min(blocks, ws)
    qs = words(blocks, qs_start, qs_start + 128, ws, "qs").view(n, 4, 4)
    codes = ws.get("lv", (2, n, 4, 4), torch.int64)
    swar_nibbles(qs, codes[0], codes[1])
    return codes, torch.mul(d, sc).view(n, 4, 2, 1), torch.mul(dmin, mn).view(n, 4, 2, 1)


def _k_levels(codes: torch.Tensor) -> torch.Tensor:
    n = codes.shape[1]
    return codes.view(torch.uint8).view(2, n, 4, 32).permute(1, 2, 0, 3)  # (n, c, s, 32)


def q4_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    codes, scale, mins = _q45_k(blocks, ws, 16)
    return Decoded(_k_levels(codes), scale, mins, subtract_offset=True)


def q5_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    codes, scale, mins = _q45_k(blocks, ws, 48)
    # Bit b = 2c + s of qh byte j is the fifth bit of weight (c, s, j): shift straight
    # into the codes' (s, n, c, word) layout so every write stays contiguous.
    qh = words(blocks, 16, 48, ws, "qh").view(1, n, 1, 4)
    high = ws.get("hbit", (2, n, 4, 4), torch.int64)
    torch.bitwise_right_shift(qh, _HALF_BITS.on(blocks.device)["q5k"], out=high)
    codes.bitwise_or_(high.bitwise_and_(LO1).bitwise_left_shift_(4))
    return Decoded(_k_levels(codes), scale, mins, subtract_offset=True)


_Q6_SHIFTS = DeviceTables(lambda: {"q6k": torch.tensor([[0, 2], [4, 6]], dtype=torch.int64).view(2, 1, 1, 2, 1)})


def q6_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """Weight ``h*128 + s*64 + j``: nibble s of ql byte ``h*64 + j``, and as bits 4-5 the
    crumb ``k = 2s + j//32`` of qh byte ``h*32 + j%32``."""
    n = blocks.shape[0]
    d = f16_field(blocks, 208, ws, "d")
    ql = words(blocks, 0, 128, ws, "ql").view(n, 2, 8)
    codes = ws.get("lv", (2, n, 2, 8), torch.int64)  # (s, n, h, word)
    swar_nibbles(ql, codes[0], codes[1])
    qh = words(blocks, 128, 192, ws, "qh").view(1, n, 2, 1, 4)
    high = ws.get("hbit", (2, n, 2, 2, 4), torch.int64)  # (s, n, h, j//32, word)
    torch.bitwise_right_shift(qh, _Q6_SHIFTS.on(blocks.device)["q6k"], out=high)
    codes.bitwise_or_(high.bitwise_and_(LO2).bitwise_left_shift_(4).view(2, n, 2, 8))
    levels = codes.view(torch.int8).sub_(32).view(2, n, 2, 4, 16).permute(1, 2, 0, 3, 4)
    scale = torch.mul(d, blocks[:, 192:208].view(torch.int8))
    return Decoded(levels, scale.view(n, 2, 2, 4, 1))


def tq1_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """Base-3 packing: byte ``x`` times ``3**p`` (mod 256) puts digit ``p`` on top;
    ``(y * 3) >> 8`` reads it back (ggml's TQ1_0 trick)."""
    n = blocks.shape[0]
    t = _TABLES.on(blocks.device)
    d = f16_field(blocks, 52, ws, "d")
    packed = ws.get("tq.packed", (n, 256), torch.uint8)
    torch.mul(blocks[:, 0:32].unsqueeze(1), t["pow5"], out=packed[:, 0:160].view(n, 5, 32))
    torch.mul(blocks[:, 32:48].unsqueeze(1), t["pow5"], out=packed[:, 160:240].view(n, 5, 16))
    torch.mul(blocks[:, 48:52].unsqueeze(1), t["pow4"], out=packed[:, 240:256].view(n, 4, 4))
    wide = ws.get("tq.wide", (n, 256), torch.int16)
    wide.copy_(packed)
    wide.mul_(3).bitwise_right_shift_(8).sub_(1)
    levels = ws.get("lv", (n, 256), torch.int8)
    levels.copy_(wide)
    return Decoded(levels.view(n, 1, 256), d.view(n, 1, 1))


def tq2_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 64, ws, "d")
    levels = _planes2(blocks, 0, ws).view(torch.int8).sub_(1)
    return Decoded(levels.view(n, 1, 256), d.view(n, 1, 1))
