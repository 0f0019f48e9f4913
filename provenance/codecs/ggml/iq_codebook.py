"""IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: vector codebooks with separate signs.

Groups of 8 (IQ2) or 4 (IQ3) weights share one codebook entry of unsigned magnitudes
(+-{8, 25, 43} for IQ2 ...); signs come from 7-bit even-parity patterns (``ksigns``) or
plain sign bytes; 4-bit sub-scales ``d * (0.5 + s) * factor`` (IQ3_S: ``d * (1 + 2s)``).
The codebooks and the sign table are *data* of the format, taken at run time from the
installed gguf package, not retyped. Levels (entry times sign) are small integers, so
``scale * level`` rounds once, as in gguf-py. Torch kernels only: on the CPU they clear
the throughput goal already (docs/quantization.md). The grid's per-weight cells are a
relaxation of the joint codebook constraint. No recipe or quantizer here.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from provenance.codecs.kernels._common import (
    Decoded,
    DeviceTables,
    Workspace,
    f16_field,
    gather,
    gguf_codebook,
    nibble_scales,
    u16_field,
    u32_field,
)
from provenance.codecs.quanttype import LevelGrid, QuantType


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
    g2xxs = gguf_codebook(gq.IQ2_XXS).astype(np.int8)  # (256, 8) values 8/25/43
    g2xs = gguf_codebook(gq.IQ2_XS).astype(np.int8)  # (512, 8)
    t: dict[str, np.ndarray] = {
        "signs": signs,
        "ksigns": ks,
        # Codebook entry and sign pattern folded into one table, indexed like the stored
        # bits: IQ2_XXS by grid*128 + sign7, IQ2_XS by the raw uint16 (sign7 << 9 | grid9).
        "iq2xxs": (g2xxs[:, None, :] * ks[None, :, :]).reshape(-1, 8),
        "iq2xs": (ks[:, None, :] * g2xs[None, :, :]).reshape(-1, 8),
        "iq2s": gguf_codebook(gq.IQ2_S).astype(np.int8),  # (1024, 8)
        "iq3xxs": gguf_codebook(gq.IQ3_XXS).astype(np.int8),  # (256, 4)
        "iq3s": gguf_codebook(gq.IQ3_S).astype(np.int8),  # (512, 4)
    }
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()}
    out["shift7"] = torch.tensor([0, 7, 14, 21], dtype=torch.int64)
    out["crumb4"] = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    out["bit8"] = torch.arange(8, dtype=torch.uint8)
    return out


TABLES = DeviceTables(_build)

# ---- torch kernels ------------------------------------------------------------------


def _half_scale(d: torch.Tensor, s4: torch.Tensor, factor: float) -> torch.Tensor:
    """gguf's ``d * (0.5 + s) * factor`` in that order (float32 roundings)."""
    return torch.mul(d, s4.to(torch.float32).add_(0.5)).mul_(factor)


def iq2_xxs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    aux = u32_field(blocks, 2, 16, ws, "aux").view(n, 8, 2)
    hi = aux[:, :, 1:2]
    sign7 = hi.bitwise_right_shift(t["shift7"]).bitwise_and_(127)  # (n, 8, 4)
    grid = blocks[:, 2:66].view(n, 8, 8)[:, :, 0:4].to(torch.int64)
    idx = grid.bitwise_left_shift_(7).bitwise_or_(sign7)
    levels = gather(t["iq2xxs"], idx, ws, "lv")  # (n, 8, 4, 8)
    scale = _half_scale(d, hi.reshape(n, 8).bitwise_right_shift(28), 0.25)
    return Decoded(levels, scale.view(n, 8, 1, 1))


def iq2_xs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qs = u16_field(blocks, 2, 32, ws, "qs")  # sign7 << 9 | grid9: the table is indexed that way
    levels = gather(t["iq2xs"], qs, ws, "lv")  # (n, 32, 8)
    scale = _half_scale(d, nibble_scales(blocks[:, 66:74]), 0.25)
    return Decoded(levels.view(n, 16, 2, 8), scale.view(n, 16, 1, 1))


def iq2_s(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qh = blocks[:, 66:74].unsqueeze(2).bitwise_right_shift(t["crumb4"]).bitwise_and_(3).view(n, 32)
    idx = qh.to(torch.int32).bitwise_left_shift_(8).bitwise_or_(blocks[:, 2:34])
    grid = gather(t["iq2s"], idx, ws, "lv")  # (n, 32, 8)
    signs = gather(t["signs"], blocks[:, 34:66], ws, "sg")
    grid.mul_(signs)
    scale = _half_scale(d, nibble_scales(blocks[:, 74:82]), 0.25)
    return Decoded(grid.view(n, 16, 2, 8), scale.view(n, 16, 1, 1))


def iq3_xxs(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    grid = gather(t["iq3xxs"], blocks[:, 2:66], ws, "lv").view(n, 8, 4, 8)
    aux = u32_field(blocks, 66, 8, ws, "aux")
    sign7 = aux.unsqueeze(2).bitwise_right_shift(t["shift7"]).bitwise_and_(127)  # (n, 8, 4)
    grid.mul_(gather(t["ksigns"], sign7, ws, "sg"))
    scale = _half_scale(d, aux.bitwise_right_shift(28), 0.5)
    return Decoded(grid, scale.view(n, 8, 1, 1))


def iq3_s(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    d = f16_field(blocks, 0, ws, "d")
    qh = blocks[:, 66:74].unsqueeze(2).bitwise_right_shift(t["bit8"]).bitwise_and_(1).view(n, 64)
    idx = qh.to(torch.int32).bitwise_left_shift_(8).bitwise_or_(blocks[:, 2:66])
    grid = gather(t["iq3s"], idx, ws, "lv").view(n, 8, 4, 8)
    grid.mul_(gather(t["signs"], blocks[:, 74:106], ws, "sg").view(n, 8, 4, 8))
    s = nibble_scales(blocks[:, 106:110])
    scale = torch.mul(d, s.mul_(2).add_(1))  # gguf: d * (1 + 2*s), the integer formed in uint8
    return Decoded(grid, scale.view(n, 8, 1, 1))


# ---- grids ------------------------------------------------------------------------------


def codebook(name: str) -> torch.Tensor:
    """Entries x weights per entry, unsigned magnitudes (IQ2_XXS/IQ2_XS are stored folded
    with the 128 sign patterns: unfolded here)."""
    table = TABLES.on(torch.device("cpu"))[name]
    if name == "iq2xxs":
        return table.view(256, 128, 8)[:, 0].abs().clone()
    if name == "iq2xs":
        return table.view(128, 512, 8)[0].abs().clone()
    return table.clone()


def signed_levels(name: str) -> torch.Tensor:
    """Every per-weight level: the codebook's magnitudes with either sign, sorted."""
    mags = TABLES.on(torch.device("cpu"))[name].to(torch.float32).unique()
    mags = mags[mags > 0]
    return torch.cat([-mags, mags]).unique()  # sorted


def _grid(name: str) -> LevelGrid:
    return LevelGrid(partial(signed_levels, name), partial(codebook, name))


# ---- descriptors ----------------------------------------------------------------------

IQ2_XXS = QuantType(T.IQ2_XXS, iq2_xxs, _grid("iq2xxs"), (0,))
IQ2_XS = QuantType(T.IQ2_XS, iq2_xs, _grid("iq2xs"), (0,))
IQ2_S = QuantType(T.IQ2_S, iq2_s, _grid("iq2s"), (0,))
IQ3_XXS = QuantType(T.IQ3_XXS, iq3_xxs, _grid("iq3xxs"), (0,))
IQ3_S = QuantType(T.IQ3_S, iq3_s, _grid("iq3s"), (0,))

TYPES = (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S)
