"""What an investigation has found so far: the typed results of each analysis, and the
report they fill in. Analyses read earlier analyses' results from here (e.g. watermark
tracing uses the closest related reference), never from the report's text."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from provenance.document import Report

if TYPE_CHECKING:  # the analyses import torch: load them only when they run
    from provenance.compare import CompareResult
    from provenance.compare.gridframe import FrameCheck
    from provenance.compare.layermap import LayerMap
    from provenance.compare.merge import MergeEstimate
    from provenance.compare.multi import ParentsEvidence
    from provenance.hashing import CheckpointHashes
    from provenance.progress import ProgressCallback
    from provenance.quant import QuantCheckResult
    from provenance.refdb import IdentifyResult
    from provenance.watermark import TraceResult
    from provenance.watermark.known_mark import FittedMark


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


@dataclass(frozen=True)
class MarkInPass:
    """The known-mark re-judgement's checks, made inside the first reference's lineage pass."""

    reference: str
    fitted: FittedMark
    """The mark's fit, made before the pass (used only if lineage's own fit reads the same tensors)."""
    checks: dict[str, FrameCheck]
    """Per marked matrix the pass checked whole: the changed reference against its cells."""


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
    traced_before: tuple[str, TraceResult] | None = None
    """Tracing against the first reference, made before the lineage pass (it reads ~2% of each
    file on a strong mark), so that the pass can judge the named client's mark as it reads;
    the watermark analysis takes it when lineage finds that reference the closest related one."""
    mark_in_pass: MarkInPass | None = None
    """The traced client's mark as the lineage pass judged it (:mod:`.known_mark_analysis`)."""

    def related_closest_first(self) -> list[tuple[str, CompareResult]]:
        """References the candidate derives from, copies first, then the smallest relative change
        ``||C - R|| / ||R||`` first (the closest is the model it was made from)."""
        from provenance.compare.multi import closest_first

        return closest_first(self.lineage)
