"""Streamed SHA-256 of whole files and of each tensor's stored bytes, in one pass.

Each file is read once, sequentially; every chunk feeds the file's digest and the digests
of the tensors it overlaps. The two digests run on two threads (hashlib releases the GIL on
large updates), so on two cores the pass costs about one hash of the file. The same digests
can be fed by another streamed pass instead (:class:`StreamedDigests`): ``investigate``
hashes the candidate from the bytes its lineage pass reads, not in a pass of its own.
"""
from __future__ import annotations

import bisect
import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

from provenance.errors import MalformedCheckpoint, from_os_error
from provenance.formats.base import DEFAULT_CHUNK_BYTES, Checkpoint, FileSpan
from provenance.formats.direct import ModelFile
from provenance.formats.files import open_regular

Progress = Callable[[int], None]
"""Called with the number of bytes just hashed."""


@dataclass(frozen=True)
class CheckpointHashes:
    """Every file's SHA-256 and every tensor's SHA-256 of its raw stored bytes."""

    files: dict[str, str]
    """File path -> hex digest."""
    tensors: dict[str, str]
    """Canonical tensor name -> hex digest."""


def file_sha256(path: str, progress: Progress | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """SHA-256 of the file at ``path``, read in ``chunk_bytes`` pieces (large files past the page
    cache: docs/architecture.md, "Reading cold files")."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(chunk_bytes))
    file = ModelFile(open_regular(path))
    try:
        position = 0
        while n := file.preadv([view], position):
            file.will_need(position + n, chunk_bytes)  # read on while this chunk is hashed
            digest.update(view[:n])
            position += n
            if progress:
                progress(n)
    except OSError as exc:
        raise from_os_error(exc, path, "file bytes") from exc
    finally:
        file.close()
    return digest.hexdigest()


def checkpoint_sha256s(
    checkpoint: Checkpoint, progress: Progress | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[dict[str, str], dict[str, str]]:
    """``({file path: sha256}, {canonical tensor name: sha256 of its raw stored bytes})``."""
    digests = StreamedDigests(checkpoint, chunk_bytes=chunk_bytes, progress=progress)
    return digests.finish()


#: bytes a stream may read ahead of the digests' position that are kept (copied) until the
#: position gets there; a stream further ahead waits (the one at the position keeps going)
PENDING_BYTES = 64 << 20
#: how long a read ahead waits while the position does not move before the bytes at the
#: position are read here instead (a stream out of file order must not stall the pass)
WAIT_S = 2.0


class _TensorDigest:
    """One tensor's digest and how far into its bytes ``[begin, end)`` it has got. Fed in
    byte order by whichever thread holds the bytes at its position first: the stream reading
    the tensor (as it reads, outside the file-order lock) or the file digest's pass in order."""

    def __init__(self, begin: int, end: int) -> None:
        self.begin, self.end, self.position = begin, end, begin
        self.digest = hashlib.sha256()
        self.lock = threading.Lock()

    def feed(self, offset: int, view: memoryview) -> None:
        """Bytes of the file from ``offset``: what of them continues this digest is hashed."""
        start, stop = max(offset, self.begin), min(offset + len(view), self.end)
        if stop <= start:
            return
        with self.lock:
            if start <= self.position < stop:
                self.digest.update(view[self.position - offset:stop - offset])
                self.position = stop


class _FileState:
    """One file's digests and how far they have got."""

    def __init__(self, span: FileSpan, tensors: list[tuple[int, int, str]], expected: list[tuple[int, int]]) -> None:
        self.path, self.size = span.path, span.size
        self.position = 0
        self.digest = hashlib.sha256()
        self.tensors = sorted(tensors)
        self.begins = [begin for begin, _, _ in self.tensors]
        self.expected = sorted(expected)
        self.pending: dict[int, bytes] = {}

    def give_up_position(self) -> None:
        """The expected range at the position will be read here, not delivered."""
        upcoming = self.next_expected()
        if upcoming is not None and upcoming[0] <= self.position:
            self.expected[0] = (upcoming[0], self.position)

    def next_pending(self) -> int | None:
        """Where the first kept bytes after the position start."""
        return min((o for o in self.pending if o > self.position), default=None)

    def next_expected(self) -> tuple[int, int] | None:
        """The first range a stream will deliver that ends after the position."""
        while self.expected and self.expected[0][1] <= self.position:
            self.expected.pop(0)
        return self.expected[0] if self.expected else None


class StreamedDigests:
    """SHA-256 of every file of a checkpoint and of every tensor's stored bytes, computed from
    the bytes a streamed pass reads (install it with ``checkpoint.observing(digests)``), so the
    pass and the hashes read each byte once.

    A tensor's digest is fed by the stream reading it, as it reads (outside the lock: the
    streams on other threads hash their own tensors meanwhile), where the read continues it;
    bytes it did not get that way (read out of order, or here) reach it in file order below.
    The files' digests are taken in file order. A read at the current position is hashed at once,
    followed by whatever was kept for what comes next; a read ahead of it is copied and kept
    (up to :data:`PENDING_BYTES`; beyond that the stream waits for the position to come closer,
    and if it stops moving for :data:`WAIT_S` the bytes at the position are read here); a read behind
    it (a second look at bytes already hashed) is ignored. Bytes no stream will deliver --
    outside the ``expected`` tensors: headers, padding, tensors the pass skips -- are read
    here when the position reaches them or a stream reads past them, and :meth:`finish`
    reads whatever is left. A pass
    over the expected tensors in file order (the thread holding the earliest tensor always
    reads at the position) therefore reads every byte once. Without ``expected``,
    :meth:`finish` is one sequential pass, the file digest on a second thread (hashlib
    releases the GIL on large updates).
    """

    def __init__(self, checkpoint: Checkpoint, expected: Iterable[str] = (), chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 progress: Progress | None = None) -> None:
        self.chunk_bytes, self.progress = chunk_bytes, progress
        by_file: dict[str, list[tuple[int, int, str]]] = {}
        for info in checkpoint.tensors.values():
            by_file.setdefault(info.file, []).append((info.offset, info.offset + info.n_bytes, info.name))
        wanted: dict[str, list[tuple[int, int]]] = {}
        for name in expected:
            info = checkpoint.info(name)
            wanted.setdefault(info.file, []).append((info.offset, info.offset + info.n_bytes))
        self.files = {span.path: _FileState(span, by_file.get(span.path, []), wanted.get(span.path, []))
                      for span in checkpoint.files}
        self.tensor_digests = {name: _TensorDigest(info.offset, info.offset + info.n_bytes)
                               for name, info in checkpoint.tensors.items()}
        self.bytes_read_here = 0
        """Bytes these digests read themselves (not delivered by a stream)."""
        self._changed = threading.Condition()
        self._pending_bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provenance-sha256")
        self._stack = ExitStack()
        self._files_here: dict[str, ModelFile] = {}
        self._buffer = bytearray()
        self._closed = False

    # ----- the stream's side -------------------------------------------------------------
    def __call__(self, path: str, offset: int, buffers: list[memoryview]) -> None:
        state = self.files.get(path)
        if state is None:
            return
        for buffer in buffers:
            # the tensors' digests first, here and now: only the file's digest needs the bytes in
            # file order (a stream ahead of it keeps them, or waits); a tensor's are read in order
            self._feed_tensors(state, offset, buffer)
            self._observe(state, offset, buffer)
            offset += len(buffer)

    def _feed_tensors(self, state: _FileState, offset: int, view: memoryview) -> None:
        """The digests of the tensors ``view`` (bytes of ``state``'s file from ``offset``) overlaps."""
        end, tensors = offset + len(view), state.tensors
        for at in range(max(0, bisect.bisect_right(state.begins, offset) - 1), len(tensors)):
            begin, _, name = tensors[at]
            if begin >= end:
                break
            self.tensor_digests[name].feed(offset, view)

    def _observe(self, state: _FileState, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        with self._changed:
            if self._closed:
                return
            if offset > state.position:
                # bytes no stream delivers (the header, padding, tensors the pass leaves out) up to
                # the next a stream does are read here now: else a pass's first read, past the
                # header, waited for the position until PENDING_BYTES and then WAIT_S ran out
                # (~2 s idle at the start of investigate's lineage pass at 7B)
                before = state.position
                self._advance(state)
                if state.position != before:
                    self._changed.notify_all()
            deadline, seen = time.monotonic() + WAIT_S, state.position
            while offset > state.position and self._pending_bytes + len(view) > PENDING_BYTES:
                if state.position != seen:  # the stream at the position is moving: keep waiting
                    deadline, seen = time.monotonic() + WAIT_S, state.position
                left = deadline - time.monotonic()
                if left <= 0:
                    # nothing delivers the bytes at the position (a stream out of file order):
                    # read them here rather than wait, so every stream keeps going
                    state.give_up_position()
                    self._advance(state)
                    self._changed.notify_all()
                    deadline = time.monotonic() + WAIT_S
                    continue
                self._changed.wait(left)
                if self._closed:
                    return
            if end <= state.position:
                return
            if offset > state.position:
                state.pending[offset] = bytes(view)
                self._pending_bytes += len(view)
                return
            self._hash(state, view[state.position - offset:], fed=True)
            self._advance(state)
            self._changed.notify_all()

    # ----- in file order ----------------------------------------------------------------
    def _hash(self, state: _FileState, view: memoryview, fed: bool = False) -> None:
        """Bytes at ``state.position``, into the file's and the overlapped tensors' digests;
        ``fed``: a stream's read whose tensor digests it has just fed (:meth:`__call__`)."""
        start, stop = state.position, state.position + len(view)
        if fed:
            state.digest.update(view)
        else:  # bytes read here, or kept: the tensors' digests (where not fed yet) beside the file's
            update = self._pool.submit(state.digest.update, view)
            self._feed_tensors(state, start, view)
            update.result()
        state.position = stop
        if self.progress:
            self.progress(len(view))

    def _advance(self, state: _FileState, to_end: bool = False) -> None:
        """Hash what was kept for the position, and read what no stream will deliver."""
        while state.position < state.size and not self._closed:
            kept = next((o for o in state.pending if o <= state.position < o + len(state.pending[o])), None)
            if kept is not None:
                data = state.pending.pop(kept)
                self._pending_bytes -= len(data)
                self._hash(state, memoryview(data)[state.position - kept:])
                continue
            upcoming = state.next_expected()
            if upcoming is not None and upcoming[0] <= state.position and not to_end:
                break  # a stream delivers this
            # up to the next range a stream delivers (at the end: everything), or kept bytes
            stop = state.size if upcoming is None or to_end else upcoming[0]
            kept_next = state.next_pending()
            self._read_here(state, min(stop, state.position + self.chunk_bytes, kept_next or state.size))
        for o in [o for o in state.pending if o + len(state.pending[o]) <= state.position]:
            self._pending_bytes -= len(state.pending.pop(o))

    def _read_here(self, state: _FileState, stop: int) -> None:
        file = self._files_here.get(state.path)
        if file is None:
            file = self._files_here[state.path] = ModelFile(open_regular(state.path))
            self._stack.callback(file.close)
        if len(self._buffer) < stop - state.position:  # one buffer, reused: _hash is done with it on return
            self._buffer = bytearray(stop - state.position)
        data = memoryview(self._buffer)[:stop - state.position]
        try:
            n = file.preadv([data], state.position)
        except OSError as exc:
            raise from_os_error(exc, state.path, "file bytes") from exc
        if not state.expected:  # no stream delivers the bytes after these: read on while they are hashed
            file.will_need(state.position + n, min(self.chunk_bytes, state.size - state.position - n))
        if not n:
            raise MalformedCheckpoint(state.path, "file shorter than its header says", offset=state.position)
        self.bytes_read_here += n
        self._hash(state, memoryview(data)[:n])

    def finish(self) -> tuple[dict[str, str], dict[str, str]]:
        """``({file path: sha256}, {tensor name: sha256})``, reading whatever no stream delivered."""
        try:
            with self._changed:
                for state in self.files.values():
                    self._advance(state, to_end=True)
                self._changed.notify_all()
        finally:
            self.close()
        return ({path: state.digest.hexdigest() for path, state in self.files.items()},
                {name: tensor.digest.hexdigest() for name, tensor in self.tensor_digests.items()})

    def close(self) -> None:
        """Stop (a stream still running returns at once) and let go of files and the hashing thread."""
        self._closed = True  # seen by a stream inside _advance without the lock
        with self._changed:
            self._changed.notify_all()
            self._stack.close()
        self._pool.shutdown(wait=True)


def tensor_sha256s(checkpoint: Checkpoint, progress: Progress | None = None) -> dict[str, str]:
    """``{canonical name: sha256 of the raw stored bytes}``, reading only tensor bytes."""
    return {name: checkpoint.tensor_sha256(name, progress) for name in checkpoint.tensors}
