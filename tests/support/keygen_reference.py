"""A plain numpy transcription of the watermark key generator (docs/watermark.md, "Keys"),
written from its specification, for checking the compiled one bit for bit.

Every step is a numpy integer operation or a float32 operation on float32 arrays (numpy
rounds each one to float32, as the compiled kernel does), so both must agree exactly.
"""
from __future__ import annotations

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
MASK = np.uint64(0xFFFFFFFF)
f32 = np.float32


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of ``counter`` ((n, 4) uint64 holding 32-bit words) under ``key``."""
    c = [counter[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(10):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & MASK, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & MASK]
    return np.stack(c, axis=1)


def _radius(r: np.ndarray) -> np.ndarray:
    n = (r >> np.uint64(9)) * np.uint64(2) + np.uint64(1)
    e = np.floor(np.log2(n.astype(np.float64))).astype(np.int64)  # exact for integers < 2**24
    m = (n.astype(np.float64) / 2.0**e).astype(f32)  # exact: a power-of-two division of an integer < 2**24
    fold = m > f32(np.sqrt(2.0))
    m = np.where(fold, m * f32(0.5), m)
    ef = e.astype(f32) + fold.astype(f32)
    s = (m - f32(1)) / (m + f32(1))
    s2 = s * s
    series = f32(1 / 9)
    for c in (1 / 7, 1 / 5, 1 / 3, 1.0):
        series = f32(c) + s2 * series
    ln_m = f32(2) * s * series
    minus_ln_u = (f32(24) - ef) * f32(np.log(2.0)) - ln_m
    return np.sqrt(f32(2) * minus_ln_u)


def _cos_sin(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = r >> np.uint64(30)
    x = (((r & np.uint64(0x3FFFFFFF)) >> np.uint64(6)).astype(f32) + f32(0.5)) * f32(np.pi / 2 / 2**24)
    x2 = x * x
    s = f32(1 / 6227020800.0)
    for c in (-1 / 39916800.0, 1 / 362880.0, -1 / 5040.0, 1 / 120.0, -1 / 6.0):
        s = f32(c) + x2 * s
    s = x + x * x2 * s
    c_ = f32(1 / 479001600.0)
    for c in (-1 / 3628800.0, 1 / 40320.0, -1 / 720.0, 1 / 24.0, -0.5, 1.0):
        c_ = f32(c) + x2 * c_
    swap = (q & np.uint64(1)) == 1
    cos_t, sin_t = np.where(swap, s, c_), np.where(swap, c_, s)
    cos_t = np.where(((q + np.uint64(1)) >> np.uint64(1)) & np.uint64(1) == 1, -cos_t, cos_t)
    sin_t = np.where((q >> np.uint64(1)) == 1, -sin_t, sin_t)
    return cos_t, sin_t


def gaussian_reference(words: tuple[int, int, int, int], start: int, count: int) -> np.ndarray:
    """Key elements ``[start, start + count)`` of key ``words`` (key0, key1, nonce0, nonce1)."""
    first, last = start // 4, (start + count + 3) // 4
    c = np.arange(first, last, dtype=np.uint64)
    counter = np.stack([c & MASK, c >> np.uint64(32), np.full_like(c, words[2]), np.full_like(c, words[3])], axis=1)
    r = philox4x32_10(counter, (words[0], words[1]))
    ra, (ca, sa) = _radius(r[:, 0]), _cos_sin(r[:, 1])
    rb, (cb, sb) = _radius(r[:, 2]), _cos_sin(r[:, 3])
    out = np.stack([ra * ca, ra * sa, rb * cb, rb * sb], axis=1).reshape(-1)
    return out[start - 4 * first:start - 4 * first + count]
