"""Read-ahead for a file read past the page cache: what ``POSIX_FADV_WILLNEED`` does for
buffered reads, done on a worker thread of our own (docs/architecture.md, "Reading cold files").

A streamed pass on one thread (the writer behind ``quantize``, whole-file hashing, any loop
that reads a chunk and then works on it) used to get its next chunk read by the kernel while
it worked: row readers ask for the next ~32 MB (:meth:`provenance.formats.base.Checkpoint.prefetch`).
An ``O_DIRECT`` read bypasses that read-ahead, so without this the loop would wait for every
chunk. Here each ask starts one direct read of the range into a page-aligned window on the
file's worker thread; a later read whose bytes lie in windows is copied from them (waiting
for a window still in flight), and only what no window holds is read by the caller.

Memory stays flat: at most :data:`MAX_WINDOWS` windows of at most :data:`AHEAD_BYTES` each per
file, their buffers reused. A window's read that fails is not an error here: its range is
read again by the caller, whose read reports whatever is wrong.
"""
from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

ALIGN = 4096
"""Offset, length and buffer alignment of every ``O_DIRECT`` read and write (reads here and in
:mod:`provenance.formats.direct`, writes in :mod:`provenance.formats.direct_out`): the largest
logical block size of common disks (512 and 4096), so no device query is needed."""
AHEAD_BYTES = 32 << 20
"""The most one window reads: a row reader's read-ahead ask (``formats.rows.READAHEAD_BYTES``)."""
MAX_WINDOWS = 2
"""Windows per file, in flight or waiting to be read from: the one a stream reads and the next."""


@dataclass
class _Window:
    start: int
    """File offset of ``buffer[0]`` (aligned)."""
    end: int
    """One past the last byte asked for."""
    buffer: mmap.mmap
    done: Future[int]
    """Bytes read into ``buffer`` (short at the end of the file)."""


def _read_window(fd: int, buffer: mmap.mmap, start: int, length: int) -> int:
    view, got = memoryview(buffer), 0
    try:
        while got < length:
            n = os.preadv(fd, [view[got:length]], start + got)
            if n <= 0:
                break
            got += n
    finally:
        view.release()
    return got


class Scatter:
    """Copies consecutive byte runs into a list of buffers in turn."""

    def __init__(self, views: list[memoryview]) -> None:
        self.views, self.index, self.inside = views, 0, 0

    def put(self, source: memoryview) -> None:
        taken = 0
        while taken < len(source):
            target = self.views[self.index]
            n = min(len(target) - self.inside, len(source) - taken)
            target[self.inside: self.inside + n] = source[taken: taken + n]
            taken, self.inside = taken + n, self.inside + n
            if self.inside == len(target):
                self.index, self.inside = self.index + 1, 0


class ReadAhead:
    """Windows of one file read ahead with ``O_DIRECT`` on a worker thread. Safe across threads."""

    def __init__(self, direct_fd: int) -> None:
        self._fd = direct_fd
        self._windows: list[_Window] = []
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def ask(self, offset: int, n_bytes: int) -> None:
        """Start reading up to :data:`AHEAD_BYTES` from ``offset``, unless a window already holds
        ``offset`` or :data:`MAX_WINDOWS` are out."""
        n_bytes = min(n_bytes, AHEAD_BYTES)
        with self._lock:
            if (self._closed or n_bytes <= 0 or len(self._windows) >= MAX_WINDOWS
                    or any(w.start <= offset < w.end for w in self._windows)):
                return
            start = offset - offset % ALIGN
            length = -(-(offset + n_bytes - start) // ALIGN) * ALIGN
            buffer = self._free.pop() if self._free else mmap.mmap(-1, AHEAD_BYTES + ALIGN)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provenance-read-ahead")
            done = self._pool.submit(_read_window, self._fd, buffer, start, length)
            self._windows.append(_Window(start, offset + n_bytes, buffer, done))

    def take(self, scatter: Scatter, offset: int, n_bytes: int) -> int:
        """Copy what the windows hold of ``[offset, offset + n_bytes)``, from ``offset`` on, into
        ``scatter``; returns the bytes copied (0 when no window holds ``offset``). Windows that
        end where the copying stopped or before are given up (a stream has gone past them)."""
        pos, end = offset, offset + n_bytes
        with self._lock:
            while pos < end:
                window = next((w for w in self._windows if w.start <= pos < w.end), None)
                if window is None:
                    break
                try:
                    got = window.done.result()
                except Exception:  # the caller reads the range itself, and reports what fails
                    got = 0
                n = min(window.start + got, window.end, end) - pos
                if n <= 0:
                    self._retire(window)
                    break
                with memoryview(window.buffer) as view:
                    scatter.put(view[pos - window.start: pos - window.start + n])
                pos += n
            for window in [w for w in self._windows if w.end <= pos]:
                self._retire(window)
        return pos - offset

    def _retire(self, window: _Window) -> None:
        """Hand a window's buffer back once its read is over (the lock is held)."""
        try:
            window.done.result()
        except Exception:
            pass
        self._windows.remove(window)
        self._free.append(window.buffer)

    def close(self) -> None:
        """Wait for reads in flight and let go of the buffers and the worker (before the
        descriptor is closed)."""
        with self._lock:
            self._closed = True
            for window in list(self._windows):
                self._retire(window)
            buffers, self._free = self._free, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        for buffer in buffers:
            buffer.close()


__all__ = ["AHEAD_BYTES", "MAX_WINDOWS", "ReadAhead", "Scatter"]
