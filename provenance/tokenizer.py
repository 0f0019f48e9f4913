"""Tokenizer summary: model type, vocabulary size and a stable hash of the token list.

The token-list hash is SHA-256 over each token in id order encoded as a little-endian
u64 byte length followed by its UTF-8 bytes: exactly GGUF's storage of a string
array, so for a GGUF it is the hash of the stored bytes, and an HF ``tokenizer.json``
with the same tokens in the same order hashes the same.
"""
from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from provenance.formats.base import Checkpoint
from provenance.formats.gguf_header import GGUFArray
from provenance.formats.jsonsafe import read_json_file

MAX_TOKENIZER_JSON_BYTES = 64 * 1024 * 1024


@dataclass
class TokenizerSummary:
    source: str
    """Where the tokenizer came from: ``gguf``, ``tokenizer.json`` or ``none``."""
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


def token_list_sha256(tokens: Iterable[bytes | str]) -> str:
    digest = hashlib.sha256()
    for token in tokens:
        data = token.encode("utf-8") if isinstance(token, str) else token
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def summarize_tokenizer(checkpoint: Checkpoint) -> TokenizerSummary:
    metadata = checkpoint.metadata
    if isinstance(metadata.get("tokenizer.ggml.tokens"), GGUFArray):
        return _from_gguf(metadata)
    directory = checkpoint.path if os.path.isdir(checkpoint.path) else os.path.dirname(checkpoint.path)
    tokenizer_json = os.path.join(directory, "tokenizer.json")
    if checkpoint.format.startswith(("hf", "safetensors")) and os.path.isfile(tokenizer_json):
        return _from_tokenizer_json(tokenizer_json)
    return TokenizerSummary(source="none")


def special_token_ids(metadata: dict[str, Any]) -> dict[str, int]:
    """GGUF ``tokenizer.ggml.<name>_token_id`` keys as ``{name: id}`` (bos, eos, unknown, ...)."""
    return {
        key.removeprefix("tokenizer.ggml.").removesuffix("_token_id"): value
        for key, value in metadata.items()
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id") and isinstance(value, int)
    }


def _from_gguf(metadata: dict[str, Any]) -> TokenizerSummary:
    tokens: GGUFArray = metadata["tokenizer.ggml.tokens"]
    scores = metadata.get("tokenizer.ggml.scores")
    merges = metadata.get("tokenizer.ggml.merges")
    special = special_token_ids(metadata)
    return TokenizerSummary(
        source="gguf",
        model=metadata.get("tokenizer.ggml.model") if isinstance(metadata.get("tokenizer.ggml.model"), str) else None,
        vocab_size=len(tokens),
        tokens_sha256=tokens.sha256() if tokens.element_type.name == "STRING" else None,
        scores_sha256=scores.sha256() if isinstance(scores, GGUFArray) else None,
        merges_count=len(merges) if isinstance(merges, GGUFArray) else None,
        merges_sha256=merges.sha256() if isinstance(merges, GGUFArray) else None,
        special_tokens=special,
        first_tokens=tokens.head(8) if tokens.element_type.name == "STRING" else [],
    )


def _from_tokenizer_json(path: str) -> TokenizerSummary:
    data = read_json_file(path, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES)
    model = data.get("model", {}) if isinstance(data, dict) else {}
    vocab = model.get("vocab") if isinstance(model, dict) else None
    by_id: dict[int, str] = {}
    if isinstance(vocab, dict):  # BPE / WordPiece: token -> id
        by_id = {i: t for t, i in vocab.items() if isinstance(i, int) and isinstance(t, str)}
    elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
        by_id = {i: e[0] for i, e in enumerate(vocab) if isinstance(e, list) and e and isinstance(e[0], str)}
    for added in data.get("added_tokens", []) if isinstance(data, dict) else []:
        if isinstance(added, dict) and isinstance(added.get("id"), int) and isinstance(added.get("content"), str):
            by_id.setdefault(added["id"], added["content"])
    ordered = [by_id[i] for i in sorted(by_id)]
    merges = model.get("merges") if isinstance(model, dict) else None
    merge_strings = [m if isinstance(m, str) else " ".join(map(str, m)) for m in merges] if isinstance(merges, list) else None
    return TokenizerSummary(
        source="tokenizer.json",
        model=str(model.get("type")).lower() if isinstance(model, dict) and model.get("type") else None,
        vocab_size=len(ordered),
        tokens_sha256=token_list_sha256(ordered) if ordered else None,
        merges_count=len(merge_strings) if merge_strings is not None else None,
        merges_sha256=token_list_sha256(merge_strings) if merge_strings else None,
        first_tokens=ordered[:8],
    )
