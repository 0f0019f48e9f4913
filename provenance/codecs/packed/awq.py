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

import numpy as np
import torch

from provenance.codecs.packed.bits import unpack_words
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.native import affine_levels, arithmetic_code, as_f32, compiled_ok, run_kernel
from provenance.jit import kernel

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_BITS = 4
#: bit shift of output ``8 * word + j`` within its word (the nibble ``k`` with ``AWQ_ORDER[k] == j``)
AWQ_SHIFTS = np.array([4 * AWQ_ORDER.index(j) for j in range(8)], dtype=np.int64)


def _deinterleave(codes: torch.Tensor) -> torch.Tensor:
    """Unpacked ``(r, 8 * w)`` codes in nibble order -> output order."""
    r, c = codes.shape
    inverse = torch.argsort(torch.tensor(AWQ_ORDER, device=codes.device))
    return codes.view(r, c // 8, 8)[:, :, inverse].reshape(r, c)


def awq_rows(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
             first: int = 0, n: int | None = None) -> PackedRows:
    """Canonical rows (outputs) ``[8a + first, 8a + first + n)`` of an AWQ GEMM layer, from
    the stored words ``[a, b)``: ``qweight`` ``(in, b - a)``, ``qzeros`` ``(n_groups, b - a)``,
    ``scales`` ``(n_groups, 8 (b - a))``; ``n`` defaults to all ``8 (b - a) - first``."""
    codes = _deinterleave(unpack_words(qweight, AWQ_BITS, dim=1)).t()  # (8 (b - a), in)
    zeros = _deinterleave(unpack_words(qzeros, AWQ_BITS, dim=1)).to(torch.float32)
    n_in = qweight.shape[0]
    g = torch.arange(n_in, device=qweight.device) // group_size
    scale = scales.to(torch.float32).t()[:, g]
    zero = zeros.t()[:, g]
    stop = codes.shape[0] if n is None else first + n
    return PackedRows(codes[first:stop], scale[first:stop], 1 << AWQ_BITS, arithmetic=scales.dtype,
                      zero=zero[first:stop])


@kernel
def _awq_compiled(qweight, qzeros, scales, group_size, first, shifts, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    n_groups = scales.shape[0]
    table = np.empty((r1 - r0, n_groups, 16), np.float32)  # the value of every code of each (output, group)
    for r in range(r0, r1):
        c = first + r
        for g in range(n_groups):
            zero = np.float32((np.int64(qzeros[g, c >> 3]) >> shifts[c & 7]) & 15)
            affine_levels(table[r - r0, g], zero, scales[g, c], arith)
    # one stored word column (eight outputs) at a time: each word is read once and its
    # eight outputs' rows are written in step
    for w in range((first + r0) >> 3, ((first + r1 - 1) >> 3) + 1):
        lo, hi = max(r0, 8 * w - first), min(r1, 8 * w + 8 - first)
        for i in range(out.shape[1]):
            g = i // group_size
            word = np.int64(qweight[i, w])
            for r in range(lo, hi):
                out[r, i] = table[r - r0, g, (word >> shifts[(first + r) & 7]) & 15]


def awq_into(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int, first: int,
             out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`awq_rows` (``out.shape[0]`` rows from ``first``) written into
    ``out`` ``(n, in)`` float32: one compiled pass on the CPU, the torch kernels elsewhere."""
    n_in, n_words = qweight.shape
    n = out.shape[0]
    if (out.shape[1] != n_in or qzeros.shape[1] != n_words or scales.shape != (qzeros.shape[0], 8 * n_words)
            or first < 0 or first + n > 8 * n_words or group_size <= 0 or qzeros.shape[0] * group_size < n_in):
        raise ValueError(f"AWQ parts disagree: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, "
                         f"scales {tuple(scales.shape)}, rows {first}+{n}, group {group_size}")
    if not compiled_ok(out, qweight, qzeros, scales):
        return awq_rows(qweight, qzeros, scales, group_size, first, n).values(out)
    args = (qweight.numpy(), qzeros.numpy(), as_f32(scales), group_size, first, AWQ_SHIFTS,
            arithmetic_code(scales.dtype))
    return run_kernel(_awq_compiled, args, out)
