"""Large reads past the page cache (``provenance.formats.direct``) return exactly the bytes a
buffered read returns, wherever the range starts and ends, cold, warm or partly cached, and
fall back to buffered reads where ``O_DIRECT`` is refused."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from provenance.errors import FileAccessError, MalformedCheckpoint
from provenance.formats import ahead, direct, open_checkpoint
from provenance.formats.base import Checkpoint

LLAMACPP = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamacpp-quant"


@pytest.fixture
def every_file_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct reads for any file and read size, pieces of 3 pages (ranges cross many pieces)."""
    monkeypatch.setattr(direct, "DIRECT_MIN_FILE", 0)
    monkeypatch.setattr(direct, "DIRECT_MIN_READ", 1)
    monkeypatch.setattr(direct, "BOUNCE_BYTES", 3 * direct.ALIGN)


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _random_file(path: Path, n: int) -> bytes:
    data = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


class _Plain(Checkpoint):
    """A checkpoint with no tensors: the raw-bytes methods of the base class alone."""

    format = "plain"

    @property
    def architecture(self) -> None:  # type: ignore[override]
        return None


def _read(ckpt: Checkpoint, path: Path, sizes: list[int], offset: int) -> bytes:
    buffers = [bytearray(n) for n in sizes]
    ckpt.pread_into(str(path), [memoryview(b) for b in buffers] if len(sizes) > 1 else memoryview(buffers[0]), offset)
    return b"".join(buffers)


@pytest.mark.parametrize("state", ["cold", "warm", "partly cached"])
def test_direct_reads_return_the_files_bytes_at_any_alignment(tmp_path: Path, every_file_direct: None, state: str) -> None:
    path = tmp_path / "weights.bin"
    data = _random_file(path, 10 * direct.ALIGN + 123)  # the end of the file is not aligned either
    cases = [(0, [len(data)]), (1, [5000]), (4095, [1, 4097, 3]), (4096, [8192]), (777, [33000]),
             (len(data) - 10, [10]), (12345, [100, 0, 9000, 7])]
    with _Plain(path) as ckpt:
        assert ckpt._file(str(path)).direct_fd is not None, "ext4 under tmp_path refuses O_DIRECT?"
        for offset, sizes in cases:
            if state == "cold":
                _drop(path)
            elif state == "partly cached":
                _drop(path)
                with open(path, "rb", buffering=0) as handle:  # the range's first page alone into the cache
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead
                    handle.seek(offset)
                    handle.read(1)
            assert _read(ckpt, path, sizes, offset) == data[offset: offset + sum(sizes)], (offset, sizes)


def test_a_read_past_the_end_is_a_short_read_named(tmp_path: Path, every_file_direct: None) -> None:
    path = tmp_path / "weights.bin"
    data = _random_file(path, 3 * direct.ALIGN + 5)
    _drop(path)
    with _Plain(path) as ckpt, pytest.raises(MalformedCheckpoint, match="short read"):
        _read(ckpt, path, [100], len(data) - 50)


def test_a_filesystem_refusing_o_direct_reads_buffered(tmp_path: Path, every_file_direct: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.bin"
    data = _random_file(path, 5 * direct.ALIGN)
    real_open = os.open

    def refuse_direct(name: str, flags: int, *args: int) -> int:
        if flags & direct._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    with _Plain(path) as ckpt:
        assert _read(ckpt, path, [9000], 100) == data[100:9100]
        assert ckpt._file(str(path)).direct_fd is None


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EIO])
def test_a_direct_read_refused_falls_back_and_a_failing_disk_is_named(tmp_path: Path, every_file_direct: None,
                                                                     monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """EINVAL (the filesystem refuses the direct read midway): the file is read buffered from
    then on, with the same bytes. Any other error (EIO): the one-line error names the file."""
    path = tmp_path / "weights.bin"
    data = _random_file(path, 8 * direct.ALIGN)
    _drop(path)
    with _Plain(path) as ckpt:
        direct_fd = ckpt._file(str(path)).direct_fd
        real_preadv = os.preadv

        def failing(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
            if fd == direct_fd:
                raise OSError(code, os.strerror(code))
            return real_preadv(fd, buffers, offset, *flags)

        monkeypatch.setattr(os, "preadv", failing)
        if code == errno.EIO:
            with pytest.raises(FileAccessError, match=r"weights\.bin.*tensor data.*input/output error"):
                _read(ckpt, path, [20000], 0)
            return
        assert _read(ckpt, path, [20000], 3) == data[3:20003]
        assert ckpt._file(str(path)).direct_fd is None  # the file is read buffered from now on
        assert _read(ckpt, path, [5000], 0) == data[:5000]


def test_small_files_and_small_reads_stay_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.bin"
    _random_file(path, 64 * 1024)
    with _Plain(path) as ckpt:
        assert ckpt._file(str(path)).direct_fd is None  # under DIRECT_MIN_FILE
    monkeypatch.setattr(direct, "DIRECT_MIN_FILE", 0)
    used: list[int] = []
    real = direct.read_into
    monkeypatch.setattr(direct, "read_into", lambda *a: used.append(1) or real(*a))
    with _Plain(path) as ckpt:
        _read(ckpt, path, [direct.DIRECT_MIN_READ - 1 if direct.DIRECT_MIN_READ <= 65536 else 4096], 0)
        assert used == []


def test_no_read_ahead_into_the_page_cache_for_a_file_read_direct(tmp_path: Path, every_file_direct: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.bin"
    _random_file(path, 8 * direct.ALIGN)
    hinted: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, n, advice: hinted.append(advice))
    with _Plain(path) as ckpt:
        ckpt.prefetch(str(path), 0, 4 * direct.ALIGN)
    assert hinted == []


def test_scattered_prefetches_of_a_file_read_direct_go_to_the_page_cache(tmp_path: Path, every_file_direct: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small ranges asked at once (probe rows of every tensor) are more than the read-ahead's
    windows hold: they are asked of the kernel, and a read of one is then copied from the page
    cache with the file's bytes."""
    path = tmp_path / "weights.bin"
    data = _random_file(path, 64 * direct.ALIGN)
    hinted: list[tuple[int, int]] = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, n, advice: hinted.append((offset, n)) or real(fd, offset, n, advice))
    ranges = [(k * 5 * direct.ALIGN + 100, 3 * direct.ALIGN) for k in range(10)]
    with _Plain(path) as ckpt:
        for offset, n in ranges:
            ckpt.prefetch(str(path), offset, n, scattered=True)
        assert hinted == ranges
        assert ckpt._file(str(path))._ahead._windows == []  # no window taken by the hints
        for offset, n in ranges:
            assert _read(ckpt, path, [n], offset) == data[offset:offset + n]


def _decoded(path: Path, parts: int) -> dict[str, np.ndarray]:
    """Every tensor of ``path`` decoded by a row reader streaming it in ``parts`` chunks."""
    out = {}
    with open_checkpoint(path) as ckpt:
        for tensor in ckpt.tensors:
            info = ckpt.info(tensor)
            step = max(1, info.n_rows // parts)
            with ckpt.row_reader(tensor, step) as reader:
                out[tensor] = np.concatenate([reader.read(a, min(info.n_rows, a + step)).numpy().copy()
                                              for a in range(0, info.n_rows, step)])
    return out


def test_whole_file_hashes_read_direct_are_the_files_digests(tmp_path: Path, every_file_direct: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``file_sha256`` and a checkpoint's file and tensor digests, every byte read past the page cache."""
    import hashlib

    from provenance.hashing import checkpoint_sha256s, file_sha256

    path = tmp_path / "weights.bin"
    data = _random_file(path, 7 * direct.ALIGN + 11)
    monkeypatch.setattr(direct, "_all_cached", lambda fd, offset, n_bytes: False)
    used: list[int] = []
    real = direct.read_into
    monkeypatch.setattr(direct, "read_into", lambda *a: used.append(1) or real(*a))
    assert file_sha256(str(path), chunk_bytes=5000) == hashlib.sha256(data).hexdigest()
    assert used
    model = LLAMACPP / "tiny-llama-Q4_K_M.gguf"
    if model.exists():
        used.clear()
        with open_checkpoint(model) as ckpt:
            files, tensors = checkpoint_sha256s(ckpt, chunk_bytes=1 << 16)
            raw = {name: hashlib.sha256(ckpt.raw_rows(name).tobytes()).hexdigest() for name in ckpt.tensors}
        assert used
        assert files == {str(model): hashlib.sha256(model.read_bytes()).hexdigest()}
        assert tensors == raw


def test_a_range_the_page_cache_holds_is_read_from_it_and_asking_reads_nothing(tmp_path: Path) -> None:
    """``cachestat(2)`` answers for the range (warm after a buffered read, cold after a drop), and
    asking does not start a read-ahead (``preadv(RWF_NOWAIT)`` would have)."""
    path = tmp_path / "weights.bin"
    data = _random_file(path, 64 * direct.ALIGN)
    fd = os.open(path, os.O_RDONLY)
    try:
        _drop(path)
        if not direct._all_cached(fd, 0, 1) and not direct._cachestat_works:
            pytest.skip("this kernel has no cachestat(2) (Linux < 6.5): every large read is direct")
        assert not direct._all_cached(fd, 0, len(data))
        assert not direct._all_cached(fd, 0, len(data)), "asking read the range into the cache"
        os.pread(fd, 3 * direct.ALIGN, 5 * direct.ALIGN)
        assert direct._all_cached(fd, 5 * direct.ALIGN + 7, 2 * direct.ALIGN)
        _drop(path)
        assert not direct._all_cached(fd, 5 * direct.ALIGN, direct.ALIGN)
    finally:
        os.close(fd)


def _direct_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | direct._O_DIRECT)


def test_read_ahead_windows_serve_a_stream_and_what_they_lack_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows asked ahead hold exactly the file's bytes; a read across two windows, one
    running past the last window, one before any window and one after the file's end each get
    the right bytes (from windows as far as they go)."""
    path = tmp_path / "weights.bin"
    data = _random_file(path, 40 * direct.ALIGN + 77)
    _drop(path)
    monkeypatch.setattr(ahead, "AHEAD_BYTES", 5 * direct.ALIGN)
    fd = _direct_fd(path)
    reads = ahead.ReadAhead(fd)
    try:
        def take(offset: int, n: int) -> tuple[int, bytes]:
            out = bytearray(n)
            got = reads.take(ahead.Scatter([memoryview(out)]), offset, n)
            return got, bytes(out[:got])

        reads.ask(5000, 5 * direct.ALIGN)  # [5000, 5000 + 5 pages), read from page 1
        reads.ask(5000 + 5 * direct.ALIGN, 10 * direct.ALIGN)  # clipped to 5 pages
        reads.ask(90_000, 100)  # a third: refused (two are out)
        assert len(reads._windows) == 2
        assert take(4000, 10) == (0, b"")  # before every window
        got, part = take(7000, 9 * direct.ALIGN)  # across both windows, inside them
        assert (got, part) == (9 * direct.ALIGN, data[7000:7000 + got])
        got, part = take(7000 + 9 * direct.ALIGN, 4 * direct.ALIGN)  # past the second window's end
        assert got == 5000 + 10 * direct.ALIGN - (7000 + 9 * direct.ALIGN) and part == data[7000 + 9 * direct.ALIGN:][:got]
        assert reads._windows == []  # both gone past: given up, their buffers kept for reuse
        reads.ask(len(data) - 50, 5 * direct.ALIGN)  # at the end of the file: a short window
        assert take(len(data) - 50, 200) == (50, data[-50:])
    finally:
        reads.close()
        os.close(fd)


def test_a_window_whose_read_fails_leaves_the_range_to_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.bin"
    _random_file(path, 16 * direct.ALIGN)

    def failing(*args: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ahead, "_read_window", failing)
    fd = _direct_fd(path)
    reads = ahead.ReadAhead(fd)
    try:
        reads.ask(0, 8 * direct.ALIGN)
        out = bytearray(100)
        assert reads.take(ahead.Scatter([memoryview(out)]), 10, 100) == 0
        assert reads._windows == []
    finally:
        reads.close()
        os.close(fd)


@pytest.mark.parametrize("mode", ["direct", "read ahead"])
@pytest.mark.parametrize("name", ["stories260K-Q8_0.gguf", "stories260K-f32.gguf", "tiny-llama-Q4_K_M.gguf"])
def test_real_files_decode_the_same_read_direct(name: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor of llama.cpp-written files, streamed row chunk by row chunk with every byte
    from the disk past the page cache (by the caller's reads alone, or mostly from the read-ahead
    windows the row readers ask for), decodes as the buffered read does."""
    from provenance.formats import rows

    path = LLAMACPP / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data)")
    buffered = _decoded(path, 16)
    monkeypatch.setattr(direct, "DIRECT_MIN_FILE", 0)
    monkeypatch.setattr(direct, "DIRECT_MIN_READ", 1)
    # the header's parse leaves the small file in the page cache: every byte from the disk instead
    monkeypatch.setattr(direct, "_all_cached", lambda fd, offset, n_bytes: False)
    if mode == "read ahead":
        monkeypatch.setattr(rows, "READAHEAD_BYTES", 8 * direct.ALIGN)
    else:
        monkeypatch.setattr(ahead.ReadAhead, "ask", lambda self, offset, n_bytes: None)
    direct_reads: list[int] = []
    real_read = direct.read_into
    monkeypatch.setattr(direct, "read_into", lambda *a: direct_reads.append(1) or real_read(*a))
    served: list[int] = []
    real_take = ahead.ReadAhead.take
    monkeypatch.setattr(ahead.ReadAhead, "take", lambda self, *a: served.append(real_take(self, *a)) or served[-1])
    read_direct = _decoded(path, 16)
    assert direct_reads, "nothing was read direct"
    assert (sum(served) > 0) == (mode == "read ahead")
    assert buffered.keys() == read_direct.keys()
    for tensor, values in buffered.items():
        np.testing.assert_array_equal(values, read_direct[tensor], err_msg=tensor)
