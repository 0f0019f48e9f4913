"""Watermark tracing: whose keyed copy is this? Uses the closest related reference when the
lineage analysis found one (the owner's unmarked model), else detects blind."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Figure, Finding, Section, Severity
from provenance.errors import CheckpointError, ProvenanceError

if TYPE_CHECKING:
    from provenance.investigate.state import Investigation
    from provenance.watermark import TraceResult
    from provenance.watermark.result import ClientScore


def decoy_figure(result: TraceResult, clients: list[ClientScore], statistic: str) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import norm

    decoys = result.decoys.get(statistic)
    if not decoys or not decoys.n or not clients:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    xs = np.linspace(-5, 5, 400)
    axis.plot(xs, norm.pdf(xs) * decoys.n * 0.25, color="#5a6477", label=f"N(0,1) null ({decoys.n} decoy keys: "
              f"mean {decoys.mean:.2f}, sd {decoys.std:.2f}, max {decoys.max:.1f})")
    for client in clients:
        score = client.statistics.get(statistic)
        if score is None:
            continue
        color = "#b3261e" if client.accused else "#2f6fde"
        axis.axvline(min(score.z, 60), color=color, lw=2 if client.accused else 1)
        axis.text(min(score.z, 60), axis.get_ylim()[1] * 0.9, f" {client.key} z={score.z:.1f}", color=color, fontsize=7,
                  rotation=90, va="top")
    axis.axvline(result.threshold_z, color="black", ls="--", label=f"accusation threshold z={result.threshold_z:g}")
    axis.set_xlabel(f"keyed z-score ({statistic} statistic; clipped at 60)")
    axis.set_yticks([])
    axis.legend(fontsize=7, loc="upper center")
    return Figure.from_matplotlib(
        f"watermark-{statistic}", f"Client keys' z-scores ({statistic}) against the decoy-key null", figure
    )


def _read_share(result: TraceResult) -> str:
    """Where the sequential rule stopped early, how much of the model its z's are over (a z
    over part of the model is smaller than the full pass's: docs/watermark.md, "Tracing")."""
    score = result.score
    if score.complete:
        return ""
    return (f"; decided after {score.weights_read / max(1, score.n_weights):.0%} of the weights, "
            f"{score.blocks_read} of {score.blocks_total} blocks in a seeded random order")


def trace_sentence(result: TraceResult, candidate: str) -> str:
    """Who is accused and how strongly, or that nobody is (with the highest score)."""
    cand = os.path.basename(candidate)
    clients = result.clients()
    best = clients[0].best if clients else None
    if result.accused and best is not None:
        statistic, score = best
        text = (f"{cand} carries the watermark of client {', '.join(result.accused)} "
                f"(z = {score.z:.1f} by the {statistic} statistic, threshold {result.threshold_z:g} fixed in advance; "
                f"family-wise false-accusation bound {result.rule.family_wise_false_accusation_bound:.1e}"
                f"{_read_share(result)})")
        return text + ("; several clients are significant: collusion suspected" if result.collusion else "")
    return f"no client's watermark reaches the accusation threshold z >= {result.threshold_z:g} in {cand}" + (
        f" (highest: {clients[0].key}, z = {best[1].z:.1f})" if best is not None else "")


def trace_parts(result: TraceResult, candidate: str, reference: str | None, *,
                with_figures: bool = True) -> tuple[Finding, Section]:
    clients = result.clients(per_tensor=True)
    best = clients[0].best if clients else None
    summary = trace_sentence(result, candidate)
    rule = result.rule
    finding = Finding(
        id="watermark.accusation" if result.accused else "watermark.none",
        title="Whose copy is this?",
        verdict=", ".join(result.accused) or "no accusation",
        summary=summary,
        severity=Severity.WARNING if result.accused else Severity.INFO,
        p_value=best[1].p_value if result.accused and best is not None else None,
        statistic={"threshold_z": rule.threshold_z, "n_tests": rule.n_tests,
                   "best": {"key": clients[0].key, **{s: v.to_dict() for s, v in clients[0].statistics.items()}}
                   if clients else None},
        evidence={"reference": reference, "decoys": {s: d.to_dict() for s, d in result.decoys.items()},
                  "collusion_suspected": result.collusion},
    )
    table = [{"client": c.key, "accused": c.accused, **{f"z_{s}": v.z for s, v in c.statistics.items()},
              **{f"holm_p_{s}": v.holm_p for s, v in c.statistics.items()}} for c in clients]
    figures = [f for s in ("reference", "grid", "blind") if with_figures and (f := decoy_figure(result, clients, s))]
    data = result.to_dict(per_tensor=True)
    section = Section(
        kind="watermark", title="Watermark tracing",
        summary=summary + (f". Scored against the owner's model {reference}" if reference else ". Blind detection (no reference)") + ".",
        data={k: v for k, v in data.items() if k != "clients"}, tables={"clients": table}, figures=figures[:2])
    return finding, section


def watermark_analysis(state: Investigation) -> None:
    if not state.inputs.key_registry:
        return
    from provenance.watermark import trace
    from provenance.watermark.trace import cached_registry, candidate_arch

    related = state.related_closest_first()
    reference = related[0][0] if related else None
    try:
        if state.traced_before is not None and state.traced_before[0] == reference:
            result = state.traced_before[1]  # traced before the lineage pass, against the same model
        else:
            # cached: the trace before the lineage pass read the registry already (known_mark_analysis)
            keys = cached_registry(state.inputs.key_registry, candidate_arch(state.inputs.candidate))
            result = trace(state.inputs.candidate, keys, reference=reference, progress=state.progress)
    except (CheckpointError, ProvenanceError) as exc:
        state.report.errors.append({"path": state.inputs.key_registry, "message": str(exc)})
        return
    state.traced, state.trace_reference = result, reference
    finding, section = trace_parts(result, state.inputs.candidate, reference, with_figures=state.inputs.figures)
    state.report.findings.append(finding)
    state.report.sections.append(section)
