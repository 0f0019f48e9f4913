"""Several references at once: what is the candidate relative to all of them?

``compare CAND --reference A --reference B`` (and :func:`compare_references`) compares the
candidate with each reference (:func:`provenance.compare.api.compare`, one calibrated test
each), then reads the references together (:func:`parents_evidence`, which ``investigate``
runs on its own comparisons too):

* **layer slices**: at the references' depth, each candidate layer is attributed to the one
  reference its per-layer test relates it to while every other reference's per-layer test
  finds it unrelated (:func:`provenance.compare.verdict.layer_relations`); two or more sources
  is a frankenmerge of slices. At another depth the spectral map onto all references at once
  (:func:`provenance.compare.api.map_layers_onto`) names the slices;
* **merge weights**: least squares of the candidate on the references, per layer and overall
  (:func:`provenance.compare.merge.estimate_merge`, deltas from ``merge_base`` when given);
* one verdict (:class:`ParentsVerdict`), in this order: a frankenmerge (every named source
  related by its own test), a merge (:attr:`MergeEstimate.is_merge`, and every reference that
  weighs in related by its own test: a fine-tune of one parent gets weights ``(~1, ~0)`` and is
  not one), derived from the closest related reference, unrelated, or inconclusive.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from provenance.compare.api import compare, map_layers_onto
from provenance.compare.layermap import LayerMap, LayerMatch, describe
from provenance.compare.merge import MERGE_MIN, MergeEstimate, estimate_merge
from provenance.compare.options import CompareOptions
from provenance.compare.result import CompareResult
from provenance.compare.verdict import layer_relations
from provenance.document import model_name
from provenance.errors import input_boundary
from provenance.textsafe import safe_text

SCHEMA = "provenance.compare-references/1"
ParentsKind = Literal["frankenmerge", "merge", "derived", "unrelated", "inconclusive"]


def closest_first(results: Mapping[str, CompareResult]) -> list[tuple[str, CompareResult]]:
    """References the candidate derives from: copies first, then the smallest relative change
    ``||C - R|| / ||R||`` (the closest is the model it was made from)."""
    related = [(ref, r) for ref, r in results.items() if r.verdict.kind not in ("unrelated", "inconclusive")]

    def key(item: tuple[str, CompareResult]) -> tuple[int, float]:
        verdict = item[1].verdict
        value = verdict.overall_rel_delta
        return (0 if verdict.is_copy else 1, value if value is not None else math.inf)

    return sorted(related, key=key)


@dataclass(frozen=True)
class ParentsVerdict:
    """What the candidate is relative to all references together."""

    kind: ParentsKind
    description: str
    """In words, without p-values (``merge of A (0.50) and B (0.50)``)."""
    parents: tuple[str, ...]
    """The references it is made from (paths), in the verdict's order."""
    weights: tuple[float, ...] = ()
    """A merge's least-squares weights, one per parent."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, "parents": [safe_text(p) for p in self.parents],
                "weights": [round(w, 6) for w in self.weights]}


@dataclass(frozen=True)
class ParentsEvidence:
    """The references read together: merge weights, layer slices and the verdict from them."""

    merge: MergeEstimate | None
    layer_slices: LayerMap | None
    """The candidate's layers attributed to references (each match names its source)."""
    slices_from: Literal["per-layer tests", "layer spectra"] | None
    verdict: ParentsVerdict
    merge_error: str | None = None
    """Why no merge estimate exists (no matrix shared by every checkpoint)."""

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "merge": self.merge.to_dict() if self.merge else None,
                "merge_error": self.merge_error, "slices_from": self.slices_from,
                "layer_slices": self.layer_slices.to_dict() if self.layer_slices else None}


def _slices_from_tests(results: Mapping[str, CompareResult]) -> LayerMap | None:
    """Each candidate layer's single source by the per-layer tests (same-depth comparisons only:
    a layer-mapped comparison's layers are not the candidate's by index)."""
    relations: dict[str, dict[int, str]] = {}
    depth = None
    for ref, result in results.items():
        lmap = result.structure.layer_map if result.structure else None
        if result.test is None or (lmap is not None and not lmap.is_identity):
            return None
        relations[ref] = layer_relations(result.test, result.structure.unit_test if result.structure else None)
        layers = sorted(relations[ref])
        if depth is not None and layers != depth:
            return None
        depth = layers
    if not depth:
        return None
    matches = []
    for layer in depth:
        own = [ref for ref, rel in relations.items() if rel.get(layer) == "related"]
        others_unrelated = len(own) == 1 and all(rel.get(layer) == "unrelated" for ref, rel in relations.items()
                                                  if ref != own[0])
        if not others_unrelated:
            return None  # a layer related to several references (a merge) or to none: no slices
        matches.append(LayerMatch(layer, layer, math.nan, math.nan, model_name(own[0])))
    lmap = describe(matches, len(depth))
    return lmap if "frankenmerge" in lmap.structure else None


def _depths_differ(results: Mapping[str, CompareResult]) -> bool:
    return any(r.structure is not None and r.structure.layer_map is not None and not r.structure.layer_map.is_identity
               and len(r.structure.layer_map.matches) != r.structure.layer_map.reference_layers for r in results.values())


def _verdict(results: Mapping[str, CompareResult], merge: MergeEstimate | None, slices: LayerMap | None) -> ParentsVerdict:
    by_name = {model_name(ref): ref for ref in results}
    if slices is not None and "frankenmerge" in slices.structure:
        sources = [by_name[s] for s in dict.fromkeys(src for src, _, _ in slices.segments) if s in by_name]
        if sources and all(results[s].verdict.related for s in sources):
            return ParentsVerdict("frankenmerge", slices.description, tuple(sources))
    if merge is not None and merge.is_merge:
        parts = [(ref, w) for ref, w in zip(merge.references, merge.weights, strict=True) if w >= MERGE_MIN]
        if all(results[ref].verdict.related for ref, _ in parts if ref in results):
            names = [f"{model_name(ref)} ({w:.2f})" for ref, w in zip(merge.references, merge.weights, strict=True)]
            joined = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
            on = f" on base {model_name(merge.base)}" if merge.base else ""
            return ParentsVerdict("merge", f"merge of {joined}{on}", merge.references, merge.weights)
    related = closest_first(results)
    if related:
        ref, result = related[0]
        text = f"derives from {model_name(ref)}: {result.verdict.description}"
        if merge is not None:
            text += f"; {merge.describe()}"
        return ParentsVerdict("derived", text, tuple(r for r, _ in related))
    if results and all(r.verdict.kind == "unrelated" for r in results.values()):
        return ParentsVerdict("unrelated", "no evidence the candidate derives from any reference", ())
    return ParentsVerdict("inconclusive", "no reference is clearly a parent", ())


@input_boundary
def parents_evidence(candidate: str | os.PathLike[str], references: Sequence[str | os.PathLike[str]],
                     results: Mapping[str, CompareResult], merge_base: str | os.PathLike[str] | None = None,
                     options: CompareOptions | None = None) -> ParentsEvidence:
    """The references read together, given the candidate's comparison with each (``results``, by
    reference path): layer slices, merge weights and the verdict (module docstring)."""
    refs = [os.fspath(r) for r in references]
    merge: MergeEstimate | None = None
    error = None
    try:
        merge = estimate_merge(candidate, refs, merge_base)
    except ValueError as exc:  # no matrix shared by every checkpoint
        error = str(exc)
    slices, source = _slices_from_tests(results), "per-layer tests"
    if slices is None and _depths_differ(results):
        slices, source = map_layers_onto(candidate, list(refs), options), "layer spectra"
    return ParentsEvidence(merge, slices, source if slices is not None else None, _verdict(results, merge, slices), error)


@dataclass(frozen=True)
class MultiCompareResult:
    """``compare`` against several references: one :class:`CompareResult` each, and the parents."""

    candidate: str
    references: tuple[str, ...]
    results: tuple[CompareResult, ...]
    """In ``references`` order."""
    parents: ParentsEvidence

    @property
    def verdict(self) -> ParentsVerdict:
        return self.parents.verdict

    @property
    def merge(self) -> MergeEstimate | None:
        return self.parents.merge

    def result(self, reference: str | os.PathLike[str]) -> CompareResult:
        return self.results[self.references.index(os.fspath(reference))]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "candidate": safe_text(self.candidate),
                "references": [safe_text(r) for r in self.references], **self.parents.to_dict(),
                "comparisons": [r.to_dict() for r in self.results]}


@input_boundary
def compare_references(candidate: str | os.PathLike[str], references: Sequence[str | os.PathLike[str]],
                       options: CompareOptions | None = None, merge_base: str | os.PathLike[str] | None = None,
                       base: str | os.PathLike[str] | None = None,
                       progress: Callable[[str, int], None] | None = None) -> MultiCompareResult:
    """Compare ``candidate`` with each of ``references`` (two or more), then read them together:
    ``result.verdict`` is a :class:`ParentsVerdict` (``merge of A (0.50) and B (0.50)``),
    ``result.results`` the per-reference comparisons, ``result.merge`` the mixing weights."""
    refs = tuple(os.fspath(r) for r in references)
    if len(refs) < 2:
        raise ValueError("compare_references needs two or more references (compare takes one)")
    results = {ref: compare(candidate, ref, options, progress=progress, base=base) for ref in refs}
    evidence = parents_evidence(candidate, refs, results, merge_base, options)
    return MultiCompareResult(os.fspath(candidate), refs, tuple(results[r] for r in refs), evidence)
