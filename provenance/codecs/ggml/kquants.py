"""K-quants (Q2_K..Q6_K) and the ternary TQ1_0 / TQ2_0: 256-weight super-blocks.

Element orders follow ggml's ``dequantize_row_q*_K``: a 2-bit plane byte ``j`` of half
``h`` holds weights ``h*128 + s*32 + j`` in bits ``2s``; a high-bit byte ``j`` holds
bit ``b`` of weight ``b*32 + j``; Q4_K/Q5_K nibble byte ``c*32 + j`` holds weights
``c*64 + j`` (low) and ``c*64 + 32 + j`` (high). The torch kernels unpack eight byte
lanes at a time on int64 words (every plane is a run of 32 consecutive weights); the
compiled kernels follow gguf-py's arithmetic: the sub-block scale ``d * sc`` (and min
``dmin * m``) is rounded to float32 first, then ``scale * q - min`` with one rounding per
operation, one vectorisable inner loop per sub-block (bounds from ``out.shape``, see
:mod:`provenance.jit`).

Recipe (ggml-quants.c): after the scale search, codes are recomputed from the *stored*
f16 ``d``, ``dmin`` and 6/4-bit sub-scales: ``q = nearest_int((x + dm)/d)`` (Q2_K, Q4_K,
Q5_K) or ``nearest_int(x/d)`` (Q3_K, Q6_K), clamped; ``nearest_int`` rounds half to
even. Sub-blocks with ``d == 0`` keep the search's codes and are not predictable. The
reference quantizers are :mod:`provenance.codecs.quantize_k`; the ternary types have
neither recipe nor quantizer here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from provenance.codecs.kernels._common import (
    Decoded,
    DeviceTables,
    Workspace,
    assemble,
    block_words,
    f16_field,
    f16_pair,
    field,
    plane,
    scale_products,
)
from provenance.codecs.native.fields import add_bits, f16, k_sub_scale, put_bits
from provenance.codecs.native.floats import clamp
from provenance.codecs.native.gridcheck import NO_TABLE, cells, check
from provenance.codecs.prediction import Prediction
from provenance.codecs.quantize_k import (
    quantize_q2_k_compiled,
    quantize_q3_k_compiled,
    quantize_q4_k_compiled,
    quantize_q5_k_compiled,
    quantize_q6_k_compiled,
)
from provenance.codecs.quanttype import CompiledKernel, QuantType, Recipe, UniformGrid
from provenance.jit import inline, kernel

if TYPE_CHECKING:
    from provenance.codecs.grid import QuantGrid

# ---- torch kernels ------------------------------------------------------------------

_TABLES = DeviceTables(
    lambda: {
        "crumb4": torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 4, 1),
        "pow5": torch.tensor([1, 3, 9, 27, 81], dtype=torch.uint8).view(1, 5, 1),
        "pow4": torch.tensor([1, 3, 9, 27], dtype=torch.uint8).view(1, 4, 1),
        # Q3_K scales: nibble shifts per (q // 2) and crumb shifts per q, int32 lanes.
        "q3_lo": torch.tensor([0, 4], dtype=torch.int32).view(1, 2, 1),
        "q3_hi": torch.tensor([0, 2, 4, 6], dtype=torch.int32).view(1, 4),
        # Q4_K/Q5_K: the high nibbles of word c for the scales (0) and the mins (4).
        "k_hi": torch.tensor([0, 4], dtype=torch.int32).view(2, 1),
    }
)


def _region(blocks: torch.Tensor, start: int, stop: int, ws: Workspace, name: str) -> torch.Tensor:
    """Flat words of a contiguous copy of bytes ``start:stop`` of each block: one cheap
    strided copy (few rows per chunk here) so the many plane ops below touch only the
    bytes they need."""
    return block_words(field(blocks, start, stop, ws, name))


def _crumb_codes(blocks: torch.Tensor, start: int, ws: Workspace, name: str = "lv") -> torch.Tensor:
    """2-bit codes of the 64 bytes at ``start`` -> uint8 ``(n, 256)`` in weight order
    (weight ``h*128 + s*32 + j`` = bits ``2s`` of byte ``start + h*32 + j``)."""
    n = blocks.shape[0]
    w = _region(blocks, start, start + 64, ws, "crumb.src")
    planes = [plane(w, n, 2 * s, 0x03, ws, f"crumb{s}") for s in range(4)]
    pieces = [planes[s][:, 32 * h:32 * h + 32] for h in range(2) for s in range(4)]
    return assemble(pieces, ws.get(name, (n, 256), torch.uint8))


def _bit_codes(blocks: torch.Tensor, start: int, ws: Workspace) -> torch.Tensor:
    """Bit ``b`` of byte ``start + j`` -> weight ``b*32 + j``: uint8 ``(n, 256)`` of 0/1."""
    n = blocks.shape[0]
    w = _region(blocks, start, start + 32, ws, "bit.src")
    pieces = [plane(w, n, b, 0x01, ws, f"bit{b}") for b in range(8)]
    return assemble(pieces, ws.get("hbit", (n, 256), torch.uint8))


def _or_shifted(codes: torch.Tensor, high: torch.Tensor, shift: int) -> None:
    """``codes |= high << shift`` on 0/1 or small byte lanes, eight lanes per int64."""
    codes.view(torch.int64).bitwise_or_(high.view(torch.int64).bitwise_left_shift_(shift))


def q2_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    dm = f16_pair(blocks, 80, ws, "dm")  # d, dmin
    codes = _crumb_codes(blocks, 16, ws)
    # Scale nibbles and min nibbles as two contiguous planes, then one conversion and one
    # product each with its super-scale: (2, n, 16) = [d * (sc & 15), dmin * (sc >> 4)].
    # (Each plane contiguous: a strided scale operand makes the final broadcast product
    # measurably slower than the saved ops.)
    sc = blocks[:, 0:16]
    nib = ws.get("q2.nib", (2, n, 16), torch.uint8)
    torch.bitwise_and(sc, 0x0F, out=nib[0])
    torch.bitwise_right_shift(sc, 4, out=nib[1])
    both = scale_products(dm.t().unsqueeze(2), nib, ws, "q2.scales")
    return Decoded(codes.view(n, 16, 16), both[0].view(n, 16, 1), both[1].view(n, 16, 1), subtract_offset=True)


def q3_k_scales(blocks: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """The 16 signed 6-bit sub-block scales of Q3_K, int8 ``(n, 16)``. Bytes 96..107 as
    little-endian words ``a, b, c``: scale ``4q + j`` has low nibble = nibble ``q // 2``
    of byte j of ``(a, b)[q % 2]`` and high bits = crumb ``q`` of byte j of ``c``;
    computed four lanes at a time on int32 words, all four ``q`` per op (broadcast
    shift amounts), so the op count does not grow with ``q``."""
    n = blocks.shape[0]
    t = _TABLES.on(blocks.device)
    w = field(blocks, 96, 108, ws, "q3scales").view(torch.int32)  # (n, 3)
    out = ws.get("q3scales.out", (n, 4), torch.int32)
    # q = 2 * (q // 2) + q % 2: (a, b) shifted by 0 then by 4.
    torch.bitwise_right_shift(w[:, 0:2].unsqueeze(1), t["q3_lo"], out=out.view(n, 2, 2))
    out.bitwise_and_(0x0F0F0F0F)
    high = ws.get("q3scales.hi", (n, 4), torch.int32)
    torch.bitwise_right_shift(w[:, 2:3], t["q3_hi"], out=high)
    high.bitwise_and_(0x03030303).bitwise_left_shift_(4)
    out.bitwise_or_(high)
    return out.view(torch.int8).sub_(32)


def q3_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 108, ws, "d")
    codes = _crumb_codes(blocks, 32, ws)
    # level = low2 - 4 when the hmask bit is clear, low2 when it is set.
    _or_shifted(codes, _bit_codes(blocks, 0, ws), 2)
    levels = codes.view(torch.int8).sub_(4)
    scale = scale_products(d, q3_k_scales(blocks, ws), ws, "q3.scale")
    return Decoded(levels.view(n, 16, 16), scale.view(n, 16, 1))


def k_scale_min(blocks: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """Q4_K/Q5_K: the 12 packed bytes at 4..15 -> 8 six-bit scales and 8 six-bit mins,
    uint8 ``(2, n, 8)`` (``[0]`` scales, ``[1]`` mins). As three little-endian
    words ``a, b, c``: scales = ``a & 63`` (x4), ``(c & 15) | ((a >> 2) & 48)`` (x4);
    mins likewise from ``b`` and ``c >> 4``. Done four byte lanes at a time on int32
    words, scales and mins in the same ops."""
    n = blocks.shape[0]
    t = _TABLES.on(blocks.device)
    w = field(blocks, 4, 16, ws, "kscales").view(torch.int32)  # (n, 3)
    ab = w[:, 0:2].t()  # (2, n): a, b
    out = ws.get("kscales.out", (2, n, 2), torch.int32)  # (scale/min, n, low/high word)
    torch.bitwise_and(ab, 0x3F3F3F3F, out=out[:, :, 0])
    hi = ws.get("kscales.hi", (2, n), torch.int32)
    torch.bitwise_right_shift(ab, 2, out=hi).bitwise_and_(0x30303030)
    high = out[:, :, 1]
    torch.bitwise_right_shift(w[:, 2].view(1, n), t["k_hi"], out=high)
    high.bitwise_and_(0x0F0F0F0F).bitwise_or_(hi)
    return out.view(torch.uint8).view(2, n, 8)


def _nibble_codes_k(blocks: torch.Tensor, start: int, run: int, ws: Workspace) -> torch.Tensor:
    """Nibble codes of ``4 * run * 2`` weights: byte ``start + g*run + j`` holds weight
    ``g*2*run + j`` (low) and ``g*2*run + run + j`` (high) -> uint8 ``(n, 256)``."""
    w = block_words(blocks)
    lo = plane(w, blocks.shape[0], 0, 0x0F, ws, "lo")
    hi = plane(w, blocks.shape[0], 4, 0x0F, ws, "hi")
    pieces = []
    for g in range(128 // run):
        a = start + g * run
        pieces += [lo[:, a:a + run], hi[:, a:a + run]]
    return assemble(pieces, ws.get("lv", (blocks.shape[0], 256), torch.uint8))


def _q45_k(blocks: torch.Tensor, ws: Workspace, qs_start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = blocks.shape[0]
    dm = f16_pair(blocks, 0, ws, "dm")  # d, dmin
    both = scale_products(dm.t().unsqueeze(2), k_scale_min(blocks, ws), ws, "k.scales")  # d*sc, dmin*m
    codes = _nibble_codes_k(blocks, qs_start, 32, ws)
    return codes, both[0].view(n, 8, 1), both[1].view(n, 8, 1)


def q4_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    codes, scale, mins = _q45_k(blocks, ws, 16)
    return Decoded(codes.view(n, 8, 32), scale, mins, subtract_offset=True)


def q5_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    codes, scale, mins = _q45_k(blocks, ws, 48)
    _or_shifted(codes, _bit_codes(blocks, 16, ws), 4)
    return Decoded(codes.view(n, 8, 32), scale, mins, subtract_offset=True)


def q6_k(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """Weight ``h*128 + s*64 + j``: nibble s of ql byte ``h*64 + j``; its bits 4-5 are
    crumb ``k`` of qh byte ``128 + h*32 + i`` for weight ``h*128 + k*32 + i``."""
    n = blocks.shape[0]
    d = f16_field(blocks, 208, ws, "d")
    codes = _nibble_codes_k(blocks, 0, 64, ws)
    _or_shifted(codes, _crumb_codes(blocks, 128, ws, "hbit"), 4)
    levels = codes.view(torch.int8).sub_(32)
    scale = scale_products(d, blocks[:, 192:208].view(torch.int8), ws, "q6.scale")
    return Decoded(levels.view(n, 16, 16), scale.view(n, 16, 1))


def tq1_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """Base-3 packing: byte ``x`` times ``3**p`` (mod 256) puts digit ``p`` on top;
    ``(y * 3) >> 8`` reads it back (ggml's TQ1_0 trick)."""
    n = blocks.shape[0]
    t = _TABLES.on(blocks.device)
    d = f16_field(blocks, 52, ws, "d")
    packed = ws.get("tq.packed", (n, 256), torch.uint8)
    torch.mul(blocks[:, 0:32].unsqueeze(1), t["pow5"], out=packed[:, 0:160].view(n, 5, 32))
    torch.mul(blocks[:, 32:48].unsqueeze(1), t["pow5"], out=packed[:, 160:240].view(n, 5, 16))
    torch.mul(blocks[:, 48:52].unsqueeze(1), t["pow4"], out=packed[:, 240:256].view(n, 4, 4))
    wide = ws.get("tq.wide", (n, 256), torch.int16)
    wide.copy_(packed)
    wide.mul_(3).bitwise_right_shift_(8).sub_(1)
    levels = ws.get("lv", (n, 256), torch.int8)
    levels.copy_(wide)
    return Decoded(levels.view(n, 1, 256), d.view(n, 1, 1))


def tq2_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    n = blocks.shape[0]
    d = f16_field(blocks, 64, ws, "d")
    levels = _crumb_codes(blocks, 0, ws).view(torch.int8).sub_(1)
    return Decoded(levels.view(n, 1, 256), d.view(n, 1, 1))


# ---- compiled CPU kernels -------------------------------------------------------------


@kernel
def q2_k_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    sub = out.shape[1] // 16
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, dmin = f16(b, 80, f16_table), f16(b, 82, f16_table)
        for k in range(16):
            sc = np.int32(b[k])
            dl, ml = d * np.float32(sc & 0xF), dmin * np.float32(sc >> 4)
            # weight w = h*128 + s*32 + j is bits 2s of byte 16 + h*32 + j
            w0 = 16 * k
            at, shift = 16 + (w0 >> 7) * 32 + (w0 & 31), 2 * ((w0 >> 5) & 3)
            for j in range(sub):
                y[w0 + j] = dl * np.float32((np.int32(b[at + j]) >> shift) & 3) - ml


@kernel
def q3_k_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    sub = out.shape[1] // 16
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 108, f16_table)
        for k in range(16):
            low = (np.int32(b[96 + (k & 7)]) >> (4 * (k >> 3))) & 0xF
            high = (np.int32(b[104 + (k & 3)]) >> (2 * (k >> 2))) & 3
            dl = d * np.float32((low | (high << 4)) - 32)
            # low 2 bits as Q2_K; the high bit of weight w is bit w // 32 of byte w % 32,
            # and a clear bit means level - 4
            w0 = 16 * k
            at, shift, hbit = 32 + (w0 >> 7) * 32 + (w0 & 31), 2 * ((w0 >> 5) & 3), w0 >> 5
            for j in range(sub):
                q = (np.int32(b[at + j]) >> shift) & 3
                h = (np.int32(b[(w0 & 31) + j]) >> hbit) & 1
                y[w0 + j] = dl * np.float32(q - 4 + 4 * h)


@kernel
def q4_k_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    run = out.shape[1] // 8
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, dmin = f16(b, 0, f16_table), f16(b, 2, f16_table)
        for c in range(4):
            d1, o1 = k_sub_scale(b, 2 * c, d, dmin)
            d2, o2 = k_sub_scale(b, 2 * c + 1, d, dmin)
            for j in range(run):
                q = np.int32(b[16 + c * 32 + j])
                y[c * 64 + j] = d1 * np.float32(q & 0xF) - o1
                y[c * 64 + 32 + j] = d2 * np.float32(q >> 4) - o2


@kernel
def q5_k_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    run = out.shape[1] // 8
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d, dmin = f16(b, 0, f16_table), f16(b, 2, f16_table)
        for c in range(4):
            d1, o1 = k_sub_scale(b, 2 * c, d, dmin)
            d2, o2 = k_sub_scale(b, 2 * c + 1, d, dmin)
            for j in range(run):
                q = np.int32(b[48 + c * 32 + j])
                hb = np.int32(b[16 + j])
                lo = (q & 0xF) | (((hb >> (2 * c)) & 1) << 4)
                hi = (q >> 4) | (((hb >> (2 * c + 1)) & 1) << 4)
                y[c * 64 + j] = d1 * np.float32(lo) - o1
                y[c * 64 + 32 + j] = d2 * np.float32(hi) - o2


@kernel
def q6_k_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    signed = blocks.view(np.int8)
    sub = out.shape[1] // 16
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 208, f16_table)
        for k in range(16):
            dl = d * np.float32(signed[i, 192 + k])
            # weight w = h*128 + t*64 + j: low nibble t of ql[h*64 + j], high crumb
            # 2t + j // 32 of qh[128 + h*32 + j % 32]
            w0 = 16 * k
            h, t, j0 = w0 >> 7, (w0 >> 6) & 1, w0 & 63
            lo_at, lo_shift = h * 64 + j0, 4 * t
            hi_at, hi_shift = 128 + h * 32 + (j0 & 31), 2 * (2 * t + (j0 >> 5))
            for j in range(sub):
                lo = (np.int32(b[lo_at + j]) >> lo_shift) & 0xF
                hi = (np.int32(b[hi_at + j]) >> hi_shift) & 3
                y[w0 + j] = dl * np.float32((lo | (hi << 4)) - 32)


@kernel
def tq1_0_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    # Five (or four) ternary digits per byte, most significant first: digit p of byte v is
    # ((v * 3^p mod 256) * 3) >> 8. Bytes 0..31 give weights p*32 + j (p < 5), bytes
    # 32..47 weights 160 + p*16 + j, bytes 48..51 weights 240 + p*4 + j (p < 4).
    wide = out.shape[1] // 8
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 52, f16_table)
        pow3 = 1
        for p in range(5):
            for j in range(wide):
                v = (np.int32(b[j]) * pow3) & 0xFF
                y[p * 32 + j] = d * np.float32(((v * 3) >> 8) - 1)
            for j in range(wide // 2):
                v = (np.int32(b[32 + j]) * pow3) & 0xFF
                y[160 + p * 16 + j] = d * np.float32(((v * 3) >> 8) - 1)
            if p < 4:
                for j in range(4):
                    v = (np.int32(b[48 + j]) * pow3) & 0xFF
                    y[240 + p * 4 + j] = d * np.float32(((v * 3) >> 8) - 1)
            pow3 *= 3


@kernel
def tq2_0_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    sub = out.shape[1] // 8  # weight w = h*128 + s*32 + j: bits 2s of byte h*32 + j
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 64, f16_table)
        for h in range(2):
            for s in range(4):
                for j in range(sub):
                    y[h * 128 + s * 32 + j] = d * np.float32(((np.int32(b[h * 32 + j]) >> (2 * s)) & 3) - 1)


# ---- recipe ---------------------------------------------------------------------------


def predict_k(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    """``nearest_int((x + dm)/d)`` or ``nearest_int(x/d)`` on the stored sub-block scales."""
    d = grid.scale_per_weight()
    if grid.offset is not None:
        dm = -grid.offset_per_weight()  # llama.cpp's dm = dmin * m (the offset is -dm)
        v = (x + dm) / torch.where(d != 0, d, torch.ones_like(d))
    else:
        v = x / torch.where(d != 0, d, torch.ones_like(d))
    level = torch.clamp(torch.round(v), grid.qmin, grid.qmax)  # torch.round: half to even
    return Prediction(level, v, d != 0)


K_RECIPE = Recipe(predict_k)

# ---- compiled grids, recipe and grid checks (codecs/native/gridcheck.py) -------------


@inline
def _crumbs(b, start, bias, code):  # type: ignore[no-untyped-def]
    """2-bit codes plus ``bias`` (weight ``h*128 + s*32 + j``: bits ``2s`` of byte
    ``start + h*32 + j``), in runs of 32 (``fields.put_bits``)."""
    for h in range(2):
        src = b[start + 32 * h:start + 32 * h + 32]
        for s in range(4):
            put_bits(src, code[128 * h + 32 * s:128 * h + 32 * s + 32], 2 * s, 3, bias)


@inline
def _q2_k_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    d, dmin = f16(b, 80, f16_table), f16(b, 82, f16_table)
    for k in range(16):
        sc = np.int64(b[k])
        g.scale[k] = d * np.float32(sc & 0xF)
        g.offset[k] = -(dmin * np.float32(sc >> 4))
    _crumbs(b, 16, 0, g.code)


@inline
def _q3_k_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    d = f16(b, 108, f16_table)
    for k in range(16):
        low = (np.int64(b[96 + (k & 7)]) >> (4 * (k >> 3))) & 0xF
        high = (np.int64(b[104 + (k & 3)]) >> (2 * (k >> 2))) & 3
        g.scale[k] = d * np.float32((low | (high << 4)) - 32)
    # crumb - 4 + 4 * (bit w >> 5 of hmask byte w & 31)
    _crumbs(b, 32, -4, g.code)
    for r in range(8):
        add_bits(b[0:32], g.code[32 * r:32 * r + 32], r, 1, 2)


@inline
def _q45_k_scales(b, f16_table, g):  # type: ignore[no-untyped-def]
    d, dmin = f16(b, 0, f16_table), f16(b, 2, f16_table)
    for k in range(8):
        dl, ml = k_sub_scale(b, k, d, dmin)
        g.scale[k] = dl
        g.offset[k] = -ml


@inline
def _k_nibbles(b, start, code):  # type: ignore[no-untyped-def]
    """Q4_K/Q5_K low nibbles: byte ``start + c*32 + j`` holds weights ``c*64 + j`` (low)
    and ``c*64 + 32 + j`` (high)."""
    for c in range(4):
        src = b[start + 32 * c:start + 32 * c + 32]
        put_bits(src, code[64 * c:64 * c + 32], 0, 0xF, 0)
        put_bits(src, code[64 * c + 32:64 * c + 64], 4, 0xF, 0)


@inline
def _q4_k_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    _q45_k_scales(b, f16_table, g)
    _k_nibbles(b, 16, g.code)


@inline
def _q5_k_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    _q45_k_scales(b, f16_table, g)
    _k_nibbles(b, 48, g.code)
    for r in range(8):  # fifth bit: bit w >> 5 of byte 16 + (w & 31)
        add_bits(b[16:48], g.code[32 * r:32 * r + 32], r, 1, 4)


@inline
def _q6_k_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    d = f16(b, 208, f16_table)
    for k in range(16):
        sc = np.int64(b[192 + k])
        g.scale[k] = d * np.float32(sc - 256 if sc > 127 else sc)
    # weight h*128 + t*64 + half*32 + i: low nibble t of byte h*64 + half*32 + i, high crumb
    # 2t + half of byte 128 + h*32 + i, minus 32
    for h in range(2):
        high = b[128 + 32 * h:160 + 32 * h]
        for t in range(2):
            for half in range(2):
                at = 128 * h + 64 * t + 32 * half
                out = g.code[at:at + 32]
                put_bits(b[64 * h + 32 * half:64 * h + 32 * half + 32], out, 4 * t, 0xF, -32)
                add_bits(high, out, 2 * (2 * t + half), 3, 4)


@inline
def _predict_k_block(x, b, g, f16_table, levels, p, has_offset, qmin, qmax):  # type: ignore[no-untyped-def]
    """:func:`predict_k` on one block: ``nearest_int((x + dm)/d)`` (half to even) on the
    stored sub-block scales, clamped; sub-blocks with ``d == 0`` are not predictable."""
    sub = x.shape[0] // g.scale.shape[0]
    for k in range(g.scale.shape[0]):
        d = g.scale[k]
        den = d if d != np.float32(0.0) else np.float32(1.0)
        dm = -g.offset[k]
        at = k * sub  # 0-based views: contiguous accesses LLVM vectorizes (gridcheck.cell_block)
        xk, u, level, valid = x[at:at + sub], p.u[at:at + sub], p.level[at:at + sub], p.valid[at:at + sub]
        for j in range(sub):
            v = np.float32(np.float32(xk[j] + dm) / den) if has_offset else np.float32(xk[j] / den)
            u[j] = v
            level[j] = clamp(np.float32(np.rint(v)), qmin, qmax)
            valid[j] = d != np.float32(0.0)
    return True


@inline
def _predict_q2_k_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_k_block(x, b, g, f16_table, levels, p, True, 0, 3)


@inline
def _predict_q3_k_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_k_block(x, b, g, f16_table, levels, p, False, -4, 3)


@inline
def _predict_q4_k_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_k_block(x, b, g, f16_table, levels, p, True, 0, 15)


@inline
def _predict_q5_k_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_k_block(x, b, g, f16_table, levels, p, True, 0, 31)


@inline
def _predict_q6_k_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    return _predict_k_block(x, b, g, f16_table, levels, p, False, -32, 31)


@kernel
def q2_k_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q2_k_grid, _predict_q2_k_block,
          16, True, True, False, NO_TABLE, 0, 3)


@kernel
def q3_k_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q3_k_grid, _predict_q3_k_block,
          16, True, False, False, NO_TABLE, -4, 3)


@kernel
def q4_k_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q4_k_grid, _predict_q4_k_block,
          8, True, True, False, NO_TABLE, 0, 15)


@kernel
def q5_k_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q5_k_grid, _predict_q5_k_block,
          8, True, True, False, NO_TABLE, 0, 31)


@kernel
def q6_k_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q6_k_grid, _predict_q6_k_block,
          16, True, False, False, NO_TABLE, -32, 31)


@kernel
def q2_k_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q2_k_grid, 16, True, True, 0, 3, NO_TABLE, NO_TABLE)


@kernel
def q3_k_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q3_k_grid, 16, True, False, -4, 3, NO_TABLE, NO_TABLE)


@kernel
def q4_k_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q4_k_grid, 8, True, True, 0, 15, NO_TABLE, NO_TABLE)


@kernel
def q5_k_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q5_k_grid, 8, True, True, 0, 31, NO_TABLE, NO_TABLE)


@kernel
def q6_k_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q6_k_grid, 16, True, False, -32, 31, NO_TABLE, NO_TABLE)


# ---- descriptors ----------------------------------------------------------------------

Q2_K = QuantType(T.Q2_K, q2_k, UniformGrid(0, 3), (80, 82), CompiledKernel(q2_k_compiled), K_RECIPE,
                 CompiledKernel(quantize_q2_k_compiled), cells=CompiledKernel(q2_k_cells), check=CompiledKernel(q2_k_check))
Q3_K = QuantType(T.Q3_K, q3_k, UniformGrid(-4, 3), (108,), CompiledKernel(q3_k_compiled), K_RECIPE,
                 CompiledKernel(quantize_q3_k_compiled), cells=CompiledKernel(q3_k_cells), check=CompiledKernel(q3_k_check))
Q4_K = QuantType(T.Q4_K, q4_k, UniformGrid(0, 15), (0, 2), CompiledKernel(q4_k_compiled), K_RECIPE,
                 CompiledKernel(quantize_q4_k_compiled), cells=CompiledKernel(q4_k_cells), check=CompiledKernel(q4_k_check))
Q5_K = QuantType(T.Q5_K, q5_k, UniformGrid(0, 31), (0, 2), CompiledKernel(q5_k_compiled), K_RECIPE,
                 CompiledKernel(quantize_q5_k_compiled), cells=CompiledKernel(q5_k_cells), check=CompiledKernel(q5_k_check))
Q6_K = QuantType(T.Q6_K, q6_k, UniformGrid(-32, 31), (208,), CompiledKernel(q6_k_compiled), K_RECIPE,
                 CompiledKernel(quantize_q6_k_compiled), cells=CompiledKernel(q6_k_cells), check=CompiledKernel(q6_k_check))
TQ1_0 = QuantType(T.TQ1_0, tq1_0, UniformGrid(-1, 1), (52,), CompiledKernel(tq1_0_compiled))
TQ2_0 = QuantType(T.TQ2_0, tq2_0, UniformGrid(-1, 2), (64,), CompiledKernel(tq2_0_compiled))

TYPES = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, TQ1_0, TQ2_0)
