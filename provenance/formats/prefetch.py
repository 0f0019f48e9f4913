"""Read the next chunk of a streamed pass while the caller analyses the current one.

A streamed pass (``quantcheck``'s grid check, ``compare``'s pair statistics) alternates
reading a chunk (``preadv`` into a reader's byte buffer, then decoding: a torch cast or a
compiled dequantizer, all of which release the GIL) and analysing it. Done in turn, the
analysis waits for every read and decode: ~17% of ``quantcheck``'s per-tensor time at the
7B shape, more on a cold disk (docs/benchmarks.md, "Hot paths of compare, quantcheck,
detect"). :func:`prefetched` moves the reading to one worker thread, one chunk ahead.

Memory stays flat: the caller owns two *slots* (buffer sets, one chunk each); the worker
fills one while the caller holds the other, and a slot is filled again only after the
caller has asked for the next chunk, i.e. is done with it. Readers are used by the worker
alone, in chunk order, so their sequential read-ahead (:data:`provenance.formats.rows.READAHEAD_BYTES`)
works as in a plain loop.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from provenance.formats.rows import RowReader

Item = TypeVar("Item")

SLOTS = 2
"""Buffer sets a prefetched pass needs: the one the caller holds and the one being filled."""


def chunk_ranges(n_rows: int, step: int) -> list[tuple[int, int]]:
    """Rows ``[0, n_rows)`` as consecutive ``(start, stop)`` chunks of at most ``step`` rows."""
    return [(a, min(n_rows, a + step)) for a in range(0, n_rows, max(1, step))]


def prefetched(ranges: Sequence[tuple[int, int]], load: Callable[[int, int, int], Item],
               ahead: bool = True) -> Iterator[Item]:
    """``load(start, stop, slot)`` for each range, in order; with ``ahead``, the next range is
    loaded on a worker thread (into the other of two slots, ``slot`` 0 or 1) while the caller
    holds the current item. The caller must be done with an item when it asks for the next.

    An exception of ``load`` is raised where its item would have been yielded. Whatever ends
    the iteration (exhausted, closed early, an exception or Ctrl-C in the caller), the worker's
    load in flight is waited for before this returns, so no read outlives the caller's buffers
    and readers. ``ahead=False`` (or a single range) loads on the calling thread, slot 0.
    :func:`prefetched_each` does the same with several loads per range, each on its own worker."""
    parts = prefetched_each(ranges, (load,), ahead)
    try:
        for (item,) in parts:
            yield item
    finally:
        parts.close()  # waits for the load in flight


def prefetched_each(ranges: Sequence[tuple[int, int]], loads: Sequence[Callable[[int, int, int], Any]],
                    ahead: bool = True, workers: int | None = None) -> Iterator[tuple[Any, ...]]:
    """:func:`prefetched` with several loads per range (e.g. the reference's rows and the
    candidate's stored bytes: two files), yielded together as a tuple in the order of ``loads``;
    with ``ahead`` each load of the next range runs on a worker thread of its own, so the
    files are read and decoded side by side (the reads' system time and the decoding were one
    thread's, the critical path of ``quantcheck``: docs/benchmarks.md, issue #12). Each load
    still runs once per range, in range order, one at a time: a reader used by one load only
    sees the sequential access its read-ahead expects. ``workers``: at most this many worker
    threads (the command's ``--threads`` budget; 1: the loads of a range one after the other on
    one worker, as :func:`prefetched`); default one per load."""
    if not ahead or len(ranges) < 2:
        for start, stop in ranges:
            yield tuple(load(start, stop, 0) for load in loads)
        return
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(loads), workers or len(loads))),
                              thread_name_prefix="provenance-prefetch")

    def submit(i: int) -> list[Future[Any]]:
        return [pool.submit(load, *ranges[i], i % SLOTS) for load in loads]

    pending = submit(0)
    try:
        for i in range(len(ranges)):
            current, pending = pending, []
            # the first failure is raised here; the other loads of the range are waited for below
            item = tuple(f.result() for f in current)
            if i + 1 < len(ranges):
                pending = submit(i + 1)
            yield item
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


class SlotBuffers:
    """One reader's chunk buffers per slot, for a :func:`prefetched` load: canonical float32
    rows decoded into the slot's buffer, and a copy of the stored bytes (the reader's own
    byte buffer is refilled by the next chunk while the caller still checks this one).
    Allocated on first use, one chunk of ``max_rows`` rows each."""

    def __init__(self, reader: RowReader, max_rows: int) -> None:
        self.reader, self.max_rows = reader, max_rows
        self._rows: list[torch.Tensor | None] = [None] * SLOTS
        self._raw: list[np.ndarray | None] = [None] * SLOTS

    def rows(self, slot: int, start: int, stop: int) -> torch.Tensor:
        """Canonical rows ``[start, stop)`` in ``slot``'s float32 buffer (a view of it)."""
        buf = self._rows[slot]
        if buf is None:
            buf = self._rows[slot] = torch.empty((self.max_rows, self.reader.info.row_length), dtype=torch.float32)
        return self.reader.read_into(start, stop, buf[: stop - start])  # type: ignore[return-value]

    def raw(self, slot: int, start: int, stop: int) -> np.ndarray:
        """Stored bytes of rows ``[start, stop)`` (:meth:`RowReader.raw`) copied into ``slot``'s
        byte buffer; right after :meth:`rows` of the same range the file is not read again."""
        buf = self._raw[slot]
        if buf is None:
            buf = self._raw[slot] = np.empty((self.max_rows, self.reader.info.row_bytes), dtype=np.uint8)
        out = buf[: stop - start]
        np.copyto(out, self.reader.raw(start, stop))
        return out


__all__ = ["SLOTS", "SlotBuffers", "chunk_ranges", "prefetched", "prefetched_each"]
