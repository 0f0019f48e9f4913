"""Options of ``quantcheck``, declared once (:mod:`provenance.options`); ``provenance quantcheck``
generates its command-line options from them. Light on purpose: the CLI imports it to build its
options without loading torch."""
from __future__ import annotations

from dataclasses import dataclass

from provenance.options import Precision, option, precision_option, threads_option


@dataclass(frozen=True)
class QuantCheckOptions:
    precision: Precision = precision_option()
    threads: int = threads_option(2)
    """Threads of the compiled grid check (torch itself stays on one thread: its OpenMP
    threads slow down badly when another process holds a core, docs/cli.md)."""


def _ftype_name(value: str) -> str:
    """A llama.cpp file type as ``Q4_K_M`` (accepts ``q4_k_m``, ``MOSTLY_Q4_K_M``, ``f16``)."""
    from provenance.quant.quantize_mix import parse_ftype

    return parse_ftype(value).name.removeprefix("MOSTLY_")


@dataclass(frozen=True)
class QuantizeOptions:
    ftype: str = option("Q4_K_M", "llama.cpp file type to write (Q4_K_M, Q8_0, Q6_K, Q5_K_M, IQ4_XS, F16 ...): "
                        "per-tensor types as llama-quantize picks them, bytes as it writes them.",
                        flag="--type", metavar="TYPE", convert=_ftype_name)
    threads: int = threads_option(2)
    """Quantizer threads (compiled kernels releasing the GIL: no OpenMP spinning)."""
    allow_requantize: bool = option(False, "Re-quantize tensors that are already quantized (llama.cpp refuses "
                                    "by default too: quality drops).")
