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
PRIORITY = ["watermark.accusation", "lineage.layers", "lineage.merge", "lineage.verdict", "quant.verdict",
            "watermark.none", "identify.match", "format.identity"]


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


#: how a verdict kind reads after "a" (kinds not listed read as themselves, dashes as spaces)
KIND_WORDS = {"restructured": "restructured copy"}


def _what(result: CompareResult) -> str:
    """``a fine tune``, ``a restructured copy (depth-upscaled)``, ``a residual-rotated copy``:
    from the verdict's typed fields."""
    v = result.verdict
    words = KIND_WORDS.get(v.kind, v.kind.replace("-", " "))
    if v.kind == "rotated":
        copy = getattr(v.details, "copy", False)
        words = "residual-rotated " + ("copy" if copy else "derivative")
    kinds = [k for k in (v.structure.kinds if v.structure else ()) if k not in words]
    return f"a {words}" + (f" ({', '.join(kinds)})" if kinds else "")


def _merge_sentence(state: Investigation, name: str) -> str | None:
    """``X is a merge of A (0.50; lineage p ...) and B (0.50; ...)``, from the merge estimate's
    weights and each parent's lineage verdict."""
    merge = state.merge
    if merge is None or not merge.is_merge:
        return None
    parts = []
    for reference, weight in zip(merge.references, merge.weights, strict=True):
        result = state.lineage.get(reference)
        parts.append(f"{_name(reference)} ({weight:.2f}; lineage {_lineage_p(result) if result else 'not compared'})")
    joined = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    base = f" on base {_name(merge.base)}" if merge.base else ""
    return f"{name} is a merge of {joined}{base}."


def _closest_clause(state: Investigation, name: str) -> str:
    reference, closest = state.related_closest_first()[0]
    quant = state.quantchecks.get(reference)
    if quant is not None and quant.verdict in ("exact", "perturbed"):
        what = "an exact quantization" if quant.verdict == "exact" else "a quantized copy"
    else:
        what = _what(closest)
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
    slices = state.layer_slices
    if slices is not None and "frankenmerge" in slices.structure:
        # the layer map's own description (from its typed segments), each source's lineage p
        ps = ", ".join(f"{_name(ref)} {_lineage_p(r)}" for ref, r in state.lineage.items()
                       if _name(ref) in {m.source for m in slices.matches})
        sentences.append(f"{name} is a {slices.description} (lineage {ps}).")
        related = []
    elif (merged := _merge_sentence(state, name)) is not None:
        sentences.append(merged)
        related = []  # the merge sentence names every parent with its p-value
    if related:
        sentences.append(_closest_clause(state, name))
        for reference, other in related[1:]:
            sentences.append(f"It also derives from {_name(reference)} ({_what(other)[2:]}, {_lineage_p(other)}).")
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
