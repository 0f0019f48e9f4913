"""Grid consistency of a quantized candidate against each full-precision reference."""
from __future__ import annotations

import os
from typing import Any

import pandas as pd

from provenance.document import Figure, Finding, Report, Section, Severity
from provenance.errors import CheckpointError
from provenance.formats import open_checkpoint

SUMMARY = {
    "exact": "{cand} is an exact llama.cpp quantization of {ref}: every stored code is the nearest grid point "
             "of the reference weights ({n:,} weights, 0 unexplained mismatches; the quantizer saw {precision} values)",
    "perturbed": "{cand} was quantized from a slightly different version of {ref}: {bad:,} of {n:,} weights "
                 "round to another code than the reference would (estimated perturbation {amp:.2g} of the weight RMS)",
    "unrelated": "{cand} was not quantized from {ref}: most stored codes disagree with the reference",
}


def _is_quantized(path: str) -> bool:
    with open_checkpoint(path) as checkpoint:
        return any(info.quantized for info in checkpoint.tensors.values())


def mismatch_figure(table: pd.DataFrame, title: str) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.dropna(subset=["n_checked"]) if "n_checked" in table else table.iloc[0:0]
    rows = rows[rows["layer"].notna()]
    if not len(rows):
        return None
    per_layer = rows.groupby("layer")[["n_unexplained", "n_checked"]].sum()
    rate = per_layer["n_unexplained"] / per_layer["n_checked"]
    figure, axis = plt.subplots(figsize=(6, 2.8))
    axis.bar(per_layer.index.astype(int), rate.values, color="#b3261e")
    axis.set_xlabel("layer")
    axis.set_ylabel("unexplained mismatch rate")
    axis.set_title(title)
    axis.set_ylim(bottom=0, top=max(1e-6, float(rate.max()) * 1.2))
    return Figure.from_matplotlib("grid-mismatch-per-layer", "Grid mismatches per layer (0 = exact quantization of the reference)", figure)


def quant_analysis(inputs: Any, report: Report) -> None:
    from provenance.quant import quantcheck

    if not _is_quantized(inputs.candidate):
        return
    for reference in inputs.references:
        try:
            if _is_quantized(reference):
                continue
            summary, table = quantcheck(inputs.candidate, reference, threads=1)
        except CheckpointError as exc:
            report.errors.append(exc.to_dict())
            continue
        cand, ref = os.path.basename(inputs.candidate), os.path.basename(reference)
        verdict = summary["verdict"]
        text = SUMMARY.get(verdict, "{cand} vs {ref}: nothing to check").format(
            cand=cand, ref=ref, n=summary["n_weights_checked"], bad=summary["n_unexplained"],
            amp=summary["amplitude_rel"] or 0.0, precision=summary["source_precision"])
        report.findings.append(Finding(
            id="quant.verdict", title=f"Quantized from exactly {ref}?", verdict=summary["verdict_text"], summary=text,
            severity=Severity.WARNING if verdict == "perturbed" else Severity.INFO,
            statistic={k: summary[k] for k in ("n_weights_checked", "n_unexplained", "amplitude_rel", "source_precision")},
            evidence={"reference": reference, "verdicts": summary["verdicts"], "unchecked": summary["unchecked"]}))
        figure = mismatch_figure(table, f"{cand} vs {ref}")
        columns = [c for c in ("name", "qtype", "status", "n_checked", "n_unexplained", "n_up", "n_down",
                               "dist_max_steps", "amplitude_rel", "rel_l2", "expected_rel_l2") if c in table]
        report.sections.append(Section(
            kind="quantcheck", title=f"Grid consistency against {ref}", summary=text,
            data={k: v for k, v in summary.items() if k != "layers"} | {"layers": summary["layers"]},
            tables={"tensors": table[columns].to_dict("records")},
            figures=[figure] if figure else []))
