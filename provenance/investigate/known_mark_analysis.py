"""Lineage judged again once tracing names a client: the client's mark is part of the copy the
leaker received, not a change the leaker made (docs/lineage.md, "A known change: the traced
client's watermark"). Runs after the watermark analysis; replaces the closest reference's
lineage result, finding and section when the mark was fitted."""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING

from provenance.errors import CheckpointError, ProvenanceError

if TYPE_CHECKING:
    from provenance.compare.known import ChangedCells
    from provenance.investigate.state import Investigation


def mark_in_pass(state: Investigation, reference: str, stack: ExitStack) -> ChangedCells | None:
    """Before the lineage pass against ``reference``: trace against it (~2% of each file on a
    strong mark) and, when one client is named, fit that client's mark, so that the pass judges
    the mark as it reads (``compare(..., taps=...)``) instead of a second pass over every marked
    matrix (docs/lineage.md, "A known change: the traced client's watermark"). The trace is kept
    for the watermark analysis, which uses it when ``reference`` is the closest related one.
    None (the analyses then run as without it) when nothing is to be judged."""
    inputs = state.inputs
    if not inputs.key_registry or inputs.base is not None:
        return None
    from provenance.compare import CompareOptions
    from provenance.compare.known import ChangedCells
    from provenance.formats import open_checkpoint
    from provenance.watermark import trace
    from provenance.watermark.known_mark import fit_before_comparing, mark_change
    from provenance.watermark.trace import cached_registry, candidate_arch

    try:
        arch = candidate_arch(inputs.candidate)
        keys = cached_registry(inputs.key_registry, arch)  # read once: the trace and the accused client's key
        traced = trace(inputs.candidate, keys, reference=reference, progress=state.progress)
        state.traced_before = (reference, traced)
        if len(traced.accused) != 1:
            return None
        (key,) = [k for k in keys if k.label == traced.accused[0]]
        cand = stack.enter_context(open_checkpoint(inputs.candidate))
        ref = stack.enter_context(open_checkpoint(reference))
        fitted = fit_before_comparing(cand, ref, key)
    except (CheckpointError, ProvenanceError):
        return None  # the analyses after lineage meet the same error and report it
    if fitted is None:
        return None
    # the options lineage compares with (its defaults): the same sampled rows
    cells = ChangedCells(cand, ref, mark_change(ref, key, fitted.amplitude, fitted.fitted_on), CompareOptions())
    from provenance.investigate.state import MarkInPass

    state.mark_in_pass = MarkInPass(reference, fitted, {})
    return cells


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
    from provenance.watermark.known_mark import known_mark, reusable
    from provenance.watermark.trace import cached_registry, candidate_arch

    try:
        keys = cached_registry(state.inputs.key_registry, candidate_arch(state.inputs.candidate))
        (key,) = [k for k in keys if k.label == traced.accused[0]]
        with open_checkpoint(state.inputs.candidate) as cand, open_checkpoint(reference) as ref:
            in_pass = state.mark_in_pass if state.mark_in_pass is not None and state.mark_in_pass.reference == reference \
                else None
            # the pass's checks hold only where the fit before it is lineage's own fit, bit for bit
            if in_pass is not None and not reusable(in_pass.fitted, cand, ref, key, result):
                in_pass = None
            change = known_mark(cand, ref, key, result, in_pass.fitted if in_pass is not None else None)
            if change is None:
                return
            streamed = in_pass.checks if in_pass is not None else {}
            # what the pass did not check, in a second pass (minutes at 7B): shown like the lineage pass
            again = sum(cand.info(name).n_bytes for name in tensors_to_recheck(cand, result, change) if name not in streamed)
            meter = Meter(state.progress if again else None,
                          f"lineage vs {model_name(reference)} with {traced.accused[0]}'s mark", again)
            meter.advance(0)  # the task starts now (its rate and time left count from here)
            judged = judge_with_known_change(cand, ref, result, change, progress=lambda name, n: meter.advance(
                0 if name in streamed else n, name), streamed=streamed)
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
