"""What an investigation has found so far: the typed results of each analysis, and the
report they fill in. Analyses read earlier analyses' results from here (e.g. watermark
tracing uses the closest related reference), never from the report's text."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from provenance.document import Report

if TYPE_CHECKING:  # the analyses import torch: load them only when they run
    from provenance.compare import CompareResult
    from provenance.compare.layermap import LayerMap
    from provenance.compare.merge import MergeEstimate
    from provenance.compare.multi import ParentsEvidence
    from provenance.hashing import CheckpointHashes
    from provenance.progress import ProgressCallback
    from provenance.quant import QuantCheckResult
    from provenance.refdb import IdentifyResult
    from provenance.watermark import TraceResult


@dataclass(frozen=True)
class Inputs:
    candidate: str
    references: tuple[str, ...] = ()
    key_registry: str | None = None
    refdb: str | None = None
    hashes: bool = True
    merge_base: str | None = None
    """The common base of merged references (task arithmetic, TIES, DARE), for the merge estimate."""
    digests: tuple[dict[str, str], dict[str, str]] | None = None
    """``({file path: sha256}, {tensor name: sha256})`` from inspect, reused by identify."""
    base: str | None = None
    """The base model a PEFT adapter candidate or reference applies to."""
    figures: bool = True
    """Draw the report's figures (False when no chosen format shows them: matplotlib costs
    seconds per report, :func:`provenance.report.shows_figures`)."""


@dataclass
class Investigation:
    inputs: Inputs
    report: Report
    progress: ProgressCallback | None = None
    """Told the bytes each streamed pass reads (tasks named after the pass)."""
    candidate_hashes: CheckpointHashes | None = None
    """The candidate's file and tensor SHA-256s, taken by the first lineage pass as it reads
    the candidate (``inputs.hashes``), else by a pass of their own."""
    identified: IdentifyResult | None = None
    lineage: dict[str, CompareResult] = field(default_factory=dict)
    """Per reference path, in the order given."""
    merge: MergeEstimate | None = None
    """Mixing weights on all references at once (two or more references)."""
    layer_slices: LayerMap | None = None
    """The candidate's layers mapped onto all references at once (two or more references)."""
    parents: ParentsEvidence | None = None
    """All references read together (two or more): slices, merge weights, the verdict."""
    quantchecks: dict[str, QuantCheckResult] = field(default_factory=dict)
    traced: TraceResult | None = None
    trace_reference: str | None = None
    """The owner's model the trace was scored against (None: blind)."""

    def related_closest_first(self) -> list[tuple[str, CompareResult]]:
        """References the candidate derives from, copies first, then the smallest relative change
        ``||C - R|| / ||R||`` first (the closest is the model it was made from)."""
        from provenance.compare.multi import closest_first

        return closest_first(self.lineage)
