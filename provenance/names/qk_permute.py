"""llama.cpp's Q/K row permutation for llama-family models.

HF checkpoints store q_proj/k_proj rows in "rotate-half" order: within each head,
all first halves of the rotary pairs, then all second halves. llama.cpp's converter
reorders them to interleaved pairs (Meta's original layout), per head::

    W.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2).reshape(W.shape)

with ``n_head_kv`` heads for k_proj. Comparing a GGUF with an HF checkpoint without
undoing this makes every attention projection look unrelated.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def splits_into_heads(n_rows: int, n_heads: object) -> bool:
    """Whether ``n_rows`` rows are ``n_heads`` whole heads of rotary pairs (what the readers
    check before they set a tensor's ``qk_heads``)."""
    return isinstance(n_heads, int) and not isinstance(n_heads, bool) and n_heads > 0 and n_rows % (2 * n_heads) == 0


@lru_cache(maxsize=64)
def _order(n_rows: int, n_heads: int) -> np.ndarray:
    if not splits_into_heads(n_rows, n_heads):
        raise ValueError(f"{n_rows} rows cannot be split into {n_heads} heads of rotary pairs")
    half = n_rows // n_heads // 2
    # GGUF row (h, j, i) comes from HF row (h, i, j): build the HF index in GGUF order.
    hf_index = np.arange(n_rows).reshape(n_heads, 2, half).swapaxes(1, 2).reshape(n_rows)
    hf_index.setflags(write=False)
    return hf_index


def llama_qk_row_order(n_rows: int, n_heads: int) -> np.ndarray:
    """``order`` such that ``gguf_rows = hf_rows[order]`` (read-only array)."""
    return _order(n_rows, n_heads)


def hf_to_gguf_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Apply llama.cpp's converter permutation to an HF q_proj/k_proj matrix (rows first)."""
    return weights[llama_qk_row_order(weights.shape[0], n_heads)]


def gguf_to_hf_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo :func:`hf_to_gguf_rows`."""
    inverse = np.argsort(llama_qk_row_order(weights.shape[0], n_heads))
    return weights[inverse]
