"""The compiled engine of :func:`provenance.formats.gguf_strings.walk` (same walk, same
answer as :func:`~provenance.formats.gguf_strings.walk_python`; a module of its own so the
fuzzer can instrument the Python engine, numba compiling only uninstrumented bytecode)."""
from __future__ import annotations

import numpy as np

from provenance.jit import kernel


@kernel
def walk_compiled(data, pos, end, count, cap):  # type: ignore[no-untyped-def]
    # Every index is checked against ``end`` (<= len(data)) before it is read. int64
    # throughout: the length is compared with the cap as uint64 first, so the cast below
    # cannot wrap (cap < 2^63), and no signed/unsigned comparison is ever made.
    for i in range(count):
        if end - pos < 8:
            return pos, i, 1, np.int64(0)
        length = np.uint64(0)
        for b in range(8):
            length |= np.uint64(data[pos + b]) << np.uint64(8 * b)
        if length > np.uint64(cap):
            return pos, i, 2, np.int64(-1)
        n = np.int64(length)
        if n > end - pos - 8:
            return pos, i, 3, n
        pos += 8 + n
    return pos, count, 0, np.int64(0)
