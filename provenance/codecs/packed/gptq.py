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

import numpy as np
import torch

from provenance.codecs.packed.bits import per_word, unpack_words
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.native import affine_levels, arithmetic_code, as_f32, compiled_ok, round_to, run_kernel
from provenance.jit import kernel

#: outputs decoded together: their output rows' cache lines stay in L1 while the input runs
ROW_TILE = 32


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


@kernel
def _gptq_compiled(qweight, qzeros, zero_col, scales, g_idx, bits, zero_offset, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    pf = 32 // bits
    mask = (1 << bits) - 1
    n_groups = scales.shape[0]
    # the value of every code of each (output, group): a table lookup per weight, unless the
    # groups hold fewer weights than codes (8-bit, small groups), where computing is cheaper
    tabled = n_groups * (mask + 1) <= out.shape[1]
    table = np.empty((r1 - r0 if tabled else 0, n_groups, mask + 1), np.float32)
    zeros = np.empty((n_groups, r1 - r0), np.float32)
    for r in range(r0, r1):
        c = zero_col + r
        for g in range(n_groups):
            zeros[g, r - r0] = np.float32(((np.int64(qzeros[g, c // pf]) >> ((c % pf) * bits)) & mask) + zero_offset)
            if tabled:
                affine_levels(table[r - r0, g], zeros[g, r - r0], scales[g, r], arith)
    for t0 in range(r0, r1, ROW_TILE):  # a tile of outputs at a time keeps their rows in L1
        t1 = min(r1, t0 + ROW_TILE)
        for w in range(qweight.shape[0]):
            for r in range(t0, t1):
                word = np.int64(qweight[w, r])
                for k in range(pf):
                    i = w * pf + k
                    g = g_idx[i]
                    q = (word >> (k * bits)) & mask
                    if tabled:
                        out[r, i] = table[r - r0, g, q]
                    else:
                        out[r, i] = round_to((np.float32(q) - zeros[g, r - r0]) * scales[g, r], arith)


def gptq_into(qweight: torch.Tensor, qzeros: torch.Tensor, zero_col: int, scales: torch.Tensor,
              g_idx: torch.Tensor, bits: int, zero_offset: int, out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`gptq_rows` written into ``out`` ``(n, in)`` float32: one compiled
    pass on the CPU, the torch kernels elsewhere. ``g_idx`` must hold groups of ``scales``
    (the reader has checked it): the compiled loop does not check its indices."""
    pf = per_word(bits)
    n_words, n = qweight.shape
    if (tuple(out.shape) != (n, n_words * pf) or scales.shape[1] != n or g_idx.shape != (n_words * pf,)
            or qzeros.shape[0] != scales.shape[0] or (zero_col + n + pf - 1) // pf > qzeros.shape[1]):
        raise ValueError(f"GPTQ parts disagree: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)} "
                         f"from output {zero_col}, scales {tuple(scales.shape)}, g_idx {tuple(g_idx.shape)}, "
                         f"out {tuple(out.shape)}")
    if not compiled_ok(out, qweight, qzeros, scales, g_idx):
        return gptq_rows(qweight, qzeros, zero_col, scales, g_idx, bits, zero_offset).values(out)
    args = (qweight.numpy(), qzeros.numpy(), zero_col, as_f32(scales), g_idx.to(torch.int64).numpy(), bits,
            zero_offset, arithmetic_code(scales.dtype))
    return run_kernel(_gptq_compiled, args, out)
