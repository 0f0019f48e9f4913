"""IQ4_NL, IQ4_XS (non-linear 16-level codebook) and IQ1_S, IQ1_M (ternary grid + delta).

The codebook and grid are format data taken from gguf-py (``tables``); IQ1 levels
``grid + delta`` are exact binary fractions (+-1/8 offsets), so one float32 product
``dl * (grid + delta)`` reproduces gguf-py bit for bit. Inner loop bounds come from
``out.shape`` (see :mod:`provenance.jit`).
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.native.fields import f16, u16
from provenance.jit import kernel

IQ1_DELTA = np.float32(0.125)


@kernel
def iq4_nl(blocks, out, f16_table, values):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        for j in range(half):
            q = np.int32(b[2 + j])
            y[j] = d * values[q & 0xF]
            y[half + j] = d * values[q >> 4]


@kernel
def iq4_xs(blocks, out, f16_table, values):  # type: ignore[no-untyped-def]
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


@kernel
def iq1_s(blocks, out, f16_table, grid):  # type: ignore[no-untyped-def]
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
def iq1_m(blocks, out, f16_table, grid):  # type: ignore[no-untyped-def]
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
