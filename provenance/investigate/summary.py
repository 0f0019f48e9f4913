"""Compose the executive summary: the verdict in one sentence with its p-value, then the rest.

The sentence is built from the analyses' typed results, strongest evidence first: which
reference the candidate is closest to (lineage, smallest relative change), whether it is a
quantization of it (grid consistency), whose watermark it carries, and what else it derives
from or is unrelated to. Every clause keeps its own p-value.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Finding
from provenance.investigate.watermark_analysis import trace_sentence
from provenance.numbers import format_p

if TYPE_CHECKING:
    from provenance.compare import CompareResult
    from provenance.investigate.state import Investigation

# Order of findings in reports: strongest, most specific evidence first.
PRIORITY = ["watermark.accusation", "lineage.verdict", "quant.verdict", "watermark.none", "identify.match", "format.identity"]


def finding_rank(finding: Finding) -> int:
    for index, prefix in enumerate(PRIORITY):
        if finding.id.startswith(prefix):
            return index
    return len(PRIORITY)


def _name(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


def _p(p: float | None) -> str:
    return format_p(p) if p is not None else "no p-value"


def _lineage_p(result: CompareResult) -> str:
    return _p(result.verdict.p_asymptotic)


def _closest_clause(state: Investigation, name: str) -> str:
    reference, closest = state.related_closest_first()[0]
    quant = state.quantchecks.get(reference)
    if quant is not None and quant.verdict in ("exact", "perturbed"):
        what = "an exact quantization" if quant.verdict == "exact" else "a quantized copy"
    else:
        what = f"a {closest.verdict.kind.replace('-', ' ')}"
    clause = f"{name} is {what} of {_name(reference)}"
    traced = state.traced
    best = traced.clients()[0].best if traced is not None and traced.accused and traced.clients() else None
    if traced is not None and best is not None:
        z, p = best[1].z, best[1].p_value
        clause += f", watermarked for client {', '.join(traced.accused)} (watermark z = {z:.1f}, {_p(p)};"
        clause += f" lineage {_lineage_p(closest)}"
    else:
        clause += f" (lineage {_lineage_p(closest)}"
    return clause + ")."


def executive_summary(state: Investigation) -> str:
    report = state.report
    name = os.path.basename(state.inputs.candidate)
    related = state.related_closest_first()
    unrelated = [(ref, r) for ref, r in state.lineage.items() if r.verdict.kind == "unrelated"]
    traced = state.traced
    sentences: list[str] = []
    if related:
        sentences.append(_closest_clause(state, name))
        for reference, other in related[1:]:
            sentences.append(f"It also derives from {_name(reference)} ({other.verdict.kind.replace('-', ' ')}, "
                             f"{_lineage_p(other)}).")
    elif traced is not None and traced.accused:
        clients = traced.clients()
        best = clients[0].best if clients else None
        sentences.append(trace_sentence(traced, state.inputs.candidate).rstrip(".")
                         + f" ({_p(best[1].p_value if best else None)}).")
    if unrelated:
        refs = ", ".join(f"{_name(ref)} ({_lineage_p(r)})" for ref, r in unrelated)
        sentences.append(f"{'It' if sentences else name} is unrelated to {refs}.")
    if not sentences:
        for finding in sorted(report.findings, key=finding_rank):
            if finding.id == "format.identity" and len(report.findings) > 1:
                continue
            p = f" ({_p(finding.p_value)})" if finding.p_value is not None else ""
            sentences.append(f"{finding.summary.rstrip('.')}{p}.")
            if len(sentences) == 2:
                break
    if not sentences:
        return f"{name}: no findings."
    text = " ".join(sentences)
    return text if text.startswith(name) else f"{name}: {text}"
