"""MXFP4 and NVFP4: 4-bit E2M1 codes (doubled values) with an 8-bit block scale.

MXFP4: 32-weight blocks, one e8m0 exponent byte (halved: ``ggml_e8m0_to_fp32_half``), then
16 nibble bytes (weight ``j`` low, ``16 + j`` high). NVFP4: 64-weight blocks, four
unsigned E4M3 sub-block scales (halved), then 4 x 8 nibble bytes. The scale tables come
from gguf-py's own decoders (one 256-entry float32 table each); the value is one float32
product ``scale * level``, as in gguf-py. No recipe or quantizer here.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from provenance.codecs.kernels._common import Decoded, DeviceTables, Workspace, gather
from provenance.codecs.quanttype import CompiledKernel, LevelGrid, QuantType
from provenance.jit import kernel


def _build() -> dict[str, torch.Tensor]:
    values = np.array(gq.MXFP4.kvalues, dtype=np.int8)
    lo, hi = np.arange(256) & 15, np.arange(256) >> 4
    # NVFP4's unsigned E4M3 sub-block scales (already halved), one float per byte value.
    ue4m3 = np.asarray(gq.NVFP4.ue4m3_to_fp32(np.arange(256, dtype=np.uint8)), dtype=np.float32).reshape(256, 1)
    return {
        # byte -> (level of low nibble, level of high nibble)
        "mxfp4.pair": torch.from_numpy(np.ascontiguousarray(np.stack([values[lo], values[hi]], axis=1))),
        "ue4m3": torch.from_numpy(np.ascontiguousarray(ue4m3)),
    }


TABLES = DeviceTables(_build)

# ---- torch kernels ------------------------------------------------------------------


def mxfp4(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    e = blocks[:, 0:1].to(torch.int32)
    # e8m0 exponent, halved (ggml_e8m0_to_fp32_half): tiny exponents become subnormals.
    bits = torch.where(e < 2, torch.bitwise_left_shift(0x00200000, e), (e - 1).bitwise_left_shift_(23))
    d = bits.view(torch.float32)
    pairs = gather(TABLES.on(blocks.device)["mxfp4.pair"], blocks[:, 1:17], ws, "lv")
    return Decoded(pairs.transpose(1, 2).unsqueeze(1), d.view(n, 1, 1, 1))


def nvfp4(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """64-weight blocks: 4 E4M3 scales, then 4 x 8 bytes (low nibbles first)."""
    n = blocks.shape[0]
    t = TABLES.on(blocks.device)
    scale = gather(t["ue4m3"], blocks[:, 0:4], ws, "d")  # (n, 4, 1)
    pairs = gather(t["mxfp4.pair"], blocks[:, 4:36].view(n, 4, 8), ws, "lv")  # (n, 4, 8, 2)
    return Decoded(pairs.transpose(2, 3), scale.view(n, 4, 1, 1))


# ---- compiled CPU kernels (inner loop bounds from out.shape, see provenance.jit) -----


@cache
def fp4_values() -> np.ndarray:
    return np.array(gq.MXFP4.kvalues, dtype=np.float32)


@cache
def e8m0_half() -> np.ndarray:
    return np.asarray(gq.MXFP4.e8m0_to_fp32_half(np.arange(256, dtype=np.uint8)), dtype=np.float32)


@cache
def ue4m3_half() -> np.ndarray:
    return np.asarray(gq.NVFP4.ue4m3_to_fp32(np.arange(256, dtype=np.uint8)), dtype=np.float32)


@kernel
def mxfp4_compiled(blocks, out, f16_table, values, scales):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = scales[b[0]]
        for j in range(half):
            q = np.int32(b[1 + j])
            y[j] = d * values[q & 0xF]
            y[half + j] = d * values[q >> 4]


@kernel
def nvfp4_compiled(blocks, out, f16_table, values, scales):  # type: ignore[no-untyped-def]
    run = out.shape[1] // 8  # 8 bytes (16 weights) per sub-block
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        for s in range(4):
            d = scales[b[s]]
            for j in range(run):
                q = np.int32(b[4 + 8 * s + j])
                y[16 * s + j] = d * values[q & 0xF]
                y[16 * s + run + j] = d * values[q >> 4]


# ---- descriptors ----------------------------------------------------------------------


def fp4_levels() -> torch.Tensor:
    return torch.from_numpy(fp4_values()).unique()  # sorted


MXFP4 = QuantType(T.MXFP4, mxfp4, LevelGrid(fp4_levels), compiled=CompiledKernel(mxfp4_compiled, (fp4_values, e8m0_half)))
NVFP4 = QuantType(T.NVFP4, nvfp4, LevelGrid(fp4_levels), compiled=CompiledKernel(nvfp4_compiled, (fp4_values, ue4m3_half)))

TYPES = (MXFP4, NVFP4)
