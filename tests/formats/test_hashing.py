"""The one-pass file + tensor hashing agrees with hashing each range separately."""
from __future__ import annotations

import hashlib

import pytest

from provenance.formats import open_checkpoint
from provenance.hashing import checkpoint_sha256s, file_sha256, tensor_sha256s
from tests.conftest import QUANT_DIR


@pytest.mark.parametrize("chunk_bytes", [1000, 4096, 1 << 20])
def test_one_pass_hashes_match_separate_hashes(chunk_bytes: int, hf_llama_sharded) -> None:
    for path in (QUANT_DIR / "tiny-llama-Q3_K_M.gguf", hf_llama_sharded):
        with open_checkpoint(path) as checkpoint:
            seen: list[int] = []
            files, tensors = checkpoint_sha256s(checkpoint, progress=seen.append, chunk_bytes=chunk_bytes)
            assert tensors == tensor_sha256s(checkpoint)
            assert files == {span.path: file_sha256(span.path) for span in checkpoint.files}
            assert sum(seen) == sum(span.size for span in checkpoint.files)
            name = next(iter(checkpoint.tensors))
            info = checkpoint.info(name)
            with open(info.file, "rb") as handle:
                handle.seek(info.offset)
                assert tensors[name] == hashlib.sha256(handle.read(info.n_bytes)).hexdigest()


def _stream(checkpoint, names: list[str], rows_per_read: int, threads: int) -> None:  # type: ignore[no-untyped-def]
    """What a streamed pass does: each tensor read in row chunks, tensors spread over threads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> None:
        info = checkpoint.info(name)
        for start in range(0, info.n_rows, rows_per_read):
            checkpoint.read_rows(name, start, min(info.n_rows, start + rows_per_read))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_digests_fed_by_a_pass_in_file_order_read_only_what_it_skips(threads: int, hf_llama_sharded) -> None:  # type: ignore[no-untyped-def]
    """A pass over the tensors in storage order feeds the digests; they read only the bytes
    no tensor holds (headers, padding, the tensors left out) and agree with the plain pass."""
    from provenance.hashing import StreamedDigests

    for path in (QUANT_DIR / "tiny-llama-Q3_K_M.gguf", hf_llama_sharded):
        with open_checkpoint(path) as checkpoint:
            expected = checkpoint_sha256s(checkpoint)
            in_order = sorted(checkpoint.tensors, key=lambda n: (checkpoint.info(n).file, checkpoint.info(n).offset))
            streamed = [n for n in in_order if checkpoint.info(n).qk_heads is None][1:]  # one left to the digests
            digests = StreamedDigests(checkpoint, streamed)
            with checkpoint.observing(digests):
                _stream(checkpoint, streamed, rows_per_read=3, threads=threads)
            assert digests.finish() == expected
            skipped = sum(span.size for span in checkpoint.files) - sum(checkpoint.info(n).n_bytes for n in streamed)
            assert digests.bytes_read_here == skipped


def test_digests_stay_right_when_a_pass_runs_out_of_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads far ahead of the digests' position (a pass in reverse) are kept up to a bound,
    then read again here: the digests are the same and the pass never waits for long."""
    seconds, same, read_here, _ = _timed_pass(monkeypatch, 50_000, 0.05, reverse=True, rows_per_read=8)
    assert seconds < 5.0 and same
    assert read_here > 0


def _timed_pass(monkeypatch: pytest.MonkeyPatch, pending: int, wait_s: float, reverse: bool,
                rows_per_read: int) -> tuple[float, bool, int, int]:
    """A one-thread pass over every tensor of the tiny GGUF (in file order, or reversed) feeding
    the digests, with their bounds set: its seconds, whether the digests equal the plain pass's,
    the bytes the digests read themselves, and the bytes outside the tensors."""
    import time

    import provenance.hashing as hashing
    from provenance.hashing import StreamedDigests

    monkeypatch.setattr(hashing, "PENDING_BYTES", pending)
    monkeypatch.setattr(hashing, "WAIT_S", wait_s)
    with open_checkpoint(QUANT_DIR / "tiny-llama-Q3_K_M.gguf") as checkpoint:
        expected = checkpoint_sha256s(checkpoint)
        names = sorted(checkpoint.tensors, key=lambda n: -checkpoint.info(n).offset if reverse else checkpoint.info(n).offset)
        assert min(checkpoint.info(n).offset for n in names) > 0  # a header before the first tensor
        digests = StreamedDigests(checkpoint, names)
        t0 = time.monotonic()
        with checkpoint.observing(digests):
            _stream(checkpoint, names, rows_per_read=rows_per_read, threads=1)
        seconds = time.monotonic() - t0
        outside = sum(s.size for s in checkpoint.files) - sum(checkpoint.info(n).n_bytes for n in names)
        return seconds, digests.finish() == expected, digests.bytes_read_here, outside


def test_a_tensor_read_ahead_of_the_file_digest_is_hashed_as_it_is_read() -> None:
    """A stream ahead of the file digest's position feeds its tensor's digest at once (only the
    file's digest waits for the bytes in file order); bytes of a tensor read out of order within
    it (second half first) reach its digest in order all the same."""
    import hashlib

    from provenance.hashing import StreamedDigests

    with open_checkpoint(QUANT_DIR / "tiny-llama-Q3_K_M.gguf") as checkpoint:
        expected = checkpoint_sha256s(checkpoint)
        in_order = sorted(checkpoint.tensors, key=lambda n: checkpoint.info(n).offset)
        plain = [n for n in in_order if checkpoint.info(n).qk_heads is None and checkpoint.info(n).n_rows > 1]
        last, halves = plain[-1], plain[-2]
        digests = StreamedDigests(checkpoint, in_order)
        with checkpoint.observing(digests):
            checkpoint.read_rows(last)  # far ahead of the position (nothing before it was read)
            assert digests.tensor_digests[last].digest.hexdigest() == expected[1][last]
            # the file digest is past the header only (the first tensor is a stream's to deliver)
            assert digests.files[checkpoint.info(last).file].position == checkpoint.info(in_order[0]).offset
            rows = checkpoint.info(halves).n_rows
            checkpoint.read_rows(halves, rows // 2, rows)  # its tail first: not its digest's next bytes
            checkpoint.read_rows(halves, 0, rows // 2)
            info = checkpoint.info(halves)
            with open(info.file, "rb") as handle:
                handle.seek(info.offset)
                head = handle.read(info.n_bytes - (rows - rows // 2) * info.row_bytes)
            assert digests.tensor_digests[halves].digest.hexdigest() == hashlib.sha256(head).hexdigest()
            _stream(checkpoint, [n for n in in_order if n not in (last, halves)], rows_per_read=5, threads=2)
        assert digests.finish() == expected


def test_a_pass_past_the_header_does_not_wait_for_the_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes before the first tensor (the header) are delivered by no stream: they are read
    as soon as a stream reads past them, not after the kept bytes fill up and the position has
    stood still for WAIT_S (here set far beyond the test's time limit)."""
    seconds, same, read_here, outside = _timed_pass(monkeypatch, 10_000, 60.0, reverse=False, rows_per_read=4)
    assert seconds < 10.0 and same
    assert read_here == outside
