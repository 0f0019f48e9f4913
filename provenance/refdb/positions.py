"""Where a weight fingerprint samples a tensor: a few short row spans from a public seed.

Positions are *spans*: ``(row, col_start, length)`` in the canonical 2-D view
(``n_rows x row_length``). A span of up to 256 weights starting at a multiple of 32
(of 256 when the row allows) covers whole ggml blocks for every block size (32 for
legacy quants, 256 for K-quants), so a quantized candidate dequantizes only the few
blocks under each span: one small read per span, never a whole row.

The seed is public and fixed, and the positions depend only on the tensor's canonical
name and shape, so anyone can recompute them; entries also store them, so reading a
candidate never depends on this generator staying bit-stable across numpy releases.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

PUBLIC_SEED = "provenance.refdb weight fingerprint v1"
SPANS_PER_TENSOR = 8
SPAN_LENGTH = 256
ALL_VALUES_UP_TO = 16384
"""1-D tensors (norm weights) up to this length are sampled whole: they are tiny."""


@dataclass(frozen=True)
class Spans:
    rows: np.ndarray
    """int64 canonical row of each span."""
    starts: np.ndarray
    """int64 first column of each span."""
    length: int
    """Values per span (the same for every span of a tensor)."""

    @property
    def n_values(self) -> int:
        return len(self.rows) * self.length


def _rng(name: str, shape: tuple[int, ...]) -> np.random.Generator:
    key = f"{PUBLIC_SEED}|{name}|{'x'.join(map(str, shape))}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def sample_spans(name: str, shape: tuple[int, ...]) -> Spans:
    """The spans the fingerprint reads from tensor ``name`` of (canonical, numpy) ``shape``."""
    row_length = shape[-1] if shape else 1
    n_rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    rng = _rng(name, shape)
    if n_rows == 1 and row_length <= ALL_VALUES_UP_TO:
        return Spans(np.zeros(1, np.int64), np.zeros(1, np.int64), row_length)
    length = min(SPAN_LENGTH, row_length)
    # Align to 256 where the row allows it (whole K-quant super-blocks), else to 32.
    align = 256 if row_length % 256 == 0 and length == 256 else 32
    n_starts = max(1, (row_length - length) // align + 1)
    count = min(SPANS_PER_TENSOR, n_rows * n_starts)
    if n_rows == 1:  # a long 1-D tensor: distinct spans along its one row
        count = min(count, n_starts)
        rows = np.zeros(count, np.int64)
        starts = np.sort(rng.choice(n_starts, size=count, replace=False)) * align
    else:
        rows = np.sort(rng.choice(n_rows, size=count, replace=False)) if n_rows >= count else np.arange(n_rows)
        starts = rng.integers(0, n_starts, size=len(rows)) * align
    return Spans(rows.astype(np.int64), starts.astype(np.int64), length)
