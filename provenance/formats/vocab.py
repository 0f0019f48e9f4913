"""The tokenizer vocabulary a checkpoint carries, as the reader finds it.

Two sources, one small interface (:class:`StoredVocabulary`): a GGUF's
``tokenizer.ggml.*`` metadata arrays (validated at open time, items read only when asked:
a 150k-token list costs nothing until then) and an HF ``tokenizer.json`` beside the
weights (read only when asked, size-capped, strict JSON). Tokens come out as the bytes
GGUF stores (UTF-8), in id order. What a vocabulary *means* (fingerprints, lineage) is
the business of :mod:`provenance.tokenizer` and :mod:`provenance.refdb.tokens`, above.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np

from provenance.errors import LimitExceeded, MalformedCheckpoint
from provenance.formats.gguf_header import GGUFArray, ValueType
from provenance.formats.jsonsafe import read_json_file

MAX_TOKENIZER_JSON_BYTES = 64 * 1024 * 1024
MAX_TOKEN_ID = 1 << 24
"""Far above any real vocabulary (~256k); ids beyond it are refused, not allocated for."""


class StoredVocabulary(ABC):
    """Tokens (id order), and where the tokenizer has them, scores, merges and special ids."""

    source: str = ""
    """``gguf metadata`` or ``tokenizer.json``."""

    def __init__(self, path: str) -> None:
        self.path = path
        """The file the vocabulary is read from."""

    @property
    @abstractmethod
    def model(self) -> str | None:
        """Tokenizer model type (``llama``, ``gpt2``, ``bpe``, ``unigram``...), as stored."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def tokens(self) -> list[bytes]:
        """Every token's UTF-8 bytes, in id order."""

    @abstractmethod
    def scores(self) -> np.ndarray | None:
        """float32 scores in id order (SentencePiece / unigram vocabularies), or None."""

    @abstractmethod
    def merges(self) -> list[bytes] | None:
        """BPE merges as ``b"left right"`` (GGUF's encoding), or None."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """``{name: id}`` of the special tokens the file declares (``bos``, ``eos``, ...)."""


class GGUFVocabulary(StoredVocabulary):
    """``tokenizer.ggml.*`` of a GGUF's metadata; arrays stay lazy until asked for."""

    source = "gguf metadata"

    def __init__(self, path: str, metadata: Mapping[str, Any]) -> None:
        super().__init__(path)
        self._metadata = metadata

    def array(self, key: str, element_type: ValueType) -> GGUFArray | None:
        """The lazy ``tokenizer.ggml.<key>`` array, if it is stored with that element type
        (its raw bytes and hash are available without reading the items)."""
        value = self._metadata.get(f"tokenizer.ggml.{key}")
        return value if isinstance(value, GGUFArray) and value.element_type == element_type else None

    @property
    def present(self) -> bool:
        return self.array("tokens", ValueType.STRING) is not None

    @property
    def model(self) -> str | None:
        model = self._metadata.get("tokenizer.ggml.model")
        return model if isinstance(model, str) else None

    def __len__(self) -> int:
        tokens = self.array("tokens", ValueType.STRING)
        return len(tokens) if tokens is not None else 0

    def tokens(self) -> list[bytes]:
        tokens = self.array("tokens", ValueType.STRING)
        return list(tokens.iter_bytes()) if tokens is not None else []

    def scores(self) -> np.ndarray | None:
        scores = self.array("scores", ValueType.FLOAT32)
        return scores.to_numpy().astype(np.float32) if scores is not None else None

    def merges(self) -> list[bytes] | None:
        merges = self.array("merges", ValueType.STRING)
        return list(merges.iter_bytes()) if merges is not None else None

    def token_types(self) -> np.ndarray | None:
        """llama.cpp's per-token type codes (normal, control, byte, ...), int32, or None."""
        types = self.array("token_type", ValueType.INT32)
        return types.to_numpy() if types is not None else None

    @property
    def special_tokens(self) -> dict[str, int]:
        prefix, suffix = "tokenizer.ggml.", "_token_id"
        return {
            key.removeprefix(prefix).removesuffix(suffix): value
            for key, value in self._metadata.items()
            if key.startswith(prefix) and key.endswith(suffix) and isinstance(value, int) and not isinstance(value, bool)
        }


class TokenizerJsonVocabulary(StoredVocabulary):
    """An HF ``tokenizer.json`` (BPE / WordPiece ``vocab`` maps, unigram ``[token, score]``
    lists, ``added_tokens``), parsed on first use. Special ids come from ``config.json``."""

    source = "tokenizer.json"

    def __init__(self, path: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(path)
        self._config = config or {}

    @cached_property
    def _parsed(self) -> tuple[dict[str, Any], list[bytes], np.ndarray | None]:
        data = read_json_file(self.path, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES)
        if not isinstance(data, dict):
            raise MalformedCheckpoint(self.path, "tokenizer.json is not a JSON object", field="tokenizer.json", offset=0)
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        vocab = model.get("vocab")
        by_id: dict[int, str] = {}
        scores: dict[int, float] = {}
        if isinstance(vocab, dict):  # BPE / WordPiece: token -> id
            for token, index in vocab.items():
                if isinstance(token, str) and self._valid_id(index, "model.vocab"):
                    by_id.setdefault(index, token)
        elif isinstance(vocab, list):  # unigram: [[token, score], ...] in id order
            for index, entry in enumerate(vocab):
                if isinstance(entry, list) and entry and isinstance(entry[0], str):
                    by_id[index] = entry[0]
                    if len(entry) > 1 and isinstance(entry[1], (int, float)) and not isinstance(entry[1], bool):
                        scores[index] = float(entry[1])
        for added in data.get("added_tokens") or []:
            if isinstance(added, dict) and isinstance(added.get("content"), str) and self._valid_id(added.get("id"), "added_tokens"):
                by_id.setdefault(added["id"], added["content"])
        ids = sorted(by_id)
        tokens = [by_id[i].encode("utf-8", errors="surrogatepass") for i in ids]
        score_array = np.array([scores.get(i, 0.0) for i in ids], np.float32) if scores else None
        return model, tokens, score_array

    def _valid_id(self, index: Any, field: str) -> bool:
        if not isinstance(index, int) or isinstance(index, bool):
            return False
        if not 0 <= index < MAX_TOKEN_ID:
            raise LimitExceeded(self.path, f"token id {index} is outside 0..{MAX_TOKEN_ID}", field=field)
        return True

    @property
    def model(self) -> str | None:
        kind = self._parsed[0].get("type")
        return kind.lower() if isinstance(kind, str) else None

    def __len__(self) -> int:
        return len(self._parsed[1])

    def tokens(self) -> list[bytes]:
        return list(self._parsed[1])

    def scores(self) -> np.ndarray | None:
        scores = self._parsed[2]
        return None if scores is None else scores.copy()

    def merges(self) -> list[bytes] | None:
        merges = self._parsed[0].get("merges")
        if not isinstance(merges, list):
            return None
        # Older files store "left right" strings, newer ones [left, right] pairs.
        joined = (m if isinstance(m, str) else " ".join(str(part) for part in m) for m in merges if isinstance(m, (str, list)))
        return [m.encode("utf-8", errors="surrogatepass") for m in joined]

    @property
    def special_tokens(self) -> dict[str, int]:
        names = {"bos_token_id": "bos", "eos_token_id": "eos", "pad_token_id": "padding", "unk_token_id": "unknown"}
        return {name: self._config[key] for key, name in names.items()
                if isinstance(self._config.get(key), int) and not isinstance(self._config.get(key), bool)}


def tokenizer_json_beside(path: str, config: Mapping[str, Any] | None = None) -> TokenizerJsonVocabulary | None:
    """The ``tokenizer.json`` in the model directory ``path`` (or beside the file ``path``)."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(directory, "tokenizer.json")
    return TokenizerJsonVocabulary(candidate, config) if os.path.isfile(candidate) else None
