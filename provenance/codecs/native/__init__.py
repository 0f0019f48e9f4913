"""Compiled CPU kernels (numba): dequantization in one fused pass from stored bytes to
float32, and the quantizers and grid checks built the same way.

The torch kernels express each type as whole-chunk tensor ops plus a ``scale * level +
offset`` pass; on a CPU those passes over float32 scratch, not the arithmetic, bound
their speed (see docs/quantization.md). A compiled kernel decodes each block and writes
it once, in registers, which is what makes the CPU path several times faster than
gguf-py's numpy. The kernels are per type (``QuantType.compiled``, in
:mod:`provenance.codecs.ggml`); here are what they share: the f16 table every kernel takes
first, the field readers (:mod:`.fields`), ggml's scalar float arithmetic (:mod:`.floats`)
and the split between threads (:mod:`.parallel`).
CUDA tensors and the types without a compiled kernel go through the torch kernels; the
tests hold both to the reference dequantizers bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

from provenance.codecs.native.parallel import run_split
from provenance.codecs.quanttype import CompiledKernel


@cache
def f16_table() -> np.ndarray:
    """Every f16 bit pattern as float32: exact, and 256 KiB stays in L2."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@cache
def bind(compiled: CompiledKernel) -> tuple[Callable[..., None], tuple[np.ndarray, ...]]:
    """The kernel and the tables it takes last (the f16 table, then its own), built once."""
    return compiled.fn, (f16_table(), *(build() for build in compiled.tables))


def run_compiled(compiled: CompiledKernel, blocks: np.ndarray, out: np.ndarray, threads: int = 1) -> None:
    """``compiled`` over ``(n, ...)`` input blocks into ``out`` ``(n, ...)`` in place (stored
    bytes -> float32 for a dequantizer, float32 -> bytes for a quantizer), split between
    ``threads``. The caller has checked shapes, dtypes and contiguity: the compiled loops
    do not check their indices."""
    fn, tables = bind(compiled)
    run_split(fn, blocks, out, tables, threads)


__all__ = ["bind", "f16_table", "run_compiled"]
