"""Tensor data appended without the page cache (``O_DIRECT``): the same bytes whatever the
path taken (direct, refused at open, refused at the first write), the head kept, the tail
padded then truncated away."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from provenance.formats import direct_out
from provenance.formats.direct_out import ALIGN, DirectAppender

PIECES = [1, ALIGN - 1, ALIGN, 3 * ALIGN + 7, 0, 20_000, 5]


def _append(path: Path, head: bytes, pieces: list[bytes], stage: int = 2 * ALIGN) -> DirectAppender:
    path.write_bytes(head)
    with DirectAppender(path, stage_bytes=stage) as out:
        assert out.tell() == len(head)
        for piece in pieces:
            assert out.write(piece) == len(piece)
        assert out.tell() == len(head) + sum(map(len, pieces))
    return out


def _pieces() -> list[bytes]:
    return [os.urandom(n) for n in PIECES]


@pytest.mark.parametrize("head_len", [0, 1, 1000, ALIGN, 5 * ALIGN + 3])
def test_head_kept_and_tail_exact(tmp_path: Path, head_len: int) -> None:
    head, pieces = os.urandom(head_len), _pieces()
    out = _append(tmp_path / "f", head, pieces)
    assert (tmp_path / "f").read_bytes() == head + b"".join(pieces)
    if hasattr(os, "O_DIRECT"):
        assert out.direct  # /tmp of the test machine supports it: the direct path is the one tested here


def test_same_bytes_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    head, pieces = os.urandom(777), _pieces()
    out = _append(tmp_path / "f", head, pieces)
    assert not out.direct
    assert (tmp_path / "f").read_bytes() == head + b"".join(pieces)


def test_refused_direct_write_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that accepts the flag but refuses the first aligned write (EINVAL)."""
    real = os.pwrite
    refused = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if not refused:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(direct_out.os, "pwrite", pwrite)
    head, pieces = os.urandom(5000), _pieces()
    out = _append(tmp_path / "f", head, pieces)
    assert refused and not out.direct
    assert (tmp_path / "f").read_bytes() == head + b"".join(pieces)


def test_other_write_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_out.os, "pwrite", pwrite)
    with pytest.raises(OSError, match="No space"):
        _append(tmp_path / "f", b"", [os.urandom(3 * ALIGN)])
