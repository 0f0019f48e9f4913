"""AWQ, GEMM version (AutoAWQ's ``WQLinear_GEMM``; also written by auto-round and
GPTQModel as ``quant_method: awq``).

Per linear layer ``out x in`` (4-bit codes, 8 per int32 word):

* ``qweight`` int32 ``(in, out / 8)``: packed along the *output* dimension, and within a
  word the eight outputs are interleaved: nibble ``k`` (bits ``4k``) holds output
  ``8 * word + AWQ_ORDER[k]``, ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`` (AutoAWQ's
  ``pack``; its ``dequantize_gemm`` undoes it with ``AWQ_REVERSE_ORDER``);
* ``qzeros`` int32 ``(n_groups, out / 8)``, packed the same way; zeros stored as is;
* ``scales`` ``(n_groups, out)`` in the model's float dtype, group ``i // group_size``.

``w[o, i] = (q - zero) * scale`` in the scales' dtype (``dequantize_gemm``).
"""
from __future__ import annotations

import torch

from provenance.codecs.packed.bits import unpack_words
from provenance.codecs.packed.grid import PackedRows

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_BITS = 4


def _deinterleave(codes: torch.Tensor) -> torch.Tensor:
    """Unpacked ``(r, 8 * w)`` codes in nibble order -> output order."""
    r, c = codes.shape
    inverse = torch.argsort(torch.tensor(AWQ_ORDER, device=codes.device))
    return codes.view(r, c // 8, 8)[:, :, inverse].reshape(r, c)


def awq_rows(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> PackedRows:
    """Canonical rows (outputs) of whole words ``[8a, 8b)`` of an AWQ GEMM layer:
    ``qweight`` ``(in, b - a)``, ``qzeros`` ``(n_groups, b - a)``, ``scales``
    ``(n_groups, 8 (b - a))``."""
    codes = _deinterleave(unpack_words(qweight, AWQ_BITS, dim=1)).t()  # (n, in)
    zeros = _deinterleave(unpack_words(qzeros, AWQ_BITS, dim=1)).to(torch.float32)
    n_in = qweight.shape[0]
    g = torch.arange(n_in, device=qweight.device) // group_size
    scale = scales.to(torch.float32).t()[:, g]
    zero = zeros.t()[:, g]
    return PackedRows(codes, scale, 1 << AWQ_BITS, arithmetic=scales.dtype, zero=zero)
