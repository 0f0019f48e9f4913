"""Canonical float32 rows of a packed quantized weight, read in bounded chunks.

Each call reads only the stored bytes that rows ``[start, stop)`` need: for layouts
packed along the output dimension's columns (GPTQ ``qweight (in/pf, out)``, AWQ
``qweight (in, out/8)``) that is a column band of every stored row, read row by row; for
row-major layouts (compressed-tensors, bitsandbytes, MLX) a contiguous span. So memory
stays proportional to the chunk, never to the tensor. Values that steer a loop (g_idx,
weight_shape, the bnb quant state) are checked against the validated shapes before use.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from provenance.codecs.packed import awq, bnb, compressed, gptq, mlx
from provenance.codecs.packed.grid import PackedRows
from provenance.errors import MalformedCheckpoint
from provenance.formats.dtypes import SAFETENSORS_DTYPES
from provenance.formats.packed import PackedTensor, Part

if TYPE_CHECKING:
    from provenance.formats.base import Checkpoint



def _dtype(dtype: str) -> torch.dtype:
    """The torch dtype a part is read as (fp8 weights as their uint8 codes)."""
    if dtype.startswith("F8"):
        return torch.uint8
    return getattr(torch, SAFETENSORS_DTYPES[dtype][1])


def _size(dtype: str) -> int:
    return SAFETENSORS_DTYPES[dtype][0] // 8


def read_part(ckpt: Checkpoint, part: Part, rows: tuple[int, int] | None = None,
              cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a stored part (all of a 0-D/1-D part)."""
    size = _size(part.dtype)
    if len(part.shape) < 2:
        data = ckpt._pread(part.file, part.n_bytes, part.offset)
        return torch.frombuffer(data, dtype=_dtype(part.dtype)) if part.n_bytes else torch.empty(0, dtype=_dtype(part.dtype))
    n_rows, n_cols = part.shape[0], math.prod(part.shape[1:])
    r0, r1 = rows if rows is not None else (0, n_rows)
    c0, c1 = cols if cols is not None else (0, n_cols)
    if not (0 <= r0 <= r1 <= n_rows and 0 <= c0 <= c1 <= n_cols):
        raise IndexError(f"{part.name}: rows [{r0}, {r1}) columns [{c0}, {c1}) outside {list(part.shape)}")
    row_bytes = n_cols * size
    if c0 == 0 and c1 == n_cols:
        data = ckpt._pread(part.file, (r1 - r0) * row_bytes, part.offset + r0 * row_bytes)
    else:  # a column band: one read per stored row, into one buffer
        width = (c1 - c0) * size
        data = bytearray((r1 - r0) * width)
        view = memoryview(data)
        for i, r in enumerate(range(r0, r1)):
            view[i * width:(i + 1) * width] = ckpt._pread(part.file, width, part.offset + r * row_bytes + c0 * size)
    if not data:
        return torch.empty((r1 - r0, c1 - c0), dtype=_dtype(part.dtype))
    return torch.frombuffer(data, dtype=_dtype(part.dtype)).view(r1 - r0, c1 - c0)


def _group_map(ckpt: Checkpoint, part: Part | None, n_in: int, group: int, n_groups: int) -> torch.Tensor:
    if part is None:
        return torch.arange(n_in) // group
    g = read_part(ckpt, part).to(torch.int64)
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= n_groups):
        raise MalformedCheckpoint(part.file, f"{part.name!r} holds group {int(g.min())}..{int(g.max())}, "
                                  f"outside the {n_groups} stored groups", field=part.name, offset=part.offset)
    return g


def packed_rows(ckpt: Checkpoint, t: PackedTensor, start: int, stop: int) -> PackedRows:
    """Codes and grid of rows ``[start, stop)`` (stored output order)."""
    p = t.parts
    n_out, n_in = t.shape
    if not 0 <= start <= stop <= n_out:
        raise IndexError(f"rows [{start}, {stop}) outside 0..{n_out} of {t.module}")
    if t.layout == "gptq":
        pf = 32 // t.bits
        z0, z1 = start // pf, -(-stop // pf)
        g = _group_map(ckpt, p.get("g_idx"), n_in, t.group_size, t.params["n_groups"])
        return gptq.gptq_rows(read_part(ckpt, p["qweight"], cols=(start, stop)), read_part(ckpt, p["qzeros"], cols=(z0, z1)),
                              start - z0 * pf, read_part(ckpt, p["scales"], cols=(start, stop)), g, t.bits,
                              t.params["zero_offset"])
    if t.layout == "awq":
        w0, w1 = start // 8, -(-stop // 8)
        rows = awq.awq_rows(read_part(ckpt, p["qweight"], cols=(w0, w1)), read_part(ckpt, p["qzeros"], cols=(w0, w1)),
                            read_part(ckpt, p["scales"], cols=(8 * w0, 8 * w1)), t.group_size)
        return _slice(rows, start - 8 * w0, stop - 8 * w0)
    if t.layout in ("ct-pack", "ct-int", "ct-fp8"):
        return _ct_rows(ckpt, t, start, stop)
    if t.layout == "bnb-4bit":
        return _bnb4_rows(ckpt, t, start, stop)
    if t.layout == "bnb-int8":
        return bnb.int8_rows(read_part(ckpt, p["weight"], rows=(start, stop)), read_part(ckpt, p["SCB"])[start:stop])
    return mlx.mlx_rows(read_part(ckpt, p["weight"], rows=(start, stop)), read_part(ckpt, p["scales"], rows=(start, stop)),
                        read_part(ckpt, p["biases"], rows=(start, stop)), t.bits, t.group_size)


def _slice(rows: PackedRows, a: int, b: int) -> PackedRows:
    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None or x.dim() < 2 else x[a:b]
    return PackedRows(rows.codes[a:b], rows.scale[a:b], rows.n_levels, rows.arithmetic, cut(rows.zero), cut(rows.bias),
                      rows.levels, rows.post_scale)


def _ct_scale_rows(ckpt: Checkpoint, part: Part, start: int, stop: int) -> torch.Tensor:
    if len(part.shape) < 2:
        return read_part(ckpt, part).reshape(1)
    return read_part(ckpt, part, rows=(start, stop))


def _ct_rows(ckpt: Checkpoint, t: PackedTensor, start: int, stop: int) -> PackedRows:
    p = t.parts
    n_in = t.shape[1]
    scale_part = p["weight_scale"]
    n_groups = scale_part.shape[-1] if len(scale_part.shape) == 2 else 1
    groups = _group_map(ckpt, p.get("weight_g_idx"), n_in, t.group_size, n_groups)
    scale = _ct_scale_rows(ckpt, scale_part, start, stop)
    if t.layout == "ct-fp8":
        return compressed.fp8_rows(read_part(ckpt, p["weight"], rows=(start, stop)), scale, groups)
    if t.layout == "ct-int":
        zp = p.get("weight_zero_point")
        zero = _ct_scale_rows(ckpt, zp, start, stop).to(torch.float32) if zp is not None else None
        return compressed.int_rows(read_part(ckpt, p["weight"], rows=(start, stop)), scale, zero, groups, 8)
    zero_words, zero_row = None, 0
    if "weight_zero_point" in p:
        zp = p["weight_zero_point"]
        g0 = start // 32
        w0, w1 = g0 * t.bits, min(zp.shape[0], -(-stop // 32) * t.bits)
        zero_words, zero_row = read_part(ckpt, zp, rows=(w0, w1)), start - 32 * g0
    return compressed.packed_int_rows(read_part(ckpt, p["weight_packed"], rows=(start, stop)), n_in, t.bits, scale,
                                      zero_words, zero_row, groups)


def _bnb4_rows(ckpt: Checkpoint, t: PackedTensor, start: int, stop: int) -> PackedRows:
    p, prm = t.parts, t.params
    n_in, bs = t.shape[1], t.group_size
    e0, e1 = start * n_in, stop * n_in
    b0, b1 = e0 // bs, -(-e1 // bs)
    weight = p["weight"]
    packed = torch.frombuffer(ckpt._pread(weight.file, (e1 - e0) // 2, weight.offset + e0 // 2), dtype=torch.uint8) \
        if e1 > e0 else torch.empty(0, dtype=torch.uint8)
    absmax_part = p["absmax"]
    raw_absmax = torch.frombuffer(ckpt._pread(absmax_part.file, (b1 - b0) * _size(absmax_part.dtype),
                                              absmax_part.offset + b0 * _size(absmax_part.dtype)),
                                  dtype=_dtype(absmax_part.dtype)) if b1 > b0 else torch.empty(0)
    if "nested_blocksize" in prm:
        absmax = bnb.nested_absmax(raw_absmax, read_part(ckpt, p["nested_quant_map"]), read_part(ckpt, p["nested_absmax"]),
                                   prm["nested_blocksize"], prm["nested_offset"], b0)
    else:
        absmax = raw_absmax
    skip = e0 - b0 * bs
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[prm["dtype"]]
    return bnb.nf4_rows(packed, absmax, read_part(ckpt, p["quant_map"]), bs, skip, n_in, dtype)


def decode_rows(ckpt: Checkpoint, t: PackedTensor, start: int, stop: int) -> np.ndarray:
    """float32 ``(stop - start, in)`` values of stored rows ``[start, stop)``."""
    return packed_rows(ckpt, t, start, stop).values().numpy()

