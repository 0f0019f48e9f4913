"""A prefetched pass (formats.prefetch): every chunk once, in order, from alternating slots, the
next one loaded on a worker thread while the caller holds the current one; a failing load
surfaces at its chunk, and however the pass ends no load is left running."""
from __future__ import annotations

import threading
import time
from contextlib import closing

import numpy as np
import pytest
import torch

from provenance.formats import open_checkpoint
from provenance.formats.prefetch import SlotBuffers, chunk_ranges, prefetched, prefetched_each
from tests.codecs.test_quantize_ref import TRUE_SOURCE
from tests.conftest import QUANT_DIR


def test_chunk_ranges_cover_the_rows_once() -> None:
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(0, 4) == []
    assert chunk_ranges(3, 8) == [(0, 3)]


def test_next_chunk_loads_on_a_worker_while_the_caller_holds_this_one() -> None:
    ranges = chunk_ranges(50, 7)
    caller = threading.get_ident()
    started = {start: threading.Event() for start, _ in ranges}
    on_caller = []

    def load(start: int, stop: int, slot: int) -> tuple[int, int, int]:
        on_caller.append(threading.get_ident() == caller)
        started[start].set()
        return start, stop, slot

    got = []
    for i, item in enumerate(prefetched(ranges, load)):
        if i + 1 < len(ranges):  # the caller has not asked for the next chunk, yet it is being loaded
            assert started[ranges[i + 1][0]].wait(timeout=10)
        got.append(item)
    assert [(a, b) for a, b, _ in got] == ranges
    assert [slot for _, _, slot in got] == [i % 2 for i in range(len(ranges))]
    assert on_caller == [False] * len(ranges)


def test_in_turn_loads_on_the_caller_in_slot_zero() -> None:
    caller = threading.get_ident()
    seen = list(prefetched(chunk_ranges(9, 4), lambda a, b, s: (a, b, s, threading.get_ident() == caller), ahead=False))
    assert seen == [(0, 4, 0, True), (4, 8, 0, True), (8, 9, 0, True)]


def test_a_failing_load_raises_at_its_chunk() -> None:
    def load(start: int, stop: int, slot: int) -> int:
        if start == 8:
            raise OSError("short read")
        return start

    got = []
    with pytest.raises(OSError, match="short read"):
        for item in prefetched(chunk_ranges(20, 4), load):
            got.append(item)
    assert got == [0, 4]


def test_leaving_early_waits_for_the_load_in_flight() -> None:
    started, release = threading.Event(), threading.Event()
    finished = []

    def load(start: int, stop: int, slot: int) -> int:
        if start:
            started.set()
            release.wait(timeout=10)
            finished.append(start)
        return start

    chunks = prefetched(chunk_ranges(12, 4), load)
    assert next(chunks) == 0
    assert started.wait(timeout=10)  # the second chunk is being loaded
    threading.Timer(0.2, release.set).start()
    chunks.close()  # returns only once that load is over
    assert finished == [4]


def test_slot_buffers_hold_each_chunk_apart_from_the_readers_buffers() -> None:
    """Real Q8_0 rows: each slot keeps its chunk (rows and stored bytes) while the reader moves on."""
    quant_file = "tiny-llama-Q8_0.gguf"
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(QUANT_DIR / TRUE_SOURCE[quant_file]) as ref:
        name = next(n for n, info in cand.tensors.items() if info.dtype == "Q8_0" and info.n_rows >= 8)
        step = max(1, cand.info(name).n_rows // 4)
        ranges = chunk_ranges(cand.info(name).n_rows, step)
        with cand.row_reader(name, step) as stored, ref.row_reader(name, step) as reference:
            cand_slots, ref_slots = SlotBuffers(stored, step), SlotBuffers(reference, step)

            def load(a: int, b: int, slot: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
                return cand_slots.rows(slot, a, b), cand_slots.raw(slot, a, b), ref_slots.rows(slot, a, b)

            with closing(prefetched(ranges, load)) as chunks:
                for (a, b), (c_rows, c_raw, r_rows) in zip(ranges, chunks, strict=True):
                    assert np.array_equal(c_rows.numpy(), cand.read_rows(name, a, b))
                    assert np.array_equal(c_raw, cand.raw_rows(name, a, b))
                    assert np.array_equal(r_rows.numpy(), ref.read_rows(name, a, b))


def test_each_load_of_a_range_runs_on_its_own_worker_side_by_side() -> None:
    """Two loads per range (two files): both of the next range run at once, on two workers
    (each waits for the other to start: in turn they would time out), and every range's
    items come back together, in range order, from alternating slots."""
    ranges = chunk_ranges(30, 4)
    caller = threading.get_ident()
    meet = {start: threading.Barrier(2, timeout=10) for start, _ in ranges}
    threads: dict[str, set[int]] = {"a": set(), "b": set()}

    def loader(tag: str):  # type: ignore[no-untyped-def]
        def load(start: int, stop: int, slot: int) -> tuple[str, int, int, int]:
            meet[start].wait()  # BrokenBarrierError unless the other load of this range runs too
            threads[tag].add(threading.get_ident())
            return tag, start, stop, slot
        return load

    got = list(prefetched_each(ranges, (loader("a"), loader("b"))))
    assert got == [(("a", a, b, i % 2), ("b", a, b, i % 2)) for i, (a, b) in enumerate(ranges)]
    assert caller not in threads["a"] | threads["b"]


def test_one_failing_load_raises_at_its_range_after_the_other_load_is_done() -> None:
    """A failing load surfaces at its range; the other load of that range, still reading, is
    waited for before the error reaches the caller, and nothing runs after."""
    finished: list[tuple[str, int]] = []
    calls: list[tuple[str, int]] = []

    def slow(start: int, stop: int, slot: int) -> int:
        calls.append(("slow", start))
        if start == 8:
            time.sleep(0.3)
        finished.append(("slow", start))
        return start

    def failing(start: int, stop: int, slot: int) -> int:
        calls.append(("failing", start))
        if start == 8:
            raise OSError("short read")
        return start

    got = []
    with pytest.raises(OSError, match="short read"):
        for item in prefetched_each(chunk_ranges(20, 4), (slow, failing)):
            got.append(item)
    assert got == [(0, 0), (4, 4)]
    assert ("slow", 8) in finished  # waited for, not left running
    time.sleep(0.1)
    assert max(start for _, start in calls) == 8  # no range after the failing one was started


def test_leaving_a_two_load_pass_early_waits_for_both_loads_in_flight() -> None:
    release = threading.Event()
    started = {"a": threading.Event(), "b": threading.Event()}
    finished: list[tuple[str, int]] = []

    def loader(tag: str):  # type: ignore[no-untyped-def]
        def load(start: int, stop: int, slot: int) -> int:
            if start:
                started[tag].set()
                release.wait(timeout=10)
                finished.append((tag, start))
            return start
        return load

    chunks = prefetched_each(chunk_ranges(12, 4), (loader("a"), loader("b")))
    assert next(chunks) == (0, 0)
    assert all(e.wait(timeout=10) for e in started.values())  # both loads of the second range are reading
    threading.Timer(0.2, release.set).start()
    chunks.close()  # returns only once both are over
    assert sorted(finished) == [("a", 4), ("b", 4)]
    assert not [t for t in threading.enumerate() if t.name.startswith("provenance-prefetch")]


def test_one_worker_runs_each_range_loads_in_turn() -> None:
    """``workers=1`` (``--threads 1``): one worker thread, a range's loads one after the other."""
    order: list[tuple[str, int]] = []
    threads: set[int] = set()

    def loader(tag: str):  # type: ignore[no-untyped-def]
        def load(start: int, stop: int, slot: int) -> int:
            threads.add(threading.get_ident())
            order.append((tag, start))
            return start
        return load

    ranges = chunk_ranges(16, 4)
    got = list(prefetched_each(ranges, (loader("a"), loader("b")), workers=1))
    assert got == [(a, a) for a, _ in ranges]
    assert order == [(tag, a) for a, _ in ranges for tag in "ab"]
    assert len(threads) == 1 and threading.get_ident() not in threads
