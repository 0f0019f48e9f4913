"""IQ types (importance-matrix codebook quants), IQ4_NL/IQ4_XS and MXFP4.

The codebooks (``iq2xxs_grid`` etc.) and the sign table are *data* of the format; they
are taken at run time from the installed gguf package (a dependency), not retyped.
Per-weight levels are small integers (the codebook entry times its sign, or the
non-linear IQ4/MXFP4 level) except IQ1, whose levels ``grid + delta`` are exact binary
fractions; either way ``scale * level`` rounds once, as in gguf-py.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import quants as gq

from provenance.codecs.kernels._common import (
    Decoded,
    DeviceTables,
    Workspace,
    f16_field,
    u16_field,
    u32_field,
)


def _codebook(cls: type) -> np.ndarray:
    cls.init_grid()
    grid = np.asarray(cls.grid).reshape(cls.grid_shape)
    return grid


def sign_patterns() -> np.ndarray:
    """``(256, 8)`` int8: +1/-1 for each bit of a sign byte (bit k set -> weight k negative)."""
    bits = (np.arange(256, dtype=np.uint16)[:, None] >> np.arange(8)) & 1
    return (1 - 2 * bits).astype(np.int8)


def ksigns() -> np.ndarray:
    """The 128-entry 7-bit -> 8-bit even-parity sign table of IQ2/IQ3."""
    return np.frombuffer(gq.IQ2_XXS.ksigns, dtype=np.uint8).copy()


def _build() -> dict[str, torch.Tensor]:
    signs = sign_patterns()
    ks = signs[ksigns()]  # (128, 8) +-1
    t: dict[str, np.ndarray] = {
        "signs": signs,
        "ksigns": ks,
        "iq4": np.array(gq.IQ4_NL.kvalues, dtype=np.int8),
        "mxfp4": np.array(gq.MXFP4.kvalues, dtype=np.int8),
    }
    g2xxs = _codebook(gq.IQ2_XXS).astype(np.int8)  # (256, 8) values 8/25/43
    g2xs = _codebook(gq.IQ2_XS).astype(np.int8)  # (512, 8)
    # Codebook entry and sign pattern folded into one table, indexed like the stored bits:
    # IQ2_XXS by grid*128 + sign7, IQ2_XS by the raw uint16 (sign7 << 9 | grid9).
    t["iq2xxs"] = (g2xxs[:, None, :] * ks[None, :, :]).reshape(-1, 8)
    t["iq2xs"] = (ks[:, None, :] * g2xs[None, :, :]).reshape(-1, 8)
    t["iq2s"] = _codebook(gq.IQ2_S).astype(np.int8)  # (1024, 8)
    t["iq3xxs"] = _codebook(gq.IQ3_XXS).astype(np.int8)  # (256, 4)
    t["iq3s"] = _codebook(gq.IQ3_S).astype(np.int8)  # (512, 4)
    t["iq1s"] = _codebook(gq.IQ1_S).astype(np.int8)  # (2048, 8) values -1/0/1
    # Byte -> (level of low nibble, level of high nibble) for the 16-level types.
    lo, hi = np.arange(256) & 15, np.arange(256) >> 4
    t["iq4.pair"] = np.stack([t["iq4"][lo], t["iq4"][hi]], axis=1)
    t["mxfp4.pair"] = np.stack([t["mxfp4"][lo], t["mxfp4"][hi]], axis=1)
    # NVFP4's unsigned E4M3 sub-block scales (already halved), one float per byte value.
    t["ue4m3"] = np.asarray(gq.NVFP4.ue4m3_to_fp32(np.arange(256, dtype=np.uint8)), dtype=np.float32).reshape(256, 1)
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()}
    out["shift7"] = torch.tensor([0, 7, 14, 21], dtype=torch.int64)
    out["crumb4"] = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    out["tri4"] = torch.tensor([0, 3, 6, 9], dtype=torch.int32)
    out["bit8"] = torch.arange(8, dtype=torch.uint8)
    out["pair16"] = torch.tensor([0, 2, 4, 6, 8, 10, 12, 14], dtype=torch.int32)
    return out


TABLES = DeviceTables(_build)


_WORD = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _gather(table: torch.Tensor, idx: torch.Tensor, ws: Workspace, name: str) -> torch.Tensor:
    """Rows of ``table`` at ``idx`` (any integer dtype/shape) -> ``idx.shape + (w,)``.

    Each table row is reinterpreted as one machine word so ``index_select`` moves one
    element per index: 4-7x faster on CPU than gathering narrow 2-D rows.
    """
    flat = ws.get(name + ".idx", (idx.numel(),), torch.int32)
    flat.copy_(idx.reshape(-1))
    width = table.shape[1] * table.element_size()
    word = _WORD.get(width)
    if word is None:
        out = ws.get(name, (idx.numel(), table.shape[1]), table.dtype)
        torch.index_select(table, 0, flat, out=out)
        return out.view(*idx.shape, table.shape[1])
    packed = table.view(word).view(-1)
    out = ws.get(name + ".w", (idx.numel(),), word)
    torch.index_select(packed, 0, flat, out=out)
    return out.view(table.dtype).view(*idx.shape, table.shape[1])


def _half_scale(d: torch.Tensor, s4: torch.Tensor, factor: float) -> torch.Tensor:
    """gguf's ``d * (0.5 + s) * factor`` in that order (float32 roundings)."""
    return torch.mul(d, s4.to(torch.float32).add_(0.5)).mul_(factor)


def iq4_nl(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    pairs = _gather(TABLES.on(blocks.device)["iq4.pair"], blocks[:, 2:18], ws, "lv")  # (n, 16, 2)
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
    pairs = _gather(TABLES.on(blocks.device)["iq4.pair"], blocks[:, 8:136].view(n, 8, 16), ws, "lv")
    return Decoded(pairs.transpose(2, 3), scale.view(n, 8, 1, 1))


def mxfp4(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    e = blocks[:, 0:1].to(torch.int32)
    # e8m0 exponent, halved (ggml_e8m0_to_fp32_half): tiny exponents become subnormals.
    bits = torch.where(e < 2, torch.bitwise_left_shift(0x00200000, e), (e - 1).bitwise_left_shift_(23))
    d = bits.view(torch.float32)
    pairs = _gather(TABLES.on(blocks.device)["mxfp4.pair"], blocks[:, 1:17], ws, "lv")
    return Decoded(pairs.transpose(1, 2).unsqueeze(1), d.view(n, 1, 1, 1))


def nvfp4(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """64-weight blocks: 4 E4M3 scales, then 4 x 8 bytes (low nibbles first)."""
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    scale = _gather(t["ue4m3"], blocks[:, 0:4], ws, "d")  # (n, 4, 1)
    pairs = _gather(t["mxfp4.pair"], blocks[:, 4:36].view(n, 4, 8), ws, "lv")  # (n, 4, 8, 2)
    return Decoded(pairs.transpose(2, 3), scale.view(n, 4, 1, 1))


def iq2_xxs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    aux = u32_field(blocks, 2, 16, ws, "aux").view(n, 8, 2)
    hi = aux[:, :, 1:2]
    sign7 = hi.bitwise_right_shift(t["shift7"]).bitwise_and_(127)  # (n, 8, 4)
    grid = blocks[:, 2:66].view(n, 8, 8)[:, :, 0:4].to(torch.int64)
    idx = grid.bitwise_left_shift_(7).bitwise_or_(sign7)
    levels = _gather(t["iq2xxs"], idx, ws, "lv")  # (n, 8, 4, 8)
    scale = _half_scale(d, hi.reshape(n, 8).bitwise_right_shift(28), 0.25)
    return Decoded(levels, scale.view(n, 8, 1, 1))


def _nibble_scales(src: torch.Tensor) -> torch.Tensor:
    """Bytes ``(n, k)`` -> 4-bit scales ``(n, 2k)``, low nibble first."""
    return torch.stack([src.bitwise_and(0x0F), src.bitwise_right_shift(4)], dim=2).view(src.shape[0], -1)


def iq2_xs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qs = u16_field(blocks, 2, 32, ws, "qs")  # sign7 << 9 | grid9: the table is indexed that way
    levels = _gather(t["iq2xs"], qs, ws, "lv")  # (n, 32, 8)
    scale = _half_scale(d, _nibble_scales(blocks[:, 66:74]), 0.25)
    return Decoded(levels.view(n, 16, 2, 8), scale.view(n, 16, 1, 1))


def iq2_s(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qh = blocks[:, 66:74].unsqueeze(2).bitwise_right_shift(t["crumb4"]).bitwise_and_(3).view(n, 32)
    idx = qh.to(torch.int32).bitwise_left_shift_(8).bitwise_or_(blocks[:, 2:34])
    grid = _gather(t["iq2s"], idx, ws, "lv")  # (n, 32, 8)
    signs = _gather(t["signs"], blocks[:, 34:66], ws, "sg")
    grid.mul_(signs)
    scale = _half_scale(d, _nibble_scales(blocks[:, 74:82]), 0.25)
    return Decoded(grid.view(n, 16, 2, 8), scale.view(n, 16, 1, 1))


def iq3_xxs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    grid = _gather(t["iq3xxs"], blocks[:, 2:66], ws, "lv").view(n, 8, 4, 8)
    aux = u32_field(blocks, 66, 8, ws, "aux")
    sign7 = aux.unsqueeze(2).bitwise_right_shift(t["shift7"]).bitwise_and_(127)  # (n, 8, 4)
    grid.mul_(_gather(t["ksigns"], sign7, ws, "sg"))
    scale = _half_scale(d, aux.bitwise_right_shift(28), 0.5)
    return Decoded(grid, scale.view(n, 8, 1, 1))


def iq3_s(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qh = blocks[:, 66:74].unsqueeze(2).bitwise_right_shift(t["bit8"]).bitwise_and_(1).view(n, 64)
    idx = qh.to(torch.int32).bitwise_left_shift_(8).bitwise_or_(blocks[:, 2:66])
    grid = _gather(t["iq3s"], idx, ws, "lv").view(n, 8, 4, 8)
    grid.mul_(_gather(t["signs"], blocks[:, 74:106], ws, "sg").view(n, 8, 4, 8))
    s = _nibble_scales(blocks[:, 106:110])
    scale = torch.mul(d, s.mul_(2).add_(1))  # gguf: d * (1 + 2*s), the integer formed in uint8
    return Decoded(grid, scale.view(n, 8, 1, 1))


def _iq1_levels(grid_idx: torch.Tensor, negative_delta: torch.Tensor, ws: Workspace, n: int) -> torch.Tensor:
    """``grid + delta`` as float32 ``(n, 32, 8)``; delta is +-1/8 per group of 8 weights."""
    t = TABLES.on(grid_idx.device)
    grid = _gather(t["iq1s"], grid_idx, ws, "grid")
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
    nib = _nibble_scales(blocks[:, 32:48])  # (n, 32): one per group of 8
    idx = nib.bitwise_and(7).to(torch.int32).bitwise_left_shift_(8).bitwise_or_(blocks[:, 0:32])
    levels = _iq1_levels(idx, nib.bitwise_right_shift(3), ws, n)
    return Decoded(levels.view(n, 16, 2, 8), scale.view(n, 16, 1, 1))
