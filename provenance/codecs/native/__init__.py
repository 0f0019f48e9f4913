"""Compiled CPU dequantization kernels (numba): one fused pass from stored bytes to float32.

The torch kernels (:mod:`provenance.codecs.kernels`) express each type as whole-chunk tensor
ops plus a ``scale * level + offset`` pass; on a CPU those passes over float32 scratch,
not the arithmetic, bound their speed (see docs/quantization.md). Here each block is
decoded and written once, in registers, which is what makes the CPU path several times
faster than gguf-py's numpy. CUDA tensors and the types listed nowhere here still go
through the torch kernels; the tests hold both to ``gguf.quants.dequantize`` bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from gguf import GGMLQuantizationType as T

from provenance.codecs.native.parallel import run_split
from provenance.codecs.types import type_info

_KERNEL_NAMES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    T.Q4_0: ("legacy", "q4_0", ()),
    T.Q4_1: ("legacy", "q4_1", ()),
    T.Q5_0: ("legacy", "q5_0", ()),
    T.Q5_1: ("legacy", "q5_1", ()),
    T.Q8_0: ("legacy", "q8_0", ()),
    T.Q2_K: ("kquants", "q2_k", ()),
    T.Q3_K: ("kquants", "q3_k", ()),
    T.Q4_K: ("kquants", "q4_k", ()),
    T.Q5_K: ("kquants", "q5_k", ()),
    T.Q6_K: ("kquants", "q6_k", ()),
    T.IQ4_NL: ("iq", "iq4_nl", ("iq4_values",)),
    T.IQ4_XS: ("iq", "iq4_xs", ("iq4_values",)),
    T.IQ1_S: ("iq", "iq1_s", ("iq1_grid",)),
    T.IQ1_M: ("iq", "iq1_m", ("iq1_grid",)),
    T.TQ1_0: ("kquants", "tq1_0", ()),
    T.TQ2_0: ("kquants", "tq2_0", ()),
    T.MXFP4: ("fp4", "mxfp4", ("fp4_values", "e8m0_half")),
    T.NVFP4: ("fp4", "nvfp4", ("fp4_values", "ue4m3_half")),
}
NATIVE_TYPES: frozenset[int] = frozenset(int(t) for t in _KERNEL_NAMES)
"""ggml types with a compiled CPU kernel."""


@cache
def _table(name: str) -> np.ndarray:
    from gguf import quants as gq

    if name == "f16":
        # every f16 bit pattern as float32: exact, and 256 KiB stays in L2
        return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    if name == "iq4_values":
        return np.array(gq.IQ4_NL.kvalues, dtype=np.float32)
    if name == "fp4_values":
        return np.array(gq.MXFP4.kvalues, dtype=np.float32)
    if name == "e8m0_half":
        return np.asarray(gq.MXFP4.e8m0_to_fp32_half(np.arange(256, dtype=np.uint8)), dtype=np.float32)
    if name == "ue4m3_half":
        return np.asarray(gq.NVFP4.ue4m3_to_fp32(np.arange(256, dtype=np.uint8)), dtype=np.float32)
    if name == "iq1_grid":
        gq.IQ1_S.init_grid()
        return np.ascontiguousarray(np.asarray(gq.IQ1_S.grid, dtype=np.float32).reshape(gq.IQ1_S.grid_shape))
    raise KeyError(name)


@cache
def _kernel(ggml_type: int) -> tuple[Callable[..., None], tuple[np.ndarray, ...]]:
    import importlib

    module, name, extra = _KERNEL_NAMES[ggml_type]
    fn = getattr(importlib.import_module(f"provenance.codecs.native.{module}"), name)
    tables = (_table("f16"),) + tuple(_table(t) for t in extra)
    return fn, tables


def dequantize_blocks_native(blocks: np.ndarray, ggml_type: int, out: np.ndarray, threads: int = 1) -> None:
    """``(n, type_size)`` uint8 blocks -> ``out`` ``(n, block_size)`` float32, in place.

    Both arrays must be C-contiguous; ``threads`` > 1 splits the blocks between threads.
    The shapes are checked here because the compiled loops do not check their indices.
    """
    info = type_info(ggml_type)
    n = blocks.shape[0] if blocks.ndim == 2 else -1
    if (blocks.dtype != np.uint8 or blocks.shape != (n, info.type_size) or out.dtype != np.float32
            or out.shape != (n, info.block_size) or not (blocks.flags.c_contiguous and out.flags.c_contiguous)):
        raise ValueError(f"{info.name}: need C-contiguous uint8 (n, {info.type_size}) blocks and float32 "
                         f"(n, {info.block_size}) out, got {blocks.dtype} {blocks.shape} and {out.dtype} {out.shape}")
    fn, tables = _kernel(info.ggml_type)
    run_split(fn, blocks, out, tables, threads)


__all__ = ["NATIVE_TYPES", "dequantize_blocks_native"]
