"""Large reads of a model file past the page cache (``O_DIRECT``), cached bytes still taken
from the cache.

Why (docs/architecture.md, "Reading cold files"): a buffered read of a file that is not in
the page cache costs the kernel ~1.2-1.5 s of system CPU per GB on the machines we measured
(filling the page cache, then reclaiming other pages once memory is full), as much CPU as
the disk takes time, on the thread that reads. A 7B ``compare`` spent 15-20 of its ~46 CPU
seconds there, competing with the analysis for two cores. An ``O_DIRECT`` read moves the bytes
by DMA into an aligned buffer at the disk's own speed for ~0.05 s of CPU per GB, and it
leaves the page cache (the user's other files) alone.

Policy, for a read of at least :data:`DIRECT_MIN_READ` bytes from a file of at least
:data:`DIRECT_MIN_FILE` bytes (smaller ones are read as before):

1. a range the page cache holds whole (asked with ``cachestat(2)``, which reads nothing) is
   copied from it: a warm file stays as fast as memory;
2. any other is read with ``O_DIRECT`` in aligned pieces into this thread's bounce buffer
   and copied out (a ``memcpy``, ~0.1 s per GB: the reader's buffers are not aligned).
   Without ``cachestat`` (Linux < 6.5) every large read is direct.

A filesystem that refuses ``O_DIRECT`` (tmpfs, some FUSE mounts) or a read it rejects as
misaligned (``EINVAL``) leaves the file to buffered reads, with the same bytes. An
``O_DIRECT`` read sees data written through the page cache (the kernel writes dirty pages
back first), so a file written just before is read as written.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
import threading
from collections.abc import Sequence

from provenance.formats.ahead import ALIGN, ReadAhead, Scatter

BOUNCE_BYTES = 8 << 20
"""Bytes one ``O_DIRECT`` read moves (the per-thread bounce buffer): large enough to stream at
the disk's speed, small enough to stay in the last-level cache's neighbourhood for the copy."""
DIRECT_MIN_FILE = 256 << 20
"""Files smaller than this are read buffered: they fit the page cache, where a second run finds them."""
DIRECT_MIN_READ = 256 << 10
"""Reads smaller than this are buffered (headers, sampled rows): one disk request each either way,
and the kernel's read-ahead serves a run of neighbouring small reads."""

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_local = threading.local()
_libc = ctypes.CDLL(None, use_errno=True)


class DirectUnsupported(OSError):
    """This file's ``O_DIRECT`` reads are refused here; read it buffered."""


def open_direct(validated_fd: int) -> int | None:
    """A second, ``O_DIRECT`` descriptor of the file behind ``validated_fd`` (already checked
    to be a regular file), or ``None`` where direct reads are not worth it or not possible.

    It is reopened through ``/proc/self/fd``, so it names the validated file even if the path
    was swapped since; the device and inode are compared all the same."""
    if not _O_DIRECT:
        return None
    st = os.fstat(validated_fd)
    if st.st_size < DIRECT_MIN_FILE:
        return None
    try:
        fd = os.open(f"/proc/self/fd/{validated_fd}", os.O_RDONLY | _O_DIRECT | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # no /proc, or the filesystem refuses O_DIRECT (EINVAL)
        return None
    again = os.fstat(fd)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        return None
    return fd


def _bounce() -> memoryview:
    """This thread's page-aligned bounce buffer (anonymous memory is page-aligned)."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        _local.map = mmap.mmap(-1, BOUNCE_BYTES)
        view = _local.view = memoryview(_local.map)
    return view


def _bytes(buffers: Sequence[memoryview]) -> list[memoryview] | None:
    """The buffers as flat byte views, or ``None`` when one is not contiguous."""
    try:
        return [b.cast("B") if b.format != "B" or b.ndim != 1 else b for b in buffers]
    except TypeError:
        return None


class _CacheRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted",
                                                      "nr_recently_evicted")]


_SYS_CACHESTAT = 451
"""``cachestat(2)``'s number (Linux >= 6.5; the same on x86-64 and arm64, from the generic table)."""
_cachestat_works = sys.platform == "linux"


def _all_cached(fd: int, offset: int, n_bytes: int) -> bool:
    """Whether every page of the range is in the page cache, asked without reading anything
    (``cachestat(2)``; ``False`` where the kernel lacks it). Not ``preadv(RWF_NOWAIT)``: on a
    miss that starts the kernel's read-ahead of the range, which the direct read then reads again."""
    global _cachestat_works
    if not _cachestat_works:
        return False
    first = offset - offset % mmap.PAGESIZE
    pages = -(-(offset + n_bytes - first) // mmap.PAGESIZE)
    span, stat = _CacheRange(first, pages * mmap.PAGESIZE), _CacheStat()
    if _libc.syscall(_SYS_CACHESTAT, ctypes.c_uint(fd), ctypes.byref(span), ctypes.byref(stat), ctypes.c_uint(0)) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # an older kernel, or a seccomp filter
            _cachestat_works = False
        return False
    return stat.nr_cache >= pages


def _direct(direct_fd: int, scatter: Scatter, offset: int, n_bytes: int) -> int:
    """Copy ``n_bytes`` from ``offset`` into ``scatter`` with ``O_DIRECT`` reads; the bytes
    delivered (short only at the end of the file)."""
    bounce = _bounce()
    pos, end = offset, offset + n_bytes
    while pos < end:
        start = pos - pos % ALIGN
        want = min(BOUNCE_BYTES, -(-(end - start) // ALIGN) * ALIGN)
        try:
            got = os.preadv(direct_fd, [bounce[:want]], start)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise DirectUnsupported(exc.errno, "O_DIRECT read refused") from exc
            raise
        usable = min(got, end - start) - (pos - start)
        if usable <= 0:
            break  # the end of the file
        scatter.put(bounce[pos - start: pos - start + usable])
        pos += usable
    return pos - offset


class ModelFile:
    """A validated regular file's positional reads: large ones past the page cache where the
    filesystem allows, the others (and all of them after a refusal) buffered. Owns ``fd``
    (from :func:`provenance.formats.files.open_regular`) and closes it. Safe across threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct_fd = open_direct(fd)
        """The ``O_DIRECT`` descriptor, or ``None``: the file is read buffered."""
        self._ahead = ReadAhead(self.direct_fd) if self.direct_fd is not None else None

    def preadv(self, buffers: list[memoryview], offset: int) -> int:
        """Bytes read into ``buffers`` in turn from ``offset``: short at the end of the file,
        or (buffered) where one ``preadv`` stops (~2 GiB on Linux)."""
        direct_fd = self.direct_fd
        if direct_fd is not None and sum(b.nbytes for b in buffers) >= DIRECT_MIN_READ:
            try:
                return read_into(self.fd, direct_fd, buffers, offset, self._ahead)
            except DirectUnsupported:
                self._stop_direct(direct_fd)
        return os.preadv(self.fd, buffers, offset)

    def will_need(self, offset: int, n_bytes: int, scattered: bool = False) -> None:
        """Start reading ``n_bytes`` from ``offset`` now, for a read to come: on the file's
        read-ahead worker when it is read direct (:mod:`provenance.formats.ahead`; the kernel's
        read-ahead would fill the page cache and the direct read read them again), else by
        the kernel into the page cache. ``scattered``: one of many small ranges asked at once
        (probe rows of every tensor), which the read-ahead's two windows would drop: into the
        page cache then, where the read finds them whole (:func:`read_into`). A hint:
        refusals are ignored."""
        ahead = self._ahead
        if ahead is not None and self.direct_fd is not None and not scattered:
            ahead.ask(offset, n_bytes)
            return
        if n_bytes <= 0 or not hasattr(os, "posix_fadvise"):
            return
        try:
            os.posix_fadvise(self.fd, offset, n_bytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint refused costs nothing but the overlap

    def _stop_direct(self, direct_fd: int) -> None:
        """Read buffered from now on (the filesystem refused a direct read). A read in flight on
        another thread may still use the descriptor: it is closed with the file, not here."""
        self.direct_fd = None
        self._retired = direct_fd

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()  # its reads in flight use the direct descriptor
        for fd in (self.direct_fd, getattr(self, "_retired", None), self.fd):
            if fd is not None:
                os.close(fd)
        self.direct_fd = None


def read_into(fd: int, direct_fd: int, buffers: Sequence[memoryview], offset: int, ahead: ReadAhead | None = None) -> int:
    """Fill ``buffers`` in turn with the file's bytes from ``offset``: what ``ahead``'s windows
    hold from them, else from the page cache through ``fd`` when it holds the whole range,
    else through ``direct_fd`` (:func:`open_direct`). Returns the
    bytes read (short only at the end of the file). :class:`DirectUnsupported` when the
    filesystem refuses the direct read (nothing is wrong with the file: read it buffered)."""
    views = _bytes(buffers)
    if views is None:
        raise DirectUnsupported(errno.EINVAL, "buffers not contiguous")
    total = sum(len(v) for v in views)
    scatter = Scatter(views)
    done = ahead.take(scatter, offset, total) if ahead is not None else 0
    if done == total:
        return done
    if not done and _all_cached(fd, offset, total):
        return os.preadv(fd, views, offset)
    return done + _direct(direct_fd, scatter, offset + done, total - done)


__all__ = ["ALIGN", "BOUNCE_BYTES", "DIRECT_MIN_FILE", "DIRECT_MIN_READ", "DirectUnsupported", "ModelFile", "open_direct",
           "read_into"]
