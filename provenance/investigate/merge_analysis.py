"""Is the candidate a merge of the references, or a stack of their layers? (two or more
``--reference``; ``--merge-base``). The references are read together by
:func:`provenance.compare.multi.parents_evidence`, the same code ``compare --reference A
--reference B`` runs; this module turns its typed result into findings and sections."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Finding, Section, Severity
from provenance.errors import CheckpointError

if TYPE_CHECKING:
    from provenance.compare.layermap import LayerMap
    from provenance.compare.merge import MergeEstimate
    from provenance.compare.multi import ParentsEvidence, ParentsVerdict
    from provenance.investigate.state import Investigation


def merge_analysis(state: Investigation) -> None:
    """Merge weights and layer slices of the candidate on all references at once."""
    inputs = state.inputs
    if len(inputs.references) < 2:
        return
    from provenance.compare.multi import parents_evidence

    try:
        evidence = parents_evidence(inputs.candidate, inputs.references, state.lineage, inputs.merge_base)
    except CheckpointError as exc:
        state.report.errors.append(exc.to_dict())
        return
    state.parents = evidence
    state.merge = evidence.merge
    state.layer_slices = evidence.layer_slices
    if evidence.merge_error is not None:
        state.report.errors.append({"path": inputs.candidate, "message": f"merge estimate: {evidence.merge_error}"})
    for finding, section in parents_parts(evidence):
        state.report.findings.append(finding)
        state.report.sections.append(section)


def merge_parts(estimate: MergeEstimate, verdict: ParentsVerdict) -> tuple[Finding, Section]:
    """The merge estimate as a finding (merge or not, as the references read together say) and
    a section (per-layer weights)."""
    names = estimate.names()
    merged = verdict.kind == "merge"
    summary = verdict.description if merged else estimate.describe()
    if not merged and estimate.is_merge:  # the weights alone look like a merge; the tests say what it is
        weights = ", ".join(f"{n} ({w:.2f})" for n, w in zip(names, estimate.weights, strict=True))
        summary = f"not a merge ({verdict.description}); least-squares weights {weights}"
    finding = Finding(
        id="lineage.merge", title="A merge of the references?", verdict="merge" if merged else "not a merge",
        summary=summary, severity=Severity.INFO,
        statistic={"weights": dict(zip(names, estimate.weights, strict=True)), "residual": estimate.residual},
        evidence=estimate.to_dict())
    section = Section(
        kind="merge", title="Merge weights", summary=estimate.describe(), data=estimate.to_dict(),
        tables={"layers": [{"layer": "global" if m.layer is None else m.layer,
                            **{os.path.basename(n): w for n, w in zip(names, m.weights, strict=True)},
                            "residual": m.residual} for m in estimate.layers]})
    return finding, section


def slices_parts(lmap: LayerMap, source: str | None) -> tuple[Finding, Section]:
    """A frankenmerge's layer slices as a finding and a section (the layer map table)."""
    how = f" (from the {source})" if source else ""
    finding = Finding(id="lineage.layers", title="Layers taken from several references?", verdict="frankenmerge",
                      summary=lmap.description + how, severity=Severity.INFO, evidence=lmap.to_dict())
    section = Section(kind="layer-map", title="Layer map onto all references", summary=lmap.description + how,
                      tables={"layer map": [m.to_dict() for m in lmap.matches]})
    return finding, section


def parents_parts(evidence: ParentsEvidence) -> list[tuple[Finding, Section]]:
    """Findings and sections of the references read together: the slices of a frankenmerge,
    the merge estimate (merge or not)."""
    out = []
    if evidence.verdict.kind == "frankenmerge" and evidence.layer_slices is not None:
        out.append(slices_parts(evidence.layer_slices, evidence.slices_from))
    if evidence.merge is not None:
        out.append(merge_parts(evidence.merge, evidence.verdict))
    return out
