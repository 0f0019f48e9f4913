"""Compose the executive summary: the verdict in one sentence with its p-value, then the rest.

The sentence is built from the findings, strongest evidence first: which reference the
candidate is closest to (lineage, smallest relative change), whether it is a quantization
of it (grid consistency), whose watermark it carries, and what else it derives from or is
unrelated to. Every clause keeps its own p-value.
"""
from __future__ import annotations

import os

from provenance.document import Finding, Report
from provenance.investigate.lineage_analysis import related_closest_first
from provenance.numbers import format_p

# Order of findings in reports: strongest, most specific evidence first.
PRIORITY = ["watermark.accusation", "lineage.verdict", "quant.verdict", "watermark.none", "identify.match", "format.identity"]


def finding_rank(finding: Finding) -> int:
    for index, prefix in enumerate(PRIORITY):
        if finding.id.startswith(prefix):
            return index
    return len(PRIORITY)


def _ref_name(finding: Finding) -> str:
    return os.path.basename(os.path.normpath(str(finding.evidence.get("reference", ""))))


def _p(finding: Finding) -> str:
    return format_p(finding.p_value) if finding.p_value is not None else "no p-value"


def executive_summary(report: Report) -> str:
    name = os.path.basename(str(report.subject.get("path", "")))
    by_id: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_id.setdefault(finding.id, []).append(finding)
    lineage = by_id.get("lineage.verdict", [])
    related = related_closest_first(report)
    unrelated = [f for f in lineage if f.verdict == "unrelated"]
    accusation = (by_id.get("watermark.accusation") or [None])[0]
    sentences: list[str] = []
    if related:
        closest = related[0]
        ref = _ref_name(closest)
        quant = next((f for f in by_id.get("quant.verdict", []) if _ref_name(f) == ref), None)
        if quant is not None and quant.verdict in ("exact quantization", "quantized from a perturbed reference"):
            what = "an exact quantization" if quant.verdict == "exact quantization" else "a quantized copy"
        else:
            what = f"a {closest.verdict.replace('-', ' ')}"
        clause = f"{name} is {what} of {ref}"
        if accusation is not None:
            best = accusation.statistic.get("best") or {}
            z = max((v["z"] for v in best.values() if isinstance(v, dict) and "z" in v), default=float("nan"))
            clause += f", watermarked for client {accusation.verdict} (watermark z = {z:.1f}, {_p(accusation)};"
            clause += f" lineage {_p(closest)}"
        else:
            clause += f" (lineage {_p(closest)}"
        sentences.append(clause + ").")
        for other in related[1:]:
            sentences.append(f"It also derives from {_ref_name(other)} ({other.verdict.replace('-', ' ')}, {_p(other)}).")
    elif accusation is not None:
        sentences.append(accusation.summary.rstrip(".") + f" ({_p(accusation)}).")
    if unrelated:
        refs = ", ".join(f"{_ref_name(f)} ({_p(f)})" for f in unrelated)
        sentences.append(f"{'It' if sentences else name} is unrelated to {refs}.")
    if not sentences:
        for finding in sorted(report.findings, key=finding_rank):
            if finding.id == "format.identity" and len(report.findings) > 1:
                continue
            p = f" ({_p(finding)})" if finding.p_value is not None else ""
            sentences.append(f"{finding.summary.rstrip('.')}{p}.")
            if len(sentences) == 2:
                break
    if not sentences:
        return f"{name}: no findings."
    text = " ".join(sentences)
    return text if text.startswith(name) else f"{name}: {text}"
