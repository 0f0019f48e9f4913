"""Codecs: how every stored weight format is encoded and decoded, below the readers.

One descriptor per ggml block type (:mod:`.quanttype`), defined by family in :mod:`.ggml`
and registered once in :mod:`.registry`; geometry and the plain element types in
:mod:`.types`. Built on them: dequantization (:mod:`.dequant`; shared torch kernel pieces
in :mod:`.kernels`, compiled-kernel pieces in :mod:`.native`), the stored quantization grid
(:mod:`.grid`), the quantizer's own rounding rule (:mod:`.recipes`) and llama.cpp-exact
reference quantizers (:mod:`.quantize_ref`). Nothing here opens a file or knows a
checkpoint: readers hand codecs validated bytes.

The names below are imported on first use, so that a reader asking :mod:`.types` for block
geometry does not pay for torch and numba.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provenance.codecs.dequant import dequantize_rows, dequantize_torch
    from provenance.codecs.quantize_ref import quantize_rows
    from provenance.codecs.registry import kernel_coverage, quant_type

_HOME = {
    "dequantize_rows": "provenance.codecs.dequant",
    "dequantize_torch": "provenance.codecs.dequant",
    "kernel_coverage": "provenance.codecs.registry",
    "quant_type": "provenance.codecs.registry",
    "quantize_rows": "provenance.codecs.quantize_ref",
}

__all__ = ["dequantize_rows", "dequantize_torch", "kernel_coverage", "quant_type", "quantize_rows"]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home), name)
