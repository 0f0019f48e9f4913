"""Hugging Face ``tokenizer.json`` (and ``tokenizer_config.json``) as a :class:`Vocabulary`.

The file is hostile until validated: its size is capped before it is read, the JSON is
parsed strictly (duplicate keys and NaN refused), and checked against its schema
(:data:`provenance.formats.documents.TOKENIZER_JSON`: ids are non-negative integers under the
vocabulary cap, tokens strings of bounded length; the merges, strings or string pairs, against
:data:`~provenance.formats.documents.TOKENIZER_MERGES` in the pass that hashes them); here only
what a schema cannot say: ids are unique, and no further beyond the number of entries than
a small gap allows (so a lying id cannot size an allocation). A failure raises one :class:`MalformedCheckpoint` naming the
file, the JSON field and, where the raw bytes show it, the offset of the key at fault.

Ids that no entry claims (rare: a gap before added tokens) are filled with ``[PAD<id>]``,
as llama.cpp's converter does, so the list hashes like the GGUF made from it.
"""
from __future__ import annotations

import hashlib
import os
from itertools import chain
from operator import methodcaller
from typing import Any

import numpy as np

from provenance.errors import LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.documents import (
    MAX_MERGE_BYTES,
    MAX_TOKEN_BYTES,
    TOKENIZER_CONFIG,
    TOKENIZER_CONFIG_FIELDS,
    TOKENIZER_JSON,
    TOKENIZER_MERGES,
)
from provenance.formats.files import read_capped
from provenance.formats.jsonsafe import collector_paused
from provenance.formats.schema import field_path, key_offset, parse_document, validate
from provenance.formats.vocabulary import CHUNK, Vocabulary, string_array_chunk, string_array_layout

MAX_TOKENIZER_JSON_BYTES = 256 * 1024 * 1024
"""The largest released tokenizer.json files are ~35 MB (Gemma 3); 256 MiB bounds the parse."""
MAX_CONFIG_JSON_BYTES = 16 * 1024 * 1024
MAX_ID_GAP = 65536
"""How far past its entry count a vocabulary's largest id may lie (filled with [PAD<id>])."""
MODEL_TYPES = {"BPE": "bpe", "WordPiece": "wordpiece", "WordLevel": "wordlevel", "Unigram": "unigram"}
HF_SPECIAL_NAMES = dict(zip(TOKENIZER_CONFIG_FIELDS, ("bos", "eos", "unknown", "padding", "seperator", "cls", "mask"), strict=True))
"""tokenizer_config.json / special_tokens_map.json names -> GGUF's ``tokenizer.ggml.<name>_token_id``
names (llama.cpp spells ``seperator`` so)."""


def _encode(token: str) -> bytes:
    return token.encode("utf-8", errors="surrogatepass")


def _fail(path: str, raw: bytes, where: tuple[str | int, ...], message: str, key: str | None = None) -> MalformedCheckpoint:
    """A semantic error (the types are the schema's) at the JSON field ``where`` (offset: of
    ``key`` where given, e.g. the token at fault)."""
    return MalformedCheckpoint(path, message, field=field_path(where), offset=key_offset(raw, (*where, key) if key else where))


_ENCODE = methodcaller("encode", "utf-8", "surrogatepass")
""":func:`_encode` for ``map``."""


def _encode_all(texts: list[str]) -> list[bytes]:
    """:func:`_encode` of each text by C loops (the 262k tokens and 515k merges of a large
    vocabulary): strict UTF-8 first, twice as fast as the error handler's path and the same
    bytes for every text without a lone surrogate; the handler only when one has one (JSON
    allows ``"\\ud800"``)."""
    try:
        return list(map(str.encode, texts))
    except UnicodeEncodeError:
        return list(map(_ENCODE, texts))


def _tokens_from_mapping(path: str, raw: bytes, vocab: dict[str, int]) -> tuple[list[bytes], dict[int, bytes]]:
    """``(in_order, by_id)``: the tokens of ids ``0..n-1`` when the vocabulary lists exactly
    those in that order (the usual file: one C comparison, no 262k-entry index), else none in
    order and every token by its id."""
    ids = list(vocab.values())  # integers (the schema checked their types and range)
    texts = _encode_all(list(vocab))
    if ids == list(range(len(ids))):
        return texts, {}
    by_id = dict(zip(ids, texts, strict=True))
    if len(by_id) != len(vocab):
        seen: set[int] = set()
        for text, token_id in vocab.items():
            if token_id in seen:
                raise _fail(path, raw, ("model", "vocab"), f"id {token_id} is given to two tokens", text)
            seen.add(token_id)
    return [], by_id


def _merges(merges: list[str | list[str]] | None) -> list[bytes] | None:
    if merges is None:
        return None
    if set(map(type, merges)) <= {list}:  # checked (TOKENIZER_MERGES): each a [left, right] pair of strings
        return _encode_all(list(map(" ".join, merges)))  # type: ignore[arg-type]
    return [_encode(m) if type(m) is str else _encode(f"{m[0]} {m[1]}") for m in merges]


def _encode_text(text: str) -> bytes:
    """:func:`_encode` of one long text: strict UTF-8 first (the common case, twice as fast)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _encode(text)


def _check_merges(path: str, raw: bytes, merges: list[Any]) -> None:
    """Every merge against :data:`TOKENIZER_MERGES` (the first bad one named, as the schema names fields)."""
    validate(merges, TOKENIZER_MERGES, path, "tokenizer.json", raw=raw, where=("model", "merges"))


def _checked_merges_sha256(path: str, raw: bytes, merges: list[Any]) -> str:
    """The merges checked against :data:`TOKENIZER_MERGES` and hashed as their list
    (:func:`provenance.formats.vocabulary.token_list_sha256` of each ``"left right"`` in
    UTF-8) in one pass, with no Python object made per merge (515k of them for a 262k
    vocabulary): a chunk's merges are joined into one text, encoded once, and cut into
    records at their separators by numpy, which also gives every string's length. A chunk
    the pass cannot vouch for (a bad item, a space inside a pair's token) is checked by the
    spec itself, which names the bad item, then laid out one merge at a time."""
    digest = hashlib.sha256()
    checked = False
    for start in range(0, len(merges), CHUNK):
        chunk = merges[start : start + CHUNK]
        storage = _merges_chunk_storage(chunk)
        if storage is None:
            if not checked:
                _check_merges(path, raw, merges)
                checked = True
            storage = string_array_chunk(_merges(chunk) or [])
        digest.update(storage)
    return digest.hexdigest()


def _merges_chunk_storage(chunk: list[Any]) -> np.ndarray | None:
    """GGUF's string-array storage of one chunk of merges, or None where some item is not
    shown valid (see :func:`_checked_merges_sha256`)."""
    try:
        # [left, right] pairs joined "l0 r0 l1 r1 ...", or "left right" strings joined "m0\nm1\n...":
        # list.__len__ refuses an item that is not a list, str.join one that is not a string
        if type(chunk[0]) is list and set(map(list.__len__, chunk)) == {2}:
            text, separator, per_merge, cap = " ".join(chain.from_iterable(chunk)), " ", 2, MAX_TOKEN_BYTES
        else:
            text, separator, per_merge, cap = "\n".join(chunk), "\n", 1, MAX_MERGE_BYTES
    except TypeError:  # an item of another kind: mixed forms, a number, a pair holding a number
        return None
    data = np.frombuffer(_encode_text(text), np.uint8)
    cuts = np.flatnonzero(data == ord(separator))
    if len(cuts) != per_merge * len(chunk) - 1:  # a separator inside some string: they cannot be cut apart
        return None
    if int((np.diff(cuts, prepend=-1, append=len(data)) - 1).max()) > cap:  # a string's UTF-8 bytes
        return None
    ends = cuts[per_merge - 1 :: per_merge]  # a pair's first space stays: it is the merge's own "left right"
    return string_array_layout(np.diff(ends, prepend=-1, append=len(data)) - 1, np.delete(data, ends))


def _added(path: str, raw: bytes, added: list[dict[str, Any]] | None, in_order: list[bytes],
           by_id: dict[int, bytes]) -> None:
    """Merge ``added_tokens`` into the tokens (``in_order``: ids ``0..n-1``; ``by_id``: the
    others): an added token may restate a vocabulary entry, not replace it."""
    n = len(in_order)
    for i, item in enumerate(added or ()):
        token_id, content = item["id"], _encode(item["content"])
        held = in_order[token_id] if token_id < n else by_id.get(token_id, content)
        if held != content:
            raise _fail(path, raw, ("added_tokens", i), f"id {token_id} is already the token {held[:40]!r}")
        if token_id >= n:
            by_id[token_id] = content


def _dense(path: str, raw: bytes, in_order: list[bytes], by_id: dict[int, bytes]) -> list[bytes]:
    """Every token in id order: ``in_order``, then ``by_id``'s from the next id on."""
    if not by_id:
        return in_order
    start, count, top = len(in_order), len(in_order) + len(by_id), max(by_id)
    if top >= count + MAX_ID_GAP:
        raise _fail(path, raw, ("model", "vocab"), f"largest id {top} lies far beyond the {count} tokens")
    for i in range(start, top + 1) if count <= top else ():  # a gap (rare): fill it first
        by_id.setdefault(i, f"[PAD{i}]".encode())
    in_order.extend(map(by_id.__getitem__, range(start, top + 1)))  # a C loop over 262k ids
    return in_order


def read_tokenizer_json(path: str, *, keep_merges: bool = True) -> Vocabulary:
    """The vocabulary of a ``tokenizer.json``: model vocabulary and added tokens, merges, scores.

    ``keep_merges=False``: the merges by count and hash only (``known_merges_count``,
    ``known_sha256``), as a GGUF's are read, which is all a summary or a fingerprint uses;
    the list itself (515k byte strings for a 262k vocabulary) is not made."""
    return parse_tokenizer_json(read_capped(path, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES), path,
                                keep_merges=keep_merges)


def parse_tokenizer_json(raw: bytes, path: str, *, keep_merges: bool = True) -> Vocabulary:
    """:func:`read_tokenizer_json` on bytes already read (``path`` names them in errors)."""
    with collector_paused():  # ~1.3M containers parsed and reduced, no cycles among them
        return _parse_tokenizer_json(raw, path, keep_merges)


def _parse_tokenizer_json(raw: bytes, path: str, keep_merges: bool) -> Vocabulary:
    if len(raw) > MAX_TOKENIZER_JSON_BYTES:
        raise LimitExceeded(path, f"more than the {MAX_TOKENIZER_JSON_BYTES}-byte cap", field="tokenizer.json", offset=0)
    data = parse_document(raw, TOKENIZER_JSON, path, "tokenizer.json")
    model = data["model"]
    kind = model.get("type")
    if kind is None and "merges" in model:
        kind = "BPE"  # older files omit the type of a BPE model
    listed = model.get("merges")
    merges, known = None, {}
    if listed is not None and (keep_merges or kind != "BPE"):
        _check_merges(path, raw, listed)
        merges = _merges(listed) if kind == "BPE" else None
    elif listed:
        known = {"merges": _checked_merges_sha256(path, raw, listed)}
    if kind not in MODEL_TYPES:
        raise UnsupportedCheckpoint(path, f"tokenizer model type {str(kind)[:40]!r} is not one of {sorted(MODEL_TYPES)}",
                                    field="model.type")
    vocab = model["vocab"]
    scores = None
    if kind == "Unigram":
        if not isinstance(vocab, list):
            raise _fail(path, raw, ("model", "vocab"), "a Unigram vocabulary must be a list of [token, score]")
        in_order, by_id = [_encode(token) for token, _ in vocab], {}
        scores = np.array([score for _, score in vocab], "<f4")
    else:
        if not isinstance(vocab, dict):
            raise _fail(path, raw, ("model", "vocab"), f"a {kind} vocabulary must be an object token -> id")
        in_order, by_id = _tokens_from_mapping(path, raw, vocab)
    _added(path, raw, data.get("added_tokens"), in_order, by_id)
    tokens = _dense(path, raw, in_order, by_id)
    if scores is not None and len(scores) != len(tokens):
        scores = None  # added tokens beyond the Unigram list carry no score
    special: dict[str, int] = {}
    unk = model.get("unk_token") if kind != "Unigram" else None
    if isinstance(unk, str):
        # The first id holding it in by_id's order: the vocabulary's own entry, else an added one's.
        unk_id = vocab.get(unk)  # a dict here: Unigram lists were handled above
        if unk_id is None:
            unk_id = next((item["id"] for item in data.get("added_tokens") or () if item["content"] == unk), None)
        if unk_id is not None:
            special["unknown"] = unk_id
    elif kind == "Unigram" and model.get("unk_id") is not None and model["unk_id"] < len(tokens):
        special["unknown"] = int(model["unk_id"])
    return Vocabulary(tokens=tokens, model=MODEL_TYPES[kind], scores=scores, merges=merges,
                      special_tokens=special, source=f"tokenizer.json ({os.path.basename(path)})",
                      origin="tokenizer.json", known_sha256=known,
                      known_merges_count=len(listed) if merges is None and listed is not None and kind == "BPE" else None)


def special_tokens_from_config(path: str, tokens: list[bytes]) -> dict[str, int]:
    """``{GGUF name: id}`` for the special tokens a ``tokenizer_config.json`` or
    ``special_tokens_map.json`` names (``"bos_token": "<s>"`` or ``{"content": "<s>", ...}``),
    resolved against the token list. Names whose token is not in the list are left out."""
    return parse_special_tokens_config(read_capped(path, os.path.basename(path), MAX_CONFIG_JSON_BYTES), path, tokens)


def parse_special_tokens_config(raw: bytes, path: str, tokens: list[bytes]) -> dict[str, int]:
    """:func:`special_tokens_from_config` on bytes already read."""
    if len(raw) > MAX_CONFIG_JSON_BYTES:
        raise LimitExceeded(path, f"more than the {MAX_CONFIG_JSON_BYTES}-byte cap", field="config", offset=0)
    data = parse_document(raw, TOKENIZER_CONFIG, path, os.path.basename(path))
    wanted: dict[str, bytes] = {}
    for hf_name, name in HF_SPECIAL_NAMES.items():
        value = data.get(hf_name)
        if isinstance(value, dict):
            value = value["content"]
        if value is not None:
            wanted[name] = _encode(value)
    if not wanted:
        return {}
    # Each named token's lowest id: a C scan of the list per name (at most seven), not a
    # 262k-entry index built to look up seven tokens.
    found: dict[str, int] = {}
    for name, token in wanted.items():
        try:
            found[name] = tokens.index(token)
        except ValueError:
            continue
    return found
