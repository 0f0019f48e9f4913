"""The change a mark made to a chunk of rows, as :class:`.embed.TensorChange` reports it, in
one compiled pass (docs/watermark.md, "Embedding").

Per :data:`~provenance.watermark.signals.SUM_CHUNK` values of the chunk, while they are in
cache: ``sum(w**2)``, ``sum((stored - w)**2)`` (the stored values read back as float32) and
the ``max |w|`` of each Q8_0 block of 32. The sums are the float32 BLAS dot products of
:func:`~provenance.watermark.signals.dot64` over the same pieces of the same flat array,
added in float64 in the same order, so the report is the one separate passes gave (torch's
``abs``, ``amax`` and a scratch array the size of the chunk): the block maxima are exact, and
the caller turns them into the Q8_0 step sum with the same torch reduction as before.
"""
from __future__ import annotations

import numpy as np

from provenance.jit import kernel
from provenance.watermark.signals import SUM_CHUNK

#: Q8_0's block length: the change is reported against its rounding noise
Q8_BLOCK = 32


@kernel
def change_sums(w: np.ndarray, back: np.ndarray, sums: np.ndarray, amax: np.ndarray) -> None:
    """Adds ``sum(w**2)`` and ``sum((back - w)**2)`` of flat float32 ``w`` and ``back`` to
    ``sums[0:2]``; ``amax[b] = max |w|`` over block ``b`` of :data:`Q8_BLOCK` values (NaN if
    the block holds one, as torch's ``amax``). ``len(w)`` is a multiple of the block."""
    n = w.shape[0]
    diff = np.empty(SUM_CHUNK, dtype=np.float32)
    total_w = 0.0
    total_d = 0.0
    for a in range(0, n, SUM_CHUNK):
        b = min(n, a + SUM_CHUNK)
        for i in range(a, b):
            diff[i - a] = back[i] - w[i]
        total_w += np.float64(np.dot(w[a:b], w[a:b]))
        total_d += np.float64(np.dot(diff[:b - a], diff[:b - a]))
        for blk in range(a // Q8_BLOCK, b // Q8_BLOCK):
            m = np.float32(0.0)
            nan = False
            for i in range(blk * Q8_BLOCK, (blk + 1) * Q8_BLOCK):
                v = abs(w[i])
                nan |= v != v
                m = max(m, v)
            amax[blk] = np.float32(np.nan) if nan else m
    sums[0] += total_w
    sums[1] += total_d
