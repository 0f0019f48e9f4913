"""Opening untrusted inputs: regular files only, never blocking, and every file a reader
picks from a model's directory resolving inside that directory.

Why each rule (docs/security.md, "All formats"):

* A FIFO, socket or device named ``model.safetensors`` would block ``open`` forever (a FIFO
  waits for a writer) or stream endless bytes: files are opened with ``O_NONBLOCK`` (which
  never blocks, and changes nothing for a regular file) and refused unless ``fstat`` says
  they are regular. Checking the descriptor, not the name, leaves no window to swap the
  file between the check and the read.
* A file named by a model's own files (an index.json shard, a split-GGUF part, the
  ``config.json`` or tokenizer beside the weights) must resolve, symlinks followed, inside
  the directory that holds it: a symlink out of an uploaded folder would make a CI gate
  read the gate's own files.
* A symlink loop or a dangling link is an error, never "absent": a ``config.json`` that
  cannot be read is not a folder without one.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from provenance.errors import LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint, from_os_error

_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: str, field: str | None = None) -> int:
    """A read-only descriptor of ``path``, refused unless it is a regular file (symlinks are
    followed; a loop is an error). The caller closes it."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise from_os_error(exc, path, field) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise UnsupportedCheckpoint(path, f"{kind}, not a regular file: refused", field=field, offset=0)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def open_input(path: str, field: str | None = None) -> Iterator[BinaryIO]:
    """:func:`open_regular` as a binary file object (unbuffered: readers ask for exact sizes)."""
    with os.fdopen(open_regular(path, field), "rb", buffering=0) as handle:
        yield handle  # type: ignore[misc]


def read_capped(path: str, field: str, cap: int) -> bytes:
    """A whole (small) input file, refused before reading when it is larger than ``cap``."""
    with open_input(path, field) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > cap:
            raise LimitExceeded(path, f"file is larger than the {cap}-byte cap", field=field, offset=0)
        data = read_exactly(handle, size)
    if len(data) != size:
        raise MalformedCheckpoint(path, f"file shrank while reading: {len(data)} of {size} bytes", field=field, offset=len(data))
    return data


def read_head(path: str, field: str, n_bytes: int) -> bytes:
    """At most the first ``n_bytes`` of a regular input file (what a bounded header parser needs)."""
    with open_input(path, field) as handle:
        return read_exactly(handle, n_bytes)


def read_exactly(handle: BinaryIO, n_bytes: int) -> bytes:
    """Up to ``n_bytes`` from an unbuffered file (loops over short reads; fewer only at EOF)."""
    chunks, remaining = [], n_bytes
    while remaining > 0:
        chunk = handle.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def file_size(path: str, field: str | None = None) -> int:
    """Size of a regular input file (the same refusals as :func:`open_regular`)."""
    fd = open_regular(path, field)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def present(path: str) -> bool:
    """Whether anything exists at ``path`` itself: a dangling or looping symlink is present
    (opening it is then an error, not a silent absence)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise from_os_error(exc, path) from None
    return True


def member(directory: str, name: object, named_by: str, field: str) -> str:
    """The real path of file ``name`` of a model's ``directory``, refused when the name is not a
    plain file name or when it resolves (symlinks followed) outside the directory. ``named_by``
    is the file whose content gave the name (it is the one at fault)."""
    if not isinstance(name, str) or not name or "\x00" in name or name == ".":
        raise MalformedCheckpoint(named_by, f"{name!r:.80} is not a file name", field=field)
    if os.path.isabs(name) or "/" in name.replace("\\", "/") or name == "..":
        raise MalformedCheckpoint(named_by, f"file name {name!r:.80} escapes the model directory", field=field)
    base = os.path.realpath(directory)
    try:
        full = os.path.realpath(os.path.join(directory, name), strict=True)
    except FileNotFoundError:
        raise MalformedCheckpoint(named_by, f"{name!r:.80} is missing", field=field) from None
    except OSError as exc:
        raise from_os_error(exc, os.path.join(directory, name), field) from None
    if os.path.dirname(full) != base and not _hf_cache_blob(base, full):
        raise MalformedCheckpoint(named_by, f"{name!r:.80} resolves outside the model directory", field=field)
    return full


def _hf_cache_blob(base: str, full: str) -> bool:
    """Whether ``full`` is a blob of the Hugging Face cache repo whose snapshot is ``base``.

    The cache keeps a snapshot's files as symlinks into its repo's ``blobs/`` folder
    (``models--ORG--NAME/snapshots/REV[/SUB]/FILE -> ../../blobs/SHA``): such a link stays inside
    the repo, whether the snapshot was named ``hf:ORG/NAME`` or by its path (docs/locators.md)."""
    parts = base.split(os.sep)
    if "snapshots" not in parts[1:]:
        return False
    at = len(parts) - 1 - parts[::-1].index("snapshots")
    return os.path.dirname(full) == os.path.join(os.sep.join(parts[:at]) or os.sep, "blobs")


def member_if_present(directory: str, name: str, field: str) -> str | None:
    """:func:`member` for an optional file the reader looks for by a fixed name; None when absent."""
    path = os.path.join(directory, name)
    return member(directory, name, path, field) if present(path) else None
