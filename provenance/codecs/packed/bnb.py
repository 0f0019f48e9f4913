"""bitsandbytes serialized weights: 4-bit NF4/FP4 (``Params4bit``) and LLM.int8 (``Int8Params``).

4-bit: the ``weight`` tensor is uint8 ``(n / 2, 1)``: the row-major ``out x in`` elements,
two per byte, the *first in the high nibble*. Beside it: ``.quant_map`` float32 (16,)
(the codebook, stored with the weights), ``.absmax`` (one per ``blocksize`` elements) and
``.quant_state.bitsandbytes__nf4|fp4``, a uint8 tensor holding JSON
(``quant_type, blocksize, dtype, shape``, and for double quantization ``nested_blocksize,
nested_dtype, nested_offset``). With double quantization ``absmax`` is uint8 codes of a
blockwise 8-bit quantization (``.nested_quant_map`` (256,), ``.nested_absmax`` per
``nested_blocksize`` codes), to which ``nested_offset`` is added back.
``dequantize_4bit``: ``quant_map[code] * absmax[block]`` in float32, then cast to the
state's ``dtype``.

The writer (``quantize_4bit``) takes each block's ``absmax = max |w|`` in float32 and the
code of the bucket of ``w * (1 / absmax)`` among the codebook's midpoints; with double
quantization it then stores ``absmax`` itself quantized, so the codes were chosen with a
wider absmax than the stored one: :func:`bnb4_writer_grid` recomputes it from the reference.

LLM.int8: ``weight`` int8 ``(out, in)`` and ``SCB`` float32 ``(out,)`` (each row's absmax);
``int8_vectorwise_dequant``: ``q * SCB * (1/127)`` in float32, left to right.
"""
from __future__ import annotations

import numpy as np
import torch

from provenance.codecs.packed.bits import unpack_nibbles_high_first
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.native import arithmetic_code, as_f32, compiled_ok, round_to, run_kernel
from provenance.jit import kernel

#: float32 of bitsandbytes' ``1/127`` constant in ``int8_vectorwise_dequant``
INV_127 = 7.874015718698502e-3


def nested_absmax(codes: torch.Tensor, nested_map: torch.Tensor, nested_absmax: torch.Tensor,
                  nested_blocksize: int, offset: float, first_block: int) -> torch.Tensor:
    """Absmax of blocks ``[first_block, first_block + len(codes))`` from double quantization
    (``dequantize_blockwise`` then ``+ offset``, float32)."""
    which = (torch.arange(codes.numel(), device=codes.device) + first_block) // nested_blocksize
    values = nested_map.to(torch.float32)[codes.long()] * nested_absmax.to(torch.float32)[which]
    return values + torch.tensor(offset, dtype=torch.float32)


def nf4_rows(packed: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor, blocksize: int, skip: int,
             row_length: int, dtype: torch.dtype) -> PackedRows:
    """Whole rows of a 4-bit weight: ``packed`` holds their bytes, ``absmax`` the float32
    absmax of each block they touch, the first block starting ``skip`` elements before
    the first of these rows."""
    codes = unpack_nibbles_high_first(packed)
    n = codes.numel()
    which = (torch.arange(n, device=codes.device) + skip) // blocksize
    per_elem = absmax.to(torch.float32)[which]
    rows = n // row_length
    return PackedRows(codes.view(rows, row_length), per_elem.view(rows, row_length), 16, arithmetic=dtype,
                      levels=quant_map.to(torch.float32))


def int8_rows(codes: torch.Tensor, scb: torch.Tensor) -> PackedRows:
    """LLM.int8 rows ``(n, in)`` with their ``SCB`` ``(n,)``; codes shifted to ``[0, 255]``."""
    scale = scb.to(torch.float32).view(-1, 1).expand(codes.shape)
    return PackedRows(codes.to(torch.int32) + 128, scale, 256, zero=torch.full((), 128.0), post_scale=INV_127)


def bnb4_writer_grid(x: torch.Tensor, stored: PackedRows, blocksize: int,
                     nested: bool) -> tuple[PackedRows, torch.Tensor | None]:
    """The grid ``quantize_4bit`` rounded the reference elements ``x`` on (each block's float32
    absmax, from ``x`` itself; the stored codes), for rows holding whole blocks (the last
    one may be short, like the tensor's); and per block whether the stored absmax is that
    value (None with double quantization, which stores it quantized)."""
    flat = x.to(torch.float32).reshape(-1)
    n = flat.numel()
    block = torch.arange(n, device=flat.device) // blocksize
    absmax = torch.zeros(-(-n // blocksize), dtype=torch.float32, device=flat.device)
    absmax.scatter_reduce_(0, block, flat.abs(), reduce="amax", include_self=False)
    per_element = absmax[block].view(stored.codes.shape)
    scale_ok = None if nested else stored.scale.reshape(-1)[::blocksize] == absmax
    return PackedRows(stored.codes, per_element, stored.n_levels, levels=stored.levels), scale_ok


@kernel
def _nf4_compiled(packed, absmax, levels, blocksize, skip, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    # Elements e0..e1 (two per byte, the first in the high nibble); blocks start at even
    # elements (even row lengths and block sizes), so a block is whole bytes.
    flat = out.reshape(out.size)
    e0, e1 = r0 * out.shape[1], r1 * out.shape[1]
    table = np.empty(16, np.float32)  # the value of each code in this block
    for b in range((e0 + skip) // blocksize, (e1 - 1 + skip) // blocksize + 1):
        scale = absmax[b]
        for c in range(16):
            table[c] = round_to(levels[c] * scale, arith)
        lo, hi = max(e0, b * blocksize - skip), min(e1, (b + 1) * blocksize - skip)
        for p in range(lo >> 1, hi >> 1):
            byte = np.int64(packed[p])
            flat[2 * p] = table[byte >> 4]
            flat[2 * p + 1] = table[byte & 15]


def nf4_into(packed: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor, blocksize: int, skip: int,
             dtype: torch.dtype, out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`nf4_rows` written into ``out`` ``(rows, row_length)`` float32:
    one compiled pass on the CPU, the torch kernels elsewhere."""
    n = out.numel()
    if (packed.numel() * 2 != n or quant_map.numel() != 16 or blocksize <= 0 or blocksize % 2 or skip < 0 or skip % 2
            or out.shape[1] % 2
            or (n and (n - 1 + skip) // blocksize >= absmax.numel())):
        raise ValueError(f"4-bit parts disagree: {packed.numel()} bytes, {absmax.numel()} absmax of blocks of "
                         f"{blocksize} from {skip}, {quant_map.numel()} levels, out {tuple(out.shape)}")
    if not compiled_ok(out, packed, absmax, quant_map):
        return nf4_rows(packed, absmax, quant_map, blocksize, skip, out.shape[1], dtype).values(out)
    args = (packed.reshape(-1).numpy(), as_f32(absmax), as_f32(quant_map), blocksize, skip, arithmetic_code(dtype))
    return run_kernel(_nf4_compiled, args, out)


@kernel
def _int8_compiled(codes, scb, inv, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        s = scb[r]
        for i in range(out.shape[1]):
            out[r, i] = (np.float32(codes[r, i]) * s) * inv


def int8_into(codes: torch.Tensor, scb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`int8_rows` written into ``out`` ``(n, in)`` float32."""
    if codes.shape != out.shape or scb.numel() != out.shape[0]:
        raise ValueError(f"LLM.int8 parts disagree: weight {tuple(codes.shape)}, SCB {scb.numel()}, out {tuple(out.shape)}")
    if not compiled_ok(out, codes, scb):
        return int8_rows(codes, scb).values(out)
    return run_kernel(_int8_compiled, (codes.numpy(), as_f32(scb), np.float32(INV_127)), out)
