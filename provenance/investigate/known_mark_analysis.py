"""Lineage judged again once tracing names a client: the client's mark is part of the copy the
leaker received, not a change the leaker made (docs/lineage.md, "A known change: the traced
client's watermark"). Runs after the watermark analysis; replaces the closest reference's
lineage result, finding and section when the mark was fitted."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from provenance.errors import CheckpointError, ProvenanceError

if TYPE_CHECKING:
    from provenance.investigate.state import Investigation


def known_mark_analysis(state: Investigation) -> None:
    traced, reference = state.traced, state.trace_reference
    if traced is None or reference is None or len(traced.accused) != 1 or state.inputs.key_registry is None:
        return  # nobody, or several clients (collusion: no single mark to add) accused
    result = state.lineage.get(reference)
    from provenance.compare.known import judge_with_known_change, rejudgeable, tensors_to_recheck

    if result is None or not rejudgeable(result):
        return
    from provenance.document import model_name
    from provenance.formats import open_checkpoint
    from provenance.investigate.lineage_analysis import lineage_parts
    from provenance.progress import Meter
    from provenance.watermark.known_mark import known_mark
    from provenance.watermark.trace import cached_registry, candidate_arch

    try:
        keys = cached_registry(state.inputs.key_registry, candidate_arch(state.inputs.candidate))
        (key,) = [k for k in keys if k.label == traced.accused[0]]
        with open_checkpoint(state.inputs.candidate) as cand, open_checkpoint(reference) as ref:
            change = known_mark(cand, ref, key, result)
            if change is None:
                return
            # a second pass over every changed matrix (minutes at 7B): shown like the lineage pass
            meter = Meter(state.progress, f"lineage vs {model_name(reference)} with {traced.accused[0]}'s mark",
                          sum(cand.info(name).n_bytes for name in tensors_to_recheck(cand, result, change)))
            meter.advance(0)  # the task starts now (its rate and time left count from here)
            judged = judge_with_known_change(cand, ref, result, change,
                                             progress=lambda name, n: meter.advance(n, name))
    except (CheckpointError, ProvenanceError) as exc:
        state.report.errors.append({"path": reference, "message": str(exc)})
        return
    state.lineage[reference] = judged
    # the figures show the test and the per-tensor deltas, which the known change leaves as they were
    finding, section = lineage_parts(judged, state.inputs.candidate, reference, with_figures=False)
    report = state.report
    report.findings = [finding if f.id == "lineage.verdict" and f.evidence.get("reference") == reference else f
                       for f in report.findings]
    report.sections = [replace(section, figures=s.figures) if s.kind == "compare" and s.title == section.title else s
                       for s in report.sections]
