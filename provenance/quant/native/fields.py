"""Little-endian fields of one stored block, read inside the compiled kernels."""
from __future__ import annotations

import numpy as np

from provenance.jit import inline


@inline
def f16(b, at, f16_table):  # type: ignore[no-untyped-def]
    """The f16 at byte ``at`` as float32, through the 65536-entry table (exact)."""
    return f16_table[np.int64(b[at]) | (np.int64(b[at + 1]) << 8)]


@inline
def u16(b, at):  # type: ignore[no-untyped-def]
    return np.int64(b[at]) | (np.int64(b[at + 1]) << 8)


@inline
def u32(b, at):  # type: ignore[no-untyped-def]
    return np.int64(b[at]) | (np.int64(b[at + 1]) << 8) | (np.int64(b[at + 2]) << 16) | (np.int64(b[at + 3]) << 24)


@inline
def k_scale_min(b, at, j):  # type: ignore[no-untyped-def]
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block ``j`` from the 12 bytes at ``at``
    (ggml's ``get_scale_min_k4``)."""
    if j < 4:
        return np.int64(b[at + j]) & 63, np.int64(b[at + j + 4]) & 63
    sc = (np.int64(b[at + j + 4]) & 0xF) | ((np.int64(b[at + j - 4]) >> 6) << 4)
    mn = (np.int64(b[at + j + 4]) >> 4) | ((np.int64(b[at + j]) >> 6) << 4)
    return sc, mn
