"""The streamed pass's inner loop: float64 sums over element pairs, compiled.

For a chunk of candidate values ``a`` and reference values ``b`` (float32), every element
is widened to float64 before ``d = a - b`` and ``s = a + b`` (exact or within one float64
rounding), and ``d``, ``s``, ``d*d``, ``d*s``, ``s*s`` are added to float64 lane
accumulators; ``max |a - b|`` is kept in float32 (it is reported as a float32 delta).

The ``LANES`` independent accumulators (element ``k`` of a chunk goes to lane
``k % LANES``) are what let LLVM vectorise the loop without fast-math reassociation, so
the sums are deterministic and each lane is a plain sequential float64 sum. Measured on
the 2-core development machine: ~4 Gelem/s per thread (the torch float32 Gram-matrix path
it replaced: 1.5 Gelem/s, and ~1e-7 relative error per row dot instead of ~1e-16).
"""
from __future__ import annotations

import numpy as np

from provenance.jit import inline, kernel

LANES = 32
#: rows of the lane array: sum d, sum s, sum d*d, sum d*s, sum s*s
SUM_D, SUM_S, SUM_DD, SUM_DS, SUM_SS = range(5)


@kernel
def pair_sums(a, b, lanes, peak):  # type: ignore[no-untyped-def]
    """Add the pairs of C-contiguous float32 ``a``, ``b`` (same size) to ``lanes``
    (float64 ``(5, LANES)``) and raise ``peak`` (float32 ``(LANES,)``) to ``|a - b|``.
    NaNs reach the sums (and are reported from there); ``peak`` skips them.

    The whole rows of ``LANES`` pairs run on a private copy of the accumulators, the peak
    raised by a select, not a conditional store: LLVM then vectorizes the lane loop (AVX:
    ~2.5x faster measured at the 7B shape, issue #12), while each lane is still the same
    sequential float64 sum (``tests/compare/test_stats.py`` holds it to one, bit for bit)."""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    n = af.size
    whole = n // LANES * LANES
    acc = lanes.copy()  # private: no aliasing with the inputs for the vectorizer to check
    top = peak.copy()
    for k0 in range(0, whole, LANES):
        for lane in range(LANES):
            _add_lane(af, bf, k0 + lane, lane, acc, top)
    lanes[:] = acc
    peak[:] = top
    for k in range(whole, n):
        _add_lane(af, bf, k, k - whole, lanes, peak)


@inline
def _add_lane(af, bf, k, lane, lanes, peak):  # type: ignore[no-untyped-def]
    x = np.float64(af[k])
    y = np.float64(bf[k])
    d = x - y
    s = x + y
    lanes[0, lane] += d
    lanes[1, lane] += s
    lanes[2, lane] += d * d
    lanes[3, lane] += d * s
    lanes[4, lane] += s * s
    gap = abs(af[k] - bf[k])
    held = peak[lane]
    peak[lane] = gap if gap > held else held  # not max(): a NaN gap leaves peak alone (the sums carry it)
