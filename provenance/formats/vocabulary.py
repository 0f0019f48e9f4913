"""A tokenizer's vocabulary as one record, whatever file it came from.

Every tokenizer source (GGUF metadata, ``tokenizer.json``, a SentencePiece
``tokenizer.model``, a folder of tokenizer files) is reduced to one
:class:`Vocabulary`: tokens in id order as the UTF-8 bytes GGUF stores, optional
scores (float32, id order), optional merges as ``"left right"`` byte strings (GGUF's
merge encoding) and special-token ids under GGUF's names (``bos``, ``eos``,
``unknown``, ``padding``, ...). Summaries and fingerprints are computed from this record
only, so the same tokenizer hashes the same whatever it came from.

The token-list hash is SHA-256 over each token in id order encoded as a little-endian
u64 byte length followed by its bytes: exactly GGUF's storage of a string array, so for
a GGUF it is the hash of the stored bytes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from provenance.formats.base import Checkpoint
from provenance.formats.gguf_header import GGUFArray

MAX_VOCABULARY = 4_000_000
"""More tokens than any released tokenizer (the largest are ~260k) by an order of magnitude."""
MAX_MERGES = 8_000_000


@dataclass
class Vocabulary:
    tokens: list[bytes]
    model: str | None = None
    """``llama`` (SentencePiece), ``gpt2`` (byte-level BPE), ``bert`` (WordPiece), ...: GGUF's
    ``tokenizer.ggml.model`` or the tokenizer.json model type in lower case."""
    scores: np.ndarray | None = None
    """float32 in id order, when the tokenizer has scores (SentencePiece, GGUF ``llama``)."""
    merges: list[bytes] | None = None
    special_tokens: dict[str, int] = field(default_factory=dict)
    source: str = ""
    """Where the vocabulary was read from, in words."""
    origin: str = ""
    """The kind of source, one word: ``gguf``, ``tokenizer.json``, ``sentencepiece``, or a published format."""
    known_sha256: dict[str, str] = field(default_factory=dict, repr=False)
    """``tokens`` / ``merges`` list hashes already known (a GGUF's stored array bytes hash to them)."""
    known_merges_count: int | None = None
    """The number of merges when they are known by count and hash only (a GGUF's: the list
    itself, ~515k strings for a 262k vocabulary, is not materialised for identify)."""
    stored_tokens: GGUFArray | None = field(default=None, repr=False, compare=False)
    """A GGUF's token array as stored: its bytes are the token-list encoding, so a prefix's
    hash is one SHA-256 over a slice instead of re-encoding the tokens."""

    def __len__(self) -> int:
        return len(self.tokens)

    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tokens_sha256(self) -> str:
        if "tokens" not in self.known_sha256:  # computed once: identify asks for it per entry
            self.known_sha256["tokens"] = hashlib.sha256(self._token_list_bytes()).hexdigest()
        return self.known_sha256["tokens"]

    def prefix_sha256(self, n: int) -> str:
        """The token-list hash of the first ``n`` tokens (an exact "extends" test): one SHA-256
        over a prefix of the encoded list, the stored bytes when they are a GGUF's."""
        if n >= len(self.tokens):
            return self.tokens_sha256
        length = 8 * n + sum(map(len, self.tokens[:n]))  # u64 length + bytes per token
        stored = self.stored_tokens
        if stored is not None and not getattr(stored.buffer, "closed", False):  # not a map closed with its checkpoint
            return hashlib.sha256(stored.buffer[stored.offset : stored.offset + length]).hexdigest()
        return hashlib.sha256(memoryview(self._token_list_bytes())[:length]).hexdigest()

    def _token_list_bytes(self) -> bytes:
        """The tokens in GGUF's string-array encoding, built once (~4 MB for 262k tokens)."""
        if self._encoded is None:
            self._encoded = token_list_bytes(self.tokens)
        return self._encoded

    @property
    def merges_sha256(self) -> str | None:
        if "merges" not in self.known_sha256:
            if not self.merges:
                return None
            self.known_sha256["merges"] = token_list_sha256(self.merges)  # once: identify and the summary both ask
        return self.known_sha256["merges"]

    @property
    def merges_count(self) -> int | None:
        return len(self.merges) if self.merges is not None else self.known_merges_count


CHUNK = 1 << 16
"""Tokens laid out per numpy pass: bounds the index arrays (64 bytes a token) whatever the list's length."""


def string_array_layout(lengths: np.ndarray, body: bytes | np.ndarray) -> np.ndarray:
    """GGUF's string-array storage of strings given by their byte ``lengths`` (int64) and
    their bytes joined in order (``body``), placed by numpy: a record's length goes at its
    start, the body fills the rest in order (half the time of packing and joining 2 x 262k
    Python objects, docs/benchmarks.md)."""
    ends = np.cumsum(lengths + 8)
    out = np.empty(int(ends[-1]) if len(lengths) else 0, np.uint8)
    length_at = ((ends - lengths - 8)[:, None] + np.arange(8)).ravel()
    out[length_at] = lengths.astype("<u8").view(np.uint8)
    is_body = np.ones(len(out), bool)
    is_body[length_at] = False
    out[is_body] = np.frombuffer(body, np.uint8) if isinstance(body, bytes) else body
    return out


def string_array_chunk(tokens: list[bytes]) -> np.ndarray:
    """GGUF's string-array storage of ``tokens`` (u64 length + bytes, each)."""
    return string_array_layout(np.fromiter(map(len, tokens), np.int64, len(tokens)), b"".join(tokens))


def _chunks(tokens: Iterable[bytes | str]) -> Iterator[list[bytes]]:
    items = iter(tokens)
    while batch := list(islice(items, CHUNK)):
        if not set(map(type, batch)) <= {bytes}:
            batch = [t.encode("utf-8") if isinstance(t, str) else t for t in batch]
        yield batch


def token_list_bytes(tokens: Iterable[bytes | str]) -> bytes:
    """GGUF's string-array storage of ``tokens`` (u64 length + bytes, each)."""
    return b"".join(map(string_array_chunk, _chunks(tokens)))


def token_list_sha256(tokens: Iterable[bytes | str]) -> str:
    """SHA-256 of GGUF's string-array storage of ``tokens`` (u64 length + bytes, each), chunk by chunk."""
    digest = hashlib.sha256()
    for chunk in _chunks(tokens):
        digest.update(string_array_chunk(chunk))
    return digest.hexdigest()


def special_token_ids(metadata: Mapping[str, Any]) -> dict[str, int]:
    """GGUF ``tokenizer.ggml.<name>_token_id`` keys as ``{name: id}`` (bos, eos, unknown, ...)."""
    return {
        key.removeprefix("tokenizer.ggml.").removesuffix("_token_id"): value
        for key, value in metadata.items()
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id") and isinstance(value, int)
        and not isinstance(value, bool)
    }


def vocabulary_from_gguf_metadata(metadata: Mapping[str, Any], where: str = "gguf metadata") -> Vocabulary | None:
    """The vocabulary a GGUF header states, or None when it holds no token list.

    The header parser has already bounded every array; only element types are checked here.
    """
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, GGUFArray) or tokens.element_type.name != "STRING":
        return None
    scores = metadata.get("tokenizer.ggml.scores")
    merges = metadata.get("tokenizer.ggml.merges")
    model = metadata.get("tokenizer.ggml.model")
    merges_ok = isinstance(merges, GGUFArray) and merges.element_type.name == "STRING"
    known = {"tokens": tokens.sha256(), **({"merges": merges.sha256()} if merges_ok and len(merges) else {})}
    return Vocabulary(
        tokens=tokens.bytes_list(),
        model=model if isinstance(model, str) else None,
        scores=scores.to_numpy().astype("<f4") if isinstance(scores, GGUFArray) and scores.element_type.name == "FLOAT32"
        and len(scores) == len(tokens) else None,
        merges=None,  # by hash and count only (known_sha256, known_merges_count)
        special_tokens=special_token_ids(metadata),
        source=where,
        origin="gguf",
        known_sha256=known,
        known_merges_count=len(merges) if merges_ok else None,
        stored_tokens=tokens,
    )


def stored_token_list(checkpoint: Checkpoint) -> GGUFArray | None:
    """The GGUF string array :func:`checkpoint_vocabulary` would read its tokens from, unread
    (None when the checkpoint's vocabulary comes from anywhere else): two of them compare
    byte for byte without decoding 262k tokens into Python objects."""
    if isinstance(getattr(checkpoint, "vocabulary", None), Vocabulary):
        return None
    tokens = checkpoint.metadata.get("tokenizer.ggml.tokens")
    return tokens if isinstance(tokens, GGUFArray) and tokens.element_type.name == "STRING" else None


def checkpoint_vocabulary(checkpoint: Checkpoint) -> Vocabulary | None:
    """A checkpoint's own tokenizer: its GGUF metadata, the vocabulary a tokenizer-only
    reader parsed, or the tokenizer files beside an HF model (``tokenizer.json``, else
    ``tokenizer.model``). None when it has none."""
    from provenance.formats.tokenizer_files import find_tokenizer_files, read_tokenizer_files

    held = getattr(checkpoint, "vocabulary", None)
    if isinstance(held, Vocabulary):
        return held
    vocab = vocabulary_from_gguf_metadata(checkpoint.metadata)
    if vocab is not None:
        return vocab
    if not str(checkpoint.format).startswith(("hf", "safetensors")):
        return None
    directory = checkpoint.path if os.path.isdir(checkpoint.path) else os.path.dirname(os.path.abspath(checkpoint.path))
    files = find_tokenizer_files(directory)
    return read_tokenizer_files(files) if files.has_vocabulary else None
