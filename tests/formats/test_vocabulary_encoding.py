"""The token-list encoding (GGUF's string array: u64 length + bytes, each) built by numpy in
chunks is byte for byte the format's definition, written here the plain way."""
from __future__ import annotations

import hashlib
import struct

import numpy as np

from provenance.formats.vocabulary import CHUNK, token_list_bytes, token_list_sha256


def by_definition(tokens: list[bytes | str]) -> bytes:
    encoded = [t.encode("utf-8") if isinstance(t, str) else t for t in tokens]
    return b"".join(struct.pack("<Q", len(t)) + t for t in encoded)


def test_encoding_is_the_string_array_definition() -> None:
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 40, 2 * CHUNK + 17)  # past two chunk boundaries, empty tokens included
    random_tokens: list[bytes | str] = [rng.bytes(int(n)) for n in lengths]
    cases: list[list[bytes | str]] = [[], [b""], [b"x" * 70000], random_tokens, ["a", "é", b"\xff", "▁the"] * 1000]
    for tokens in cases:
        expected = by_definition(tokens)
        assert token_list_bytes(tokens) == expected
        assert token_list_sha256(tokens) == token_list_sha256(iter(tokens)) == hashlib.sha256(expected).hexdigest()
