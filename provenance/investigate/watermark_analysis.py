"""Watermark tracing: whose keyed copy is this? Uses the closest related reference when the
lineage analysis found one (the owner's unmarked model), else detects blind."""
from __future__ import annotations

import os
from typing import Any

from provenance.document import Figure, Finding, Report, Section, Severity
from provenance.errors import CheckpointError, ProvenanceError
from provenance.investigate.lineage_analysis import related_closest_first


def closest_reference(report: Report) -> str | None:
    """The related reference with the smallest relative change, from the lineage findings."""
    related = related_closest_first(report)
    return str(related[0].evidence["reference"]) if related else None


def decoy_figure(trace_dict: dict[str, Any], statistic: str) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import norm

    decoys = trace_dict["decoys"].get(statistic)
    clients = trace_dict["clients"]
    if not decoys or not clients:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    xs = np.linspace(-5, 5, 400)
    axis.plot(xs, norm.pdf(xs) * decoys["n"] * 0.25, color="#5a6477", label=f"N(0,1) null ({decoys['n']} decoy keys: "
              f"mean {decoys['mean']:.2f}, sd {decoys['std']:.2f}, max {decoys['max']:.1f})")
    for client in clients:
        z = client["statistics"].get(statistic, {}).get("z")
        if z is None:
            continue
        color = "#b3261e" if client["accused"] else "#2f6fde"
        axis.axvline(min(z, 60), color=color, lw=2 if client["accused"] else 1)
        axis.text(min(z, 60), axis.get_ylim()[1] * 0.9, f" {client['key']} z={z:.1f}", color=color, fontsize=7, rotation=90, va="top")
    axis.axvline(
        trace_dict["rule"]["threshold_z"],
        color="black",
        ls="--",
        label=f"accusation threshold z={trace_dict['rule']['threshold_z']:g}",
    )
    axis.set_xlabel(f"keyed z-score ({statistic} statistic; clipped at 60)")
    axis.set_yticks([])
    axis.legend(fontsize=7, loc="upper center")
    return Figure.from_matplotlib(
        f"watermark-{statistic}", f"Client keys' z-scores ({statistic}) against the decoy-key null", figure
    )


def watermark_analysis(inputs: Any, report: Report) -> None:
    if not inputs.key_registry:
        return
    from provenance.watermark import load_registry, trace
    from provenance.watermark.trace import candidate_arch

    reference = closest_reference(report)
    try:
        keys = load_registry(inputs.key_registry, candidate_arch(inputs.candidate))
        result = trace(inputs.candidate, keys, reference=reference)
    except (CheckpointError, ProvenanceError) as exc:
        report.errors.append({"path": inputs.key_registry, "message": str(exc)})
        return
    data = result.to_dict(per_tensor=True)
    cand = os.path.basename(inputs.candidate)
    best = data["clients"][0] if data["clients"] else None
    best_stat = max(best["statistics"].items(), key=lambda item: item[1]["z"]) if best else None
    rule = data["rule"]
    if data["accused"]:
        z, log10_p = best_stat[1]["z"], best_stat[1]["log10_p"]
        summary = (
            f"{cand} carries the watermark of client {', '.join(data['accused'])} "
            f"(z = {z:.1f} by the {best_stat[0]} statistic, threshold {rule['threshold_z']:g} fixed in advance; "
            f"family-wise false-accusation bound {rule['family_wise_false_accusation_bound']:.1e})"
        )
        if data["collusion_suspected"]:
            summary += "; several clients are significant: collusion suspected"
        p_value = 10**log10_p if log10_p > -300 else 0.0
    else:
        summary = f"no client's watermark reaches the accusation threshold z >= {rule['threshold_z']:g} in {cand}" + (
            f" (highest: {best['key']}, z = {best_stat[1]['z']:.1f})" if best_stat else ""
        )
        p_value = None
    report.findings.append(
        Finding(
            id="watermark.accusation" if data["accused"] else "watermark.none",
            title="Whose copy is this?",
            verdict=", ".join(data["accused"]) or "no accusation",
            summary=summary,
            severity=Severity.WARNING if data["accused"] else Severity.INFO,
            p_value=p_value,
            statistic={
                "threshold_z": rule["threshold_z"],
                "n_tests": rule["n_tests"],
                "best": {"key": best["key"], **best["statistics"]} if best else None,
            },
            evidence={
                "reference": reference,
                "decoys": data["decoys"],
                "collusion_suspected": data["collusion_suspected"],
            },
        )
    )
    table = [
        {
            "client": c["key"],
            "accused": c["accused"],
            **{f"z_{s}": v["z"] for s, v in c["statistics"].items()},
            **{f"holm_p_{s}": v.get("holm_p") for s, v in c["statistics"].items()},
        }
        for c in data["clients"]
    ]
    figures = [f for s in ("reference", "grid", "blind") if (f := decoy_figure(data, s))]
    report.sections.append(
        Section(
            kind="watermark",
            title="Watermark tracing",
            summary=summary
            + (f". Scored against the owner's model {reference}" if reference else ". Blind detection (no reference)")
            + ".",
            data={k: v for k, v in data.items() if k != "clients"},
            tables={"clients": table},
            figures=figures[:2],
        )
    )
