"""Q1_0: 1-bit signs with one f16 scale per 128 weights (``block_q1_0``, 18 bytes).

Byte layout: f16 ``d``, then 16 bytes of bits; bit ``j % 8`` of byte ``j // 8`` set means
weight ``j`` is ``+d``, clear means ``-d`` (ggml's ``dequantize_row_q1_0``). gguf-py 0.19
knows the type's geometry but cannot dequantize it, so the tests hold these kernels to
llama.cpp's own ``dequantize_row_q1_0`` and ``quantize_row_q1_0_ref`` (libggml-base).

This module is also the worked example of docs/quantization.md, "Adding a ggml type":
everything that is Q1_0 block arithmetic is here, and one line of
:mod:`provenance.codecs.registry` registers it.

Recipe (``quantize_row_q1_0_ref``): ``d = sum_j |x_j| / 128``, summed in float32 in
index order, stored as f16; the bit is ``x >= 0``. Codes do not depend on ``d``, so the
prediction is exact; the recomputed ``d`` is compared with the stored one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from provenance.codecs.kernels._common import Decoded, Workspace, f16_field, spread_bits
from provenance.codecs.native.fields import f16
from provenance.codecs.native.floats import f16_bits, put_u16, round_f16
from provenance.codecs.native.floats import safe_inverse as inverse32
from provenance.codecs.native.gridcheck import cell_tables, cells, check, check_tables
from provenance.codecs.prediction import Prediction, f16_round, safe_inverse
from provenance.codecs.quanttype import CompiledKernel, LevelGrid, QuantType, Recipe
from provenance.jit import inline, kernel

if TYPE_CHECKING:
    from provenance.codecs.grid import QuantGrid

QK1_0 = 128


def q1_0(blocks: torch.Tensor, ws: Workspace) -> Decoded:
    """Torch kernel: levels -1/+1 from the sign bits (one table lookup per byte), times d."""
    n = blocks.shape[0]
    d = f16_field(blocks, 0, ws, "d")
    bits = spread_bits(blocks, 2, 2 + QK1_0 // 8, ws, "bits")  # byte 8k + b = bit b of byte k
    levels = bits.view(torch.int8).mul_(2).sub_(1)
    return Decoded(levels.view(n, 1, QK1_0), d.view(n, 1, 1))


@kernel
def q1_0_compiled(blocks, out, f16_table):  # type: ignore[no-untyped-def]
    width = out.shape[1]  # loop bound from the shape (see provenance.jit)
    for i in range(blocks.shape[0]):
        b, y = blocks[i], out[i]
        d = f16(b, 0, f16_table)
        for j in range(width):
            y[j] = d if (np.int32(b[2 + (j >> 3)]) >> (j & 7)) & 1 else -d


def _mean_abs(xb: torch.Tensor) -> torch.Tensor:
    """``sum_abs / qk`` with C's sequential float32 sum (one column at a time)."""
    acc = xb[:, 0].abs()
    for j in range(1, xb.shape[1]):
        acc += xb[:, j].abs()
    return (acc / float(QK1_0)).unsqueeze(1)


def predict_q1_0(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None = None) -> Prediction:
    xb = x.reshape(-1, QK1_0)
    d = _mean_abs(xb)
    level = torch.where(xb >= 0, 1.0, -1.0)  # NaN -> -1, as C's `x >= 0.0f` is false
    shape = x.shape
    scale_ok = f16_round(d).view(-1) == grid.scale.reshape(-1)
    u = xb * safe_inverse(d)
    return Prediction(level.view(shape), u.view(shape), torch.ones(shape, dtype=torch.bool), scale_ok=scale_ok)


@kernel
def quantize_q1_0_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    """``quantize_row_q1_0_ref`` on (n, 128) float32 -> (n, 18) bytes."""
    width = x.shape[1]
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        sum_abs = np.float32(0.0)
        for j in range(width):
            sum_abs += abs(xb[j])
        put_u16(y, 0, f16_bits(sum_abs / np.float32(QK1_0)))
        for k in range(width // 8):
            bits = 0
            for b in range(8):
                if xb[8 * k + b] >= np.float32(0.0):
                    bits |= 1 << b
            y[2 + k] = np.uint8(bits)


@inline
def _q1_0_grid(b, f16_table, g):  # type: ignore[no-untyped-def]
    g.scale[0] = f16(b, 0, f16_table)
    for j in range(g.code.shape[0]):
        g.code[j] = (np.int64(b[2 + (j >> 3)]) >> (j & 7)) & 1


@inline
def _predict_q1_0_block(x, b, g, f16_table, levels, p):  # type: ignore[no-untyped-def]
    """:func:`predict_q1_0` on one block (``d`` summed in C's order)."""
    acc = abs(x[0])
    for j in range(1, x.shape[0]):
        acc += abs(x[j])
    d = acc / np.float32(QK1_0)
    inv = inverse32(d)
    for j in range(x.shape[0]):
        up = x[j] >= np.float32(0.0)
        p.idx[j] = 1 if up else 0
        p.level[j] = np.float32(1.0) if up else np.float32(-1.0)
        p.u[j] = np.float32(x[j] * inv)
        p.valid[j] = True
    return round_f16(d) == g.scale[0]


@kernel
def q1_0_check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, levels):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16_table, _q1_0_grid, _predict_q1_0_block,
          1, False, False, False, levels, 0, 1)


@kernel
def q1_0_cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, lo_mid, hi_mid):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16_table, _q1_0_grid, 1, False, False, 0, 1, lo_mid, hi_mid)


def q1_0_levels() -> torch.Tensor:
    return torch.tensor([-1.0, 1.0])


Q1_0 = QuantType(T.Q1_0, q1_0, LevelGrid(q1_0_levels), (0,), CompiledKernel(q1_0_compiled), Recipe(predict_q1_0),
                 CompiledKernel(quantize_q1_0_compiled),
                 cells=CompiledKernel(q1_0_cells, cell_tables(q1_0_levels)), check=CompiledKernel(q1_0_check, check_tables(q1_0_levels)))
