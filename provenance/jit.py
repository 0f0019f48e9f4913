"""The one place that configures numba for the project's compiled CPU loops.

Used by the compiled dequantization kernels (:mod:`provenance.codecs.ggml`) and the streamed pair
statistics (:mod:`provenance.compare.pairsums`). Every kernel is compiled with
``nogil=True`` (threads run them in parallel, e.g. :mod:`provenance.codecs.native.parallel`),
``cache=True`` (compiled once per
machine, then loaded from ``__pycache__``) and without fast-math: LLVM then neither
reassociates nor contracts ``a * b - c`` into a fused multiply-add, so each float32
operation rounds once, in the order of gguf-py's numpy kernels and ggml's reference C.
The tests compare every kernel with ``gguf.quants.dequantize`` bit for bit.

Dequantization inner loop bounds are derived from ``out.shape[1]`` at run time, never written as
constants: with a constant bound LLVM unrolls the loop fully and its SLP vectorizer gives
up, because it cannot prove that the output row does not overlap the input block; with a
run-time bound the loop vectorizer emits one overlap check and AVX code (2.5-3.5x faster
measured on Q8_0, Q4_0, Q6_K). Loops index 0-based views (``v = a[at:at + n]``, then
``v[j]`` for ``j`` in ``range(n)``), not ``a[at + j]`` with ``at`` a run-time product such as
``k * sub``: numba fixes up negative indices with a select, LLVM cannot then prove the
accesses contiguous, and it emits gathers and scatters (the grid checks' cell test: 6.4 ->
1.0 ns per weight, docs/benchmarks.md). Numba's cache does not see edits to inlined helpers
defined in another module (:mod:`provenance.codecs.native.fields`); clear
``__pycache__`` after changing them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])


def _njit(fn: F, **options: Any) -> F:
    try:
        return numba.njit(cache=True, fastmath=False, **options)(fn)  # type: ignore[no-any-return]
    except RuntimeError:
        # numba found nowhere writable to cache (read-only install and no writable user
        # cache directory): compile in each process instead (~0.2-0.5 s per kernel)
        return numba.njit(cache=False, fastmath=False, **options)(fn)  # type: ignore[no-any-return]


def kernel(fn: F) -> F:
    """Compile ``fn`` as a native, GIL-free function (arrays in, scalars or arrays out)."""
    return _njit(fn, nogil=True, error_model="numpy")


def inline(fn: F) -> F:
    """A helper the kernels inline (block field readers)."""
    return _njit(fn, inline="always")
