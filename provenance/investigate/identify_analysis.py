"""Identify the candidate's family from the reference database (no reference weights needed)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Figure, Finding, Section, Severity
from provenance.errors import CheckpointError

if TYPE_CHECKING:
    from provenance.investigate.state import Investigation
    from provenance.refdb import CandidateMatch, IdentifyResult

TOP_ENTRIES = 10


def token_overlap_figure(candidates: list[CandidateMatch]) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(c.entry_id, *overlap) for c in candidates if (overlap := c.token_overlap) is not None]
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


def identify_parts(result: IdentifyResult, candidate: str, *, with_figures: bool = True) -> tuple[Finding, Section]:
    best = result.best
    name = os.path.basename(candidate)
    if best is not None:
        summary = f"{name} is identified as {best.entry_id} ({best.family}): {best.verdict}"
    else:
        summary = f"{name} matches no entry of the reference database by hashes, weights or tokenizer"
    data = result.to_dict()
    finding = Finding(
        id="identify.match", title="Reference database", verdict=best.entry_id if best else "no match",
        summary=summary, severity=Severity.INFO, p_value=best.weight_p_value if best else None,
        statistic={"weights_summary": result.weights_summary},
        evidence={"best": best.entry_id if best else None, "fingerprint_read": data["fingerprint_read"]})
    table = [{"entry": c.entry_id, "family": c.family, "verdict": c.verdict, "score": round(c.score, 3),
              **{e.signal: f"{e.status}: {e.detail}" for e in c.evidence}}
             for c in result.candidates[:TOP_ENTRIES]]
    figure = token_overlap_figure(result.candidates) if with_figures else None
    section = Section(
        kind="identify", title="Which known model is this? (reference database)", summary=summary + ". " + result.weights_summary,
        data={k: v for k, v in data.items() if k != "candidates"}, tables={"ranked entries": table},
        figures=[figure] if figure else [])
    return finding, section


def identify_analysis(state: Investigation) -> None:
    from provenance.refdb import RefDBError, identify

    try:
        result = identify(state.inputs.candidate, state.inputs.refdb, digests=state.inputs.digests)
    except (CheckpointError, RefDBError) as exc:
        state.report.errors.append({"path": state.inputs.refdb or "refdb", "message": str(exc)})
        return
    state.identified = result
    finding, section = identify_parts(result, state.inputs.candidate, with_figures=state.inputs.figures)
    state.report.findings.append(finding)
    state.report.sections.append(section)
