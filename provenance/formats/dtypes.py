"""The package's one table of plain storage types: what a stored element is, its numpy and
torch types, and how many bytes it takes.

Names are safetensors' dtype names; GGUF's plain ggml types (``F32``, ``F16``, ``BF16``,
``F64``, ``I8`` ... ``I64``) have the same names, so one table serves both formats. Block
quantized ggml types are not here: :mod:`provenance.codecs` owns them.

Torch types are kept as attribute names, not objects: importing torch costs ~200 MB of
RSS, so it is imported only when a conversion needs it (inspect and hashing never do).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StorageType:
    """One plain element type."""

    name: str
    bits: int
    numpy: str | None
    """numpy dtype (little-endian), None where numpy has none (bf16, fp8, fp4/fp6)."""
    torch: str | None
    """torch dtype attribute name, None where torch has none (fp4/fp6: table-decoded)."""
    is_float: bool
    safetensors_rank: int
    """Position in safetensors' ``Dtype`` enum: its writer stores larger ranks first, then
    by name (``tests/formats/test_write.py`` holds this to the installed library)."""

    @property
    def block(self) -> tuple[int, int]:
        """``(elements, bytes)`` of the smallest whole-byte group (fp4: 2 in 1, fp6: 4 in 3)."""
        per_byte = Fraction(8, self.bits)
        return (per_byte.numerator, per_byte.denominator) if per_byte > 1 else (1, self.bits // 8)


_TABLE = [
    # name          bits numpy    torch              float  safetensors rank
    ("BOOL",         8, "|b1",  "bool",            False, 0),
    ("F4",           4, None,   None,              True,  1),
    ("F6_E2M3",      6, None,   None,              True,  2),
    ("F6_E3M2",      6, None,   None,              True,  3),
    ("U8",           8, "|u1",  "uint8",           False, 4),
    ("I8",           8, "|i1",  "int8",            False, 5),
    ("F8_E5M2",      8, None,   "float8_e5m2",     True,  6),
    ("F8_E4M3",      8, None,   "float8_e4m3fn",   True,  7),
    ("F8_E8M0",      8, None,   "float8_e8m0fnu",  True,  8),
    ("F8_E4M3FNUZ",  8, None,   "float8_e4m3fnuz", True,  9),
    ("F8_E5M2FNUZ",  8, None,   "float8_e5m2fnuz", True,  10),
    ("I16",         16, "<i2",  "int16",           False, 11),
    ("U16",         16, "<u2",  "uint16",          False, 12),
    ("F16",         16, "<f2",  "float16",         True,  13),
    ("BF16",        16, None,   "bfloat16",        True,  14),
    ("I32",         32, "<i4",  "int32",           False, 15),
    ("U32",         32, "<u4",  "uint32",          False, 16),
    ("F32",         32, "<f4",  "float32",         True,  17),
    ("C64",         64, "<c8",  "complex64",       True,  18),
    ("F64",         64, "<f8",  "float64",         True,  19),
    ("I64",         64, "<i8",  "int64",           False, 20),
    ("U64",         64, "<u8",  "uint64",          False, 21),
]
STORAGE_TYPES: dict[str, StorageType] = {row[0]: StorageType(*row) for row in _TABLE}

_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def storage_type(name: str) -> StorageType:
    """The table row of ``name`` (KeyError for block-quantized or unknown types)."""
    return STORAGE_TYPES[name]


def element_bytes(name: str) -> Fraction:
    return Fraction(STORAGE_TYPES[name].bits, 8)


def numpy_dtype(name: str) -> np.dtype | None:
    spec = STORAGE_TYPES[name].numpy if name in STORAGE_TYPES else None
    return np.dtype(spec) if spec else None


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a plain storage type, None where torch has none (or for quantized types)."""
    spec = STORAGE_TYPES.get(name)
    if spec is None or spec.torch is None:
        return None
    import torch

    return getattr(torch, spec.torch, None)


def stored_as(values: torch.Tensor, name: str) -> torch.Tensor | None:
    """float32 ``values`` as the float storage type ``name`` stores them (round to nearest
    even), read back as float32; None when ``name`` is not a plain float type."""
    spec = STORAGE_TYPES.get(name)
    target = torch_dtype(name) if spec is not None and spec.is_float else None
    if target is None:
        return None
    import torch

    return values.to(target).to(torch.float32)


def decode_fp4(raw: np.ndarray, row_length: int) -> np.ndarray:
    """``(rows, row_bytes)`` packed E2M1 (two per byte, low nibble first) -> float32 rows."""
    low, high = _E2M1[raw & 0x0F], _E2M1[raw >> 4]
    return np.stack([low, high], axis=-1).reshape(raw.shape[0], -1)[:, :row_length]
