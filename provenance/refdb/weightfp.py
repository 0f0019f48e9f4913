"""Weight fingerprints: build one from a reference, and score a candidate against it.

A fingerprint stores, per informative canonical tensor, the values at a few seeded row
spans (:mod:`positions`) and a layout-invariant summary (:mod:`summaries`). Scoring a
candidate reads the same spans from it (a few blocks per tensor) and asks whether the
values agree more than chance allows:

* per tensor, the centered (Pearson) correlation ``r`` of reference and candidate values
  over ``n`` positions, turned into ``z_t = atanh(r) * sqrt(n - 3)`` (Fisher), which is
  ~N(0, 1) for unrelated weights;
* across tensors, Stouffer's ``Z = sum(z_t) / sqrt(T)``;
* calibrated against an empirical null measured on the same pair: the same statistic
  with each tensor's spans paired to *other* spans of the candidate (mismatched
  positions, so same value distributions, no shared positions). The result is reported
  as ``z = (Z - mean_null) / sd_null`` with a normal-tail p-value and the empirical
  p-value (at best 1 / (draws + 1)).

Constant tensors (norm weights all 1.0 in an untrained model) carry no evidence and are
skipped, never counted: raw agreement of constants is the "raw cosine lies" trap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.formats.base import Checkpoint, TensorInfo
from provenance.refdb.positions import Spans, sample_spans
from provenance.refdb.sampler import ReadMeter, read_flat, read_spans, transposed_positions
from provenance.refdb.summaries import Summary, SummaryAccumulator, distance, summarize

NULL_DRAWS = 199
IDENTIFIED_Z = 6.0
"""Calibrated z above which the weights are reported as the reference's (p ~ 1e-9)."""
SUMMARY_BUDGET_FRACTION = 0.005
SUMMARY_BUDGET_FLOOR = 2 * 1024 * 1024
_R_CLIP = 1 - 1e-9
_NULL_SEED = 20240129


@dataclass
class TensorPrint:
    name: str
    shape: tuple[int, ...]
    spans: Spans
    values: np.ndarray
    """(n_spans, length) float32 (stored as float16)."""
    summary: Summary | None
    constant: bool

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2 and self.shape[-2] > 1


@dataclass
class WeightFingerprint:
    tensors: list[TensorPrint]

    def by_name(self) -> dict[str, TensorPrint]:
        return {t.name: t for t in self.tensors}


def informative(info: TensorInfo) -> bool:
    """Tensors a fingerprint covers: learned float weights, not deterministic tables."""
    return bool(info.role) and not info.role.startswith("rope") and info.n_elements >= 2


def _full_values(ckpt: Checkpoint, info: TensorInfo, meter: ReadMeter | None = None) -> np.ndarray:
    if meter is not None:
        meter.add(info.file, info.offset, info.n_bytes)
    return ckpt.read_rows(info.name).reshape(-1)


@dataclass
class TensorStats:
    """What one streamed pass over a reference tensor yields."""

    constant: bool
    """Every value equal (e.g. norms initialised to 1.0): carries no evidence."""
    summary: Summary | None


def tensor_stats(ckpt: Checkpoint, info: TensorInfo, with_summary: bool = True) -> TensorStats:
    """Constancy and (optionally) the layout-invariant summary of a tensor, from its rows
    streamed through the reader's bounded chunks: memory does not grow with the tensor."""
    acc = SummaryAccumulator(info.shape) if with_summary else None
    first, constant = None, True
    for _, rows in ckpt.iter_rows(info.name):
        flat = rows.reshape(-1)
        if first is None and flat.size:
            first = flat[0]
        constant = constant and bool(np.all(flat == first))
        if acc is not None:
            acc.add(rows)
    return TensorStats(constant and first is not None, acc.result() if acc is not None else None)


def build_fingerprint(ckpt: Checkpoint, stats: dict[str, TensorStats] | None = None) -> WeightFingerprint:
    """The fingerprint of a reference checkpoint: sampled spans plus one streamed pass per
    informative tensor (``stats`` when the caller already made that pass)."""
    prints = []
    for info in ckpt.tensors.values():
        if not informative(info):
            continue
        spans = sample_spans(info.name, info.shape)
        values = read_spans(ckpt, info, spans, ReadMeter())
        got = (stats or {}).get(info.name)
        if got is None or got.summary is None:
            got = tensor_stats(ckpt, info)
        prints.append(TensorPrint(
            name=info.name, shape=info.shape, spans=spans, values=values.astype(np.float16).astype(np.float32),
            summary=got.summary, constant=got.constant,
        ))
    return WeightFingerprint(prints)


# ----- scoring -------------------------------------------------------------------------

@dataclass
class TensorScore:
    name: str
    n: int
    r: float
    z: float
    layout: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "r": round(self.r, 5), "z": round(self.z, 3), "layout": self.layout}


@dataclass
class WeightMatch:
    """How a candidate's weights relate to one fingerprint."""

    status: str
    """``match``, ``no-match`` or ``not-comparable`` (no tensor of equal name and size)."""
    layout: str | None = None
    stouffer_z: float | None = None
    calibrated_z: float | None = None
    p_value: float | None = None
    empirical_p: float | None = None
    null_mean: float | None = None
    null_sd: float | None = None
    median_r: float | None = None
    tensors_compared: int = 0
    tensors_in_reference: int = 0
    constant_skipped: int = 0
    layouts: dict[str, float] = field(default_factory=dict)
    """Stouffer Z over the matrices under each layout tried."""
    summary: dict[str, Any] = field(default_factory=dict)
    per_tensor: list[TensorScore] = field(default_factory=list)

    def to_dict(self, per_tensor: bool = True) -> dict[str, Any]:
        out = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in self.__dict__.items()
               if k != "per_tensor"}
        if self.p_value is not None:
            out["p_value"] = float(f"{self.p_value:.3g}")
        if per_tensor:
            out["per_tensor"] = [t.to_dict() for t in self.per_tensor]
        return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean(dtype=np.float64)
    b = b.astype(np.float64).ravel() - b.mean(dtype=np.float64)
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else 0.0


def _fisher(r: float, n: int) -> float:
    return math.atanh(max(-_R_CLIP, min(_R_CLIP, r))) * math.sqrt(max(n - 3, 1))


class CandidateReader:
    """A candidate opened once and read for many fingerprints; reads are cached and metered."""

    def __init__(self, ckpt: Checkpoint, summary_budget: int | None = None) -> None:
        self.ckpt = ckpt
        self.meter = ReadMeter()
        self._spans: dict[tuple[Any, ...], np.ndarray] = {}
        self._summaries: dict[str, tuple[Summary, Summary]] = {}
        total = sum(info.n_bytes for info in ckpt.tensors.values())
        self.tensor_bytes = total
        default = max(int(total * SUMMARY_BUDGET_FRACTION), SUMMARY_BUDGET_FLOOR)
        self.summary_budget = default if summary_budget is None else summary_budget
        self._summary_spent = 0
        self._failed: set[str] = set()

    def compatible(self, tp: TensorPrint) -> TensorInfo | None:
        info = self.ckpt.tensors.get(tp.name)
        if info is None or info.n_elements != int(np.prod(tp.shape)) or tp.name in self._failed:
            return None
        return info

    def as_is(self, tp: TensorPrint, info: TensorInfo) -> np.ndarray | None:
        if info.shape != tp.shape:
            return None  # same size, other shape: only a re-layout hypothesis applies
        key = ("as-is", tp.name, tp.spans.rows.tobytes(), tp.spans.starts.tobytes(), tp.spans.length)
        if key not in self._spans:
            self._spans[key] = self._guard(tp.name, lambda: read_spans(self.ckpt, info, tp.spans, self.meter))
        return self._spans[key]

    def transposed(self, tp: TensorPrint, info: TensorInfo) -> tuple[np.ndarray, int] | None:
        flat, take = transposed_positions(tp.spans, tp.shape)
        key = ("transposed", tp.name, flat.tobytes())
        if key not in self._spans:
            self._spans[key] = self._guard(tp.name, lambda: read_flat(self.ckpt, info, flat, self.meter))
        values = self._spans[key]
        return (values.reshape(len(tp.spans.rows), take), take) if values is not None else None

    def summaries(self, tp: TensorPrint, info: TensorInfo) -> tuple[Summary, Summary] | None:
        """Summaries of the candidate tensor as stored and as transposed, within the read budget."""
        if tp.name in self._summaries:
            return self._summaries[tp.name]
        if self._summary_spent + info.n_bytes > self.summary_budget:
            return None
        values = self._guard(tp.name, lambda: _full_values(self.ckpt, info, self.meter))
        if values is None:
            return None
        self._summary_spent += info.n_bytes
        as_stored = summarize(values, tp.shape)
        if len(tp.shape) >= 2:
            rows = int(np.prod(tp.shape[:-1]))
            as_transposed = summarize(values.reshape(tp.shape[-1], rows).T, tp.shape)
        else:
            as_transposed = as_stored
        self._summaries[tp.name] = (as_stored, as_transposed)
        return self._summaries[tp.name]

    def _guard(self, name: str, read: Any) -> Any:
        # A tensor the decoders cannot handle (F4 bytes, an unknown type) is skipped, not fatal.
        try:
            return read()
        except (NotImplementedError, ValueError, KeyError):
            self._failed.add(name)
            return None


def score(fp: WeightFingerprint, reader: CandidateReader) -> WeightMatch:
    """Score a candidate against one fingerprint (see the module docstring)."""
    result = WeightMatch(status="not-comparable", tensors_in_reference=len(fp.tensors))
    vectors: list[tuple[TensorPrint, np.ndarray, np.ndarray]] = []  # 1-D: layout-free
    matrices: dict[str, list[tuple[TensorPrint, np.ndarray, np.ndarray]]] = {"as-is": [], "transposed": []}
    pending: list[tuple[TensorPrint, TensorInfo]] = []
    for tp in fp.tensors:
        info = reader.compatible(tp)
        if info is None:
            continue
        if tp.constant:
            result.constant_skipped += 1
            continue
        values = reader.as_is(tp, info)
        if tp.is_matrix:
            if values is not None:
                matrices["as-is"].append((tp, tp.values, values))
            pending.append((tp, info))
        elif values is not None:
            vectors.append((tp, tp.values, values))
    if not vectors and not pending:
        return result
    layout_z = {"as-is": _stouffer([_tensor_score(t, a, b, "as-is") for t, a, b in matrices["as-is"]])}
    # Only when the stored layout shows nothing is the (costlier) transposed reading tried.
    if pending and layout_z["as-is"] < IDENTIFIED_Z:
        for tp, info in pending:
            got = reader.transposed(tp, info)
            if got is not None:
                values, take = got
                matrices["transposed"].append((tp, tp.values[:, :take], values))
        if matrices["transposed"]:
            layout_z["transposed"] = _stouffer([_tensor_score(t, a, b, "transposed") for t, a, b in matrices["transposed"]])
    layout = max(layout_z, key=lambda k: layout_z[k]) if pending else None
    pairs = vectors + (matrices[layout] if layout else [])
    scores = [_tensor_score(t, a, b, layout if t.is_matrix else "1-D") for t, a, b in pairs]
    scores = [s for s in scores if s is not None]
    result.layouts = {k: round(v, 3) for k, v in layout_z.items() if math.isfinite(v)}
    result.layout = layout if layout else "1-D only"
    if not scores:
        return result
    observed = _stouffer(scores)
    null = _null(pairs)
    mean, sd = float(np.mean(null)), float(np.std(null, ddof=1))
    result.stouffer_z = observed
    result.null_mean, result.null_sd = mean, sd
    result.calibrated_z = (observed - mean) / sd if sd > 0 else 0.0
    # The normal upper tail, erfc(z / sqrt 2) / 2: what scipy.stats.norm.sf computes, without
    # importing scipy.stats (~0.4 s) on identify's path.
    result.p_value = 0.5 * math.erfc(result.calibrated_z / math.sqrt(2.0))
    result.empirical_p = float((1 + np.sum(null >= observed)) / (len(null) + 1))
    result.median_r = float(np.median([s.r for s in scores]))
    result.tensors_compared = len(scores)
    result.per_tensor = scores
    result.status = "match" if result.calibrated_z >= IDENTIFIED_Z and observed >= IDENTIFIED_Z else "no-match"
    result.summary = _summary_evidence(fp, reader)
    return result


def _tensor_score(tp: TensorPrint, a: np.ndarray, b: np.ndarray, layout: str) -> TensorScore | None:
    if a.size < 4 or float(np.std(a)) == 0.0:
        return None
    r = _pearson(a, b)
    return TensorScore(tp.name, int(a.size), r, _fisher(r, int(a.size)), layout)


def _stouffer(scores: list[TensorScore | None]) -> float:
    zs = [s.z for s in scores if s is not None]
    return float(sum(zs) / math.sqrt(len(zs))) if zs else -math.inf


def _null(pairs: list[tuple[TensorPrint, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Stouffer Z with every tensor's candidate values moved to other positions."""
    rng = np.random.default_rng(_NULL_SEED)
    out = np.empty(NULL_DRAWS)
    usable = [(a, b) for _, a, b in pairs if a.size >= 4 and float(np.std(a)) > 0]
    for draw in range(NULL_DRAWS):
        zs = []
        for a, b in usable:
            if a.shape[0] >= 2:  # pair span i with span (i + s) mod n: other rows, same distribution
                shifted = np.roll(b, int(rng.integers(1, a.shape[0])), axis=0)
            else:  # one span (a 1-D tensor read whole): pair position j with position j + s
                shifted = np.roll(b, int(rng.integers(1, b.shape[1])), axis=1)
            zs.append(_fisher(_pearson(a, shifted), int(a.size)))
        out[draw] = sum(zs) / math.sqrt(len(zs)) if zs else 0.0
    return out


def _summary_evidence(fp: WeightFingerprint, reader: CandidateReader) -> dict[str, Any]:
    """Median summary distance as stored and as transposed, over the tensors the budget allows."""
    stored, transposed, names = [], [], []
    for tp in sorted(fp.tensors, key=lambda t: (int(np.prod(t.shape)), t.name)):
        info = reader.compatible(tp)
        if info is None or tp.summary is None or tp.constant or not tp.is_matrix:
            continue
        got = reader.summaries(tp, info)
        if got is None:
            break
        stored.append(distance(tp.summary, got[0]))
        transposed.append(distance(tp.summary, got[1]))
        names.append(tp.name)
    if not names:
        return {"tensors": 0}
    d_stored, d_transposed = float(np.median(stored)), float(np.median(transposed))
    return {
        "tensors": len(names),
        "median_distance_as_is": round(d_stored, 6),
        "median_distance_transposed": round(d_transposed, 6),
        "better_layout": "as-is" if d_stored <= d_transposed else "transposed",
    }
