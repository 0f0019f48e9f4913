"""MXFP4 and NVFP4: 4-bit E2M1 codes (doubled values) with an 8-bit block scale.

The scales (MXFP4: e8m0, halved; NVFP4: unsigned E4M3, halved) come from one 256-entry
float32 table each, computed by gguf-py's own decoders; the value is one float32
product ``scale * level``, as in gguf-py.
"""
from __future__ import annotations

import numpy as np

from provenance.jit import kernel


@kernel
def mxfp4(blocks, out, f16_table, values, scales):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = scales[b[0]]
        for j in range(half):
            q = np.int32(b[1 + j])
            y[j] = d * values[q & 0xF]
            y[half + j] = d * values[q >> 4]


@kernel
def nvfp4(blocks, out, f16_table, values, scales):  # type: ignore[no-untyped-def]
    run = out.shape[1] // 8  # 8 bytes (16 weights) per sub-block
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        for s in range(4):
            d = scales[b[s]]
            for j in range(run):
                q = np.int32(b[4 + 8 * s + j])
                y[16 * s + j] = d * values[q & 0xF]
                y[16 * s + run + j] = d * values[q >> 4]
