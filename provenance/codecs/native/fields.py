"""Little-endian fields of one stored block, read inside the compiled kernels."""
from __future__ import annotations

import numpy as np

from provenance.jit import inline


@inline
def f16(b, at, f16_table):  # type: ignore[no-untyped-def]
    """The f16 at byte ``at`` as float32, through the 65536-entry table (exact)."""
    return f16_table[np.int64(b[at]) | (np.int64(b[at + 1]) << 8)]


@inline
def u16(b, at):  # type: ignore[no-untyped-def]
    return np.int64(b[at]) | (np.int64(b[at + 1]) << 8)


@inline
def u32(b, at):  # type: ignore[no-untyped-def]
    return np.int64(b[at]) | (np.int64(b[at + 1]) << 8) | (np.int64(b[at + 2]) << 16) | (np.int64(b[at + 3]) << 24)


@inline
def k_sub_scale(b, j, d, dmin):  # type: ignore[no-untyped-def]
    """Q4_K/Q5_K: ``(d * scale, dmin * min)`` of sub-block ``j``, each rounded to float32
    as gguf-py does, from the 6-bit scale and min packed in bytes 4..15 (ggml's
    ``get_scale_min_k4``)."""
    at = 4
    if j < 4:
        sc, mn = np.int64(b[at + j]) & 63, np.int64(b[at + j + 4]) & 63
    else:
        sc = (np.int64(b[at + j + 4]) & 0xF) | ((np.int64(b[at + j - 4]) >> 6) << 4)
        mn = (np.int64(b[at + j + 4]) >> 4) | ((np.int64(b[at + j]) >> 6) << 4)
    return d * np.float32(sc), dmin * np.float32(mn)


# The grid decoders write codes in runs over 0-based views (a run of bytes in, a run of
# codes out): indexed from 0, numba's negative-index fix-up folds away, the accesses are
# provably contiguous and LLVM vectorizes the loop; a per-weight byte address computed
# from the weight's index (``start + (w >> 7) * 32 + (w & 31)``) kept it scalar.

@inline
def put_bits(src, out, shift, mask, bias):  # type: ignore[no-untyped-def]
    """``out[j] = ((src[j] >> shift) & mask) + bias`` over ``src``."""
    for j in range(src.shape[0]):
        out[j] = ((np.int32(src[j]) >> shift) & mask) + bias


@inline
def add_bits(src, out, shift, mask, left):  # type: ignore[no-untyped-def]
    """``out[j] += ((src[j] >> shift) & mask) << left`` over ``src`` (a code's high bits)."""
    for j in range(src.shape[0]):
        out[j] += ((np.int32(src[j]) >> shift) & mask) << left


@inline
def split_nibbles(src, code, bias):  # type: ignore[no-untyped-def]
    """32 codes from the 16 bytes of ``src`` (ggml's 32-weight blocks): weight ``j`` the low
    nibble of byte ``j``, weight ``16 + j`` its high nibble, plus ``bias``."""
    put_bits(src, code[0:16], 0, 0xF, bias)
    put_bits(src, code[16:32], 4, 0xF, bias)
