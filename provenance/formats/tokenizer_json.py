"""Hugging Face ``tokenizer.json`` (and ``tokenizer_config.json``) as a :class:`Vocabulary`.

The file is hostile until validated: its size is capped before it is read, the JSON is
parsed strictly (duplicate keys and NaN refused), and every value used is type- and
range-checked: ids are non-negative integers, unique, and no further beyond the number
of entries than a small gap allows (so a lying id cannot size an allocation); merges are
strings or string pairs. A failure raises one :class:`MalformedCheckpoint` naming the
file, the JSON field and, where the raw bytes show it, the offset of the key at fault.

Ids that no entry claims (rare: a gap before added tokens) are filled with ``[PAD<id>]``,
as llama.cpp's converter does, so the list hashes like the GGUF made from it.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from provenance.errors import LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.jsonsafe import finite_number, loads_strict
from provenance.formats.vocabulary import MAX_MERGES, MAX_VOCABULARY, Vocabulary

MAX_TOKENIZER_JSON_BYTES = 256 * 1024 * 1024
"""The largest released tokenizer.json files are ~35 MB (Gemma 3); 256 MiB bounds the parse."""
MAX_CONFIG_JSON_BYTES = 16 * 1024 * 1024
MAX_ID_GAP = 65536
"""How far past its entry count a vocabulary's largest id may lie (filled with [PAD<id>])."""
MAX_TOKEN_BYTES = 65536
MODEL_TYPES = {"BPE": "bpe", "WordPiece": "wordpiece", "WordLevel": "wordlevel", "Unigram": "unigram"}
HF_SPECIAL_NAMES = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding",
                    "sep_token": "seperator", "cls_token": "cls", "mask_token": "mask"}
"""tokenizer_config.json / special_tokens_map.json names -> GGUF's ``tokenizer.ggml.<name>_token_id``
names (llama.cpp spells ``seperator`` so)."""


class _Where:
    """The file under validation and its raw bytes, to turn a JSON path into an offset."""

    def __init__(self, path: str, raw: bytes) -> None:
        self.path, self.raw = path, raw

    def fail(self, field: str, message: str, key: str | None = None) -> MalformedCheckpoint:
        offset = None
        if key is not None:  # the first occurrence of the key as JSON text: where to look with a hex editor
            at = self.raw.find(json.dumps(key).encode("utf-8"))
            offset = at if at >= 0 else None
        return MalformedCheckpoint(self.path, message, field=field, offset=offset)


def read_capped(path: str, field: str, cap: int) -> bytes:
    """A file's bytes, refused before reading when it is larger than ``cap``."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > cap:
            raise LimitExceeded(path, f"file is larger than the {cap}-byte cap", field=field, offset=0)
        return handle.read(size)


def _token(where: _Where, value: Any, field: str, key: str | None = None) -> bytes:
    if not isinstance(value, str):
        raise where.fail(field, f"expected a string, found {type(value).__name__}", key)
    data = value.encode("utf-8", errors="surrogatepass")
    if len(data) > MAX_TOKEN_BYTES:
        raise where.fail(field, f"token of {len(data)} bytes exceeds the cap of {MAX_TOKEN_BYTES}", key)
    return data


def _id(where: _Where, value: Any, field: str, key: str | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise where.fail(field, f"token id must be a non-negative integer, found {value!r:.40}", key)
    return value


def _by_id_from_mapping(where: _Where, vocab: dict[str, Any]) -> dict[int, bytes]:
    by_id: dict[int, bytes] = {}
    for text, value in vocab.items():
        token_id = _id(where, value, "model.vocab", text)
        if token_id in by_id:
            raise where.fail("model.vocab", f"id {token_id} is given to two tokens", text)
        by_id[token_id] = _token(where, text, "model.vocab", text)
    return by_id


def _unigram(where: _Where, vocab: list[Any]) -> tuple[dict[int, bytes], np.ndarray]:
    by_id: dict[int, bytes] = {}
    scores = np.zeros(len(vocab), "<f4")
    for i, entry in enumerate(vocab):
        if not (isinstance(entry, list) and len(entry) == 2 and finite_number(entry[1])):
            raise where.fail(f"model.vocab[{i}]", "expected [token, score]")
        by_id[i] = _token(where, entry[0], f"model.vocab[{i}]")
        scores[i] = float(entry[1])
    return by_id, scores


def _merges(where: _Where, merges: Any) -> list[bytes] | None:
    if merges is None:
        return None
    if not isinstance(merges, list):
        raise where.fail("model.merges", f"expected a list, found {type(merges).__name__}", "merges")
    if len(merges) > MAX_MERGES:
        raise where.fail("model.merges", f"{len(merges)} merges exceed the cap of {MAX_MERGES}", "merges")
    # Fast paths for the two well-formed shapes (a 262k vocabulary has ~515k merges); any other
    # content falls through to the item-by-item loop, which names the bad item.
    if all(type(m) is str for m in merges):
        fast = [m.encode("utf-8", errors="surrogatepass") for m in merges]
    elif all(type(m) is list and len(m) == 2 and type(m[0]) is str and type(m[1]) is str for m in merges):
        fast = [f"{a} {b}".encode("utf-8", errors="surrogatepass") for a, b in merges]
    else:
        fast = None
    if fast is not None and max(map(len, fast), default=0) <= 2 * MAX_TOKEN_BYTES + 1:
        return fast
    out = []
    for i, merge in enumerate(merges):
        if isinstance(merge, str):
            out.append(_token(where, merge, f"model.merges[{i}]"))
        elif isinstance(merge, list) and len(merge) == 2:  # the newer [left, right] form
            out.append(_token(where, merge[0], f"model.merges[{i}]") + b" " + _token(where, merge[1], f"model.merges[{i}]"))
        else:
            raise where.fail(f"model.merges[{i}]", "expected \"left right\" or [left, right]", "merges")
    return out


def _added(where: _Where, data: dict[str, Any], by_id: dict[int, bytes]) -> None:
    """Merge ``added_tokens`` into ``by_id`` (an added token may restate a vocabulary entry, not replace it)."""
    added = data.get("added_tokens") or []
    if not isinstance(added, list):
        raise where.fail("added_tokens", "expected a list", "added_tokens")
    for i, item in enumerate(added):
        if not isinstance(item, dict):
            raise where.fail(f"added_tokens[{i}]", "expected an object", "added_tokens")
        token_id = _id(where, item.get("id"), f"added_tokens[{i}].id", "added_tokens")
        content = _token(where, item.get("content"), f"added_tokens[{i}].content", "added_tokens")
        if by_id.get(token_id, content) != content:
            raise where.fail(f"added_tokens[{i}]", f"id {token_id} is already the token {by_id[token_id][:40]!r}",
                             "added_tokens")
        by_id[token_id] = content


def _dense(where: _Where, by_id: dict[int, bytes]) -> list[bytes]:
    if not by_id:
        return []
    top = max(by_id)
    if top >= len(by_id) + MAX_ID_GAP or top >= MAX_VOCABULARY:
        raise where.fail("model.vocab", f"largest id {top} lies far beyond the {len(by_id)} tokens", "vocab")
    return [by_id.get(i, f"[PAD{i}]".encode()) for i in range(top + 1)]


def read_tokenizer_json(path: str) -> Vocabulary:
    """The vocabulary of a ``tokenizer.json``: model vocabulary and added tokens, merges, scores."""
    return parse_tokenizer_json(read_capped(path, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES), path)


def parse_tokenizer_json(raw: bytes, path: str) -> Vocabulary:
    """:func:`read_tokenizer_json` on bytes already read (``path`` names them in errors)."""
    if len(raw) > MAX_TOKENIZER_JSON_BYTES:
        raise LimitExceeded(path, f"more than the {MAX_TOKENIZER_JSON_BYTES}-byte cap", field="tokenizer.json", offset=0)
    data = loads_strict(raw, path, "tokenizer.json")
    where = _Where(path, raw)
    if not isinstance(data, dict):
        raise where.fail("tokenizer.json", "expected a JSON object")
    model = data.get("model")
    if not isinstance(model, dict):
        raise where.fail("model", "expected an object", "model")
    kind = model.get("type")
    if kind is None and "merges" in model:
        kind = "BPE"  # older files omit the type of a BPE model
    if kind not in MODEL_TYPES:
        raise UnsupportedCheckpoint(path, f"tokenizer model type {str(kind)[:40]!r} is not one of {sorted(MODEL_TYPES)}",
                                    field="model.type")
    vocab = model.get("vocab")
    scores = None
    if kind == "Unigram":
        if not isinstance(vocab, list):
            raise where.fail("model.vocab", "a Unigram vocabulary must be a list of [token, score]", "vocab")
        if len(vocab) > MAX_VOCABULARY:
            raise where.fail("model.vocab", f"{len(vocab)} tokens exceed the cap of {MAX_VOCABULARY}", "vocab")
        by_id, scores = _unigram(where, vocab)
    else:
        if not isinstance(vocab, dict):
            raise where.fail("model.vocab", f"a {kind} vocabulary must be an object token -> id", "vocab")
        if len(vocab) > MAX_VOCABULARY:
            raise where.fail("model.vocab", f"{len(vocab)} tokens exceed the cap of {MAX_VOCABULARY}", "vocab")
        by_id = _by_id_from_mapping(where, vocab)
    merges = _merges(where, model.get("merges")) if kind == "BPE" else None
    _added(where, data, by_id)
    tokens = _dense(where, by_id)
    if scores is not None and len(scores) != len(tokens):
        scores = None  # added tokens beyond the Unigram list carry no score
    special: dict[str, int] = {}
    unk = model.get("unk_token") if kind != "Unigram" else None
    if isinstance(unk, str):
        unk_id = next((i for i, t in by_id.items() if t == unk.encode("utf-8", errors="surrogatepass")), None)
        if unk_id is not None:
            special["unknown"] = unk_id
    elif kind == "Unigram" and isinstance(model.get("unk_id"), int) and 0 <= model["unk_id"] < len(tokens):
        special["unknown"] = int(model["unk_id"])
    return Vocabulary(tokens=tokens, model=MODEL_TYPES[kind], scores=scores, merges=merges,
                      special_tokens=special, source=f"tokenizer.json ({os.path.basename(path)})",
                      origin="tokenizer.json")


def special_tokens_from_config(path: str, tokens: list[bytes]) -> dict[str, int]:
    """``{GGUF name: id}`` for the special tokens a ``tokenizer_config.json`` or
    ``special_tokens_map.json`` names (``"bos_token": "<s>"`` or ``{"content": "<s>", ...}``),
    resolved against the token list. Names whose token is not in the list are left out."""
    return parse_special_tokens_config(read_capped(path, os.path.basename(path), MAX_CONFIG_JSON_BYTES), path, tokens)


def parse_special_tokens_config(raw: bytes, path: str, tokens: list[bytes]) -> dict[str, int]:
    """:func:`special_tokens_from_config` on bytes already read."""
    if len(raw) > MAX_CONFIG_JSON_BYTES:
        raise LimitExceeded(path, f"more than the {MAX_CONFIG_JSON_BYTES}-byte cap", field="config", offset=0)
    data = loads_strict(raw, path, os.path.basename(path))
    where = _Where(path, raw)
    if not isinstance(data, dict):
        raise where.fail(os.path.basename(path), "expected a JSON object")
    wanted: dict[str, bytes] = {}
    for hf_name, name in HF_SPECIAL_NAMES.items():
        value = data.get(hf_name)
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            continue
        wanted[name] = _token(where, value, hf_name, hf_name)
    if not wanted:
        return {}
    index: dict[bytes, int] = {}
    for i, token in enumerate(tokens):
        index.setdefault(token, i)
    return {name: index[token] for name, token in wanted.items() if token in index}
