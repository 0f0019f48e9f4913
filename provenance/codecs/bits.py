"""Bitwise comparison of float arrays, NaN-aware."""
from __future__ import annotations

import numpy as np


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` (float32) have the same shape and identical bits at every
    position, except that a NaN matches any NaN (payloads and quiet bits differ between
    numpy's and the hardware's f16 conversions, and are meaningless here)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    if not np.array_equal(na, nb):
        return False
    return bool(np.array_equal(a.view(np.uint32)[~na], b.view(np.uint32)[~nb]))


def count_bit_mismatches(a: np.ndarray, b: np.ndarray) -> int:
    """Positions whose bits differ (NaN vs NaN counts as equal)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return int(((a.view(np.uint32) != b.view(np.uint32)) & ~both_nan).sum())
