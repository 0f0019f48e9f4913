"""MLX affine quantization (``mlx.core.quantize``, written by ``mlx_lm.convert``).

``weight`` uint32 ``(out, in * bits / 32)``, codes packed along the input dimension least
significant first; ``scales`` and ``biases`` ``(out, in / group_size)`` in the model's
dtype; config ``quantization: {group_size, bits}`` (bits 2, 4 or 8 here; 3, 5 and 6 pack
across words and are refused). ``w = scale * q + bias``.
"""
from __future__ import annotations

import torch

from provenance.codecs.packed.bits import unpack_words
from provenance.codecs.packed.grid import PackedRows


def mlx_rows(words: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group_size: int) -> PackedRows:
    """Rows of an MLX quantized weight: ``words`` ``(n, in*bits/32)``, ``scales``/``biases``
    ``(n, in/group_size)``."""
    codes = unpack_words(words, bits, dim=1)
    scale = scales.to(torch.float32).repeat_interleave(group_size, dim=1)
    bias = biases.to(torch.float32).repeat_interleave(group_size, dim=1)
    return PackedRows(codes, scale, 1 << bits, arithmetic=scales.dtype, bias=bias)
