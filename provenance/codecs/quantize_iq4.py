"""llama.cpp's IQ4_NL / IQ4_XS quantizers without an importance matrix, compiled, bit-exact.

Both go through ggml's ``quantize_row_iq4_nl_impl`` with ``ntry = 7`` (the
``quantize_iq4_nl`` / ``quantize_iq4_xs`` entry points ``ggml_quantize_chunk`` calls),
weights ``x*x``: per 32-weight sub-block a scale search over 15 trial inverse scales
``(itry + values[0]) / max``; IQ4_XS then stores a 6-bit sub-scale ``l`` against the
super-scale ``d = -max_scale/32`` and re-picks every code with ``1/(d*l)`` computed from
the *f32* ``d`` (only its stored copy is f16). Float32 order-of-operations rules as in
:mod:`provenance.codecs.quantize_k`; kernels ``fn(x, out, f16_table, values)`` with the
16-level table as float32.

``best_index_int8`` is ggml's current branch-free form: level ``j`` once
``x + x >= val[j-1] + val[j]`` (an exact comparison, ties go up; NaN picks level 0).
Older ggml compared rounded differences ``x - val[mu-1] < val[mu] - x``, which can differ
only within a float32 rounding of a midpoint; the shared IQ4_XS file matches this form
bit for bit.
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.native.floats import f16_bits, nearest_int, put_u16
from provenance.codecs.quantize_k import F0, F1, GROUP_MAX_EPS, first_absmax
from provenance.jit import inline, kernel


@inline
def best_index_int8(values, x):  # type: ignore[no-untyped-def]
    """Index of the nearest of the 16 sorted ``values`` (ties to the upper one), as ggml."""
    x2 = x + x
    idx = 0
    step = 8
    while step > 0:
        j = idx + step
        if x2 >= np.float32(values[j - 1] + values[j]):
            idx = j
        step >>= 1
    return idx


@inline
def _sums(values, xs, id_):  # type: ignore[no-untyped-def]
    sumqx = F0
    sumq2 = F0
    for j in range(xs.shape[0]):
        q = values[best_index_int8(values, id_ * xs[j])]
        w = xs[j] * xs[j]
        sumqx += np.float32(w * q) * xs[j]
        sumq2 += np.float32(w * q) * q
    return sumqx, sumq2


@inline
def iq4_scale(values, xs):  # type: ignore[no-untyped-def]
    """The sub-block scale ``d`` that ``quantize_row_iq4_nl_impl``'s search picks (ntry 7)."""
    mx, amax = first_absmax(xs)
    if amax < GROUP_MAX_EPS:
        return F0
    d = np.float32(-mx) / values[0]
    sumqx, sumq2 = _sums(values, xs, F1 / d)
    d = sumqx / sumq2 if sumq2 > F0 else F0
    best = d * sumqx
    for itry in range(-7, 8):
        sumqx, sumq2 = _sums(values, xs, np.float32(itry + np.int64(values[0])) / mx)
        if sumq2 > F0 and np.float32(sumqx * sumqx) > np.float32(best * sumq2):
            d = sumqx / sumq2
            best = d * sumqx
    return d


@kernel
def quantize_iq4_nl_compiled(x, out, f16_table, values):  # type: ignore[no-untyped-def]
    """(n, 32) float32 -> (n, 18) IQ4_NL blocks."""
    half = x.shape[1] // 2
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        d = iq4_scale(values, xb)
        inv = F1 / d if d != F0 else F0
        put_u16(y, 0, f16_bits(d))
        for j in range(half):
            lo = best_index_int8(values, inv * xb[j])
            hi = best_index_int8(values, inv * xb[half + j])
            y[2 + j] = np.uint8(lo | (hi << 4))


@kernel
def quantize_iq4_xs_compiled(x, out, f16_table, values):  # type: ignore[no-untyped-def]
    """(n, 256) float32 -> (n, 136) IQ4_XS blocks."""
    scales = np.zeros(8, np.float32)
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        for ib in range(8):
            scales[ib] = iq4_scale(values, xb[32 * ib:32 * ib + 32])
        max_scale, _ = first_absmax(scales)
        d = np.float32(-max_scale) / np.float32(32.0)
        inv = F1 / d if d != F0 else F0
        put_u16(y, 0, f16_bits(d))
        scales_h = 0
        for ib in range(4):
            y[4 + ib] = 0
        for ib in range(8):
            l = min(max(nearest_int(inv * scales[ib]), -32), 31)
            dl = d * np.float32(l)  # the f32 d, not its f16 copy
            idl = F1 / dl if dl != F0 else F0
            lu = l + 32
            y[4 + ib // 2] = np.uint8(np.int64(y[4 + ib // 2]) | ((lu & 0xF) << (4 * (ib & 1))))
            scales_h |= (lu >> 4) << (2 * ib)
            for j in range(16):
                lo = best_index_int8(values, idl * xb[32 * ib + j])
                hi = best_index_int8(values, idl * xb[32 * ib + 16 + j])
                y[8 + 16 * ib + j] = np.uint8(lo | (hi << 4))
        put_u16(y, 2, scales_h)
