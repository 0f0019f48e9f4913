"""The traced client's watermark as a known change to the owner's model.

A client's copy is the owner's model plus that client's keyed mark, ``w + a * sigma_row(w) *
k`` on the tensors ``embed`` marks (:mod:`.embed`). Once tracing names the client, lineage
judges what else differs with the mark added to the reference
(:mod:`provenance.compare.known`; docs/lineage.md, "A known change: the traced client's
watermark"): the mark is then never read as the leaker's own change.

The amplitude is estimated, not assumed: the least-squares fit of ``candidate - reference``
on ``sigma_row(w) * k`` over the first :data:`PROBE_ROWS` rows of every marked tensor that
lineage paired without moving it. Quantization and storage rounding are independent of the
key, so the fit is unbiased; its error (a quantized 135M copy: ~2% of the amplitude) moves a
weight by far less than the grid check's 0.05-step tolerance. The mark itself is generated
by the embed arithmetic (:func:`.embed.mark_into`), so at the fitted amplitude a marked and
then quantized copy is explained code for code.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from provenance.codecs.types import plain_type
from provenance.compare.copies import unchanged
from provenance.compare.gridframe import SourceMap
from provenance.compare.known import KnownChange
from provenance.compare.result import CompareResult
from provenance.compare.shape import GRID_TOLERANCE_STEPS, rounding_cells
from provenance.formats.base import Checkpoint
from provenance.watermark.embed import mark_into
from provenance.watermark.keys import KeySource
from provenance.watermark.select import Selector, default_selector, markable

#: rows per marked tensor the amplitude is fitted on
PROBE_ROWS = 32


def marked_names(ref: Checkpoint, key: KeySource, selector: Selector | None = None) -> list[str]:
    """The reference tensors ``embed`` marks with ``key`` (the default selection)."""
    chosen = selector or default_selector
    return [name for name, info in ref.tensors.items() if chosen(info) and markable(info) and key.has(name)]


def _marked(ref: Checkpoint, name: str, key: KeySource, amplitude: float, rows: np.ndarray,
            index: np.ndarray) -> np.ndarray:
    """``rows`` (the reference tensor's rows ``index``: the key stream is by row number) with the
    mark of ``amplitude`` added; a contiguous run of rows in one call, others row by row."""
    info = ref.info(name)
    w = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    out = torch.empty_like(w)
    shape = (info.n_rows, info.row_length)
    index = np.asarray(index, dtype=np.int64)
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        mark_into(w, name, shape, int(index[0]), key, amplitude, out)
    else:
        for i, row in enumerate(index):
            mark_into(w[i:i + 1], name, shape, int(row), key, amplitude, out[i:i + 1])
    return out.numpy()


def _cell_interval(cand: Checkpoint, name: str, w: np.ndarray, unit: np.ndarray) -> tuple[float, float] | None:
    """For a tensor the candidate stores as F16/BF16: the amplitudes whose mark puts every probe
    weight inside its stored value's rounding cell (widened by the grid check's tolerance),
    ``(lowest, highest)``; None for other storage types."""
    plain = plain_type(cand.info(name).dtype)
    if plain is None or not plain.narrow_float:
        return None
    stored = torch.from_numpy(np.ascontiguousarray(cand.read_rows(name, 0, w.shape[0]), dtype=np.float32))
    lo, hi = (t.double().numpy() for t in rounding_cells(stored, plain.torch_dtype()))
    tol = GRID_TOLERANCE_STEPS * (hi - lo)
    live = unit != 0
    ends = np.stack([(lo - tol - w)[live] / unit[live], (hi + tol - w)[live] / unit[live]])
    return float(ends.min(axis=0).max()), float(ends.max(axis=0).min())


def mark_amplitude(cand: Checkpoint, ref: Checkpoint, key: KeySource, names: Iterable[str],
                   rows: int = PROBE_ROWS) -> float | None:
    """The amplitude of ``key``'s mark in ``candidate - reference``: the least-squares fit
    (module docstring), moved into the amplitudes that explain every probe weight of the
    tensors the candidate stores as F16/BF16 when some do (their cells are a thousand times
    finer than a quantized grid's: only a witness amplitude explains them all); None when
    nothing was fitted or the fit is not positive."""
    num = den = 0.0
    low, high = -np.inf, np.inf
    for name in names:
        info = ref.info(name)
        if name not in cand.tensors or cand.info(name).shape != info.shape:
            continue
        n = min(rows, info.n_rows)
        w = ref.read_rows(name, 0, n).astype(np.float64)
        unit = _marked(ref, name, key, 1.0, w, np.arange(n)).astype(np.float64) - w  # sigma_row(w) * k
        delta = cand.read_rows(name, 0, n).astype(np.float64) - w
        num += float(np.sum(delta * unit))
        den += float(np.sum(unit * unit))
        if (interval := _cell_interval(cand, name, w, unit)) is not None:
            low, high = max(low, interval[0]), min(high, interval[1])
    if den <= 0 or num <= 0:
        return None
    fitted = num / den
    # an empty intersection: something besides the mark moved the narrow tensors; keep the fit
    return float(min(max(fitted, low), high)) if low <= high else fitted


@dataclass(frozen=True)
class FittedMark:
    """Client ``key``'s mark fitted on the tensors ``fitted_on`` (what :func:`mark_amplitude`
    read, in order) at ``amplitude``."""

    key: KeySource
    fitted_on: tuple[str, ...]
    amplitude: float


def _fittable(cand: Checkpoint, ref: Checkpoint, names: Iterable[str]) -> tuple[str, ...]:
    """The tensors of ``names`` :func:`mark_amplitude` reads (the others it skips)."""
    return tuple(n for n in names if n in cand.tensors and cand.info(n).shape == ref.info(n).shape)


def _names(ref: Checkpoint, key: KeySource, result: CompareResult) -> tuple[list[str], list[str]]:
    """The marked tensors ``result`` paired without moving them, and those of them it found changed."""
    paired = {r.name for r in result.tensors if not r.aligned and r.layout == "same"}
    names = [n for n in marked_names(ref, key) if n in paired]
    changed = {r.name for r in result.tensors if not unchanged(r)}
    return names, [n for n in names if n in changed]


def fit_before_comparing(cand: Checkpoint, ref: Checkpoint, key: KeySource) -> FittedMark | None:
    """The mark fitted before lineage has compared the pair, on every marked tensor the two
    share: so that the comparison's pass can judge it as it reads (:class:`provenance.compare.known.ChangedCells`).
    :func:`known_mark` uses it only when lineage's own choice of tensors (paired and changed)
    is the same list: a marked copy's, where every marked tensor changed."""
    names = _fittable(cand, ref, marked_names(ref, key))
    # the probe rows of every tensor asked of the disk at once: read one after the other, cold,
    # hundreds of small reads each waited for cost seconds before the pass could start
    for name in names:
        for ckpt in (cand, ref):
            info = ckpt.info(name)
            ckpt.prefetch(info.file, info.offset, min(info.n_bytes, 2 * PROBE_ROWS * info.row_bytes), scattered=True)
    amplitude = mark_amplitude(cand, ref, key, names)
    return None if amplitude is None else FittedMark(key, names, amplitude)


def mark_change(ref: Checkpoint, key: KeySource, amplitude: float, names: Iterable[str]) -> KnownChange:
    """Client ``key``'s mark of ``amplitude`` on tensors ``names`` as a :class:`KnownChange` to the reference."""

    def source(name: str) -> SourceMap:
        return lambda rows, index: _marked(ref, name, key, amplitude, rows, index)

    return KnownChange(f"client {key.label}'s watermark (amplitude {amplitude:.2g})", {n: source(n) for n in names})


def reusable(fitted: FittedMark, cand: Checkpoint, ref: Checkpoint, key: KeySource, result: CompareResult) -> bool:
    """Whether :func:`known_mark` takes ``fitted`` as its fit: the same client, fitted on the very
    tensors lineage's result has it fit on (so the same amplitude, bit for bit)."""
    return fitted.key.label == key.label and fitted.fitted_on == _fittable(cand, ref, _names(ref, key, result)[1])


def known_mark(cand: Checkpoint, ref: Checkpoint, key: KeySource, result: CompareResult,
               fitted: FittedMark | None = None) -> KnownChange | None:
    """Client ``key``'s mark, at the amplitude fitted on the tensors ``result`` paired without
    moving them, as a :class:`KnownChange` to the reference; None when none could be fitted.
    ``fitted``: a fit made before the comparison (:func:`fit_before_comparing`), reused when it
    read the very tensors this fit reads (the same amplitude, bit for bit), else fitted again."""
    names, changed = _names(ref, key, result)
    # fitted where the mark moved weights out of their cells: inside a coarse grid the quantizer's
    # pull towards cell centres (K-quant scale searches) biases the fit low (0.81e-3 for 1e-3 on
    # the SmolLM2 case fitted on every marked tensor)
    if fitted is not None and reusable(fitted, cand, ref, key, result):
        amplitude: float | None = fitted.amplitude
    else:
        amplitude = mark_amplitude(cand, ref, key, changed)
    if amplitude is None:
        return None
    return mark_change(ref, key, amplitude, names)


__all__ = ["PROBE_ROWS", "FittedMark", "fit_before_comparing", "known_mark", "mark_amplitude", "mark_change",
           "marked_names", "reusable"]
