"""The storage element types a checkpoint may hold: bits, numpy and torch dtypes, and
safetensors' writer order; with :mod:`provenance.codecs.types` the package's one table.

Names are safetensors' dtype names. GGUF's plain ggml types (``F32``, ``F16``, ``BF16``,
``F64``, ``I8`` ... ``I64``) have the same names and their facts come from
:data:`provenance.codecs.types.PLAIN_TYPES`; the rows below add only the types ggml does not
store (fp8, fp4/fp6, unsigned, bool, complex). Block-quantized ggml types belong to
:mod:`provenance.codecs`.

Torch types are kept as attribute names, not objects: importing torch costs ~200 MB of
RSS, so it is imported only when a conversion needs it (inspect and hashing never do).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from provenance.codecs.types import PLAIN_TYPES

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StorageType:
    """One plain element type."""

    name: str
    bits: int
    numpy: str | None
    """numpy dtype, None where numpy has none (bf16, fp8, fp4/fp6)."""
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


_NOT_GGML = {
    # name: (bits, numpy, torch, float)
    "BOOL": (8, "|b1", "bool", False),
    "F4": (4, None, None, True),
    "F6_E2M3": (6, None, None, True),
    "F6_E3M2": (6, None, None, True),
    "U8": (8, "|u1", "uint8", False),
    "F8_E5M2": (8, None, "float8_e5m2", True),
    "F8_E4M3": (8, None, "float8_e4m3fn", True),
    "F8_E8M0": (8, None, "float8_e8m0fnu", True),
    "F8_E4M3FNUZ": (8, None, "float8_e4m3fnuz", True),
    "F8_E5M2FNUZ": (8, None, "float8_e5m2fnuz", True),
    "U16": (16, "<u2", "uint16", False),
    "U32": (32, "<u4", "uint32", False),
    "C64": (64, "<c8", "complex64", True),
    "U64": (64, "<u8", "uint64", False),
}
_GGML = {p.name: (p.bits, p.numpy_name, p.torch_name, p.is_float) for p in PLAIN_TYPES.values()}
_SAFETENSORS_ORDER = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
                      "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")
STORAGE_TYPES: dict[str, StorageType] = {
    name: StorageType(name, *(_GGML.get(name) or _NOT_GGML[name]), rank)
    for rank, name in enumerate(_SAFETENSORS_ORDER)
}

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


def decode_fp4(raw: np.ndarray, row_length: int) -> np.ndarray:
    """``(rows, row_bytes)`` packed E2M1 (two per byte, low nibble first) -> float32 rows."""
    low, high = _E2M1[raw & 0x0F], _E2M1[raw >> 4]
    return np.stack([low, high], axis=-1).reshape(raw.shape[0], -1)[:, :row_length]
