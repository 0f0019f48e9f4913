"""Torch dequantization kernels for ggml types, and what each type is served by.

``decode_blocks`` turns stored blocks into :class:`Decoded` levels and scales (also the
basis of :mod:`provenance.codecs.grid`); ``dequantize_torch`` streams a tensor's blocks
through it in chunks into one float32 output. Types without a native kernel go through
``gguf.quants.dequantize`` and are listed as such by :func:`kernel_coverage`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from gguf import GGMLQuantizationType as T

from provenance.codecs.kernels import iq, kquants, legacy
from provenance.codecs.kernels._common import Decoded, Workspace, workspace

Kernel = Callable[[torch.Tensor, Workspace], Decoded]

KERNELS: dict[int, Kernel] = {
    T.Q4_0: legacy.q4_0,
    T.Q4_1: legacy.q4_1,
    T.Q5_0: legacy.q5_0,
    T.Q5_1: legacy.q5_1,
    T.Q8_0: legacy.q8_0,
    T.Q2_K: kquants.q2_k,
    T.Q3_K: kquants.q3_k,
    T.Q4_K: kquants.q4_k,
    T.Q5_K: kquants.q5_k,
    T.Q6_K: kquants.q6_k,
    T.TQ1_0: kquants.tq1_0,
    T.TQ2_0: kquants.tq2_0,
    T.IQ4_NL: iq.iq4_nl,
    T.IQ4_XS: iq.iq4_xs,
    T.IQ2_XXS: iq.iq2_xxs,
    T.IQ2_XS: iq.iq2_xs,
    T.IQ2_S: iq.iq2_s,
    T.IQ3_XXS: iq.iq3_xxs,
    T.IQ3_S: iq.iq3_s,
    T.IQ1_S: iq.iq1_s,
    T.IQ1_M: iq.iq1_m,
    T.MXFP4: iq.mxfp4,
    T.NVFP4: iq.nvfp4,
}
"""Block-quantized types with a native torch kernel."""

F16_SCALE_OFFSETS: dict[int, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.TQ1_0: (52,), T.TQ2_0: (64,), T.IQ4_NL: (0,), T.IQ4_XS: (0,), T.IQ2_XXS: (0,),
    T.IQ2_XS: (0,), T.IQ2_S: (0,), T.IQ3_XXS: (0,), T.IQ3_S: (0,), T.IQ1_S: (0,),
}
"""Byte offsets of the plain f16 super-scales / mins inside one block (IQ1_M spreads its
scale over 4 nibbles; MXFP4/NVFP4 use 8-bit exponents and E4M3)."""

PLAIN: dict[int, torch.dtype] = {
    T.F32: torch.float32,
    T.F16: torch.float16,
    T.BF16: torch.bfloat16,
    T.F64: torch.float64,
    T.I8: torch.int8,
    T.I16: torch.int16,
    T.I32: torch.int32,
    T.I64: torch.int64,
}
"""Element types converted to float32 by a plain torch cast (bit-exact with numpy's)."""

__all__ = ["F16_SCALE_OFFSETS", "KERNELS", "PLAIN", "Decoded", "Kernel", "decode_blocks", "kernel_coverage", "workspace"]


def decode_blocks(blocks: torch.Tensor, ggml_type: int, ws: Workspace | None = None) -> Decoded:
    """Decode ``(n_blocks, type_size)`` uint8 blocks of a natively supported type."""
    kernel = KERNELS.get(int(ggml_type))
    if kernel is None:
        raise NotImplementedError(f"no native kernel for {T(ggml_type).name}")
    return kernel(blocks, ws or workspace(blocks.device))


def kernel_coverage() -> dict[str, str]:
    """Every ggml type the installed gguf package knows -> how we dequantize it:
    ``native`` (torch kernel here), ``fallback`` (gguf's numpy, run on CPU) or
    ``unsupported`` (neither can)."""
    from gguf import quants as gq

    fallback = set(gq._type_traits)
    out: dict[str, str] = {}
    for qtype in T:
        if int(qtype) in KERNELS or int(qtype) in PLAIN:
            out[qtype.name] = "native"
        elif qtype in fallback:
            out[qtype.name] = "fallback"
        else:
            out[qtype.name] = "unsupported"
    return out
