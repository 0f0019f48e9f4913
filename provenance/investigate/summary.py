"""Compose the executive summary: the verdict in one sentence with its p-value, then the rest."""
from __future__ import annotations

import os

from provenance.report.model import Finding, Report
from provenance.report.render import format_p

# Strongest, most specific evidence first.
PRIORITY = ["watermark.accusation", "lineage.verdict", "quant.verdict", "identify.match", "format.identity"]


def finding_rank(finding: Finding) -> int:
    for index, prefix in enumerate(PRIORITY):
        if finding.id.startswith(prefix):
            return index
    return len(PRIORITY)


def executive_summary(report: Report) -> str:
    name = os.path.basename(str(report.subject.get("path", "")))
    ranked = sorted(report.findings, key=finding_rank)
    sentences = []
    for finding in ranked:
        if finding.id.startswith("format.identity") and len(ranked) > 1:
            continue
        p = f" ({format_p(finding.p_value)})" if finding.p_value is not None else ""
        sentences.append(f"{finding.summary.rstrip('.')}{p}.")
        if len(sentences) == 3:
            break
    if not sentences:
        return f"{name}: no findings."
    text = " ".join(sentences)
    return text if text.startswith(name) else f"{name}: {text}"
