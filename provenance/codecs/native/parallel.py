"""Split one kernel call's blocks between threads.

The kernels release the GIL, so plain Python threads run them in parallel; this keeps
thread control in our hands (the count follows ``torch.get_num_threads()`` like the torch
kernels' intra-op threads) and needs no numba threading layer (the default "workqueue"
layer aborts when two threads enter a parallel region at once, which the comparison's
tensor threads would do).

When a call is split, every part runs on a pool thread and the calling thread only waits:
a signal handler (Ctrl-C's KeyboardInterrupt) runs only between bytecodes, so a calling
thread inside a compiled kernel would not notice Ctrl-C until its part ended (~0.2-0.4 s
for a 4M-weight Q4_K chunk idle, seconds on a loaded machine), while waiting on a future
is interrupted at once (docs/quantization.md, "provenance quantize").
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, partial
from itertools import pairwise
from typing import Any

import numpy as np

#: below this many weights per thread (~10 us of work), handing a part to a thread costs
#: more than it saves
MIN_WEIGHTS_PER_THREAD = 1 << 16


@cache
def _pool(pid: int, workers: int) -> ThreadPoolExecutor:
    # keyed by process: a forked child inherits the executor but not its threads, and
    # would wait forever on work queued to them
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provenance-dequant")


def _bounds(n: int, weights: int, threads: int) -> list[int]:
    """Split points of ``n`` equal items holding ``weights`` weights in all into at most
    ``threads`` contiguous parts, none under ``MIN_WEIGHTS_PER_THREAD`` weights."""
    parts = max(1, min(threads, n, weights // MIN_WEIGHTS_PER_THREAD))
    return [n * k // parts for k in range(parts + 1)]


def _run(calls: list[Callable[[], None]]) -> None:
    """Run ``calls``: one alone on this thread; several all on the pool at once, this
    thread only waiting (so Ctrl-C is seen at once, see above)."""
    if len(calls) == 1:
        calls[0]()
        return
    _wait(_pool(os.getpid(), len(calls)).submit(call) for call in calls)


def run_split(fn: Callable[..., None], blocks: np.ndarray, out: np.ndarray,
              tables: tuple[np.ndarray, ...], threads: int) -> None:
    """``fn(blocks, out, *tables)`` over ``threads`` contiguous parts of the blocks."""
    bounds = _bounds(blocks.shape[0], out.size, threads)
    _run([partial(fn, blocks[a:b], out[a:b], *tables) for a, b in pairwise(bounds)])


def run_rows(fn: Callable[..., None], args: tuple[object, ...], out: np.ndarray, threads: int) -> None:
    """``fn(*args, out, r0, r1)`` over ``threads`` contiguous row ranges of ``out``: for the
    kernels whose inputs are not split row by row like their output (GPTQ packs along the
    input dimension, AWQ along the output)."""
    bounds = _bounds(out.shape[0], out.size, threads)
    _run([partial(fn, *args, out, a, b) for a, b in pairwise(bounds)])


def _wait(futures: Iterable[Future[None]]) -> None:
    for f in list(futures):
        f.result()


def tile_bounds(n: int, weights: int) -> list[int]:
    """Split points of ``n`` equal items holding ``weights`` weights in all into tiles of
    about ``MIN_WEIGHTS_PER_THREAD`` weights: fixed by the data alone, never by the thread
    count, so that per-tile sums reduced in tile order are the same on any number of threads."""
    tiles = max(1, min(n, weights // MIN_WEIGHTS_PER_THREAD))
    return [n * k // tiles for k in range(tiles + 1)]


def map_tiles(fn: Callable[..., None], sliced: tuple[np.ndarray, ...],
              make_outputs: Callable[[int], tuple[np.ndarray, ...]], shared: tuple[Any, ...], threads: int,
              weights: int) -> list[tuple[np.ndarray, ...]]:
    """``fn(*tile, *outputs, *shared)`` over the tiles (:func:`tile_bounds`) of the first axis
    of every array in ``sliced`` (``weights`` in all), each tile with its own fresh
    ``make_outputs(tile_weights)`` (accumulators); up to ``threads`` threads take the tiles
    one at a time, in order. Returns the tiles' outputs in tile order, for
    the caller to combine in that fixed order: the result does not depend on ``threads``
    (float sums included, bit for bit)."""
    n = sliced[0].shape[0]
    bounds = tile_bounds(n, weights)
    per_item = weights // max(1, n)
    outputs = [make_outputs((hi - lo) * per_item) for lo, hi in pairwise(bounds)]

    def run_tiles(first: int, last: int) -> None:
        for t in range(first, last):
            lo, hi = bounds[t], bounds[t + 1]
            fn(*(a[lo:hi] for a in sliced), *outputs[t], *shared)

    tiles = len(outputs)
    workers = max(1, min(threads, tiles))
    if workers == 1:
        run_tiles(0, tiles)
        return outputs
    # tiles are handed out one at a time, not in fixed runs: the reading threads of a pass
    # take a core now and then, and a fixed half would leave the other thread idle at the end
    taken, lock = [0], threading.Lock()

    def take_tiles() -> None:
        while True:
            with lock:
                t = taken[0]
                taken[0] += 1
            if t >= tiles:
                return
            run_tiles(t, t + 1)

    _run([take_tiles] * workers)
    return outputs
