"""Bytes read per file through every reader, counted as they are read."""
from __future__ import annotations

import os
import threading

import pytest

from provenance.formats.base import Checkpoint


def count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """``{real path: bytes}`` read through ``Checkpoint.pread_into`` from now on (the dict fills
    as reads happen; clear it to start again). Readers run on several threads (prefetch
    workers, the trace's reader), so the count is taken under a lock: a bare get-then-set
    loses counts when two reads finish together."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    read = Checkpoint.pread_into

    def counted(self: Checkpoint, path: str, buffer: memoryview | list[memoryview], offset: int) -> None:
        read(self, path, buffer, offset)
        n = sum(len(b) for b in buffer) if isinstance(buffer, list) else len(buffer)
        with lock:
            real = os.path.realpath(path)
            counts[real] = counts.get(real, 0) + n

    monkeypatch.setattr(Checkpoint, "pread_into", counted)
    return counts
