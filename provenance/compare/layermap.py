"""Which reference layer is each candidate layer? A map from evidence, not from indices.

Depth-upscaled (SOLAR-style passthrough), pruned, reordered and frankenmerged models
keep the names ``blk.0`` .. ``blk.N`` while the layers behind them moved. Each layer gets a
*signature*: the singular values of its circuit matrices, residual-space (:mod:`.invariants`)
and unit-space (:mod:`.unitspace`). Singular values are unchanged by every symmetry either
family is immune to and also by the permutations the tests draw their nulls from (``P M
P^T`` has the spectrum of ``M``), and the unit-space family by any rotation of the residual
stream. So the map is the same for every residual (or unit) permutation of the candidate,
and the calibrated tests run on the mapped pairs stay exact: choosing the pairs did not
look at anything the null permutes.

Distance between a candidate layer and a reference layer: per circuit, the relative
distance of the spectra ``||s_c - s_r|| / ||s_r||``; per family the median over the
family's circuits; the layer distance is the smaller family's (a rotation breaks the
residual family, a unit permutation the unit family; a copy leaves one near 0). Each
candidate layer takes its nearest reference layer when that one is decisive (distance at
most :data:`MATCH_MAX` and at most :data:`MARGIN` times the runner-up's); the structure
is then read off the map (:func:`describe`). Cost: one ``|S| x |S|`` SVD per circuit and
layer, and an ``L_c x L_r`` table (an 80-layer map takes milliseconds once the signatures
exist).
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from provenance.compare.invariants import Circuit, HeadLayout, circuits
from provenance.compare.sketch import Sketch, SketchBuilder, SketchSpec, read_sketch
from provenance.compare.unitspace import unit_circuits
from provenance.formats.base import Checkpoint
from provenance.threads import torch_threads

#: a candidate layer maps to its nearest reference layer only within this spectral distance
MATCH_MAX = 0.35
#: ... and only when the runner-up is at least 1 / MARGIN times farther
MARGIN = 0.6
RESIDUAL_FAMILY = ("qk", "ov", "mlp", "gate")
UNIT_FAMILY = ("unit_gg", "unit_ud", "unit_gd")

Structure = Literal["same", "depth-upscaled", "layers-removed", "reordered", "frankenmerge", "new-layers"]


@dataclass(frozen=True)
class LayerSignature:
    """Spectra of one layer's circuits (by circuit label)."""

    layer: int
    spectra: dict[str, np.ndarray]

    @classmethod
    def of(cls, layer: int, circuits: Sequence[Circuit]) -> LayerSignature:
        # torch, not numpy: torch honours the comparison's one-thread setting, while numpy's
        # BLAS starts a thread per core of its own (measured 3 ms per 128 x 128 SVD against
        # 50-300 ms with oversubscribed BLAS threads on this 2-core machine)
        spectra = {}
        for c in circuits:
            if c.layer == layer and c.square:
                spectra[c.label] = torch.linalg.svdvals(torch.from_numpy(np.ascontiguousarray(c.matrix))).numpy()
        return cls(layer, spectra)


def read_sketches(ckpt: Checkpoint, spec: SketchSpec) -> Iterator[tuple[int, Sketch]]:
    """Each layer's sketch of one checkpoint, read on its own layer by layer (each sketch
    tensor once, in bounded chunks; one layer's sketch built at a time)."""
    by_layer: dict[int, list[str]] = {}
    for name, info in ckpt.tensors.items():
        if info.layer is not None and SketchBuilder.wants(info.role or ""):
            by_layer.setdefault(int(info.layer), []).append(name)
    for layer in sorted(by_layer):
        builder = SketchBuilder(spec.residual, spec.tokens)
        for name in by_layer[layer]:
            info = ckpt.info(name)
            part = read_sketch(ckpt, name, spec)
            builder.add(info.role or "", layer, part.parts())
            builder.add_units(info.role or "", layer, part.unit_part())
        yield layer, builder.finish()


def read_signatures(ckpt: Checkpoint, spec: SketchSpec, heads: HeadLayout | None,
                    threads: int = 2) -> list[LayerSignature]:
    """Signatures of every layer of one checkpoint, read on its own (:func:`read_sketches`):
    for a candidate whose depth differs from the reference's, where no pairing by name exists
    to stream both at once. The circuits and spectra of each layer are computed on
    ``threads`` worker threads while the next layer is read (:func:`signatures_of`)."""
    return signatures_of(read_sketches(ckpt, spec), heads, threads)


def signature(layer: int, sketch: Sketch, heads: HeadLayout | None) -> LayerSignature:
    """One layer's signature from its sketch: the circuits arranged for their spectra
    (:func:`provenance.compare.invariants.layer_circuits` with ``for_spectra``), then the SVDs."""
    return LayerSignature.of(layer, circuits(sketch, heads, for_spectra=True)
                             + unit_circuits(sketch.units, for_spectra=True))


def signatures_of(sketches: Iterable[tuple[int, Sketch]], heads: HeadLayout | None,
                  threads: int = 2) -> list[LayerSignature]:
    """Signatures of ``(layer, sketch)`` pairs in order, ``threads`` layers at a time on worker
    threads (the products and SVDs release the GIL; one BLAS and one torch thread each, so
    ``threads`` cores at most), at most ``threads + 1`` sketches held at once. Each layer is
    computed by one thread whatever the count, so the signatures do not depend on it."""
    out: list[LayerSignature] = []
    with threadpool_limits(1, user_api="blas"), torch_threads(1):
        if threads <= 1:
            return [signature(layer, sketch, heads) for layer, sketch in sketches]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pending: deque[Future[LayerSignature]] = deque()
            for layer, sketch in sketches:
                pending.append(pool.submit(signature, layer, sketch, heads))
                while len(pending) > threads:
                    out.append(pending.popleft().result())
            out.extend(f.result() for f in pending)
    return out


def _label_table(candidate: Sequence[LayerSignature], reference: Sequence[LayerSignature], label: str) -> np.ndarray:
    """``||s_c - s_r|| / ||s_r||`` of one circuit's spectra for every pair of layers (inf where
    either side lacks the circuit or the spectra differ in length)."""
    out = np.full((len(candidate), len(reference)), np.inf)
    lengths = {len(x.spectra[label]) for x in [*candidate, *reference] if label in x.spectra}
    if len(lengths) != 1:
        return out
    k = lengths.pop()
    sc = np.full((len(candidate), k), np.nan)
    sr = np.full((len(reference), k), np.nan)
    for j, c in enumerate(candidate):
        if label in c.spectra:
            sc[j] = c.spectra[label]
    for i, r in enumerate(reference):
        if label in r.spectra:
            sr[i] = r.spectra[label]
    diff = np.sqrt(((sc[:, None, :] - sr[None, :, :]) ** 2).sum(axis=2))
    norm = np.sqrt((sr ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff / norm[None, :]
    return np.where(np.isfinite(rel), rel, np.inf)


def _family_table(candidate: Sequence[LayerSignature], reference: Sequence[LayerSignature],
                  family: tuple[str, ...]) -> np.ndarray:
    """Median over the family's circuits that both layers have (inf when none)."""
    tables = np.stack([_label_table(candidate, reference, label) for label in family])
    finite = np.isfinite(tables)
    with np.errstate(invalid="ignore"):
        med = np.nanmedian(np.where(finite, tables, np.nan), axis=0) if finite.any() else np.full(tables.shape[1:], np.inf)
    return np.where(finite.any(axis=0), med, np.inf)


def distance_table(candidate: Sequence[LayerSignature], reference: Sequence[LayerSignature]) -> np.ndarray:
    """``D[j, i]``: distance of candidate layer ``j`` (in ``candidate`` order) to reference
    layer ``i``: the smaller of the two families' medians."""
    if not candidate or not reference:
        return np.full((len(candidate), len(reference)), np.inf)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no shared circuit (inf)
        return np.minimum(_family_table(candidate, reference, RESIDUAL_FAMILY),
                          _family_table(candidate, reference, UNIT_FAMILY))


def layer_distance(candidate: LayerSignature, reference: LayerSignature) -> float:
    return float(distance_table([candidate], [reference])[0, 0])


@dataclass(frozen=True)
class LayerMatch:
    candidate_layer: int
    reference_layer: int | None
    """None: no reference layer is close enough (a new or unrelated layer)."""
    distance: float
    runner_up: float
    source: str = "reference"
    """Which reference the layer came from (frankenmerges name several)."""

    def to_dict(self) -> dict[str, Any]:
        return {"candidate_layer": self.candidate_layer, "reference_layer": self.reference_layer,
                "distance": _finite(self.distance), "runner_up": _finite(self.runner_up), "source": self.source}


def _finite(x: float) -> float | None:
    return round(float(x), 6) if np.isfinite(x) else None


@dataclass(frozen=True)
class LayerMap:
    """The candidate's layers mapped onto the reference's, and the structure that map shows."""

    matches: tuple[LayerMatch, ...]
    reference_layers: int
    structure: tuple[Structure, ...]
    """Everything the map shows (``("same",)`` for a layer-for-layer model)."""
    description: str
    """The structure in words (``"depth-upscaled: reference layers 0-3, then 1-4"``)."""
    missing: tuple[int, ...] = ()
    """Reference layers no candidate layer maps to."""
    duplicated: tuple[int, ...] = ()
    """Reference layers more than one candidate layer maps to."""
    segments: tuple[tuple[str, int, int], ...] = ()
    """Runs of consecutive reference layers (source, first, last), in candidate order."""
    distances: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    """The table the map was read from (candidate layer x reference layer)."""

    @property
    def is_identity(self) -> bool:
        return self.structure == ("same",)

    def mapping(self) -> dict[int, int]:
        """Candidate layer -> reference layer, for the layers that matched."""
        return {m.candidate_layer: m.reference_layer for m in self.matches if m.reference_layer is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"structure": list(self.structure), "description": self.description,
                "reference_layers": self.reference_layers, "candidate_layers": len(self.matches),
                "missing_reference_layers": list(self.missing), "duplicated_reference_layers": list(self.duplicated),
                "segments": [{"source": s, "first": a, "last": b} for s, a, b in self.segments],
                "matches": [m.to_dict() for m in self.matches],
                "distances": [[_finite(x) for x in row] for row in self.distances]}


def match_layers(distances: np.ndarray, candidate_layers: Sequence[int], reference_layers: Sequence[int],
                 sources: Sequence[str] | None = None) -> list[LayerMatch]:
    """Each candidate layer's nearest reference layer, kept when decisive (free assignment:
    reference layers may repeat or be left out). ``sources`` names the reference of each
    column (several for a frankenmerge)."""
    out = []
    for j, cl in enumerate(candidate_layers):
        row = distances[j]
        order = np.argsort(row, kind="stable")
        best = float(row[order[0]]) if len(order) else float("inf")
        second = float(row[order[1]]) if len(order) > 1 else float("inf")
        ok = len(order) and best <= MATCH_MAX and (best <= MARGIN * second or best <= 1e-9)
        i = int(order[0]) if len(order) else 0
        out.append(LayerMatch(int(cl), int(reference_layers[i]) if ok else None, best, second,
                              (sources[i] if sources else "reference") if ok else "none"))
    return out


def _segments(matches: Sequence[LayerMatch]) -> list[tuple[str, int, int]]:
    runs: list[tuple[str, int, int]] = []
    for m in matches:
        if m.reference_layer is None:
            continue
        if runs and runs[-1][0] == m.source and m.reference_layer == runs[-1][2] + 1:
            runs[-1] = (runs[-1][0], runs[-1][1], m.reference_layer)
        else:
            runs.append((m.source, m.reference_layer, m.reference_layer))
    return runs


def layer_ranges(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 4]`` -> ``0-2, 4``."""
    parts, start = [], None
    items = sorted(layers)
    for k, x in enumerate(items):
        if start is None:
            start = x
        if k + 1 == len(items) or items[k + 1] != x + 1:
            parts.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ", ".join(parts)


def describe(matches: Sequence[LayerMatch], reference_layers: int, distances: np.ndarray | None = None) -> LayerMap:
    """Read the structure off a map: identity, depth upscaling (reference ranges repeated),
    removed layers, reordering, slices of several references, new layers."""
    mapped = [m.reference_layer for m in matches if m.reference_layer is not None]
    sources = sorted({m.source for m in matches if m.reference_layer is not None})
    counts: dict[int, int] = {}
    for x in mapped:
        counts[x] = counts.get(x, 0) + 1
    duplicated = tuple(sorted(k for k, v in counts.items() if v > 1))
    single_source = len(sources) <= 1
    missing = tuple(sorted(set(range(reference_layers)) - set(mapped))) if single_source else ()
    new = [m.candidate_layer for m in matches if m.reference_layer is None]
    segments = _segments(matches)
    structure: list[Structure] = []
    words: list[str] = []
    seg_text = ", then ".join((f"{s} " if not single_source else "") + (f"{a}-{b}" if a != b else f"{a}") for s, a, b in segments)
    identity = (single_source and not new and len(matches) == reference_layers
                and all(m.reference_layer == m.candidate_layer for m in matches))
    if identity:
        structure.append("same")
        words.append("layer for layer")
    elif not single_source:
        structure.append("frankenmerge")
        words.append(f"frankenmerge of layer slices: {seg_text}")
    else:
        if duplicated:
            structure.append("depth-upscaled")
            words.append(f"depth-upscaled: reference layers {seg_text} (layers {layer_ranges(duplicated)} repeated)")
        monotone = all(b > a for a, b in itertools.pairwise(mapped))
        if not duplicated and not monotone:
            structure.append("reordered")
            words.append(f"layers reordered: reference layers {', '.join(map(str, mapped))} in candidate order")
        if missing:
            structure.append("layers-removed")
            words.append(f"reference layer{'s' if len(missing) > 1 else ''} {layer_ranges(missing)} removed")
    if new:
        structure.append("new-layers")
        words.append(f"candidate layer{'s' if len(new) > 1 else ''} {layer_ranges(new)} match no reference layer")
    table = tuple(tuple(float(x) for x in row) for row in distances) if distances is not None else ()
    return LayerMap(tuple(matches), reference_layers, tuple(structure), "; ".join(words), missing, duplicated,
                    tuple(segments), table)


def kept_identity(evidence: LayerMap) -> LayerMap:
    """A same-depth candidate whose evidence map was not decisive for every layer: its
    layers stay paired by index (the table is kept for the report)."""
    table = np.array(evidence.distances) if evidence.distances else None
    matches = [LayerMatch(m.candidate_layer, m.candidate_layer,
                          float(table[k, k]) if table is not None else float("nan"), m.runner_up)
               for k, m in enumerate(evidence.matches)]
    return describe(matches, evidence.reference_layers, table)


def identity_map(layers: Sequence[int]) -> LayerMap:
    """The map of a layer-for-layer candidate (no evidence needed)."""
    matches = [LayerMatch(int(x), int(x), 0.0, float("inf")) for x in layers]
    return describe(matches, len(layers))
