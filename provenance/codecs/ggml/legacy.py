"""Legacy 32-weight block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Byte layouts (ggml ``block_q*``): one f16 scale ``d`` (and f16 min ``m`` for the _1
types) then the codes; a nibble byte ``j`` holds weight ``j`` (low) and ``j+16`` (high);
Q5 keeps the fifth bit of weight ``j`` in bit ``j`` of a little-endian uint32 ``qh``.
Arithmetic as gguf-py: ``d * q`` for the symmetric types (levels already centred),
``d * q + m`` for the ones with a min.

Recipes (``quantize_row_q*_ref`` of ggml-quants.c, no importance matrix):

* Q8_0: ``d = amax/127`` (f32), ``id = d ? 1/d : 0``, ``q = roundf(x*id)``: the codes use
  the f32 ``d`` and its f32 *inverse*; only the stored copy of ``d`` is rounded to f16.
  Using the stored f16 ``d`` instead flips ~0.7% of codes, rounding ``x/d`` instead of
  ``x*id`` ~1 in 10^6 (measured on random data). (The shared README's 9 leftover Q8_0
  mismatches are a different effect, f16 double rounding of the source: see
  :mod:`provenance.quant.gridcheck`.)
* Q4_0 / Q5_0: ``max`` = the signed value of largest magnitude (first one wins),
  ``d = max/-8`` (``/-16``), ``q = min(15, (int8)(x*id + 8.5f))`` (``31``, ``16.5f``):
  truncation after a float add, not round().
* Q4_1 / Q5_1: ``d = (max-min)/15`` (``/31``), ``q = min(15, (int8)((x-min)*id + 0.5f))``.

The scales are recomputed from the source and compared with the stored ones
(``Prediction.scale_ok``). Reference quantizers: ``quantize_q*_compiled``, numba ports of
``quantize_row_q*_ref`` (C's float -> int8 casts as x86 performs them), held to llama.cpp's
``ggml_quantize_chunk`` and to ``gguf.quants.quantize``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from provenance.codecs.kernels._common import (
    Decoded,
    Workspace,
    assemble,
    block_words,
    f16_field,
    f16_pair,
    plane,
    spread_bits,
)
from provenance.codecs.native.fields import f16, split_nibbles, u32
from provenance.codecs.native.floats import c_int, f16_bits, put_u16, round_f16
from provenance.codecs.native.floats import roundf as c_roundf
from provenance.codecs.native.floats import safe_inverse as inverse32
from provenance.codecs.native.gridcheck import NO_TABLE, cells, check
from provenance.codecs.native.q8_0check import cells_fused, check_runs
from provenance.codecs.prediction import Prediction, f16_round, roundf, safe_inverse
from provenance.codecs.quanttype import CompiledKernel, QuantType, Recipe, UniformGrid
from provenance.jit import inline, kernel

if TYPE_CHECKING:
    from provenance.codecs.grid import QuantGrid

# ---- torch kernels ------------------------------------------------------------------


def _nibble_codes(blocks: torch.Tensor, start: int, ws: Workspace) -> torch.Tensor:
    """Codes 0..15 of the 16 nibble bytes at ``start``: uint8 ``(n, 32)`` in weight order."""
    w = block_words(blocks)
    lo = plane(w, blocks.shape[0], 0, 0x0F, ws, "lo")
    hi = plane(w, blocks.shape[0], 4, 0x0F, ws, "hi")
    codes = ws.get("lv", (blocks.shape[0], 32), torch.uint8)
    return assemble([lo[:, start:start + 16], hi[:, start:start + 16]], codes)


def _add_fifth_bit(codes: torch.Tensor, blocks: torch.Tensor, start: int, ws: Workspace) -> None:
    """OR bit ``j`` of the uint32 at ``start`` into code ``j`` as its bit 4."""
    high = spread_bits(blocks, start, start + 4, ws, "qh", shift=4)  # (n, 4) words of 0/16 bytes
    codes.view(torch.int64).bitwise_or_(high)


def q4_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    codes = _nibble_codes(blocks, 2, ws).view(torch.int8).sub_(8)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1))


def q4_1(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    dm = f16_pair(blocks, 0, ws, "dm")
    d, m = dm[:, 0], dm[:, 1]
    codes = _nibble_codes(blocks, 4, ws)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1), m.view(n, 1, 1))


def q5_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    codes = _nibble_codes(blocks, 6, ws)
    _add_fifth_bit(codes, blocks, 2, ws)
    return Decoded(codes.view(torch.int8).sub_(16).view(n, 1, 32), d.view(n, 1, 1))


def q5_1(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    dm = f16_pair(blocks, 0, ws, "dm")
    d, m = dm[:, 0], dm[:, 1]
    codes = _nibble_codes(blocks, 8, ws)
    _add_fifth_bit(codes, blocks, 4, ws)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1), m.view(n, 1, 1))


def q8_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    # The int8 codes are used in place: a strided view, no copy.
    codes = blocks[:, 2:34].view(torch.int8)
    return Decoded(codes.view(n, 1, 32), d.view(n, 1, 1))


# ---- compiled CPU kernels (inner loop bounds from out.shape, see provenance.jit) -----


@kernel
def q4_0_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        for j in range(half):
            q = np.int64(b[2 + j])
            y[j] = d * np.float32((q & 0xF) - 8)
            y[half + j] = d * np.float32((q >> 4) - 8)


@kernel
def q4_1_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, m = f16(b, 0, f16_table), f16(b, 2, f16_table)
        for j in range(half):
            q = np.int64(b[4 + j])
            y[j] = d * np.float32(q & 0xF) + m
            y[half + j] = d * np.float32(q >> 4) + m


@kernel
def q5_0_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        qh = u32(b, 2)
        for j in range(half):
            q = np.int64(b[6 + j])
            y[j] = d * np.float32(((q & 0xF) | (((qh >> j) & 1) << 4)) - 16)
            y[half + j] = d * np.float32(((q >> 4) | (((qh >> (half + j)) & 1) << 4)) - 16)


@kernel
def q5_1_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    half = out.shape[1] // 2
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, m = f16(b, 0, f16_table), f16(b, 2, f16_table)
        qh = u32(b, 4)
        for j in range(half):
            q = np.int64(b[8 + j])
            y[j] = d * np.float32((q & 0xF) | (((qh >> j) & 1) << 4)) + m
            y[half + j] = d * np.float32((q >> 4) | (((qh >> (half + j)) & 1) << 4)) + m


@kernel
def q8_0_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    signed = blocks.view(np.int8)
    width = out.shape[1]
    for i in range(blocks.shape[0]):
        d = f16(blocks[i], 0, f16_table)
        s, y = signed[i], out[i]
        for j in range(width):
            y[j] = np.float32(s[2 + j]) * d


# ---- recipes ------------------------------------------------------------------------


def _symmetric(x: torch.Tensor, grid: QuantGrid, divisor: float, bias: float, top: int) -> Prediction:
    """Q4_0 / Q5_0: ``d = max/divisor`` (signed max), ``q = min(top, (int8)(x*id + bias))``."""
    xb = x.reshape(-1, 32)
    idx = xb.abs().argmax(dim=1, keepdim=True)  # first largest |x|, as llama.cpp's strict '<'
    d = torch.gather(xb, 1, idx) / divisor
    v = xb * safe_inverse(d)
    level = torch.clamp(torch.trunc(v + bias), max=top) - (bias - 0.5)
    return _blockwise(x, level, v, _f16_ok(d, grid.scale))


def _affine(x: torch.Tensor, grid: QuantGrid, levels: int) -> Prediction:
    """Q4_1 / Q5_1: ``d = (max-min)/levels``, ``q = min(levels, (int8)((x-min)*id + 0.5f))``."""
    xb = x.reshape(-1, 32)
    lo = xb.amin(dim=1, keepdim=True)
    hi = xb.amax(dim=1, keepdim=True)
    d = (hi - lo) / float(levels)
    v = (xb - lo) * safe_inverse(d)
    level = torch.clamp(torch.trunc(v + 0.5), max=levels)
    assert grid.offset is not None
    return _blockwise(x, level, v, _f16_ok(d, grid.scale) & _f16_ok(lo, grid.offset))


def _f16_ok(recomputed: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    return f16_round(recomputed).view(-1) == stored.reshape(-1)


def _blockwise(x: torch.Tensor, level: torch.Tensor, v: torch.Tensor, scale_ok: torch.Tensor) -> Prediction:
    shape = x.shape
    return Prediction(level.view(shape), v.view(shape), torch.ones(shape, dtype=torch.bool), scale_ok=scale_ok)


def predict_q8_0(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    xb = x.reshape(-1, 32)
    d = xb.abs().amax(dim=1, keepdim=True) / 127.0
    v = xb * safe_inverse(d)
    return _blockwise(x, roundf(v), v, _f16_ok(d, grid.scale))


def predict_q4_0(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    return _symmetric(x, grid, -8.0, 8.5, 15)


def predict_q5_0(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    return _symmetric(x, grid, -16.0, 16.5, 31)


def predict_q4_1(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    return _affine(x, grid, 15)


def predict_q5_1(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    return _affine(x, grid, 31)


# ---- reference quantizers (quantize_row_q*_ref, compiled: fn(x (n, 32), out, f16_table)) --


@inline
def _signed_max(x):  # type: ignore[no-untyped-def]
    """``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }``: the first largest |x|, signed."""
    amax = np.float32(0.0)
    mx = np.float32(0.0)
    for j in range(x.shape[0]):
        if amax < abs(x[j]):
            amax = abs(x[j])
            mx = x[j]
    return mx


@inline
def _min_max(x):  # type: ignore[no-untyped-def]
    lo = np.float32(3.4028234663852886e38)
    hi = np.float32(-3.4028234663852886e38)
    for j in range(x.shape[0]):
        if x[j] < lo:
            lo = x[j]
        if x[j] > hi:
            hi = x[j]
    return lo, hi


@inline
def _int8_code(v, top):  # type: ignore[no-untyped-def]
    """``MIN(top, (int8_t)v)`` stored as ``uint8_t``."""
    q = ((c_int(v) + 128) & 0xFF) - 128
    return min(top, q) & 0xFF


@kernel
def quantize_q4_0_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    half = x.shape[1] // 2
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        d = _signed_max(xb) / np.float32(-8.0)
        idn = inverse32(d)
        put_u16(y, 0, f16_bits(d))
        for j in range(half):
            lo = _int8_code(np.float32(xb[j] * idn) + np.float32(8.5), 15)
            hi = _int8_code(np.float32(xb[half + j] * idn) + np.float32(8.5), 15)
            y[2 + j] = np.uint8((lo | (hi << 4)) & 0xFF)


@kernel
def quantize_q4_1_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    half = x.shape[1] // 2
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        lo_v, hi_v = _min_max(xb)
        d = np.float32(hi_v - lo_v) / np.float32(15.0)
        idn = inverse32(d)
        put_u16(y, 0, f16_bits(d))
        put_u16(y, 2, f16_bits(lo_v))
        for j in range(half):
            lo = _int8_code(np.float32(np.float32(xb[j] - lo_v) * idn) + np.float32(0.5), 15)
            hi = _int8_code(np.float32(np.float32(xb[half + j] - lo_v) * idn) + np.float32(0.5), 15)
            y[4 + j] = np.uint8((lo | (hi << 4)) & 0xFF)


@kernel
def quantize_q5_0_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    half = x.shape[1] // 2
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        d = _signed_max(xb) / np.float32(-16.0)
        idn = inverse32(d)
        put_u16(y, 0, f16_bits(d))
        qh = 0
        for j in range(half):
            lo = _int8_code(np.float32(xb[j] * idn) + np.float32(16.5), 31)
            hi = _int8_code(np.float32(xb[half + j] * idn) + np.float32(16.5), 31)
            y[6 + j] = np.uint8((lo & 0xF) | ((hi & 0xF) << 4))
            qh |= ((lo & 0x10) >> 4) << j
            qh |= ((hi & 0x10) >> 4) << (j + half)
        put_u16(y, 2, qh & 0xFFFF)
        put_u16(y, 4, (qh >> 16) & 0xFFFF)


@kernel
def quantize_q5_1_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    half = x.shape[1] // 2
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        lo_v, hi_v = _min_max(xb)
        d = np.float32(hi_v - lo_v) / np.float32(31.0)
        idn = inverse32(d)
        put_u16(y, 0, f16_bits(d))
        put_u16(y, 2, f16_bits(lo_v))
        qh = 0
        for j in range(half):
            lo = c_int(np.float32(np.float32(xb[j] - lo_v) * idn) + np.float32(0.5)) & 0xFF  # (uint8_t)
            hi = c_int(np.float32(np.float32(xb[half + j] - lo_v) * idn) + np.float32(0.5)) & 0xFF
            y[8 + j] = np.uint8((lo & 0xF) | ((hi & 0xF) << 4))
            qh |= ((lo & 0x10) >> 4) << j
            qh |= ((hi & 0x10) >> 4) << (j + half)
        put_u16(y, 4, qh & 0xFFFF)
        put_u16(y, 6, (qh >> 16) & 0xFFFF)


@kernel
def quantize_q8_0_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    width = x.shape[1]
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        amax = np.float32(0.0)
        for j in range(width):
            a = abs(xb[j])
            amax = amax if amax > a else a  # MAX(amax, fabsf(v))
        d = amax / np.float32(127.0)
        idn = inverse32(d)
        put_u16(y, 0, f16_bits(d))
        for j in range(width):
            y[2 + j] = np.uint8(c_int(c_roundf(np.float32(xb[j] * idn))) & 0xFF)


# ---- compiled grids, recipes and grid checks (codecs/native/gridcheck.py) ------------


@inline
def _add_fifth_bits(b, at, code):  # type: ignore[no-untyped-def]
    """Bit ``j`` of the u32 at ``at`` as bit 4 of weight ``j``."""
    qh = u32(b, at)
    for j in range(code.shape[0]):
        code[j] += np.int32((qh >> j) & 1) << 4


@inline
def _q4_0_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    split_nibbles(b[2:18], g.code, -8)


@inline
def _q4_1_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    g.offset[0] = f16(b, 2, f16_table)
    split_nibbles(b[4:20], g.code, 0)


@inline
def _q5_0_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    split_nibbles(b[6:22], g.code, -16)
    _add_fifth_bits(b, 2, g.code)


@inline
def _q5_1_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    g.offset[0] = f16(b, 2, f16_table)
    split_nibbles(b[8:24], g.code, 0)
    _add_fifth_bits(b, 4, g.code)


@inline
def _q8_0_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    for j in range(g.code.shape[0]):
        q = np.int64(b[2 + j])
        g.code[j] = q - 256 if q > 127 else q


@inline
def _absmax_nan(x):  # type: ignore[no-untyped-def]
    """``x.abs().amax()``: NaN if any value is NaN (torch's rule); selects, no branches."""
    m = np.float32(0.0)
    nan = False
    for j in range(x.shape[0]):
        a = abs(x[j])
        nan |= a != a
        m = a if a > m else m
    return np.float32(np.nan) if nan else m


@inline
def _predict_q8_0_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    d = _absmax_nan(x) / np.float32(127.0)
    idn = inverse32(d)
    for j in range(x.shape[0]):
        v = np.float32(x[j] * idn)
        p.u[j] = v
        p.level[j] = c_roundf(v)
        p.valid[j] = True
    return round_f16(d) == g.scale[0]


@inline
def _predict_symmetric_block(x, g, p, divisor, bias, top):  # type: ignore[no-untyped-def]
    """Q4_0 / Q5_0 (:func:`_symmetric`): the first largest |x| (the first NaN, as torch's argmax)."""
    at = 0
    m = np.float32(-1.0)
    for j in range(x.shape[0]):
        a = abs(x[j])
        if a != a:
            at = j
            break
        if a > m:
            m = a
            at = j
    d = x[at] / divisor
    idn = inverse32(d)
    for j in range(x.shape[0]):
        v = np.float32(x[j] * idn)
        p.u[j] = v
        t = np.float32(np.trunc(np.float32(v + bias)))
        p.level[j] = np.float32((np.float32(top) if t > top else t) - np.float32(bias - np.float32(0.5)))
        p.valid[j] = True
    return round_f16(d) == g.scale[0]


@inline
def _predict_affine_block(x, g, p, levels):  # type: ignore[no-untyped-def]
    """Q4_1 / Q5_1 (:func:`_affine`): min and max as torch's amin / amax (NaN wins)."""
    lo = x[0]
    hi = x[0]
    for j in range(x.shape[0]):
        v = x[j]
        if v != v or lo != lo:
            lo = hi = np.float32(np.nan)
        else:
            lo = v if v < lo else lo
            hi = v if v > hi else hi
    d = np.float32(hi - lo) / np.float32(levels)
    idn = inverse32(d)
    for j in range(x.shape[0]):
        v = np.float32(np.float32(x[j] - lo) * idn)
        p.u[j] = v
        t = np.float32(np.trunc(np.float32(v + np.float32(0.5))))
        p.level[j] = np.float32(levels) if t > levels else t
        p.valid[j] = True
    return round_f16(d) == g.scale[0] and round_f16(lo) == g.offset[0]


@inline
def _predict_q4_0_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_symmetric_block(x, g, p, np.float32(-8.0), np.float32(8.5), 15)


@inline
def _predict_q5_0_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_symmetric_block(x, g, p, np.float32(-16.0), np.float32(16.5), 31)


@inline
def _predict_q4_1_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_affine_block(x, g, p, 15)


@inline
def _predict_q5_1_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_affine_block(x, g, p, 31)


@kernel
def q4_0_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q4_0_grid, _predict_q4_0_block,
          1, True, False, False, NO_TABLE, -8, 7)


@kernel
def q4_1_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q4_1_grid, _predict_q4_1_block,
          1, True, True, False, NO_TABLE, 0, 15)


@kernel
def q5_0_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q5_0_grid, _predict_q5_0_block,
          1, True, False, False, NO_TABLE, -16, 15)


@kernel
def q5_1_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q5_1_grid, _predict_q5_1_block,
          1, True, True, False, NO_TABLE, 0, 31)


@kernel
def q8_0_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    """The Q8_0 check: runs of four groups fused, the rest the shared check
    (:func:`provenance.codecs.native.q8_0check.check_runs`); the same counts, kept distances
    and float64 sums, bit for bit."""
    check_runs(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q8_0_grid, _predict_q8_0_block)


@kernel
def q4_0_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q4_0_grid, 1, True, False, -8, 7, NO_TABLE, NO_TABLE)


@kernel
def q4_1_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q4_1_grid, 1, True, True, 0, 15, NO_TABLE, NO_TABLE)


@kernel
def q5_0_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q5_0_grid, 1, True, False, -16, 15, NO_TABLE, NO_TABLE)


@kernel
def q5_1_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q5_1_grid, 1, True, True, 0, 31, NO_TABLE, NO_TABLE)


@kernel
def q8_0_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells_fused(blocks, other, counts, sums, tol_steps, exact16, f16_table)


# ---- descriptors ----------------------------------------------------------------------

Q4_0 = QuantType(T.Q4_0, q4_0, UniformGrid(-8, 7), (0,), CompiledKernel(q4_0_compiled), Recipe(predict_q4_0),
       CompiledKernel(quantize_q4_0_compiled),
       cells=CompiledKernel(q4_0_cells), check=CompiledKernel(q4_0_check))
Q4_1 = QuantType(T.Q4_1, q4_1, UniformGrid(0, 15), (0, 2), CompiledKernel(q4_1_compiled), Recipe(predict_q4_1),
       CompiledKernel(quantize_q4_1_compiled),
       cells=CompiledKernel(q4_1_cells), check=CompiledKernel(q4_1_check))
Q5_0 = QuantType(T.Q5_0, q5_0, UniformGrid(-16, 15), (0,), CompiledKernel(q5_0_compiled), Recipe(predict_q5_0),
       CompiledKernel(quantize_q5_0_compiled),
       cells=CompiledKernel(q5_0_cells), check=CompiledKernel(q5_0_check))
Q5_1 = QuantType(T.Q5_1, q5_1, UniformGrid(0, 31), (0, 2), CompiledKernel(q5_1_compiled), Recipe(predict_q5_1),
       CompiledKernel(quantize_q5_1_compiled),
       cells=CompiledKernel(q5_1_cells), check=CompiledKernel(q5_1_check))
Q8_0 = QuantType(T.Q8_0, q8_0, UniformGrid(-128, 127), (0,), CompiledKernel(q8_0_compiled), Recipe(predict_q8_0),
       CompiledKernel(quantize_q8_0_compiled),
       cells=CompiledKernel(q8_0_cells), check=CompiledKernel(q8_0_check))

TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
