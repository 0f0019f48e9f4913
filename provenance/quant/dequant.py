"""Dequantize rows of stored ggml blocks to float32.

The byte ranges passed here have already been validated by the reader (bounds,
block alignment), so handing them to the gguf package's numpy kernels is safe.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

_PLAIN = {
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
    GGMLQuantizationType.F64: np.dtype("<f8"),
    GGMLQuantizationType.I8: np.dtype("i1"),
    GGMLQuantizationType.I16: np.dtype("<i2"),
    GGMLQuantizationType.I32: np.dtype("<i4"),
    GGMLQuantizationType.I64: np.dtype("<i8"),
}


def dequantize_rows(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """``(rows, row_bytes)`` uint8 stored blocks -> ``(rows, row_length)`` float32."""
    qtype = GGMLQuantizationType(ggml_type)
    plain = _PLAIN.get(qtype)
    if plain is not None:
        return raw.view(plain).astype(np.float32, copy=False)
    if qtype == GGMLQuantizationType.BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    return np.asarray(gguf_quants.dequantize(raw, qtype), dtype=np.float32)
