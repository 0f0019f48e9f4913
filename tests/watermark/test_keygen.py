"""The compiled key generator's blocked loops (provenance/watermark/keygen.py) against the numpy
transcription of docs/watermark.md's specification, at every kind of boundary it has."""
from __future__ import annotations

import numpy as np

from provenance.watermark.keygen import BLOCK, SCRATCH, fill_gaussian, gaussian_dots
from provenance.watermark.keys import key_seed
from tests.support.keygen_reference import gaussian_reference

WORDS = tuple(int(w) for w in np.frombuffer(key_seed(b"provenance-test-secret-0001", "client-7", "blk.1.attn_v.weight")[:16],
                                            dtype="<u4"))
PER_BLOCK = 4 * BLOCK  # elements per block of counters


def test_every_start_and_length_equals_the_transcription() -> None:
    """Partial first and last counters, lengths short of, at and past a block of counters, starts
    inside a counter, at a block's edge and across the counter's 32-bit word, bit for bit; the
    elements beside the range are left as they were."""
    words = np.array(WORDS, dtype=np.uint32)
    counts = [0, 1, 2, 3, 4, 5, 7, 9, PER_BLOCK - 3, PER_BLOCK, PER_BLOCK + 1, PER_BLOCK + 6, 3 * PER_BLOCK + 4 * 17 + 2]
    for start in [0, 1, 2, 3, 4, 6, PER_BLOCK - 1, PER_BLOCK, 5 * PER_BLOCK + 2, (1 << 34) - PER_BLOCK - 5]:
        want = gaussian_reference(WORDS, start, max(counts))
        for count in counts:
            buffer = np.full(count + 2, 7.0, dtype=np.float32)
            fill_gaussian(words, np.int64(start), buffer[1:count + 1])
            np.testing.assert_array_equal(buffer[1:count + 1], want[:count], err_msg=f"start {start}, count {count}")
            assert buffer[0] == 7.0 and buffer[-1] == 7.0, (start, count)


def test_fused_dots_generate_the_same_elements() -> None:
    """``gaussian_dots`` over a range starting inside a counter and ending past several of its
    scratch chunks: against one-hot signals the dots are the key elements themselves, exactly."""
    words = np.array(WORDS, dtype=np.uint32)
    first, lo, hi = 2, 3, 2 * SCRATCH + PER_BLOCK + 3  # starts at element 5: the last three of a counter
    picks = [lo, lo + 1, SCRATCH - 1, SCRATCH, SCRATCH + PER_BLOCK - 1, hi - 1]
    ys = np.zeros((len(picks), hi), dtype=np.float32)
    ys[np.arange(len(picks)), picks] = 1.0
    out = np.zeros(len(picks))
    gaussian_dots(words, np.int64(first), ys, np.int64(lo), np.int64(hi), out)
    want = gaussian_reference(WORDS, first, hi)
    np.testing.assert_array_equal(out, want[picks].astype(np.float64))
