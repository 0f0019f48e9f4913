"""Identify the candidate's family from the reference database (no reference weights needed)."""
from __future__ import annotations

import os
from typing import Any

from provenance.document import Figure, Finding, Report, Section, Severity
from provenance.errors import CheckpointError

TOP_ENTRIES = 10


def token_overlap_figure(candidates: list[dict[str, Any]]) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for candidate in candidates:
        for evidence in candidate["evidence"]:
            if evidence["signal"] == "tokenizer" and "jaccard" in evidence["data"]:
                rows.append((candidate["entry"], evidence["data"]["jaccard"], evidence["data"].get("same_id_share") or 0.0))
    rows = sorted(rows, key=lambda r: -r[1])[:TOP_ENTRIES]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 0.35 * len(rows) + 1.2))
    names = [r[0] for r in rows]
    axis.barh(names, [r[1] for r in rows], color="#2f6fde", label="shared tokens (Jaccard)")
    axis.barh(names, [r[2] * r[1] for r in rows], color="#9ab8ee", label="…with the same ids")
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.set_xlabel("tokenizer overlap with each reference entry")
    axis.legend(loc="lower right", fontsize=8)
    return Figure.from_matplotlib("tokenizer-overlap", "Tokenizer overlap with the reference database (sampled token hashes)", figure)


def identify_analysis(inputs: Any, report: Report) -> None:
    from provenance.refdb import RefDBError, identify

    try:
        result = identify(inputs.candidate, inputs.refdb, digests=inputs.digests)
    except (CheckpointError, RefDBError) as exc:
        report.errors.append({"path": inputs.refdb or "refdb", "message": str(exc)})
        return
    data = result.to_dict()
    best = result.best
    name = os.path.basename(inputs.candidate)
    if best is not None:
        weights = best.evidence_for("weight-fingerprint")
        p_value = weights.data.get("p_value") if weights and weights.status == "match" else None
        summary = f"{name} is identified as {best.entry_id} ({best.family}): {best.verdict}"
    else:
        p_value = None
        summary = f"{name} matches no entry of the reference database by hashes, weights or tokenizer"
    report.findings.append(Finding(
        id="identify.match", title="Reference database", verdict=best.entry_id if best else "no match",
        summary=summary, severity=Severity.INFO, p_value=p_value if isinstance(p_value, float) else None,
        statistic={"weights_summary": result.weights_summary},
        evidence={"best": data["best"], "fingerprint_read": data["fingerprint_read"]}))
    table = [{"entry": c["entry"], "family": c["family"], "verdict": c["verdict"], "score": c["score"],
              **{e["signal"]: f"{e['status']}: {e['detail']}" for e in c["evidence"]}}
             for c in data["candidates"][:TOP_ENTRIES]]
    figure = token_overlap_figure(data["candidates"])
    report.sections.append(Section(
        kind="identify", title="Which known model is this? (reference database)", summary=summary + ". " + result.weights_summary,
        data={k: v for k, v in data.items() if k != "candidates"}, tables={"ranked entries": table},
        figures=[figure] if figure else []))
