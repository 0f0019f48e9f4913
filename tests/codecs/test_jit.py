"""The numba setup shared by the compiled kernels."""
from __future__ import annotations

import numpy as np
import pytest

from provenance import jit


def _add_one(x):  # type: ignore[no-untyped-def]
    for i in range(x.size):
        x[i] += np.float32(1)


def test_kernels_compile_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # a read-only install with no writable user cache: numba refuses cache=True at
    # decoration time; the kernels must still compile (per process) and run
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    fn = jit.kernel(_add_one)
    x = np.zeros(5, np.float32)
    fn(x)
    assert (x == 1).all()


def test_no_fused_multiply_add() -> None:
    # a * b - c must round twice (gguf-py's order); an FMA rounds once and differs here
    def mul_sub(a, b, c, out):  # type: ignore[no-untyped-def]
        for i in range(a.size):
            out[i] = a[i] * b[i] - c[i]

    fn = jit.kernel(mul_sub)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(4096).astype(np.float32), rng.standard_normal(4096).astype(np.float32)
    c = (a * b).astype(np.float32)  # the rounded product: a*b - c is 0 twice-rounded, the product's error fused
    out = np.empty_like(a)
    fn(a, b, c, out)
    assert (out == 0).all()
    fused = (a.astype(np.float64) * b.astype(np.float64) - c.astype(np.float64)).astype(np.float32)
    assert (fused != 0).any()  # an FMA would have shown these rounding errors
