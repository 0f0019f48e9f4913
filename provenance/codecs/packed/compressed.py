"""compressed-tensors (llm-compressor, vLLM): ``pack-quantized``, ``int-quantized`` /
``naive-quantized`` and ``float-quantized`` weights.

* ``pack-quantized``: ``weight_packed`` int32 ``(out, ceil(in * bits / 32))``, signed codes
  offset by ``2**(bits-1)`` and packed densely along the input dimension
  (:func:`.bits.unpack_stream`); ``weight_zero_point`` (asymmetric only) packed the same
  way along the *output* dimension, ``(ceil(out * bits / 32), n_groups)``;
  ``weight_shape`` int ``[out, in]``;
* ``int-quantized`` / ``naive-quantized``: ``weight`` int8 ``(out, in)``;
* ``float-quantized``: ``weight`` fp8 (``F8_E4M3``) ``(out, in)``.

``weight_scale`` is ``(out, n_groups)`` (group strategy; ``n_groups`` = 1 per channel) or
a single value (tensor strategy); ``weight_g_idx`` (act-order) gives each input column's
group. Dequantization (``compressed_tensors...forward.dequantize``) computes
``(q - zero) * scale`` in the scale's dtype.
"""
from __future__ import annotations

import torch

from provenance.codecs.packed.bits import unpack_stream
from provenance.codecs.packed.grid import PackedRows


def group_index(n_in: int, group_size: int, g_idx: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Group of each input column: ``g_idx`` when stored (act-order), else ``i // group_size``."""
    if g_idx is not None:
        return g_idx.long()
    return torch.arange(n_in, device=device) // group_size


def _expand(param: torch.Tensor, rows: int, groups: torch.Tensor) -> torch.Tensor:
    p = param.to(torch.float32)
    if p.numel() == 1:  # tensor strategy
        return p.reshape(1, 1).expand(rows, groups.numel())
    return p[:, groups]


def int_rows(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, groups: torch.Tensor,
             bits: int) -> PackedRows:
    """Signed integer codes ``(n, in)`` in ``[-2**(bits-1), 2**(bits-1))`` with their scales
    ``(n, n_groups)`` (or one) and signed zero points: the grid, codes shifted to
    ``[0, 2**bits)`` so that code 0 is the lowest level."""
    offset = 1 << (bits - 1)
    rows = codes.shape[0]
    zero_el = _expand(zero, rows, groups) if zero is not None else torch.zeros((), device=codes.device)
    return PackedRows(codes.to(torch.int32) + offset, _expand(scale, rows, groups), 1 << bits,
                      arithmetic=scale.dtype, zero=zero_el + offset)


def packed_int_rows(words: torch.Tensor, n_in: int, bits: int, scale: torch.Tensor, zero_words: torch.Tensor | None,
                    zero_row: int, groups: torch.Tensor) -> PackedRows:
    """Rows ``[a, a + n)`` of a ``pack-quantized`` weight: ``words`` ``(n, packed)``, scales
    ``(n, n_groups)``; ``zero_words`` the stored zero-point words covering these outputs,
    the first of which starts at output ``a - zero_row``."""
    offset = 1 << (bits - 1)
    codes = unpack_stream(words, bits, n_in) - offset
    zero = None
    if zero_words is not None:
        n = words.shape[0]
        z = unpack_stream(zero_words.t().contiguous(), bits, zero_row + n).t()
        zero = (z[zero_row: zero_row + n] - offset).to(torch.float32)
    return int_rows(codes, scale, zero, groups, bits)


def fp8_levels(device: torch.device | None = None) -> torch.Tensor:
    """float32 value of each of the 256 ``float8_e4m3fn`` codes (two NaNs)."""
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).to(device)


def fp8_rows(codes: torch.Tensor, scale: torch.Tensor, groups: torch.Tensor) -> PackedRows:
    """``float8_e4m3fn`` weights (their bytes as uint8 codes) times their scales."""
    rows = codes.shape[0]
    return PackedRows(codes.to(torch.int32), _expand(scale, rows, groups), 256, arithmetic=scale.dtype,
                      levels=fp8_levels(codes.device))
