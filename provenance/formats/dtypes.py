"""safetensors dtypes: element sizes and conversion of stored bytes to float32.

Conversions go through torch (its fp16/bf16/fp8 casts are fast and exact); the
4-bit float (E2M1, packed two per byte, low nibble first) uses a lookup table.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

# dtype -> (bits per element, torch dtype or None for table-decoded / raw-only types)
SAFETENSORS_DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    "BOOL": (8, torch.bool),
    "U8": (8, torch.uint8),
    "I8": (8, torch.int8),
    "U16": (16, torch.uint16),
    "I16": (16, torch.int16),
    "F16": (16, torch.float16),
    "BF16": (16, torch.bfloat16),
    "U32": (32, torch.uint32),
    "I32": (32, torch.int32),
    "F32": (32, torch.float32),
    "U64": (64, torch.uint64),
    "I64": (64, torch.int64),
    "F64": (64, torch.float64),
    "C64": (64, torch.complex64),
    "F8_E4M3": (8, torch.float8_e4m3fn),
    "F8_E4M3FNUZ": (8, torch.float8_e4m3fnuz),
    "F8_E5M2": (8, torch.float8_e5m2),
    "F8_E5M2FNUZ": (8, torch.float8_e5m2fnuz),
    "F8_E8M0": (8, getattr(torch, "float8_e8m0fnu", None)),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}

_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def element_bytes(dtype: str) -> Fraction:
    return Fraction(SAFETENSORS_DTYPES[dtype][0], 8)


def to_float32(raw: np.ndarray, dtype: str, row_length: int) -> np.ndarray:
    """``(rows, row_bytes)`` uint8 -> ``(rows, row_length)`` float32 (complex: real part)."""
    bits, torch_dtype = SAFETENSORS_DTYPES[dtype]
    rows = raw.shape[0]
    if dtype == "F4":
        low, high = _E2M1[raw & 0x0F], _E2M1[raw >> 4]
        return np.stack([low, high], axis=-1).reshape(rows, -1)[:, :row_length]
    if torch_dtype is None:
        raise NotImplementedError(f"float conversion of {dtype} is not supported (raw bytes and hashes are)")
    tensor = torch.from_numpy(np.ascontiguousarray(raw)).view(torch_dtype)
    if tensor.is_complex():
        tensor = tensor.real
    return tensor.to(torch.float32).numpy().reshape(rows, row_length)
