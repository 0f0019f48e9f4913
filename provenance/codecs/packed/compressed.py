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

import numpy as np
import torch

from provenance.codecs.packed.bits import unpack_stream
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.native import affine_levels, arithmetic_code, as_f32, compiled_ok, round_to, run_kernel
from provenance.jit import kernel


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


# ----- compiled kernels: scales and offset zeros are (n or 1, n_groups) float32, ``groups`` each
# input column's group (checked against them by the caller) -------------------------------------
@kernel
def _int_compiled(codes, offset, scales, zeros, groups, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    n_groups = scales.shape[1]
    per_row = scales.shape[0] > 1
    # the value of every code of each group of a row: a lookup per weight, unless the
    # groups hold fewer weights than codes, where computing is cheaper
    tabled = n_groups * 2 * offset <= out.shape[1]
    table = np.empty((n_groups if tabled else 0, 2 * offset), np.float32)
    for r in range(r0, r1):
        p = r if per_row else 0
        if tabled and (per_row or r == r0):
            for g in range(n_groups):
                affine_levels(table[g], zeros[p, g], scales[p, g], arith)
        for i in range(out.shape[1]):
            g = groups[i]
            q = np.int64(codes[r, i]) + offset
            if tabled:
                out[r, i] = table[g, q]
            else:
                out[r, i] = round_to((np.float32(q) - zeros[p, g]) * scales[p, g], arith)


@kernel
def _packed_int_compiled(words, bits, scales, zeros, groups, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    mask = (1 << bits) - 1
    n_groups = scales.shape[1]
    per_row = scales.shape[0] > 1
    tabled = n_groups * (mask + 1) <= out.shape[1]
    table = np.empty((n_groups if tabled else 0, mask + 1), np.float32)
    for r in range(r0, r1):
        p = r if per_row else 0
        if tabled and (per_row or r == r0):
            for g in range(n_groups):
                affine_levels(table[g], zeros[p, g], scales[p, g], arith)
        for i in range(out.shape[1]):
            at = i * bits
            w, shift = at >> 5, at & 31
            code = (np.int64(words[r, w]) & 0xFFFFFFFF) >> shift
            if shift + bits > 32:  # the code straddles two words
                code |= (np.int64(words[r, w + 1]) & 0xFFFFFFFF) << (32 - shift)
            code &= mask
            g = groups[i]
            if tabled:
                out[r, i] = table[g, code]
            else:
                out[r, i] = round_to((np.float32(code) - zeros[p, g]) * scales[p, g], arith)


@kernel
def _codebook_compiled(codes, levels, scales, groups, arith, out, r0, r1):  # type: ignore[no-untyped-def]
    n_groups = scales.shape[1]
    per_row = scales.shape[0] > 1
    tabled = n_groups * levels.shape[0] <= out.shape[1]
    table = np.empty((n_groups if tabled else 0, levels.shape[0]), np.float32)
    for r in range(r0, r1):
        p = r if per_row else 0
        if tabled and (per_row or r == r0):
            for g in range(n_groups):
                for c in range(levels.shape[0]):
                    table[g, c] = round_to(levels[c] * scales[p, g], arith)
        for i in range(out.shape[1]):
            if tabled:
                out[r, i] = table[groups[i], codes[r, i]]
            else:
                out[r, i] = round_to(levels[codes[r, i]] * scales[p, groups[i]], arith)


def _grid_args(scale: torch.Tensor, zero: torch.Tensor | None, offset: int, rows: int,
               groups: torch.Tensor, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scales, zeros plus the code offset (as :func:`int_rows` adds them, in float32) and the
    group map, checked against each other: the compiled loops do not check their indices."""
    s = scale.reshape(1, 1) if scale.numel() == 1 else scale
    z = (zero.to(torch.float32).reshape(s.shape) if zero is not None else torch.zeros(s.shape)) + offset
    if (s.dim() != 2 or s.shape[0] not in (1, rows) or groups.shape != (n_in,)
            or (n_in and not 0 <= int(groups.min()) <= int(groups.max()) < s.shape[1])):
        raise ValueError(f"compressed-tensors parts disagree: scale {tuple(scale.shape)}, {rows} rows, "
                         f"group map {tuple(groups.shape)} for {n_in} inputs")
    return as_f32(s), as_f32(z), groups.to(torch.int64).numpy()


def int_into(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, groups: torch.Tensor, bits: int,
             out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`int_rows` written into ``out`` ``(n, in)`` float32."""
    if codes.shape != out.shape:
        raise ValueError(f"codes {tuple(codes.shape)} for out {tuple(out.shape)}")
    if not compiled_ok(out, codes, scale, groups):
        return int_rows(codes, scale, zero, groups, bits).values(out)
    offset = 1 << (bits - 1)
    s, z, g = _grid_args(scale, zero, offset, out.shape[0], groups, out.shape[1])
    return run_kernel(_int_compiled, (codes.numpy(), offset, s, z, g, arithmetic_code(scale.dtype)), out)


def packed_int_into(words: torch.Tensor, n_in: int, bits: int, scale: torch.Tensor, zero_words: torch.Tensor | None,
                    zero_row: int, groups: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`packed_int_rows` written into ``out`` ``(n, in)`` float32."""
    n = words.shape[0]
    if tuple(out.shape) != (n, n_in) or not 1 <= bits <= 8 or words.shape[1] * 32 < n_in * bits:
        raise ValueError(f"{bits}-bit words {tuple(words.shape)} for out {tuple(out.shape)}")
    if not compiled_ok(out, words, scale, groups):
        return packed_int_rows(words, n_in, bits, scale, zero_words, zero_row, groups).values(out)
    offset = 1 << (bits - 1)
    zero = None
    if zero_words is not None:  # few: unpacked by the torch helper, then offset like the codes
        z = unpack_stream(zero_words.t().contiguous(), bits, zero_row + n).t()
        zero = (z[zero_row: zero_row + n] - offset).to(torch.float32)
    s, z_off, g = _grid_args(scale, zero, offset, n, groups, n_in)
    return run_kernel(_packed_int_compiled, (words.numpy(), bits, s, z_off, g, arithmetic_code(scale.dtype)), out)


def fp8_into(codes: torch.Tensor, scale: torch.Tensor, groups: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The values of :func:`fp8_rows` written into ``out`` ``(n, in)`` float32."""
    if codes.shape != out.shape:
        raise ValueError(f"codes {tuple(codes.shape)} for out {tuple(out.shape)}")
    if not compiled_ok(out, codes, scale, groups):
        return fp8_rows(codes, scale, groups).values(out)
    s, _, g = _grid_args(scale, None, 0, out.shape[0], groups, out.shape[1])
    args = (codes.view(torch.uint8).numpy(), fp8_levels().numpy(), s, g, arithmetic_code(scale.dtype))
    return run_kernel(_codebook_compiled, args, out)
