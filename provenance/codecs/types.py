"""Facts about ggml storage types: block geometry and names, from the gguf package."""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

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


def type_info(ggml_type: int | str) -> TypeInfo:
    """Geometry of ``ggml_type`` given as its number or its name (``"Q4_K"``)."""
    qtype = GGMLQuantizationType[ggml_type] if isinstance(ggml_type, str) else GGMLQuantizationType(ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return TypeInfo(int(qtype), qtype.name, block_size, type_size)


def type_name(ggml_type: int) -> str:
    return GGMLQuantizationType(ggml_type).name
