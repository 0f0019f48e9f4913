"""Streamed SHA-256 of whole files and of each tensor's stored bytes."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

from provenance.formats.base import DEFAULT_CHUNK_BYTES, Checkpoint

Progress = Callable[[int], None]
"""Called with the number of bytes just hashed."""


def file_sha256(path: str, progress: Progress | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
            if progress:
                progress(n)
    return digest.hexdigest()


def tensor_sha256s(checkpoint: Checkpoint, progress: Progress | None = None) -> dict[str, str]:
    """``{canonical name: sha256 of the raw stored bytes}`` in table order."""
    out = {}
    for name in checkpoint.tensors:
        digest = hashlib.sha256()
        for chunk in checkpoint.iter_raw(name):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
        out[name] = digest.hexdigest()
    return out
