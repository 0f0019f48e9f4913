"""Keyed detection: correlate a candidate (or its difference from the reference) with keys.

Three statistics, each ``z = sum(k*y) / sqrt(sum(y**2))`` with ``y`` computed without the key
(so exactly N(0, 1) for an innocent Gaussian key, see :mod:`.stats`):

* ``reference``: ``y = (x - w) / sigma_row(w)``, candidate minus reference after undoing
  permutations/rescaling (:mod:`.realign`). The mark is ``a*sigma*k``, so z ~ a*sqrt(N) /
  sqrt(a**2 + noise**2) where ``noise`` is whatever else differs (quantization, tuning).
* ``grid``: the reference's predicted code versus the stored one on a quantized
  candidate's grid (:mod:`.gridsign`); removes the quantization noise itself.
* ``blind``: ``y = (x - mean_row) / sigma_row(x)``, the candidate alone; the host weights are
  the noise, z ~ a*sqrt(N).

One pass over the candidate scores any number of keys (tracing a registry costs one key
generation per client, not one read per client) and the decoy keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.compare.transform import Transform
from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.pairing import Unpaired, pair_tensors
from provenance.watermark.decoys import DecoyBank
from provenance.watermark.gridsign import flip_signs
from provenance.watermark.keys import KeySource
from provenance.watermark.options import ScoreOptions
from provenance.watermark.realign import Realignment, realign
from provenance.watermark.result import DecoyNull, StatisticScore
from provenance.watermark.select import default_selector
from provenance.watermark.stats import Accumulator, log10_p, null_summary

STATISTICS = ("reference", "grid", "blind")
CHUNK_ELEMS = 1 << 20


@dataclass
class KeyScore:
    label: str
    totals: dict[str, Accumulator] = field(default_factory=dict)
    per_tensor: dict[str, dict[str, Accumulator]] = field(default_factory=dict)

    def z(self, statistic: str) -> float | None:
        acc = self.totals.get(statistic)
        return None if acc is None or acc.n == 0 else acc.z

    def best(self) -> tuple[str | None, float]:
        found = [(s, acc.z) for s, acc in self.totals.items() if acc.q > 0]
        return max(found, key=lambda item: item[1]) if found else (None, 0.0)

    def scores(self) -> dict[str, StatisticScore]:
        """z, weights and log10 p of every statistic that saw any signal."""
        return {s: StatisticScore(a.z, a.n, log10_p(a.z)) for s, a in self.totals.items() if a.q > 0}

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

    def decoy_summary(self) -> dict[str, DecoyNull]:
        return {s: DecoyNull.of(null_summary(z)) for s, z in self.decoy_z.items()}


def _row_std(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=1, dtype=np.float64)
    return np.where(std > 0, std, np.inf)  # constant rows carry no mark: y = 0 there


def _rows(ckpt: Checkpoint, name: str, full: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    return full[start:stop] if full is not None else ckpt.read_rows(name, start, stop)


class _Scorer:
    def __init__(self, cand: Checkpoint, ref: Checkpoint | None, keys: list[KeySource], options: ScoreOptions) -> None:
        self.cand, self.ref, self.keys, self.options = cand, ref, keys, options
        self.scores = [KeyScore(k.label) for k in keys]
        self.q_totals: dict[str, float] = {}
        self.n_flips = 0
        self.precision: str | None = None

    def statistics_for(self, info: TensorInfo) -> list[str]:
        stats = ["blind"]
        if self.ref is not None:
            stats.insert(0, "reference")
            from provenance.codecs.recipes import supported

            if info.quantized and info.ggml_type is not None and supported(info.ggml_type):
                stats.insert(1, "grid")
        return stats

    def score_tensor(self, name: str, alignment: Transform | None, bank: DecoyBank) -> None:
        info = self.cand.info(name)
        shape = (info.n_rows, info.row_length)
        stats = self.statistics_for(info)
        cand_full = ref_full = None
        if alignment is not None:  # a permuted tensor needs all its rows at once
            assert self.ref is not None
            cand_full = alignment.apply_numpy(self.cand.read_rows(name).astype(np.float64))
            ref_full = self.ref.read_rows(name)
        rows_per_chunk = shape[0] if alignment is not None else max(1, CHUNK_ELEMS // max(1, shape[1]))
        for chunk, start in enumerate(range(0, shape[0], rows_per_chunk)):
            stop = min(shape[0], start + rows_per_chunk)
            raw_x = self.cand.read_rows(name, start, stop)
            ys: dict[str, np.ndarray] = {}
            if "blind" in stats:  # the candidate as found: no reference, no realignment
                x64 = raw_x.astype(np.float64)
                ys["blind"] = (x64 - x64.mean(axis=1, keepdims=True)) / _row_std(x64)[:, None]
            if self.ref is not None:
                x = _rows(self.cand, name, cand_full, start, stop) if cand_full is not None else raw_x
                w = _rows(self.ref, name, ref_full, start, stop)
                r = x.astype(np.float64) - w
                if self.options.weighting == "inverse-variance":
                    # Optimal linear weight for signal a*sigma_row*k in noise of variance v_row:
                    # sigma_row / v_row. Fine-tuning moves some rows and tensors far more than
                    # others; this keeps them from drowning the rest. v_row comes from the
                    # residual itself (no key), so the null stays exact.
                    v = np.mean(r * r, axis=1)
                    sigma = w.std(axis=1, dtype=np.float64)
                    ys["reference"] = r * np.where(v > 0, sigma / np.where(v > 0, v, 1.0), 0.0)[:, None]
                else:
                    ys["reference"] = r / _row_std(w)[:, None]
                if "grid" in stats:
                    assert info.ggml_type is not None
                    if alignment is not None:
                        w_c = alignment.unapply_numpy(w.astype(np.float64)).astype(np.float32)
                        stored = self.cand.raw_rows(name, start, stop)
                        signs = alignment.apply_signs(flip_signs(w_c, stored, info.ggml_type, self.precision or "f32"))
                    else:
                        signs = flip_signs(
                            w, self.cand.raw_rows(name, start, stop), info.ggml_type, self.precision or "f32"
                        )
                    ys["grid"] = signs
                    self.n_flips += int(np.count_nonzero(signs))
            flat = {s: y.ravel() for s, y in ys.items()}
            n = (stop - start) * shape[1]
            q = {s: float(np.dot(y, y)) for s, y in flat.items()}
            for s, value in q.items():
                self.q_totals[s] = self.q_totals.get(s, 0.0) + value
            for key, score in zip(self.keys, self.scores, strict=True):
                if not key.has(name):
                    continue
                k = key.rows(name, shape, start, stop).ravel()
                per = score.per_tensor.setdefault(name, {})
                for s, y in flat.items():
                    dot = float(np.dot(k, y))
                    score.totals.setdefault(s, Accumulator()).add(dot, q[s], n)
                    per.setdefault(s, Accumulator()).add(dot, q[s], n)
            bank.add(name, chunk, flat)


@input_boundary
def score_checkpoint(
    candidate: str | os.PathLike[str],
    keys: list[KeySource],
    reference: str | os.PathLike[str] | None = None,
    options: ScoreOptions | None = None,
) -> ScoreResult:
    """Score every key on ``candidate`` (optionally against ``reference``); one pass."""
    options = options or ScoreOptions()
    selector = options.selector or default_selector
    with open_checkpoint(candidate) as cand, open_checkpoint(reference) if reference else _Null() as ref:
        ref = ref if reference else None
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
        scorer = _Scorer(cand, ref, keys, options)
        alignment = Realignment()
        if ref is not None and options.realign != "never":
            alignment = realign(cand, ref, force=options.realign == "force")
        quantized = [n for n in names if cand.info(n).quantized]
        if ref is not None and quantized:
            if options.precision == "auto":
                from provenance.quant.api import detect_precision

                scorer.precision, _ = detect_precision(cand, ref, quantized)
            else:
                scorer.precision = options.precision
        statistics = [s for s in STATISTICS if any(s in scorer.statistics_for(cand.info(n)) for n in names)]
        bank = DecoyBank(
            options.decoys, tuple(statistics), seed=options.decoy_seed, independent=options.independent_decoys
        )
        for name in names:
            scorer.score_tensor(name, alignment.get(name), bank)
        n_weights = sum(cand.info(n).n_elements for n in names)
        return ScoreResult(
            candidate=str(candidate),
            reference=str(reference) if reference else None,
            statistics=statistics,
            keys=scorer.scores,
            decoy_z={s: bank.z(s, scorer.q_totals.get(s, 0.0)) for s in statistics},
            tensors=names,
            n_weights=n_weights,
            q_totals=scorer.q_totals,
            n_flips=scorer.n_flips,
            precision=scorer.precision,
            realignment={str(layer): info for layer, info in alignment.layers.items()},
            warnings=warnings,
        )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
