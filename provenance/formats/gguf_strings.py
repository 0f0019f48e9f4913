"""Walking a GGUF string array's length prefixes: the loop a large vocabulary spends a
header parse in (a 50k-token vocabulary with its merges is 100k strings; 262k tokens and
515k merges are ~780k).

Each string is a u64 length and that many bytes. A walk checks, for every item, that the 8
length bytes remain, that the length is under the cap and that the bytes remain, and stops
at the first failure. Two engines run the same walk: plain Python (~80 ns a string) and a
compiled loop (:mod:`provenance.formats.gguf_strings_native`, ~50x faster once loaded). Loading
numba and the cached loop costs ~0.4 s of CPU in a fresh process, more than Python spends on
a 262k-token vocabulary with its 515k merges (~0.06 s), so the compiled loop runs only where
numba is loaded already (an analysis process) or the array is long enough to repay the load
(``COLD_COMPILED_FROM``); ``provenance identify`` on a vocabulary never loads it. They return
the same ``(end, index, problem, length)`` and :mod:`provenance.formats.gguf_header` raises
the error from it. ``tests/formats/test_gguf_strings.py`` holds the two to the same answer
on valid, truncated and lying arrays. The compiled loop reads only inside ``[pos, end)``:
every index is checked against ``end`` before the read.
"""
from __future__ import annotations

import struct
import sys
from typing import Any

import numpy as np

OK, TRUNCATED_LENGTH, OVER_CAP, TRUNCATED_BYTES = 0, 1, 2, 3
COMPILED_FROM = 4096
"""Arrays of at least this many strings are walked by the compiled loop when numba is loaded."""
COLD_COMPILED_FROM = 1 << 23
"""...and from this many (8M strings, ~0.7 s in Python) even when it is not: the load repays itself."""
_U64 = struct.Struct("<Q")


def walk_python(buffer: Any, pos: int, end: int, count: int, cap: int) -> tuple[int, int, int, int]:
    unpack = _U64.unpack_from
    for i in range(count):
        if end - pos < 8:
            return pos, i, TRUNCATED_LENGTH, 0
        (length,) = unpack(buffer, pos)
        if length > cap:
            return pos, i, OVER_CAP, length
        if length > end - pos - 8:
            return pos, i, TRUNCATED_BYTES, length
        pos += 8 + length
    return pos, count, OK, 0


def walk(buffer: Any, pos: int, end: int, count: int, cap: int) -> tuple[int, int, int, int]:
    """Walk ``count`` strings from ``pos`` (bytes before ``end`` only): ``(position reached,
    index of the failing item or count, problem code, its length)``."""
    if count < COMPILED_FROM or (count < COLD_COMPILED_FROM and "numba" not in sys.modules):
        return walk_python(buffer, pos, end, count, cap)
    from provenance.formats.gguf_strings_native import walk_compiled

    data = np.frombuffer(buffer, dtype=np.uint8, count=end)
    reached, index, problem, length = walk_compiled(data, np.int64(pos), np.int64(end), np.int64(count), np.int64(cap))
    if problem == OVER_CAP:  # the compiled loop does not return a length over 2^63: read it here
        (length,) = _U64.unpack_from(buffer, int(reached))
    return int(reached), int(index), int(problem), int(length)
