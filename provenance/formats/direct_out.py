"""Appending a model's tensor data to a file without the page cache (``O_DIRECT``).

Why (docs/formats.md, "Writing without the page cache"): a buffered write of a 13.5 GB model
copies every byte into the page cache and makes the kernel allocate, account and later
reclaim ~3.3 M pages; on the benchmark VM that is system CPU of the same order as the
cold reads' and it evicts the pages other commands still use. Written with ``O_DIRECT``
the bytes go from our buffer to the disk, and the final ``fsync`` has almost nothing left
to flush.

``O_DIRECT`` asks for file offsets, lengths and buffer addresses aligned to the device's
logical block; :class:`DirectAppender` therefore

* reads back the head of the file already written (the GGUF header, a few MB at most,
  written by ``gguf.GGUFWriter``) and rewrites it from offset 0 through its own buffer, so
  every write starts at an aligned offset;
* stages what it is given in a page-aligned buffer (an anonymous ``mmap``) of
  :data:`STAGE_BYTES` and writes it when full;
* writes the tail padded to a whole block of zeros, then truncates the file to its true
  length;
* falls back to ordinary buffered writes, from the offset reached, where the platform or the
  file system refuses ``O_DIRECT`` (no flag, ``EINVAL`` at open or at the first write: tmpfs,
  some network file systems), so the bytes written never depend on the path taken.

The file is the caller's temp file (:func:`provenance.fileio.atomic_file`): on an error or
Ctrl-C the caller removes it, so a partly written file is never left behind.
"""
from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path
from types import TracebackType

from provenance.formats.ahead import ALIGN

STAGE_BYTES = 16 << 20
"""Bytes staged per write: large enough that a write costs one system call per 16 MiB."""


class DirectAppender:
    """Appends bytes to ``path`` (created if missing; its current content is kept), by ``O_DIRECT`` where the
    file system allows it; :meth:`close` (or leaving the ``with``) writes the rest and sets the
    file's exact length. Not thread-safe: one writer."""

    def __init__(self, path: str | Path, stage_bytes: int = STAGE_BYTES) -> None:
        self.path = os.fspath(path)
        self._size = max(ALIGN, stage_bytes // ALIGN * ALIGN)
        self._stage = mmap.mmap(-1, self._size)  # page-aligned anonymous memory
        self._view = memoryview(self._stage)
        self._fill = 0
        self._offset = 0  # file offset of the stage's first byte (always aligned while direct)
        self.direct = False
        flag = getattr(os, "O_DIRECT", 0)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            head = os.fstat(self._fd).st_size
            if flag:
                self._reopen_direct(flag)
            # the head already written, rewritten from offset 0 through the stage
            while self.tell() < head:
                if self._read_head(head) == 0:
                    raise OSError(errno.EIO, f"{self.path}: shrank while being written")
        except BaseException:
            self._release()
            raise

    def _read_head(self, head: int) -> int:
        """Moves up to one stage of the head (what is left of it) into the stage, writing full stages."""
        want = min(self._size - self._fill, head - (self._offset + self._fill))
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self._offset + self._fill)
            n = handle.readinto(self._view[self._fill:self._fill + want])
        self._fill += n or 0
        if self._fill == self._size:
            self._flush_full()
        return n or 0

    def _reopen_direct(self, flag: int) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return  # this file system has no direct I/O: buffered writes
            raise
        os.close(self._fd)
        self._fd, self.direct = fd, True

    def _fall_back(self) -> None:
        """Direct I/O refused mid-way: continue buffered from the offset reached."""
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        self.direct = False

    def _pwrite_all(self, view: memoryview, offset: int) -> None:
        while len(view):
            try:
                n = os.pwrite(self._fd, view, offset)
            except OSError as exc:
                if self.direct and exc.errno == errno.EINVAL:
                    self._fall_back()
                    continue
                raise
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: short write at offset {offset}")
            view, offset = view[n:], offset + n
            if self.direct and (n % ALIGN):  # a short direct write leaves us unaligned
                self._fall_back()

    def _flush_full(self) -> None:
        self._pwrite_all(self._view[:self._fill], self._offset)
        self._offset += self._fill
        self._fill = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Appends ``data`` (any bytes-like object); returns its length."""
        src = memoryview(data).cast("B")
        total = len(src)
        while len(src):
            take = min(len(src), self._size - self._fill)
            self._view[self._fill:self._fill + take] = src[:take]
            self._fill += take
            src = src[take:]
            if self._fill == self._size:
                self._flush_full()
        return total

    def tell(self) -> int:
        return self._offset + self._fill

    def close(self) -> None:
        """Writes what is staged and gives the file its exact length."""
        if self._fd < 0:
            return
        try:
            end = self._offset + self._fill
            if self._fill:
                padded = -self._fill % ALIGN if self.direct else 0
                self._view[self._fill:self._fill + padded] = bytes(padded)
                self._fill += padded
                self._flush_full()
            os.ftruncate(self._fd, end)
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self._view.release()
            self._stage.close()
        except BufferError:  # a slice is still referenced (by an exception's traceback): freed with it
            pass

    def __enter__(self) -> DirectAppender:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # the caller removes the file: nothing more to write
            self._release()
