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

LLM.int8: ``weight`` int8 ``(out, in)`` and ``SCB`` float32 ``(out,)`` (each row's absmax);
``int8_vectorwise_dequant``: ``q * SCB * (1/127)`` in float32, left to right.
"""
from __future__ import annotations

import torch

from provenance.codecs.packed.bits import unpack_nibbles_high_first
from provenance.codecs.packed.grid import PackedRows

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
