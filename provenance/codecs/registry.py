"""The one registry of ggml storage types: every block-quantized type we decode is
registered here, once, and every other module asks here (docs/quantization.md, "Adding a
ggml type").

A type the installed gguf package knows is exactly one of: a registered
:class:`~provenance.codecs.quanttype.QuantType`, a plain element type
(:data:`provenance.codecs.types.PLAIN_TYPES`), or listed in :data:`UNSUPPORTED` with the
reason (tests/codecs/test_registry.py holds this). Unregistered types that gguf-py can
dequantize still decode, through its numpy (a newer gguf may add some).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gguf import GGMLQuantizationType as T

from provenance.codecs.ggml import fp4, iq1, iq4, iq_codebook, kquants, legacy, q1_0
from provenance.codecs.quanttype import QuantType
from provenance.codecs.types import PLAIN_TYPES, ggml_type_of


def _register(*types: QuantType) -> Mapping[int, QuantType]:
    table: dict[int, QuantType] = {}
    for qt in types:
        if qt.ggml_type in table:
            raise ValueError(f"{qt.name} is registered twice")
        if qt.ggml_type in PLAIN_TYPES:
            raise ValueError(f"{qt.name} is a plain element type, not a block type")
        table[qt.ggml_type] = qt
    return MappingProxyType(table)


QUANT_TYPES: Mapping[int, QuantType] = _register(
    *legacy.TYPES,
    *kquants.TYPES,
    *iq4.TYPES,
    *iq_codebook.TYPES,
    *iq1.TYPES,
    *fp4.TYPES,
    q1_0.Q1_0,
)
"""ggml type number -> descriptor, in registration order."""

UNSUPPORTED: Mapping[int, str] = MappingProxyType({
    int(T.Q8_1): "an intermediate of ggml's dot products (activations), never stored in a model file",
    int(T.Q8_K): "an intermediate of ggml's K-quant dot products (activations), never stored in a model file",
})
"""Types gguf knows that we deliberately do not decode, and why."""


def find_quant_type(ggml_type: int | str) -> QuantType | None:
    """The descriptor of a block-quantized type (number or name), or None."""
    try:
        return QUANT_TYPES.get(int(ggml_type_of(ggml_type)))
    except (KeyError, ValueError):
        return None


def quant_type(ggml_type: int | str) -> QuantType:
    """The descriptor of a registered block-quantized type (number or name)."""
    qt = find_quant_type(ggml_type)
    if qt is None:
        raise NotImplementedError(f"no codec registered for ggml type {ggml_type!r}")
    return qt


def coverage(ggml_type: int) -> str:
    """How we dequantize one ggml type: ``native`` (our kernels; plain types by a cast),
    ``fallback`` (gguf's numpy, run on CPU) or ``unsupported`` (neither can: a reader
    refuses to decode it, though its bytes can still be hashed)."""
    from gguf import quants as gq

    if int(ggml_type) in QUANT_TYPES or int(ggml_type) in PLAIN_TYPES:
        return "native"
    try:
        return "fallback" if T(int(ggml_type)) in gq._type_traits else "unsupported"
    except ValueError:
        return "unsupported"


def kernel_coverage() -> dict[str, str]:
    """Every ggml type the installed gguf package knows -> :func:`coverage`."""
    return {qtype.name: coverage(qtype) for qtype in T}
