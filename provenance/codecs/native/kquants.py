"""Q2_K..Q6_K and the ternary TQ1_0 / TQ2_0: 256-weight super-blocks.

Weight orders follow ggml's ``dequantize_row_q*_K`` (see
:mod:`provenance.codecs.kernels.kquants` for the layouts); arithmetic follows gguf-py:
the sub-block scale ``d * sc`` (and min ``dmin * m``) is rounded to float32 first, then
``scale * q - min`` with one rounding per operation. Each kernel walks sub-blocks and
runs one vectorisable inner loop per sub-block (bounds from ``out.shape``, see
:mod:`provenance.jit`).
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.native.fields import f16, k_sub_scale
from provenance.jit import kernel


@kernel
def q2_k(blocks, out, f16_table):  # type: ignore[no-untyped-def]
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
def q3_k(blocks, out, f16_table):  # type: ignore[no-untyped-def]
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
def q4_k(blocks, out, f16_table):  # type: ignore[no-untyped-def]
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
def q5_k(blocks, out, f16_table):  # type: ignore[no-untyped-def]
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
def q6_k(blocks, out, f16_table):  # type: ignore[no-untyped-def]
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
def tq1_0(blocks, out, f16_table):  # type: ignore[no-untyped-def]
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
def tq2_0(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    sub = out.shape[1] // 8  # weight w = h*128 + s*32 + j: bits 2s of byte h*32 + j
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 64, f16_table)
        for h in range(2):
            for s in range(4):
                for j in range(sub):
                    y[h * 128 + s * 32 + j] = d * np.float32(((np.int32(b[h * 32 + j]) >> (2 * s)) & 3) - 1)
