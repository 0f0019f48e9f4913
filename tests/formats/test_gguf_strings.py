"""The GGUF string walk: its compiled engine answers exactly as its Python engine does, on
valid, truncated and lying arrays (the fuzzer instruments only the Python one)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from provenance.formats import gguf_strings
from provenance.formats.gguf_strings_native import walk_compiled

CAP = 64 * 1024 * 1024


def strings(lengths: list[int]) -> bytes:
    return b"".join(struct.pack("<Q", n) + b"x" * n for n in lengths)


def both(buffer: bytes, pos: int, end: int, count: int, cap: int = CAP) -> tuple[tuple[int, ...], tuple[int, ...]]:
    python = gguf_strings.walk_python(buffer, pos, end, count, cap)
    data = np.frombuffer(buffer, dtype=np.uint8, count=end)
    compiled = tuple(int(v) for v in walk_compiled(data, np.int64(pos), np.int64(end), np.int64(count), np.int64(cap)))
    if compiled[2] == gguf_strings.OVER_CAP:  # the compiled engine leaves the over-cap length to its caller
        compiled = (*compiled[:3], python[3])
    return python, compiled


def test_engines_agree_on_valid_truncated_and_lying_arrays() -> None:
    rng = np.random.default_rng(0)
    buffer = strings(rng.integers(0, 40, 300).tolist())
    cases = 0
    for end in range(0, len(buffer) + 1, 7):  # every truncation of the array, strided
        for count in (0, 1, 150, 300, 301, 10_000):
            python, compiled = both(buffer, 0, end, count)
            assert python == compiled, (end, count)
            cases += 1
    lying = [struct.pack("<Q", 2**63 + 5) + b"abc", struct.pack("<Q", 2**64 - 1), struct.pack("<Q", CAP + 1) + b"z",
             struct.pack("<Q", 10) + b"short", b"\x01\x00"]
    for data in lying:
        python, compiled = both(data, 0, len(data), 3)
        assert python == compiled and python[2] != gguf_strings.OK
    assert cases > 1000


@pytest.mark.parametrize("count", [gguf_strings.COMPILED_FROM - 1, gguf_strings.COMPILED_FROM])
def test_walk_picks_an_engine_by_length_and_gives_the_same_answer(count: int) -> None:
    buffer = strings([3] * count) + b"\x05"
    assert gguf_strings.walk(buffer, 0, len(buffer), count, CAP) == (11 * count, count, gguf_strings.OK, 0)
    assert gguf_strings.walk(buffer, 0, len(buffer), count + 1, CAP) == (11 * count, count, gguf_strings.TRUNCATED_LENGTH, 0)
    over = buffer[:-1] + struct.pack("<Q", 2**63)
    assert gguf_strings.walk(over, 0, len(over), count + 1, CAP) == (11 * count, count, gguf_strings.OVER_CAP, 2**63)


def test_a_fresh_process_walks_a_large_vocabulary_without_loading_numba() -> None:
    """Loading numba costs more than Python's walk of a 262k-token vocabulary: a process that
    has not loaded it walks in Python (same answer), one that has uses the compiled loop."""
    import subprocess
    import sys

    code = ("import sys, struct\n"
            "from provenance.formats import gguf_strings\n"
            "count = 300_000\n"
            "buffer = b''.join(struct.pack('<Q', 2) + b'ab' for _ in range(count))\n"
            "print(gguf_strings.walk(buffer, 0, len(buffer), count, 1 << 20), 'numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.strip() == "(3000000, 300000, 0, 0) False"
