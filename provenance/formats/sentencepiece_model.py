"""A SentencePiece ``tokenizer.model`` (protobuf ``ModelProto``) read with a bounded decoder.

Only what a vocabulary needs is decoded: each piece's string, score and type
(``ModelProto.pieces``, field 1) and the special ids and model type of the trainer spec
(``ModelProto.trainer_spec``, field 2). Every other field is skipped by its wire type.
Nothing trusts a size: each varint is at most 10 bytes, each length is checked against
the bytes that remain in its enclosing message before it is used, a piece string is
capped, groups (wire types 3 and 4, deprecated) are refused, and messages nest two deep
at most. A failure names the file, the field path and the byte offset.

Field numbers are those of sentencepiece's ``sentencepiece_model.proto``.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from provenance.errors import LimitExceeded, MalformedCheckpoint
from provenance.formats.files import read_capped
from provenance.formats.vocabulary import MAX_VOCABULARY, Vocabulary

MAX_MODEL_BYTES = 256 * 1024 * 1024
MAX_PIECE_BYTES = 65536
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused", 6: "byte"}
_TRAINER_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
_TRAINER_IDS = {40: "unknown", 41: "bos", 42: "eos", 43: "padding"}
_TRAINER_DEFAULTS = {"unknown": 0, "bos": 1, "eos": 2, "padding": -1}
"""The proto's declared defaults, which apply when the field is absent."""


class _Reader:
    """Protobuf wire-format reader over ``data[pos:end]``."""

    def __init__(self, data: bytes, path: str, pos: int = 0, end: int | None = None) -> None:
        self.data, self.path, self.pos = data, path, pos
        self.end = len(data) if end is None else end

    def fail(self, field: str, message: str, at: int | None = None) -> MalformedCheckpoint:
        return MalformedCheckpoint(self.path, message, field=field, offset=self.pos if at is None else at)

    def varint(self, field: str) -> int:
        at, value, shift = self.pos, 0, 0
        for _ in range(10):
            if self.pos >= self.end:
                raise self.fail(field, "truncated varint", at)
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise self.fail(field, "varint longer than 10 bytes", at)

    def key(self, field: str) -> tuple[int, int]:
        key = self.varint(field)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise self.fail(field, "field number 0", self.pos - 1)
        return number, wire

    def length(self, field: str) -> int:
        at = self.pos
        n = self.varint(field)
        if n > self.end - self.pos:
            raise self.fail(field, f"length {n} exceeds the {self.end - self.pos} bytes left in its message", at)
        return n

    def skip(self, wire: int, field: str) -> None:
        if wire == _VARINT:
            self.varint(field)
        elif wire in (_FIXED64, _FIXED32):
            n = 8 if wire == _FIXED64 else 4
            if n > self.end - self.pos:
                raise self.fail(field, "truncated fixed-width value")
            self.pos += n
        elif wire == _LEN:
            n = self.length(field)  # read first: `self.pos += self.length()` would add to the old position
            self.pos += n
        else:
            raise self.fail(field, f"unsupported wire type {wire}")

    def float32(self, field: str) -> float:
        if self.end - self.pos < 4:
            raise self.fail(field, "truncated float")
        (value,) = struct.unpack_from("<f", self.data, self.pos)
        self.pos += 4
        return value


def _piece(reader: _Reader, end: int, index: int) -> tuple[bytes, float, int]:
    sub = _Reader(reader.data, reader.path, reader.pos, end)
    piece, score, kind = None, 0.0, 1
    while sub.pos < end:
        number, wire = sub.key(f"pieces[{index}]")
        if number == 1 and wire == _LEN:
            n = sub.length(f"pieces[{index}].piece")
            if n > MAX_PIECE_BYTES:
                raise LimitExceeded(reader.path, f"piece of {n} bytes exceeds the cap of {MAX_PIECE_BYTES}",
                                    field=f"pieces[{index}].piece", offset=sub.pos)
            piece = bytes(sub.data[sub.pos : sub.pos + n])
            sub.pos += n
        elif number == 2 and wire == _FIXED32:
            score = sub.float32(f"pieces[{index}].score")
        elif number == 3 and wire == _VARINT:
            kind = sub.varint(f"pieces[{index}].type")
        else:
            sub.skip(wire, f"pieces[{index}].field{number}")
    if piece is None:
        raise reader.fail(f"pieces[{index}].piece", "piece without a string")
    return piece, score, kind


def _trainer_spec(reader: _Reader, end: int) -> tuple[dict[str, int], str | None]:
    sub = _Reader(reader.data, reader.path, reader.pos, end)
    ids = dict(_TRAINER_DEFAULTS)
    model_type = None
    while sub.pos < end:
        number, wire = sub.key("trainer_spec")
        if wire == _VARINT and number in _TRAINER_IDS:
            value = sub.varint(f"trainer_spec.{_TRAINER_IDS[number]}_id")
            ids[_TRAINER_IDS[number]] = value - (1 << 64) if value >= 1 << 63 else value  # int32 -1 is sign-extended
        elif wire == _VARINT and number == 3:
            model_type = _TRAINER_MODEL_TYPES.get(sub.varint("trainer_spec.model_type"))
        else:
            sub.skip(wire, f"trainer_spec.field{number}")
    return ids, model_type


def read_sentencepiece_model(path: str) -> Vocabulary:
    """Pieces (as GGUF stores them: the piece's UTF-8 bytes), scores and special ids."""
    data = read_capped(path, "ModelProto", MAX_MODEL_BYTES)
    reader = _Reader(data, path)
    pieces: list[bytes] = []
    scores: list[float] = []
    kinds: list[int] = []
    ids, model_type = dict(_TRAINER_DEFAULTS), None
    while reader.pos < reader.end:
        number, wire = reader.key("ModelProto")
        if number == 1 and wire == _LEN:
            n = reader.length(f"pieces[{len(pieces)}]")
            if len(pieces) >= MAX_VOCABULARY:
                raise LimitExceeded(path, f"more than {MAX_VOCABULARY} pieces", field="pieces", offset=reader.pos)
            piece, score, kind = _piece(reader, reader.pos + n, len(pieces))
            pieces.append(piece)
            scores.append(score)
            kinds.append(kind)
            reader.pos += n
        elif number == 2 and wire == _LEN:
            n = reader.length("trainer_spec")
            ids, model_type = _trainer_spec(reader, reader.pos + n)
            reader.pos += n
        else:
            reader.skip(wire, f"ModelProto.field{number}")
    if not pieces:
        raise MalformedCheckpoint(path, "no pieces: not a SentencePiece model", field="pieces", offset=0)
    special = {name: value for name, value in ids.items() if 0 <= value < len(pieces)}
    return Vocabulary(
        tokens=pieces,
        model="llama" if model_type in (None, "unigram", "bpe") else model_type,
        scores=np.array(scores, "<f4"),
        special_tokens=special,
        source=f"sentencepiece model ({os.path.basename(path)}, {model_type or 'unigram'})",
        origin="sentencepiece",
    )


def looks_like_sentencepiece(prefix: bytes) -> bool:
    """A ModelProto starts with its first piece: key 0x0a (field 1, length-delimited), a
    length, then the piece's own key 0x0a. Cheap, and exact enough to route the file
    to the bounded reader, which validates the rest."""
    if len(prefix) < 4 or prefix[0] != 0x0A:
        return False
    pos, length = 1, 0
    for shift in range(0, 35, 7):
        if pos >= len(prefix):
            return False
        byte = prefix[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    return 2 <= length <= MAX_PIECE_BYTES + 32 and pos < len(prefix) and prefix[pos] == 0x0A
