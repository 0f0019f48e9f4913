"""Keyed detection: correlate a candidate (or its difference from the reference) with keys.

Three statistics, each ``z = sum(k*y) / sqrt(sum(y**2))`` with ``y`` computed without the key
(so exactly N(0, 1) for an innocent Gaussian key, see :mod:`.stats`):

* ``reference``: ``y = (x - w) / sigma_row(w)``, candidate minus reference after undoing
  permutations/rescaling (:mod:`.realign`), rows weighted by inverse residual variance
  (:mod:`.signals`). The mark is ``a*sigma*k``, so z ~ a*sqrt(N) / sqrt(a**2 + noise**2)
  where ``noise`` is whatever else differs (quantization, tuning).
* ``grid``: the reference's predicted code versus the stored one on a quantized
  candidate's grid (:mod:`.gridsign`); removes the quantization noise itself.
* ``blind``: ``y = (x - mean_row) / sigma_row(x)``, the candidate alone; the host weights are
  the noise, z ~ a*sqrt(N).

One pass: the scored tensors are cut into blocks of whole rows (:mod:`.plan`) and read in a
seeded random order, each block once (a reader thread fetches the next block while this one
is scored); every key is generated in place and multiplied into the block's ``y`` by one
compiled call (:mod:`.keygen`), so tracing a registry costs one key generation per client
and block, not one read per client. With a :class:`~.sequential.SequentialRule` the pass
stops as soon as every key is decided (accused or cleared); the first
:data:`DECOY_WEIGHTS` weights of the order also score the decoy keys (:mod:`.decoys`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from provenance.compare.transform import Transform
from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.pairing import Unpaired, pair_tensors
from provenance.progress import Meter, ProgressCallback
from provenance.threads import torch_threads
from provenance.watermark.decoys import DecoyBank
from provenance.watermark.gridsign import flip_signs
from provenance.watermark.keys import KeySource
from provenance.watermark.options import ScoreOptions
from provenance.watermark.plan import Block, block_order, row_ranges
from provenance.watermark.realign import Realignment, realign
from provenance.watermark.result import DecoyNull, StatisticScore
from provenance.watermark.select import default_selector
from provenance.watermark.sequential import SequentialRule, Tracker
from provenance.watermark.signals import (
    WEIGHTING_INVERSE_VARIANCE,
    WEIGHTING_SIGMA,
    blind_signal,
    reference_signal,
    square_sum,
)
from provenance.watermark.stats import Accumulator, log10_p, null_summary

STATISTICS = ("reference", "grid", "blind")
#: weights (the first blocks of the order) the decoy keys are scored on: their z is exactly
#: N(0, 1) on any sample, and one FFT of 1M weights per statistic scores 1000 decoys in ~0.3 s
DECOY_WEIGHTS = 1 << 20
#: decoy streams cover at most this many weights each (one FFT)
DECOY_CHUNK = 1 << 20

@dataclass
class KeyScore:
    label: str
    totals: dict[str, Accumulator] = field(default_factory=dict)
    per_tensor: dict[str, dict[str, Accumulator]] = field(default_factory=dict)
    best_log_mixture: dict[str, float] = field(default_factory=dict)
    """Sequential test: the largest ``ln M`` over the blocks where the sum was positive."""
    decision: str = "open"
    """Under a rule: ``accused``, ``cleared`` (shown weaker than an accused client's mark) or
    ``open`` (not accused)."""
    decided_after: int | None = None
    """Weights read when the key was decided (sequential rule)."""

    def z(self, statistic: str) -> float | None:
        acc = self.totals.get(statistic)
        return None if acc is None or acc.n == 0 else acc.z

    def best(self) -> tuple[str | None, float]:
        found = [(s, acc.z) for s, acc in self.totals.items() if acc.q > 0]
        return max(found, key=lambda item: item[1]) if found else (None, 0.0)

    def scores(self, rule: SequentialRule | None = None, complete: bool = True) -> dict[str, StatisticScore]:
        """z, weights and log10 p of every statistic that saw any signal; with a sequential
        ``rule`` the p-value is the rule's (valid however early the pass stopped)."""
        out = {}
        for s, a in self.totals.items():
            if a.q <= 0:
                continue
            lp = log10_p(a.z) if rule is None else rule.log10_p_value(self.best_log_mixture.get(s, 0.0),
                                                                       a.z if complete else None)
            out[s] = StatisticScore(a.z, a.n, lp)
        return out

    def per_tensor_z(self) -> dict[str, dict[str, float]]:
        return {t: {s: round(a.z, 4) for s, a in stats.items() if a.q > 0} for t, stats in self.per_tensor.items()}


@dataclass
class ScoreResult:
    candidate: str
    reference: str | None
    statistics: list[str]
    keys: list[KeyScore]
    decoy_z: dict[str, np.ndarray]
    tensors: list[str]
    n_weights: int
    q_totals: dict[str, float]
    n_flips: int = 0
    precision: str | None = None
    realignment: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    weights_read: int = 0
    """Weights scored before the pass stopped (``n_weights`` when it was complete)."""
    blocks_read: int = 0
    blocks_total: int = 0
    decoy_weights: int = 0
    """Weights the decoy keys were scored on (the first blocks of the order)."""
    rule: SequentialRule | None = None

    @property
    def complete(self) -> bool:
        return self.blocks_read == self.blocks_total

    def decoy_summary(self) -> dict[str, DecoyNull]:
        return {s: DecoyNull.of(null_summary(z)) for s, z in self.decoy_z.items()}


@dataclass
class _BlockData:
    """What a block's scoring needs, fetched ahead by the reader thread."""

    block: Block
    x: np.ndarray
    """Candidate rows as found (storage frame): the blind statistic's."""
    x_aligned: np.ndarray | None = None
    """Candidate rows in the reference's frame (``x`` itself when nothing was realigned)."""
    w: np.ndarray | None = None
    raw: np.ndarray | None = None
    """Stored bytes of the candidate rows matching ``x_aligned`` (grid statistic)."""
    n_bytes: int = 0


class _Buffers:
    """Two sets of block-sized float32 buffers: the reader thread fills one while the other
    is scored (allocating 16 MB per block costs page faults on this machine kind)."""

    def __init__(self) -> None:
        self._sets: list[dict[str, np.ndarray]] = [{}, {}]

    def get(self, which: int, name: str, rows: int, cols: int) -> np.ndarray:
        store = self._sets[which]
        buf = store.get(name)
        if buf is None or buf.size < rows * cols:
            buf = store[name] = np.empty(max(rows * cols, 1), dtype=np.float32)
        return buf[: rows * cols].reshape(rows, cols)


def _gather_raw(ckpt: Checkpoint, name: str, rows: np.ndarray) -> np.ndarray:
    """Stored bytes of arbitrary (storage-order) rows, read as runs of consecutive rows."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((len(rows), ckpt.info(name).row_bytes), dtype=np.uint8)
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    pos = 0
    for run in np.split(ordered, breaks):
        out[order[pos:pos + len(run)]] = ckpt.raw_rows(name, int(run[0]), int(run[-1]) + 1)
        pos += len(run)
    return out


class _Scorer:
    def __init__(self, cand: Checkpoint, ref: Checkpoint | None, keys: list[KeySource], options: ScoreOptions,
                 alignment: Realignment, pool: ThreadPoolExecutor, threads: int) -> None:
        self.cand, self.ref, self.keys, self.options = cand, ref, keys, options
        self.alignment, self.pool, self.threads = alignment, pool, threads
        self.scores = [KeyScore(k.label) for k in keys]
        self.q_totals: dict[str, float] = {}
        self.n_flips = 0
        self.precision: str | None = None
        self.buffers = _Buffers()
        self.weighting = WEIGHTING_SIGMA if options.weighting == "sigma" else WEIGHTING_INVERSE_VARIANCE

    def statistics_for(self, info: TensorInfo) -> list[str]:
        stats = ["blind"]
        if self.ref is not None:
            stats.insert(0, "reference")
            from provenance.codecs.recipes import supported

            if info.quantized and info.ggml_type is not None and supported(info.ggml_type):
                stats.insert(1, "grid")
        return stats

    # ----- reading (the reader thread) ---------------------------------------------------
    def fetch(self, block: Block, which: int) -> _BlockData:
        name, a, b = block.tensor, block.start, block.stop
        info = self.cand.info(name)
        cols = info.row_length
        grid = "grid" in self.statistics_for(info)
        data = _BlockData(block, self.buffers.get(which, "x", b - a, cols))
        with self.cand.row_reader(name, b - a) as reader:
            reader.read_into(a, b, data.x)
            if grid:
                data.raw = np.array(reader.raw(a, b))
        data.n_bytes = (b - a) * info.row_bytes
        if self.ref is None:
            return data
        data.w = self.ref.read_rows(name, a, b, out=self.buffers.get(which, "w", b - a, cols))
        data.n_bytes += (b - a) * self.ref.info(name).row_bytes
        transform = self.alignment.get(name)
        if transform is None:
            data.x_aligned = data.x
            return data
        rows = transform.candidate_rows(a, b)
        gathered = self.buffers.get(which, "xa", b - a, cols)
        with self.cand.row_reader(name, b - a) as reader:
            reader.gather(rows, out=gathered)
        data.x_aligned = transform.apply(torch.from_numpy(gathered), a).numpy()
        if grid:
            data.raw = _gather_raw(self.cand, name, rows)
        return data

    # ----- signals -----------------------------------------------------------------------
    def _split_rows(self, fn: Callable[..., float], *arrays: np.ndarray, extra: tuple[Any, ...] = ()) -> float:
        """``fn(*row_slices, *extra, out_slice)`` over row parts on the pool; sums the returns."""
        out = arrays[-1]
        futures = [self.pool.submit(fn, *(x[lo:hi] for x in arrays[:-1]), *extra, out[lo:hi])
                   for lo, hi in row_ranges(out.shape[0], self.threads)]
        return float(sum(f.result() for f in futures))

    def signals(self, data: _BlockData, which: int, stats: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``y`` of each statistic as rows of one float32 array, and their ``sum(y**2)``."""
        block = data.block
        info = self.cand.info(block.tensor)
        rows, cols = block.stop - block.start, info.row_length
        ys = self.buffers.get(which, "ys", len(stats), rows * cols)
        q = np.zeros(len(stats))
        for i, stat in enumerate(stats):
            y = ys[i].reshape(rows, cols)
            if stat == "blind":
                q[i] = self._split_rows(blind_signal, data.x, y)
            elif stat == "reference":
                assert data.x_aligned is not None and data.w is not None
                q[i] = self._split_rows(reference_signal, data.x_aligned, data.w, y, extra=(self.weighting,))
            else:
                q[i] = self._grid(data, y)
        return ys, q

    def _grid(self, data: _BlockData, y: np.ndarray) -> float:
        info = self.cand.info(data.block.tensor)
        assert info.ggml_type is not None and data.w is not None and data.raw is not None
        transform = self.alignment.get(data.block.tensor)
        w = data.w
        if transform is not None:  # the reference rows in the candidate's frame, then signs back
            w = _unapply_rows(transform, w, data.block.start)
        signs = flip_signs(w, data.raw, info.ggml_type, self.precision or "f32")
        if transform is not None:
            signs = _apply_row_signs(transform, signs, data.block.start)
        y[...] = signs
        self.n_flips += int(np.count_nonzero(signs))
        return float(square_sum(y))

    # ----- keys --------------------------------------------------------------------------
    def dots(self, live: list[int], name: str, start_row: int, ys: np.ndarray) -> np.ndarray:
        """``sum(k * y)`` of each live key (rows) and statistic (columns); keys split over the
        pool, a lone key's block split in row ranges."""
        info = self.cand.info(name)
        shape, cols = (info.n_rows, info.row_length), info.row_length
        out = np.zeros((len(self.keys), ys.shape[0]))
        rows = ys.shape[1] // cols
        wanted = [i for i in live if self.keys[i].has(name)]
        if not wanted:
            return out
        ranges = row_ranges(rows, self.threads // len(wanted))
        partial = np.zeros((len(wanted), len(ranges), ys.shape[0]))

        def one(j: int, p: int) -> None:
            lo, hi = ranges[p]
            self.keys[wanted[j]].dots(name, shape, start_row * cols, ys, lo * cols, hi * cols, partial[j, p])

        futures = [self.pool.submit(one, j, p) for j in range(len(wanted)) for p in range(len(ranges))]
        for f in futures:
            f.result()
        out[wanted] = partial.sum(axis=1)
        return out

    def record(self, block: Block, stats: list[str], dots: np.ndarray, q: np.ndarray, scored: np.ndarray) -> None:
        """Add a block's sums to every scored key's totals and per-tensor sums."""
        n = block.n_elements(self.cand.info(block.tensor))
        for s, value in zip(stats, q, strict=True):
            self.q_totals[s] = self.q_totals.get(s, 0.0) + float(value)
        for k in np.nonzero(scored)[0]:
            score = self.scores[k]
            per = score.per_tensor.setdefault(block.tensor, {})
            for j, s in enumerate(stats):
                score.totals.setdefault(s, Accumulator()).add(float(dots[k, j]), float(q[j]), n)
                per.setdefault(s, Accumulator()).add(float(dots[k, j]), float(q[j]), n)


@dataclass
class _DecoySample:
    """The decoy keys, scored on the first :data:`DECOY_WEIGHTS` weights of the pass."""

    bank: DecoyBank
    q: dict[str, float] = field(default_factory=dict)
    weights: int = 0

    def feed(self, block: Block, stats: list[str], ys: np.ndarray, q: np.ndarray) -> None:
        n = ys.shape[1]
        if not self.bank.n_decoys or self.weights >= DECOY_WEIGHTS:
            return
        take = min(n, DECOY_WEIGHTS - self.weights)
        for j, s in enumerate(stats):
            self.q[s] = self.q.get(s, 0.0) + (float(q[j]) if take == n else float(np.dot(ys[j, :take], ys[j, :take])))
        for part, lo in enumerate(range(0, take, DECOY_CHUNK)):
            hi = min(take, lo + DECOY_CHUNK)
            self.bank.add(block.tensor, block.part * 4096 + part, {s: ys[j, lo:hi] for j, s in enumerate(stats)})
        self.weights += take

    def z(self, statistics: list[str]) -> dict[str, np.ndarray]:
        return {s: self.bank.z(s, self.q.get(s, 0.0)) for s in statistics}


def _with_decisions(scores: list[KeyScore], tracker: Tracker) -> list[KeyScore]:
    for k, score in enumerate(scores):
        score.decision = str(tracker.state[k])
        score.decided_after = int(tracker.decided_after[k]) if tracker.decided_after[k] >= 0 else None
        score.best_log_mixture = {s: float(tracker.best[k, j]) for j, s in enumerate(STATISTICS)}
    return scores


def _unapply_rows(transform: Transform, w: np.ndarray, start: int) -> np.ndarray:
    """Reference rows ``[start, start + len(w))`` expressed in the candidate's frame (rows
    stay in block order: they match the candidate rows gathered for them)."""
    out = w.astype(np.float64)
    if transform.row_scale is not None:
        out = out / transform.row_scale[start:start + len(w), None]
    if transform.col_scale is not None:
        out = out / transform.col_scale[None, :]
    if transform.col_index is not None:
        moved = np.empty_like(out)
        moved[:, transform.col_index] = out
        out = moved
    return out.astype(np.float32)


def _apply_row_signs(transform: Transform, signs: np.ndarray, start: int) -> np.ndarray:
    """Flip directions of gathered candidate rows moved into the reference frame."""
    out = signs if transform.col_index is None else signs[:, transform.col_index]
    if transform.row_scale is not None:
        out = out * np.sign(transform.row_scale[start:start + len(out), None])
    if transform.col_scale is not None:
        out = out * np.sign(transform.col_scale[None, :])
    return out


@contextmanager
def _workers(threads: int) -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    """The compute pool and the one reader thread; on any exit (Ctrl-C included) queued work
    is cancelled and nothing waits for more than the task in hand (a few ms)."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="provenance-wm")
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provenance-wm-read")
    try:
        yield pool, reader
    finally:
        reader.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)


def _scored_names(cand: Checkpoint, ref: Checkpoint | None, keys: list[KeySource],
                  options: ScoreOptions) -> tuple[list[str], list[str]]:
    selector = options.selector or default_selector
    warnings: list[str] = []
    names = []
    fate = pair_tensors(cand, ref).by_name() if ref is not None else {}
    for name, info in cand.tensors.items():
        if not selector(info) or not any(k.has(name) for k in keys):
            continue
        if isinstance(unpaired := fate.get(name), Unpaired):
            warnings.append(f"{name}: {unpaired.describe()}; skipped")
            continue
        names.append(name)
    return names, warnings


@input_boundary
def score_checkpoint(
    candidate: str | os.PathLike[str],
    keys: list[KeySource],
    reference: str | os.PathLike[str] | None = None,
    options: ScoreOptions | None = None,
    rule: SequentialRule | None = None,
    progress: ProgressCallback | None = None,
    task: str = "watermark detect",
) -> ScoreResult:
    """Score every key on ``candidate`` (optionally against ``reference``) in one pass. With
    a sequential ``rule`` the pass stops once every key is decided (:mod:`.sequential`);
    without one, or when the rule is not sequential, every block is read. ``progress`` is
    told the bytes read (``task`` names them)."""
    options = options or ScoreOptions()
    threads = max(1, options.threads)
    with open_checkpoint(candidate) as cand, open_checkpoint(reference) if reference else _Null() as ref, \
            torch_threads(1), _workers(threads) as (pool, reader):
        ref = ref if reference else None
        names, warnings = _scored_names(cand, ref, keys, options)
        alignment = Realignment()
        meter = Meter(progress, task, None)
        if ref is not None and options.realign != "never":
            meter.start_item("realignment")
            alignment = realign(cand, ref, force=options.realign == "force", names=set(names))
        scorer = _Scorer(cand, ref, keys, options, alignment, pool, threads)
        quantized = [n for n in names if cand.info(n).quantized]
        if ref is not None and quantized:
            if options.precision == "auto":
                from provenance.quant.api import detect_precision

                scorer.precision, _ = detect_precision(cand, ref, quantized)
            else:
                scorer.precision = options.precision
        statistics = [s for s in STATISTICS if any(s in scorer.statistics_for(cand.info(n)) for n in names)]
        decoys = _DecoySample(DecoyBank(options.decoys, tuple(statistics), seed=options.decoy_seed,
                                        independent=options.independent_decoys))
        order = block_order([cand.info(n) for n in names], options.decoy_seed)
        tracker = Tracker(rule, len(keys), len(STATISTICS))
        meter.total = sum((b.stop - b.start) * (cand.info(b.tensor).row_bytes + (ref.info(b.tensor).row_bytes if ref else 0))
                          for b in order)
        weights_read = blocks_read = 0
        pending: Future[_BlockData] | None = reader.submit(scorer.fetch, order[0], 0) if order else None
        for i, block in enumerate(order):
            assert pending is not None
            data = pending.result()
            pending = reader.submit(scorer.fetch, order[i + 1], (i + 1) % 2) if i + 1 < len(order) else None
            stats = scorer.statistics_for(cand.info(block.tensor))
            columns = [STATISTICS.index(s) for s in stats]
            ys, q = scorer.signals(data, i % 2, stats)
            scored = tracker.live() & np.array([k.has(block.tensor) for k in keys])
            dots = scorer.dots(list(np.nonzero(scored)[0]), block.tensor, block.start, ys)
            full, q_full = np.zeros((len(keys), len(STATISTICS))), np.zeros(len(STATISTICS))
            full[:, columns], q_full[columns] = dots, q
            tracker.add(scored, full, q_full)
            scorer.record(block, stats, dots, q, scored)
            decoys.feed(block, stats, ys, q)
            weights_read += ys.shape[1]
            blocks_read += 1
            stop = tracker.decide(weights_read, complete=blocks_read == len(order))
            meter.advance(data.n_bytes, block.tensor)
            if stop:
                break
        if pending is not None:
            pending.cancel()
        return ScoreResult(
            candidate=str(candidate),
            reference=str(reference) if reference else None,
            statistics=statistics,
            keys=_with_decisions(scorer.scores, tracker),
            decoy_z=decoys.z(statistics),
            tensors=names,
            n_weights=sum(cand.info(n).n_elements for n in names),
            q_totals=scorer.q_totals,
            n_flips=scorer.n_flips,
            precision=scorer.precision,
            realignment={str(layer): info for layer, info in alignment.layers.items()},
            warnings=warnings,
            weights_read=weights_read,
            blocks_read=blocks_read,
            blocks_total=len(order),
            decoy_weights=decoys.weights,
            rule=rule,
        )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
