"""MLX affine quantization (``mlx.core.quantize``, written by ``mlx_lm.convert``).

``weight`` uint32 ``(out, in * bits / 32)``, codes packed along the input dimension least
significant first; ``scales`` and ``biases`` ``(out, in / group_size)`` in the model's
dtype; config ``quantization: {group_size, bits}`` (bits 2, 4 or 8 here; 3, 5 and 6 pack
across words and are refused). ``w = scale * q + bias``.
"""
from __future__ import annotations

import numpy as np
import torch

from provenance.codecs.packed.bits import per_word, unpack_words
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.native import arithmetic_code, as_f32, compiled_ok, round_to, run_kernel
from provenance.jit import kernel


def mlx_rows(words: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group_size: int) -> PackedRows:
    """Rows of an MLX quantized weight: ``words`` ``(n, in*bits/32)``, ``scales``/``biases``
    ``(n, in/group_size)``."""
    codes = unpack_words(words, bits, dim=1)
    scale = scales.to(torch.float32).repeat_interleave(group_size, dim=1)
    bias = biases.to(torch.float32).repeat_interleave(group_size, dim=1)
    return PackedRows(codes, scale, 1 << bits, arithmetic=scales.dtype, bias=bias)


@kernel
def _mlx_compiled(words, scales, biases, bits, group_size, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    per = 32 // bits
    mask = (1 << bits) - 1
    # a group's codes looked up in its table of values, unless the group is smaller than that
    tabled = mask + 1 <= group_size
    table = np.empty(mask + 1 if tabled else 0, np.float32)
    for r in range(r0, r1):
        for w in range(words.shape[1]):
            word = np.int64(words[r, w])
            for k in range(per):
                i = w * per + k
                g = i // group_size
                q = (word >> (k * bits)) & mask
                if tabled:
                    if i % group_size == 0:
                        for c in range(mask + 1):
                            table[c] = round_to(round_to(np.float32(c) * scales[r, g], arith) + biases[r, g], arith)
                    out[r, i] = table[q]
                else:
                    out[r, i] = round_to(round_to(np.float32(q) * scales[r, g], arith) + biases[r, g], arith)


def mlx_into(words: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group_size: int,
             out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`mlx_rows` written into ``out`` ``(n, in)`` float32."""
    n, n_words = words.shape
    n_in = n_words * per_word(bits)
    if (tuple(out.shape) != (n, n_in) or group_size <= 0 or n_in % group_size
            or scales.shape != (n, n_in // group_size) or biases.shape != scales.shape):
        raise ValueError(f"MLX parts disagree: weight {tuple(words.shape)}, scales {tuple(scales.shape)}, "
                         f"biases {tuple(biases.shape)}, group {group_size}, out {tuple(out.shape)}")
    if not compiled_ok(out, words, scales, biases):
        return mlx_rows(words, scales, biases, bits, group_size).values(out)
    args = (words.numpy(), as_f32(scales), as_f32(biases), bits, group_size, arithmetic_code(scales.dtype))
    return run_kernel(_mlx_compiled, args, out)
