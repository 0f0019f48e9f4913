"""The scan's journal: one JSON line per finished model, appended whole and fsynced.

The journal is the scan's source of truth; the tables are rebuilt from it. A line is
written with one ``write`` on an ``O_APPEND`` descriptor, then fsynced, so a finished row
survives a killed driver or node. A crash in the middle of a line (power loss) leaves a
torn last line without its newline: :meth:`Journal.open` cuts it off before anything is
appended, so it can never be glued to the next record. Only one scan may write an output
directory at a time (an exclusive ``flock`` on ``OUT/.lock``).
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provenance.errors import ProvenanceError
from provenance.fileio import json_ready


class ScanLocked(ProvenanceError):
    """Another scan is writing the same output directory."""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.dropped_bytes = 0
        """Bytes of a torn last line cut off when the journal was opened."""
        self.bad_lines = 0
        """Complete lines that are not valid records (skipped, their models rescanned)."""
        self._fd: int | None = None
        self._lock: int | None = None

    def open(self) -> Journal:
        lock = os.open(self.path.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise ScanLocked(f"{self.path.parent}: another scan is writing this output directory") from None
        self._lock = lock
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut_torn_tail()
        return self

    def _cut_torn_tail(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        position = size
        while position > 0:  # back to the last newline, a block at a time
            start = max(0, position - 65536)
            block = os.pread(self._fd, position - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        if position < size:
            os.ftruncate(self._fd, position)
            os.fsync(self._fd)
            self.dropped_bytes = size - position

    def records(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    yield record
                else:
                    self.bad_lines += 1

    def append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "open() the journal first"
        line = (json.dumps(json_ready(record), ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:  # one write for any normal line; a loop in case the kernel takes part of a huge one
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        for fd in (self._fd, self._lock):
            if fd is not None:
                os.close(fd)  # closing the lock's descriptor releases the flock
        self._fd = self._lock = None
