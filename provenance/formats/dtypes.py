"""safetensors dtypes: element sizes and conversion of stored bytes to float32.

Conversions go through torch (its fp16/bf16/fp8 casts are fast and exact); the
4-bit float (E2M1, packed two per byte, low nibble first) uses a lookup table.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

# dtype -> (bits per element, torch dtype name, or None for table-decoded / raw-only types).
# Names, not torch objects: importing torch costs ~200 MB of RSS, so it is imported only
# when a conversion needs it (inspect and hashing never do).
SAFETENSORS_DTYPES: dict[str, tuple[int, str | None]] = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "U16": (16, "uint16"),
    "I16": (16, "int16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "U32": (32, "uint32"),
    "I32": (32, "int32"),
    "F32": (32, "float32"),
    "U64": (64, "uint64"),
    "I64": (64, "int64"),
    "F64": (64, "float64"),
    "C64": (64, "complex64"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}

_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def element_bytes(dtype: str) -> Fraction:
    return Fraction(SAFETENSORS_DTYPES[dtype][0], 8)


def to_float32(raw: np.ndarray, dtype: str, row_length: int) -> np.ndarray:
    """``(rows, row_bytes)`` uint8 -> ``(rows, row_length)`` float32 (complex: real part)."""
    _, torch_name = SAFETENSORS_DTYPES[dtype]
    rows = raw.shape[0]
    if dtype == "F4":
        low, high = _E2M1[raw & 0x0F], _E2M1[raw >> 4]
        return np.stack([low, high], axis=-1).reshape(rows, -1)[:, :row_length]
    import torch

    torch_dtype = getattr(torch, torch_name, None) if torch_name else None
    if torch_dtype is None:
        raise NotImplementedError(f"float conversion of {dtype} is not supported here (raw bytes and hashes are)")
    tensor = torch.from_numpy(np.ascontiguousarray(raw)).view(torch_dtype)
    if tensor.is_complex():
        tensor = tensor.real
    return tensor.to(torch.float32).numpy().reshape(rows, row_length)
