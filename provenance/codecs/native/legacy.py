"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-weight blocks, one f16 scale (and f16 min).

Nibble byte ``j`` holds weight ``j`` (low) and ``16 + j`` (high); Q5 fifth bits are bit
``i`` of the 32-bit ``qh`` for weight ``i``. Arithmetic as gguf-py: ``d * q`` for the
symmetric types (levels already centred), ``d * q + m`` for the ones with a min.
Inner loop bounds come from ``out.shape`` (see :mod:`provenance.jit`).
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.native.fields import f16, u32
from provenance.jit import kernel


@kernel
def q4_0(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        for j in range(half):
            q = np.int64(b[2 + j])
            y[j] = d * np.float32((q & 0xF) - 8)
            y[half + j] = d * np.float32((q >> 4) - 8)


@kernel
def q4_1(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, m = f16(b, 0, f16_table), f16(b, 2, f16_table)
        for j in range(half):
            q = np.int64(b[4 + j])
            y[j] = d * np.float32(q & 0xF) + m
            y[half + j] = d * np.float32(q >> 4) + m


@kernel
def q5_0(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        qh = u32(b, 2)
        for j in range(half):
            q = np.int64(b[6 + j])
            y[j] = d * np.float32(((q & 0xF) | (((qh >> j) & 1) << 4)) - 16)
            y[half + j] = d * np.float32(((q >> 4) | (((qh >> (half + j)) & 1) << 4)) - 16)


@kernel
def q5_1(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, m = f16(b, 0, f16_table), f16(b, 2, f16_table)
        qh = u32(b, 4)
        for j in range(half):
            q = np.int64(b[8 + j])
            y[j] = d * np.float32((q & 0xF) | (((qh >> j) & 1) << 4)) + m
            y[half + j] = d * np.float32((q >> 4) | (((qh >> (half + j)) & 1) << 4)) + m


@kernel
def q8_0(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    signed = blocks.view(np.int8)
    width = out.shape[1]
    for i in range(blocks.shape[0]):
        d = f16(blocks[i], 0, f16_table)
        s, y = signed[i], out[i]
        for j in range(width):
            y[j] = np.float32(s[2 + j]) * d
