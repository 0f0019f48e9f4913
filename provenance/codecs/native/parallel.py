"""Split one kernel call's blocks between threads.

The kernels release the GIL, so plain Python threads run them in parallel; this keeps
thread control in our hands (the count follows ``torch.get_num_threads()`` like the torch
kernels' intra-op threads) and needs no numba threading layer (the default "workqueue"
layer aborts when two threads enter a parallel region at once, which the comparison's
tensor threads would do).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from itertools import pairwise

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
    """Run ``calls``: the first on this thread, the others on the pool at the same time."""
    futures = [_pool(os.getpid(), len(calls) - 1).submit(call) for call in calls[1:]] if len(calls) > 1 else []
    calls[0]()
    for f in futures:
        f.result()


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
