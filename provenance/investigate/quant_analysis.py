"""Grid consistency of a quantized candidate against each full-precision reference, as report
findings and sections built from the typed :class:`provenance.quant.QuantCheckResult`
(:func:`quant_parts` is also what ``provenance quantcheck`` renders)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Figure, Finding, Section, Severity
from provenance.errors import CheckpointError
from provenance.formats import open_checkpoint

if TYPE_CHECKING:
    from provenance.investigate.state import Investigation
    from provenance.quant import QuantCheckResult

SUMMARY = {
    "exact": "{cand} is an exact quantization of {ref}: every stored code is the nearest grid point "
             "of the reference weights ({n:,} weights, 0 unexplained mismatches; the quantizer saw {precision} values)",
    "perturbed": "{cand} was quantized from a slightly different version of {ref}: {bad:,} of {n:,} weights "
                 "round to another code than the reference would (estimated perturbation {amp:.2g} of the weight RMS)",
    "unrelated": "{cand} was not quantized from {ref}: most stored codes disagree with the reference",
}
TABLE_COLUMNS = ("name", "qtype", "status", "n_checked", "n_unexplained", "n_up", "n_down", "dist_max_steps",
                 "amplitude_rel", "rel_l2", "expected_rel_l2")


def _is_quantized(path: str) -> bool:
    with open_checkpoint(path) as checkpoint:
        return any(info.quantized or info.packed for info in checkpoint.tensors.values())


def mismatch_figure(result: QuantCheckResult, title: str) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer: dict[int, list[int]] = {}
    for t in result.tensors:
        if t.grid is not None and t.layer is not None:
            counts = per_layer.setdefault(int(t.layer), [0, 0])
            counts[0] += t.grid.n_unexplained
            counts[1] += t.grid.n_checked
    if not per_layer:
        return None
    layers = sorted(per_layer)
    rate = [per_layer[k][0] / per_layer[k][1] if per_layer[k][1] else 0.0 for k in layers]
    figure, axis = plt.subplots(figsize=(6, 2.8))
    axis.bar(layers, rate, color="#b3261e")
    axis.set_xlabel("layer")
    axis.set_ylabel("unexplained mismatch rate")
    axis.set_title(title)
    axis.set_ylim(bottom=0, top=max(1e-6, max(rate) * 1.2))
    return Figure.from_matplotlib("grid-mismatch-per-layer", "Grid mismatches per layer (0 = exact quantization of the reference)", figure)


def quant_parts(result: QuantCheckResult, candidate: str, reference: str, *,
                with_figures: bool = True) -> tuple[Finding, Section]:
    """The finding and section of one grid check; ``with_figures=False``: no figure (see
    :func:`provenance.report.shows_figures`)."""
    cand, ref = os.path.basename(candidate), os.path.basename(reference)
    text = SUMMARY.get(result.verdict, "{cand} vs {ref}: nothing to check").format(
        cand=cand, ref=ref, n=result.n_weights_checked, bad=result.n_unexplained, amp=result.amplitude_rel,
        precision=result.source_precision)
    finding = Finding(
        id="quant.verdict", title=f"Quantized from exactly {ref}?", verdict=result.verdict_text, summary=text,
        severity=Severity.WARNING if result.verdict == "perturbed" else Severity.INFO,
        statistic={"n_weights_checked": result.n_weights_checked, "n_unexplained": result.n_unexplained,
                   "amplitude_rel": result.amplitude_rel, "source_precision": result.source_precision},
        evidence={"reference": reference, "verdicts": result.verdicts, "unchecked": result.unchecked})
    figure = mismatch_figure(result, f"{cand} vs {ref}") if with_figures else None
    records = [t.record() for t in result.tensors]
    present = [c for c in TABLE_COLUMNS if any(c in r for r in records)]
    rows = [{c: r.get(c) for c in present} for r in records]
    section = Section(
        kind="quantcheck", title=f"Grid consistency against {ref}", summary=text, data=result.summary(),
        tables={"tensors": rows}, figures=[figure] if figure else [])
    return finding, section


def quant_analysis(state: Investigation) -> None:
    from provenance.quant import quantcheck

    if not _is_quantized(state.inputs.candidate):
        return
    for reference in state.inputs.references:
        try:
            if _is_quantized(reference):
                continue
            result = quantcheck(state.inputs.candidate, reference)
        except CheckpointError as exc:
            state.report.errors.append(exc.to_dict())
            continue
        state.quantchecks[reference] = result
        finding, section = quant_parts(result, state.inputs.candidate, reference, with_figures=state.inputs.figures)
        state.report.findings.append(finding)
        state.report.sections.append(section)
