"""Streamed SHA-256 of whole files and of each tensor's stored bytes, in one pass.

Each file is read once, sequentially, into one reused buffer; every chunk feeds the
file's digest and the digests of the tensors it overlaps. The two digests run on two
threads (hashlib releases the GIL on large updates), so on two cores the pass costs
about one hash of the file.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from provenance.formats.base import DEFAULT_CHUNK_BYTES, Checkpoint
from provenance.formats.files import open_input

Progress = Callable[[int], None]
"""Called with the number of bytes just hashed."""


def file_sha256(path: str, progress: Progress | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open_input(path) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
            if progress:
                progress(n)
    return digest.hexdigest()


def checkpoint_sha256s(
    checkpoint: Checkpoint, progress: Progress | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[dict[str, str], dict[str, str]]:
    """``({file path: sha256}, {canonical tensor name: sha256 of its raw stored bytes})``."""
    by_file: dict[str, list[tuple[int, int, str]]] = {}
    for info in checkpoint.tensors.values():
        by_file.setdefault(info.file, []).append((info.offset, info.offset + info.n_bytes, info.name))
    file_digests: dict[str, str] = {}
    tensor_digests: dict[str, hashlib._Hash] = {name: hashlib.sha256() for name in checkpoint.tensors}
    buffers = [bytearray(chunk_bytes), bytearray(chunk_bytes)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        for span in checkpoint.files:
            ranges = sorted(by_file.get(span.path, []))
            file_digest = hashlib.sha256()
            position, index, pending = 0, 0, None
            with open_input(span.path) as handle:
                while True:
                    buffer = buffers[index % 2]  # double buffer: the pool may still hash the other
                    n = handle.readinto(buffer)
                    if pending is not None:
                        pending.result()
                    if not n:
                        break
                    view = memoryview(buffer)[:n]
                    pending = pool.submit(file_digest.update, view)
                    chunk_end = position + n
                    for begin, end, name in ranges:
                        if end > position and begin < chunk_end:
                            tensor_digests[name].update(view[max(begin, position) - position : min(end, chunk_end) - position])
                    while ranges and ranges[0][1] <= chunk_end:
                        ranges.pop(0)
                    position = chunk_end
                    index += 1
                    if progress:
                        progress(n)
            file_digests[span.path] = file_digest.hexdigest()
    return file_digests, {name: digest.hexdigest() for name, digest in tensor_digests.items()}


def tensor_sha256s(checkpoint: Checkpoint, progress: Progress | None = None) -> dict[str, str]:
    """``{canonical name: sha256 of the raw stored bytes}``, reading only tensor bytes."""
    return {name: checkpoint.tensor_sha256(name, progress) for name in checkpoint.tensors}
