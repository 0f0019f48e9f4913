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
(``Prediction.scale_ok``). Reference quantizers: ``gguf.quants.quantize``, already
bit-exact with ``quantize_row_q*_ref`` (its Q8_0 scales with the f32 ``d`` and rounds
``x * (1/d)`` half away from zero, as ggml does).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

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
from provenance.codecs.native.fields import f16, u32
from provenance.codecs.prediction import Prediction, f16_round, roundf, safe_inverse
from provenance.codecs.quanttype import CompiledKernel, QuantType, Recipe, UniformGrid
from provenance.jit import kernel

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


# ---- reference quantizers -------------------------------------------------------------


def quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(blocks, T.Q4_0)


def quantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(blocks, T.Q4_1)


def quantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(blocks, T.Q5_0)


def quantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(blocks, T.Q5_1)


def quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(blocks, T.Q8_0)


# ---- descriptors ----------------------------------------------------------------------

Q4_0 = QuantType(T.Q4_0, q4_0, UniformGrid(-8, 7), (0,), CompiledKernel(q4_0_compiled), Recipe(predict_q4_0), quantize_q4_0)
Q4_1 = QuantType(T.Q4_1, q4_1, UniformGrid(0, 15), (0, 2), CompiledKernel(q4_1_compiled), Recipe(predict_q4_1), quantize_q4_1)
Q5_0 = QuantType(T.Q5_0, q5_0, UniformGrid(-16, 15), (0,), CompiledKernel(q5_0_compiled), Recipe(predict_q5_0), quantize_q5_0)
Q5_1 = QuantType(T.Q5_1, q5_1, UniformGrid(0, 31), (0, 2), CompiledKernel(q5_1_compiled), Recipe(predict_q5_1), quantize_q5_1)
Q8_0 = QuantType(T.Q8_0, q8_0, UniformGrid(-128, 127), (0,), CompiledKernel(q8_0_compiled), Recipe(predict_q8_0), quantize_q8_0)

TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
