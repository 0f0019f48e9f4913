"""How the ``provenance`` executable's C heap gives memory back (glibc only; nothing elsewhere).

glibc serves an allocation above ``M_MMAP_THRESHOLD`` with its own ``mmap`` and returns it to
the system when it is freed; anything smaller comes from the heap, whose freed pages mostly stay
with the process. By default the threshold is *dynamic*: each time a block that was mmapped is
freed, the threshold rises to that block's size, up to 32 MiB. So once a command frees a few
tens of MB of sampled rows, every later array of that size comes from the heap and stays resident
after it is freed. On one layer of the 70B shape, ``investigate`` computes the shape statistics
of 128 sampled rows of 28672 weights, in float64 arrays of 29 MB, a dozen at a time. That
lifted its peak RSS from the stream's ~1.3 GB to 1534-1673 MB, past the 1.5 GB target
(docs/benchmarks.md, "Hand-offs per chunk").

A fixed threshold ends the rise. At 16 MiB the stream's per-chunk buffers (2M float32 values,
8 MB) are still recycled from the heap without page faults, while the sampled rows' arrays go
back to the system when freed. Measured cold on that 70B slice:

| threshold | peak RSS (MiB) | system CPU |
|---|---|---|
| dynamic (glibc's default) | 1534-1673 | 3.3 s |
| 16 MiB | 1354 | 5.7 s |
| 4 MiB | 1291 | 6.7 s |
| 1 MiB | 1241 | 7.3 s |

The price is glibc's trim threshold, fixed at 128 KiB with it: the heap's top is handed back and
faulted in again, ~6 CPU s of a 7B ``investigate`` (92.9 -> 106.3 s wall in a same-run pair). A
64 MiB trim threshold removed that cost, but put the 70B slice back at 1557 MiB.

A ``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc's own tunable) is left as the user set
it. Only the executable does this (:func:`provenance.commands.process.own_process`): a library
imported into a notebook leaves its host's allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 16 << 20
"""Bytes from which an allocation is mmapped, and so returned to the system when freed."""

_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (``malloc.h``)."""


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold``. Returns whether it was set: not on
    another C library, and not where the environment already sets it."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # glibc's own symbol: musl, for one, has a mallopt that does nothing
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
