"""Facts about ggml storage types that need no kernel: block geometry and the plain types.

Geometry comes from the gguf package's ``GGML_QUANT_SIZES``, the one table of it; the
plain element types (F32, F16, ... I64) are described once here. This module imports
neither torch nor numba, so the readers can ask it for geometry at no cost; the
block-quantized types' codecs are in :mod:`provenance.codecs.registry`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

if TYPE_CHECKING:
    import torch

QK_K = 256
"""Weights per K-quant / IQ super-block."""


@dataclass(frozen=True)
class TypeInfo:
    """Block geometry of one ggml type (a plain type has blocks of one element)."""

    ggml_type: int
    name: str
    block_size: int
    """Weights per block."""
    type_size: int
    """Bytes per block."""


def ggml_type_of(ggml_type: int | str) -> GGMLQuantizationType:
    """The gguf enum member for a type number or name (``"Q4_K"``); ValueError / KeyError
    for types the installed gguf package does not know."""
    return GGMLQuantizationType[ggml_type] if isinstance(ggml_type, str) else GGMLQuantizationType(ggml_type)


def type_info(ggml_type: int | str) -> TypeInfo:
    """Geometry of ``ggml_type`` given as its number or its name (``"Q4_K"``)."""
    qtype = ggml_type_of(ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return TypeInfo(int(qtype), qtype.name, block_size, type_size)


def type_name(ggml_type: int) -> str:
    return GGMLQuantizationType(ggml_type).name


@dataclass(frozen=True)
class PlainType:
    """An element type stored one value per element (F32, F16, BF16, F64, I8..I64)."""

    qtype: GGMLQuantizationType
    torch_name: str
    """The torch dtype of the stored elements (a name: torch is imported only on use)."""
    numpy_name: str | None
    """The numpy dtype, or None where numpy has none (BF16)."""
    is_float: bool

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bits(self) -> int:
        return 8 * type_info(self.qtype).type_size

    @property
    def narrow_float(self) -> bool:
        """A float narrower than the float32 that rows are decoded to: values rounded to it
        are the cells of its grid (F16, BF16)."""
        return self.is_float and self.bits < 32

    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.torch_name)  # type: ignore[no-any-return]


_T = GGMLQuantizationType
PLAIN_TYPES: dict[int, PlainType] = {
    int(p.qtype): p
    for p in (
        PlainType(_T.F32, "float32", "float32", True),
        PlainType(_T.F16, "float16", "float16", True),
        PlainType(_T.BF16, "bfloat16", None, True),
        PlainType(_T.F64, "float64", "float64", True),
        PlainType(_T.I8, "int8", "int8", False),
        PlainType(_T.I16, "int16", "int16", False),
        PlainType(_T.I32, "int32", "int32", False),
        PlainType(_T.I64, "int64", "int64", False),
    )
}
"""Every plain element type ggml stores; decoded to float32 by a plain cast (bit-exact with
numpy's)."""


def plain_type(ggml_type: int | str) -> PlainType | None:
    """The plain element type ``ggml_type`` (number or name), or None for block types and
    names that are no ggml type (safetensors' F8_E4M3 ...)."""
    try:
        return PLAIN_TYPES.get(int(ggml_type_of(ggml_type)))
    except (KeyError, ValueError):
        return None
