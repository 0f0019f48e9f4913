"""Integers packed into 32-bit words, least significant bits first (GPTQ, AWQ,
compressed-tensors, MLX all pack this way; AWQ then permutes within a word)."""
from __future__ import annotations

import torch

#: bit widths whose codes never straddle a 32-bit word
WORD_ALIGNED_BITS = (2, 4, 8)


def per_word(bits: int) -> int:
    if bits not in WORD_ALIGNED_BITS:
        raise ValueError(f"{bits}-bit codes are not packed whole into 32-bit words")
    return 32 // bits


def unpack_words(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Codes ``[0, 2**bits)`` of int32/uint32 ``words``, expanded along ``dim`` (code ``k``
    of word ``w`` lands at ``w * 32 // bits + k``); int32 result."""
    n = per_word(bits)
    dim = dim % words.dim()
    w = words.view(torch.int32) if words.dtype in (torch.uint32, torch.int32) else words.to(torch.int32)
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=w.device)
    shape = [1] * (w.dim() + 1)
    shape[dim + 1] = n
    codes = torch.bitwise_and(torch.bitwise_right_shift(w.unsqueeze(dim + 1), shifts.view(shape)), (1 << bits) - 1)
    out_shape = list(w.shape)
    out_shape[dim] *= n
    return codes.reshape(out_shape)


def unpack_nibbles_high_first(data: torch.Tensor) -> torch.Tensor:
    """4-bit codes of uint8 ``data``, the high nibble first (bitsandbytes' order): int64."""
    b = data.reshape(-1).to(torch.int64)
    return torch.stack((b >> 4, b & 0xF), dim=1).reshape(-1)


def unpack_stream(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` codes of each row of ``words`` (int32, ``(rows, w)``) packed densely
    as compressed-tensors does for any width of 1..8 bits: code ``e`` occupies bits
    ``[e*bits, (e+1)*bits)`` of the row's little-endian word stream, so a code may straddle
    two words, and a row of ``n`` codes takes ``ceil(n * bits / 32)`` words. For 2/4/8 bits
    this is the per-word layout. int32 result."""
    if not 1 <= bits <= 8:
        raise ValueError(f"{bits}-bit codes are not packed by compressed-tensors")
    rows, n_words = words.shape
    if n * bits > n_words * 32:
        raise ValueError(f"{n_words} words hold fewer than {n} {bits}-bit codes")
    w = words.to(torch.int64) & 0xFFFFFFFF
    w = torch.cat((w, torch.zeros((rows, 1), dtype=torch.int64, device=w.device)), dim=1)  # straddle guard
    start = torch.arange(n, device=w.device) * bits
    index, shift = start // 32, start % 32
    pair = w[:, index] | (w[:, index + 1] << 32)
    return ((pair >> shift) & ((1 << bits) - 1)).to(torch.int32)
