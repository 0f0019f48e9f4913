"""MLX affine quantization (``mlx.core.quantize``, written by ``mlx_lm.convert``).

``weight`` uint32 ``(out, in * bits / 32)``, codes packed along the input dimension least
significant first; ``scales`` and ``biases`` ``(out, in / group_size)`` in the model's
dtype; config ``quantization: {group_size, bits}`` (bits 2, 4 or 8 here; 3, 5 and 6 pack
across words and are refused). ``w = scale * q + bias``.

The writer (``mx.quantize``, affine mode, CPU) works per group in float32: ``w_min``,
``w_max``; ``scale = max((w_max - w_min) / (2**bits - 1), 1e-7)``, negated unless
``|w_min| > |w_max|``; the edge (``w_min`` or ``w_max``, the one of larger magnitude) made
a level: ``q0 = rint(edge / scale)``, and if ``q0 != 0`` then ``scale = edge / q0``,
``bias = edge`` (else ``bias = 0``); codes ``clip(rint((w - bias) / scale), 0, 2**bits - 1)``;
scale and bias are then stored in the weights' dtype. So the codes of an f16/bf16 model were
chosen with float32 scales wider than the stored ones: :func:`mlx_writer_grid` recomputes
them from the reference (it reproduces mlx_lm's files byte for byte, tests/quant).
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


def mlx_writer_grid(x: torch.Tensor, stored: PackedRows, bits: int, group_size: int) -> tuple[PackedRows, torch.Tensor]:
    """The grid ``mx.quantize`` rounded the reference rows ``x`` ``(n, in)`` on (float32 scale
    and bias of each group, from ``x`` itself; the stored codes), and per group whether the
    stored scale and bias are those values in the stored dtype."""
    n, n_in = x.shape
    w = x.to(torch.float32).view(n, n_in // group_size, group_size)
    w_max, w_min = w.amax(-1), w.amin(-1)
    larger_min = w_min.abs() > w_max.abs()
    scale = torch.clamp((w_max - w_min) / float((1 << bits) - 1), min=1e-7)
    scale = torch.where(larger_min, scale, -scale)
    edge = torch.where(larger_min, w_min, w_max)
    q0 = torch.round(edge / scale)
    on_grid = q0 != 0
    scale = torch.where(on_grid, edge / q0, scale)
    bias = torch.where(on_grid, edge, torch.zeros_like(edge))
    dtype = stored.arithmetic
    stored_scale, stored_bias = stored.scale[:, ::group_size], stored.bias[:, ::group_size]  # type: ignore[index]
    scale_ok = (scale.to(dtype).to(torch.float32) == stored_scale) & (bias.to(dtype).to(torch.float32) == stored_bias)
    return (PackedRows(stored.codes, scale.repeat_interleave(group_size, 1), stored.n_levels,
                       bias=bias.repeat_interleave(group_size, 1)), scale_ok)
