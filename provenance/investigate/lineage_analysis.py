"""Lineage of the candidate against each reference (the calibrated comparison)."""
from __future__ import annotations

import os
from typing import Any

from provenance.document import Figure, Finding, Report, Section, Severity
from provenance.errors import CheckpointError

CAPTIONS = {
    "similarity_by_layer.png": "Per-layer similarity (Pearson, after alignment) by tensor role",
    "delta_heatmap.png": "Relative change ||C - R|| / ||R|| per layer and role (log scale)",
    "permutation_null.png": "Test statistic against its residual-permutation null distribution",
}


UNRELATED = ("unrelated", "inconclusive")


def related_closest_first(report: Report) -> list[Finding]:
    """Lineage findings of references the candidate derives from, smallest relative change
    ``||C - R|| / ||R||`` first (the closest is the model it was made from)."""
    related = [f for f in report.findings if f.id == "lineage.verdict" and f.verdict not in UNRELATED]
    delta = [f.evidence.get("overall_rel_delta") for f in related]
    order = sorted(range(len(related)), key=lambda i: delta[i] if isinstance(delta[i], (int, float)) else float("inf"))
    return [related[i] for i in order]


def lineage_analysis(inputs: Any, report: Report) -> None:
    from provenance.compare import compare
    from provenance.compare.report import figures

    for reference in inputs.references:
        try:
            result = compare(inputs.candidate, reference)
        except CheckpointError as exc:
            report.errors.append(exc.to_dict())
            continue
        verdict = result.verdict
        ref = os.path.basename(os.path.normpath(reference))
        cand = os.path.basename(inputs.candidate)
        kind = verdict.get("kind", "inconclusive")
        related = bool(verdict.get("related"))
        p = verdict.get("p_asymptotic")
        summary = (f"{cand} derives from {ref}: {verdict.get('summary', kind)}" if related
                   else f"{cand} is {kind.replace('-', ' ')} with respect to {ref}: {verdict.get('summary', '')}")
        # The finding carries the p-value; keep the sentence free of a second copy of it.
        summary = summary.split("; p =")[0].split(" (asymptotic p")[0]
        claims = result.claims
        severity = Severity.WARNING if claims.get("disagreements") else Severity.INFO
        report.findings.append(Finding(
            id="lineage.verdict", title=f"Derived from {ref}?", verdict=kind, summary=summary.rstrip("; "),
            severity=severity, p_value=float(p) if isinstance(p, (int, float)) else None,
            statistic={"z": verdict.get("z"), "p_exact": verdict.get("p_exact"), "p_asymptotic": p,
                       "permutations": (result.test or {}).get("permutations")},
            evidence={"reference": reference, "evidence": verdict.get("evidence", []),
                      "overall_rel_delta": verdict.get("details", {}).get("overall_rel_delta"),
                      "claims_status": claims.get("status"), "claims_disagreements": claims.get("disagreements", []),
                      "alignment": result.alignment}))
        pngs = figures(result)
        layer_table = result.layer_table
        report.sections.append(Section(
            kind="compare", title=f"Lineage against {ref}",
            summary=summary + ". " + " ".join(str(e) for e in verdict.get("evidence", [])),
            data={"verdict": verdict, "test": {k: v for k, v in (result.test or {}).items() if k != "layers"},
                  "claims": claims, "layout": result.layout, "alignment": result.alignment, "timing": result.timing},
            tables={"layers": layer_table.to_dict("records") if len(layer_table) else [],
                    "tensors": result.table.to_dict("records")},
            figures=[Figure(f"{ref}-{name.removesuffix('.png')}", f"{CAPTIONS.get(name, name)} ({cand} vs {ref})", png)
                     for name, png in pngs.items()]))
