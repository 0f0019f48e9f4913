"""llama.cpp's IQ4_NL / IQ4_XS quantizers without an importance matrix, bit-exact.

Both go through ggml's ``quantize_row_iq4_nl_impl`` with ``ntry = 7`` (the
``quantize_iq4_nl`` / ``quantize_iq4_xs`` entry points ``ggml_quantize_chunk`` calls),
weights ``x*x``: per 32-weight sub-block a scale search over 15 trial inverse scales
``(itry + values[0]) / max``; IQ4_XS then stores a 6-bit sub-scale ``l`` against the
super-scale ``d = -max_scale/32`` and re-picks every code with ``1/(d*l)`` computed from
the *f32* ``d`` (only its stored copy is f16). Float32 order-of-operations rules as in
:mod:`provenance.codecs.quantize_k`.

``best_index_int8`` is ggml's current branch-free form: level ``j`` once
``x + x >= val[j-1] + val[j]`` (an exact comparison, ties go up). Older ggml compared
rounded differences ``x - val[mu-1] < val[mu] - x``, which can differ only within a
float32 rounding of a midpoint; the shared IQ4_XS file matches this form bit for bit.
"""
from __future__ import annotations

import numpy as np
from gguf import quants as gguf_quants

from provenance.codecs.quantize_k import (
    F32,
    GROUP_MAX_EPS,
    f16_bits,
    first_absmax,
    nearest_int,
    seq_sum,
    u16_bytes,
)

VALUES = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.int8)
_LEVELS = VALUES.astype(F32)
_THRESH = (VALUES[:-1].astype(np.int32) + VALUES[1:].astype(np.int32)).astype(F32)  # exact sums


def best_index_int8(x: np.ndarray) -> np.ndarray:
    """Index of the nearest IQ4 level (ties to the upper one), as ggml computes it."""
    return np.searchsorted(_THRESH, x + x, side="right")


def _search(xs: np.ndarray, ntry: int = 7) -> np.ndarray:
    """Per sub-block scale ``d`` of ``quantize_row_iq4_nl_impl`` (``xs``: (32, n_sub))."""
    mx = first_absmax(xs)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = xs * xs
    v0 = F32(VALUES[0])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = -mx / v0
        iscale = F32(1) / d

        def sums(id_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            q = _LEVELS[best_index_int8(id_ * xs)]
            wq = w * q
            return seq_sum(wq * xs), seq_sum(wq * q)  # w*q*x, w*q*q

        sumqx, sumq2 = sums(iscale)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            sumqx, sumq2 = sums(F32(itry + int(VALUES[0])) / mx)  # (itry + values[0]) is an int
            take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(take, sumqx / sumq2, d)
            best = np.where(take, d * sumqx, best)
    return np.where(zero, F32(0), d).astype(F32)


def _pack(L: np.ndarray) -> np.ndarray:
    """codes (nb, n) -> bytes: per 32 weights, byte j = L[j] | L[16 + j] << 4."""
    q = L.reshape(L.shape[0], -1, 2, 16).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(L.shape[0], -1)


def quantize_iq4_nl(x: np.ndarray) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 18) IQ4_NL blocks."""
    xs = np.ascontiguousarray(x.T)
    d = _search(xs)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0))
    L = best_index_int8(inv[:, None] * x)  # all-zero blocks: 0*x -> level index 8, as in C
    return np.concatenate([u16_bytes(f16_bits(d)), _pack(L)], axis=1)


def quantize_iq4_xs(x: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 -> (nb, 136) IQ4_XS blocks."""
    nb = x.shape[0]
    xs = np.ascontiguousarray(x.reshape(-1, 32).T)
    scales = _search(xs).reshape(nb, 8)
    max_scale = first_absmax(scales.T)
    d = -max_scale / F32(32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0))
        l = np.clip(nearest_int(inv[:, None] * scales), -32, 31)
        dl = d[:, None] * l.astype(F32)  # the f32 d, not its f16 copy
        idl = np.where(dl != 0, F32(1) / dl, F32(0))
        L = best_index_int8(idl[:, :, None] * x.reshape(nb, 8, 32)).reshape(nb, 256)
    lu = (l + 32).astype(np.uint16)
    scales_l = ((lu[:, 0::2] & 0xF) | ((lu[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales_h = np.zeros(nb, np.uint16)
    for ib in range(8):
        scales_h |= (lu[:, ib] >> 4) << (2 * ib)
    return np.concatenate([u16_bytes(f16_bits(d)), u16_bytes(scales_h), scales_l, _pack(L)], axis=1)
