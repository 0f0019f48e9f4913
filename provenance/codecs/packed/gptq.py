"""GPTQ (AutoGPTQ / GPTQModel / optimum layout, as transformers loads it).

Per linear layer ``out x in`` with ``bits`` in {2, 4, 8}, ``pf = 32 // bits``:

* ``qweight`` int32 ``(in / pf, out)``: code of weight ``(o, i)`` in word ``(i // pf, o)``,
  bits ``(i % pf) * bits`` up (packed along the *input* dimension);
* ``qzeros`` int32 ``(n_groups, out / pf)``: zero of group ``g``, output ``o`` in word
  ``(g, o // pf)``, packed along the *output* dimension. The v1 checkpoint format (every
  AutoGPTQ-era file, GPTQModel's default on save) stores ``zero - 1``; ``gptq_v2`` stores
  the zero itself;
* ``scales`` ``(n_groups, out)`` in the model's float dtype;
* ``g_idx`` int32 ``(in,)``: the group of each input column (act-order permutes it;
  without act-order it is ``i // group_size``).

``w[o, i] = scales[g, o] * (q[i, o] - zero[g, o])`` with ``g = g_idx[i]``, computed by
the torch kernels in the scales' dtype: rounding the exact float32 product to that dtype
gives the same bits.
"""
from __future__ import annotations

import torch

from provenance.codecs.packed.bits import per_word, unpack_words
from provenance.codecs.packed.grid import PackedRows


def gptq_rows(qweight: torch.Tensor, qzeros: torch.Tensor, zero_col: int, scales: torch.Tensor,
              g_idx: torch.Tensor, bits: int, zero_offset: int) -> PackedRows:
    """Canonical rows (outputs) ``[a, a + n)`` of a GPTQ layer as codes and grid.

    ``qweight`` is the ``(in / pf, n)`` column slice of the stored words, ``scales`` the
    ``(n_groups, n)`` slice; ``qzeros`` holds the words covering those outputs, the first
    of which starts at output ``a - zero_col``; ``g_idx`` the whole ``(in,)`` map.
    ``zero_offset`` is 1 for the v1 format (stored ``zero - 1``), 0 for v2.
    """
    n = qweight.shape[1]
    codes = unpack_words(qweight, bits, dim=0).t()  # (n, in)
    zeros = unpack_words(qzeros, bits, dim=1)[:, zero_col: zero_col + n].to(torch.float32) + zero_offset
    g = g_idx.long()
    scale = scales.to(torch.float32).t()[:, g]  # (n, in)
    zero = zeros.t()[:, g]
    return PackedRows(codes, scale, 1 << bits, arithmetic=scales.dtype, zero=zero)


def gptq_words_per_column(bits: int) -> int:
    """Codes per stored word (the packing factor ``pf``)."""
    return per_word(bits)
