"""Tokenizer summary for ``inspect``: model type, vocabulary size and stable hashes.

The vocabulary itself is read by the one parser in the readers' layer
(:mod:`provenance.formats.vocabulary`: GGUF metadata, ``tokenizer.json``, SentencePiece
``tokenizer.model``, tokenizer folders); this module only summarises it. The token-list
hash is GGUF's storage of the string array (see :func:`token_list_sha256`), so a GGUF and
an HF ``tokenizer.json`` with the same tokens in the same order hash the same.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from provenance.formats.base import Checkpoint
from provenance.formats.vocabulary import Vocabulary, checkpoint_vocabulary, special_token_ids, token_list_sha256

__all__ = ["TokenizerSummary", "special_token_ids", "summarize_tokenizer", "summarize_vocabulary", "token_list_sha256"]

PREVIEW_TOKENS = 8


@dataclass
class TokenizerSummary:
    source: str
    """Where the tokenizer came from: ``gguf``, ``tokenizer.json``, ``sentencepiece`` or ``none``."""
    model: str | None = None
    vocab_size: int = 0
    tokens_sha256: str | None = None
    scores_sha256: str | None = None
    merges_count: int | None = None
    merges_sha256: str | None = None
    special_tokens: dict[str, int] = field(default_factory=dict)
    first_tokens: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores_sha256(scores: np.ndarray | None) -> str | None:
    """SHA-256 of the scores as little-endian float32: the bytes of GGUF's FLOAT32 array."""
    return hashlib.sha256(np.asarray(scores, "<f4").tobytes()).hexdigest() if scores is not None else None


def summarize_vocabulary(vocab: Vocabulary) -> TokenizerSummary:
    return TokenizerSummary(
        source=vocab.origin or vocab.source,
        model=vocab.model,
        vocab_size=len(vocab),
        tokens_sha256=token_list_sha256(vocab.tokens) if vocab.tokens else None,
        scores_sha256=scores_sha256(vocab.scores),
        merges_count=vocab.merges_count,
        merges_sha256=vocab.merges_sha256,
        special_tokens=dict(vocab.special_tokens),
        first_tokens=[t.decode("utf-8", errors="replace") for t in vocab.tokens[:PREVIEW_TOKENS]],
    )


def summarize_tokenizer(checkpoint: Checkpoint) -> TokenizerSummary:
    vocab = checkpoint_vocabulary(checkpoint)
    return summarize_vocabulary(vocab) if vocab is not None else TokenizerSummary(source="none")
