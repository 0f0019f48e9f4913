"""The watermark key generator (format ``provenance-wm-v2``): Philox4x32-10 and a float32
Box-Muller transform, compiled, evaluated in place for any element range of a tensor.

Why this generator (docs/watermark.md, "Keys"): a key is needed for every marked weight of
every client, so generation is the cost of embedding and tracing. Philox is counter-based:
element ``i`` depends only on ``(key, i // 4)``, so any block of any tensor is generated
without the elements before it and with nothing stored. Every operation below is an IEEE
integer or float32 operation (``+ - * /``, ``sqrt``, int->float conversion), compiled
without fast-math (:mod:`provenance.jit`: no reassociation, no fused multiply-add), so the
values are bit-identical on every machine and in the plain numpy transcription the tests
hold it against; no libm function (whose last ulp differs between builds) is used.

* Philox4x32-10 (Salmon et al., SC 2011; Random123's constants and round function):
  counter ``(c mod 2**32, c >> 32, nonce0, nonce1)``, key ``(key0, key1)``, four 32-bit
  outputs ``r0..r3`` per counter ``c``.
* Elements ``4c, 4c+1`` are the Box-Muller pair of ``(r0, r1)``, ``4c+2, 4c+3`` that of
  ``(r2, r3)``: radius ``sqrt(-2 ln u)`` with ``u = (2 (r0 >> 9) + 1) / 2**24`` in (0, 1),
  angle ``2 pi (r1 >> 6 + 1/2) / 2**26``; element ``4c`` is ``radius cos``, ``4c+1``
  ``radius sin``.
* ``ln`` by exponent and mantissa (``u = 2**e m``, ``m`` in [sqrt(1/2), sqrt(2))) and the
  atanh series of ``(m-1)/(m+1)`` to its 9th power (truncation < 1e-9 relative); ``sin``/
  ``cos`` on the quadrant's [0, pi/2) by Taylor series to x**13 / x**12 (truncation < 1e-8),
  the quadrant applied by exact swaps and sign flips.

Each value is a N(0, 1) draw to float32 precision, truncated at |g| <= 5.77 (the radius of
the smallest ``u``): the tails beyond carry 8e-9 of the mass and 3e-7 of the variance, far
below anything the statistics resolve. The tests check the Philox known-answer vectors,
the numpy transcription bit for bit, and the distribution.
"""
from __future__ import annotations

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from provenance.jit import inline, kernel

MASK32 = np.uint64(0xFFFFFFFF)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
PHILOX_ROUNDS = 10

LN2 = np.float32(0.6931471805599453)
SQRT_HALF_2 = np.float32(1.4142135623730951)
HALF_PI_OVER_2_24 = np.float32(np.pi / 2 / 2**24)
TWO_POW_M23 = np.float32(2.0**-23)

#: key elements generated per inner call (a float32 scratch of 16 KB: stays in L1)
SCRATCH = 4096
#: counters per block of :func:`_fill_counters` (its integer scratch: 4 KB; 64 counters
#: measured 3% slower, 16 counters 12%)
BLOCK = 256


@inline
def philox4x32(c0: np.uint64, c1: np.uint64, c2: np.uint64, c3: np.uint64,
               k0: np.uint64, k1: np.uint64) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """Philox4x32-10 of a counter and key (32-bit words held in uint64)."""
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & MASK32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & MASK32)
    return c0, c1, c2, c3


@inline
def _radius(r: np.uint64) -> np.float32:
    """``sqrt(-2 ln u)`` for ``u = (2 (r >> 9) + 1) / 2**24``."""
    n = (r >> np.uint64(9)) * np.uint64(2) + np.uint64(1)  # odd, < 2**24: exact in float32
    # e = floor(log2 n): one count of leading zeros (vectorizes to one instruction where the
    # CPU has it; 17% of the generator's time against five halving steps, the same e)
    e = np.uint64(63) - np.uint64(leading_zeros(n))
    m = np.float32(np.int32(n << (np.uint64(23) - e))) * TWO_POW_M23  # n / 2**e in [1, 2), exact
    fold = m > SQRT_HALF_2
    if fold:
        m = m * np.float32(0.5)
    ef = np.float32(np.int32(e)) + (np.float32(1.0) if fold else np.float32(0.0))
    s_ = (m - np.float32(1.0)) / (m + np.float32(1.0))
    s2 = s_ * s_
    series = np.float32(1.0 / 9.0)
    series = np.float32(1.0 / 7.0) + s2 * series
    series = np.float32(1.0 / 5.0) + s2 * series
    series = np.float32(1.0 / 3.0) + s2 * series
    series = np.float32(1.0) + s2 * series
    ln_m = np.float32(2.0) * s_ * series
    minus_ln_u = (np.float32(24.0) - ef) * LN2 - ln_m  # ln u = (e - 24) ln 2 + ln m
    return np.float32(np.sqrt(np.float32(2.0) * minus_ln_u))


@inline
def _cos_sin(r: np.uint64) -> tuple[np.float32, np.float32]:
    """``cos`` and ``sin`` of the angle ``2 pi (r >> 6 + 1/2) / 2**26``."""
    quadrant = r >> np.uint64(30)
    x = (np.float32(np.int32((r & np.uint64(0x3FFFFFFF)) >> np.uint64(6))) + np.float32(0.5)) * HALF_PI_OVER_2_24
    x2 = x * x
    s = np.float32(1.0 / 6227020800.0)  # 1/13!
    s = np.float32(-1.0 / 39916800.0) + x2 * s
    s = np.float32(1.0 / 362880.0) + x2 * s
    s = np.float32(-1.0 / 5040.0) + x2 * s
    s = np.float32(1.0 / 120.0) + x2 * s
    s = np.float32(-1.0 / 6.0) + x2 * s
    s = x + x * x2 * s
    c = np.float32(1.0 / 479001600.0)  # 1/12!
    c = np.float32(-1.0 / 3628800.0) + x2 * c
    c = np.float32(1.0 / 40320.0) + x2 * c
    c = np.float32(-1.0 / 720.0) + x2 * c
    c = np.float32(1.0 / 24.0) + x2 * c
    c = np.float32(-0.5) + x2 * c
    c = np.float32(1.0) + x2 * c
    swap = (quadrant & np.uint64(1)) != np.uint64(0)
    cos_t = s if swap else c
    sin_t = c if swap else s
    if ((quadrant + np.uint64(1)) >> np.uint64(1)) & np.uint64(1):
        cos_t = -cos_t
    if quadrant >> np.uint64(1):
        sin_t = -sin_t
    return cos_t, sin_t


@inline
def _counter(words: np.ndarray, c: np.uint64) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """The four elements of counter ``c`` (one counter: a partial first or last one)."""
    r0, r1, r2, r3 = philox4x32(c & MASK32, c >> np.uint64(32), np.uint64(words[2]), np.uint64(words[3]),
                                np.uint64(words[0]), np.uint64(words[1]))
    return _box_muller(r0, r1, r2, r3)


@inline
def _box_muller(r0: np.uint64, r1: np.uint64, r2: np.uint64,
                r3: np.uint64) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """The four elements of one counter's Philox outputs: the Box-Muller pairs of ``(r0, r1)``
    and ``(r2, r3)``."""
    ra = _radius(r0)
    ca, sa = _cos_sin(r1)
    rb = _radius(r2)
    cb, sb = _cos_sin(r3)
    return ra * ca, ra * sa, rb * cb, rb * sb


@inline
def _fill_counters(words: np.ndarray, first: np.int64, n_counters: np.int64, out: np.ndarray,
                   lanes: np.ndarray) -> None:
    """``out[4j .. 4j+3]`` = the four elements of counter ``first + j``, j < n_counters
    (``lanes``: uint32 scratch of shape (4, :data:`BLOCK`)).

    Two loops per block of :data:`BLOCK` counters, not one: the Philox rounds (64-bit integer
    products) into the four lane arrays, then the float32 Box-Muller from them, each vectorized
    whole by LLVM. The single loop was vectorized too, but it spilled registers and chained
    the rounds into the float work, a dependency the out-of-order window could not overlap
    (llvm-mca, icelake-server: 193 cycles per 8 counters against 34 + 87 for the two loops;
    measured 1.85 -> 1.45 ns per weight). Every element is the same operations in the same
    order either way (docs/watermark.md, "Keys")."""
    k0, k1, nonce0, nonce1 = np.uint64(words[0]), np.uint64(words[1]), np.uint64(words[2]), np.uint64(words[3])
    r0, r1, r2, r3 = lanes[0], lanes[1], lanes[2], lanes[3]
    for b in range(0, n_counters, BLOCK):
        m = min(BLOCK, n_counters - b)
        for j in range(m):
            c = np.uint64(first + b + j)
            p0, p1, p2, p3 = philox4x32(c & MASK32, c >> np.uint64(32), nonce0, nonce1, k0, k1)
            r0[j], r1[j], r2[j], r3[j] = np.uint32(p0), np.uint32(p1), np.uint32(p2), np.uint32(p3)
        block = out[4 * b:4 * (b + m)]
        for j in range(m):
            e0, e1, e2, e3 = _box_muller(np.uint64(r0[j]), np.uint64(r1[j]), np.uint64(r2[j]), np.uint64(r3[j]))
            block[4 * j] = e0
            block[4 * j + 1] = e1
            block[4 * j + 2] = e2
            block[4 * j + 3] = e3


@inline
def _fill(words: np.ndarray, start: np.int64, out: np.ndarray, lanes: np.ndarray) -> None:
    """Elements ``[start, start + len(out))`` into ``out`` (``lanes``: see :func:`_fill_counters`)."""
    n = out.shape[0]
    if n == 0:
        return
    first = start // 4
    head = start - 4 * first
    i = 0
    if head:  # a partial first counter
        values = _counter(words, np.uint64(first))
        take = min(4 - head, n)
        for t in range(take):
            out[t] = values[head + t]
        i = take
        first += 1
    whole = (n - i) // 4
    if whole:
        _fill_counters(words, first, whole, out[i:i + 4 * whole], lanes)
        i += 4 * whole
        first += whole
    if i < n:  # a partial last counter
        values = _counter(words, np.uint64(first))
        for t in range(n - i):
            out[i + t] = values[t]


@kernel
def fill_gaussian(words: np.ndarray, start: np.int64, out: np.ndarray) -> None:
    """Write key elements ``[start, start + len(out))`` of key ``words`` into float32 ``out``."""
    _fill(words, start, out, np.empty((4, BLOCK), dtype=np.uint32))


@kernel
def gaussian_dots(words: np.ndarray, first: np.int64, ys: np.ndarray, lo: np.int64, hi: np.int64,
                  out: np.ndarray) -> None:
    """``out[s] += sum_{lo <= j < hi} key[first + j] * ys[s, j]`` for every row ``s`` of
    float32 ``ys`` (C-contiguous), without storing the key beyond an L1-sized scratch:
    float32 products summed by BLAS over :data:`SCRATCH` elements, those partial sums added
    in float64 (a relative rounding of ~1e-7 of the statistic's null standard deviation)."""
    n_stats = ys.shape[0]
    buf = np.empty(SCRATCH, dtype=np.float32)
    lanes = np.empty((4, BLOCK), dtype=np.uint32)
    for a in range(lo, hi, SCRATCH):
        b = min(hi, a + SCRATCH)
        key = buf[:b - a]
        _fill(words, first + a, key, lanes)
        for s in range(n_stats):
            out[s] += np.float64(np.dot(key, ys[s][a:b]))
