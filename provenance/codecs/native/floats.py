"""ggml's scalar float32 arithmetic, inlined into the compiled quantizers and grid checks.

Each helper reproduces one C (or torch) operation bit for bit: ``nearest_int`` (ggml's
magic-number rounding, half to even, C's result even outside its valid range), ``roundf``
(half away from zero), the f32 -> f16 / bf16 roundings (to nearest even, subnormals, inf
and NaN as numpy's ``astype(float16)`` and torch's ``to(bfloat16)``). Numba promotes
``float32 op float64`` to float64, so every constant here is an explicit ``np.float32``
and every result is cast back to float32 where numba's ``np.*`` returns float64 (exact:
``trunc``, ``rint`` and ``sqrt`` of a float32 are float32 values).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from provenance.jit import inline

_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23
_TWO24 = np.float32(16777216.0)
_INV_TWO24 = np.float32(1.0 / 16777216.0)


@intrinsic
def float_bits(typingctx, v):  # type: ignore[no-untyped-def]
    """The bits of a float32 as uint32 (an LLVM bitcast: numba's scalar ``.view``
    allocates a temporary array, ~20 ns, where this costs nothing)."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_float(typingctx, v):  # type: ignore[no-untyped-def]
    """The float32 whose bits are the uint32 ``v``."""
    if v != types.uint32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@inline
def nearest_int(v):  # type: ignore[no-untyped-def]
    """ggml ``nearest_int``: ``v + 1.5*2^23`` in float32, low 23 bits minus 2^22."""
    t = np.float32(np.float32(v) + _MAGIC)
    return (np.int64(float_bits(t)) & 0x007FFFFF) - 0x00400000


@inline
def roundf(v):  # type: ignore[no-untyped-def]
    """C ``roundf`` (half away from zero), as :func:`provenance.codecs.prediction.roundf`
    computes it: ``trunc(v) + sign(v) * (|v - trunc(v)| >= 0.5)``, signed zeros included
    (``-0.3`` -> ``-0.0``, ``-0.0`` -> ``+0.0``); NaN stays NaN. Written with selects: the
    half-up test is a coin flip on real data, and a mispredicted branch per weight cost
    more than the arithmetic."""
    t = np.float32(np.trunc(v))
    half = abs(np.float32(v - t)) >= np.float32(0.5)
    negative = v < np.float32(0.0)
    one = np.float32(-1.0) if negative else np.float32(1.0)
    zero = np.float32(-0.0) if negative else np.float32(0.0)
    return np.float32(t + (one if half else zero))


@inline
def f16_bits(v):  # type: ignore[no-untyped-def]
    """``GGML_FP32_TO_FP16``: float32 -> the uint16 bits of the nearest f16 (ties to even),
    as ggml's software conversion: any NaN becomes the quiet NaN ``0x7E00`` (with its sign);
    numpy's ``astype`` would keep payload bits instead."""
    x = np.int64(float_bits(np.float32(v)))
    sign = (x >> 16) & 0x8000
    ax = x & 0x7FFFFFFF
    if ax >= 0x7F800000:
        if ax == 0x7F800000:
            return sign | 0x7C00
        return sign | 0x7E00
    if ax >= 0x477FF000:  # >= 65520: rounds to inf
        return sign | 0x7C00
    if ax < 0x38800000:  # below 2^-14: an f16 subnormal (exact scaling, then rint)
        q = np.int64(np.rint(np.float32(np.float32(abs(np.float32(v))) * _TWO24)))
        return sign | q
    m = ax + 0xFFF + ((ax >> 13) & 1)
    return sign | ((m - (112 << 23)) >> 13)


@inline
def round_f16(v):  # type: ignore[no-untyped-def]
    """``v`` rounded to f16 and back (torch's ``x.to(float16).to(float32)``)."""
    x = np.int64(float_bits(np.float32(v)))
    ax = x & 0x7FFFFFFF
    if ax > 0x7F800000:
        return np.float32(v)
    if ax >= 0x477FF000:
        return np.float32(np.inf) if x == ax else np.float32(-np.inf)
    if ax < 0x38800000:
        return np.float32(np.float32(np.rint(np.float32(np.float32(v) * _TWO24))) * _INV_TWO24)
    m = (ax + 0xFFF + ((ax >> 13) & 1)) & 0x7FFFE000
    return bits_float(np.uint32((x & 0x80000000) | m))


@inline
def round_bf16(v):  # type: ignore[no-untyped-def]
    """``v`` rounded to bfloat16 and back (ties to even; NaN stays NaN)."""
    x = np.int64(float_bits(np.float32(v)))
    if (x & 0x7FFFFFFF) > 0x7F800000:
        return np.float32(v)
    r = (x + 0x7FFF + ((x >> 16) & 1)) & 0xFFFF0000
    return bits_float(np.uint32(r & 0xFFFFFFFF))


@inline
def put_u16(out, at, bits):  # type: ignore[no-untyped-def]
    """Store ``bits`` little-endian at byte ``at`` of ``out``."""
    out[at] = np.uint8(bits & 0xFF)
    out[at + 1] = np.uint8((bits >> 8) & 0xFF)


@inline
def c_int(v):  # type: ignore[no-untyped-def]
    """C's float -> int conversion as x86 performs it (``cvttss2si``): truncation toward
    zero, and the "integer indefinite" ``INT32_MIN`` for NaN and out-of-range values
    (undefined behaviour in C; this is what llama.cpp's builds do)."""
    if not (abs(v) < np.float32(2147483648.0)):
        return np.int64(-2147483648)
    return np.int64(np.trunc(v))


@inline
def safe_inverse(d):  # type: ignore[no-untyped-def]
    """C's ``d ? 1.0f/d : 0.0f``."""
    return np.float32(1.0) / d if d != np.float32(0.0) else np.float32(0.0)


@inline
def clamp(v, lo, hi):  # type: ignore[no-untyped-def]
    """``torch.clamp`` of a float32 to integer bounds (NaN stays NaN)."""
    if v < lo:
        return np.float32(lo)
    if v > hi:
        return np.float32(hi)
    return v


@inline
def store_f16(v):  # type: ignore[no-untyped-def]
    """``v`` stored as f16: its uint16 bits (:func:`f16_bits`: ties to even, NaN the quiet
    ``0x7E00`` with its sign) and the stored value read back as float32 (:func:`round_f16`),
    in selects only, so a loop over a row vectorizes (the branches of ``f16_bits`` kept it
    scalar: ~1 ns per weight for both, against ~0.6 for torch's two casts)."""
    x = np.int64(float_bits(np.float32(v)))
    sign = (x >> 16) & 0x8000
    ax = x & 0x7FFFFFFF
    m = ax + 0xFFF + ((ax >> 13) & 1)
    normal = (m - (112 << 23)) >> 13
    q = np.float32(np.rint(np.float32(abs(np.float32(v)) * _TWO24)))  # a subnormal's steps of 2^-24
    tiny = ax < 0x38800000
    bits = np.int64(q) if tiny else normal
    bits = 0x7C00 if ax >= 0x477FF000 else bits  # rounds to inf (inf itself too)
    bits = 0x7E00 if ax > 0x7F800000 else bits
    back_normal = bits_float(np.uint32((x & 0x80000000) | (m & 0x7FFFE000)))
    back = np.float32(np.float32(np.copysign(q, v)) * _INV_TWO24) if tiny else back_normal
    back = np.float32(np.copysign(np.float32(np.inf), v)) if ax >= 0x477FF000 else back
    back = np.float32(v) if ax > 0x7F800000 else back
    return sign | bits, back


@inline
def store_bf16(v):  # type: ignore[no-untyped-def]
    """``v`` stored as bfloat16: its uint16 bits (ties to even; NaN ``0x7FC0`` as torch
    writes it) and the stored value read back as float32 (:func:`round_bf16`), in selects."""
    x = np.int64(float_bits(np.float32(v)))
    r = (x + 0x7FFF + ((x >> 16) & 1)) & 0xFFFF0000
    nan = (x & 0x7FFFFFFF) > 0x7F800000
    bits = 0x7FC0 if nan else (r >> 16) & 0xFFFF
    back = np.float32(v) if nan else bits_float(np.uint32(r & 0xFFFFFFFF))
    return bits, back
