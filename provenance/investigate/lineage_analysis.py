"""Lineage of the candidate against each reference (the calibrated comparison), as report
findings and sections built from the typed :class:`provenance.compare.CompareResult`.

:func:`lineage_parts` is also what ``provenance compare`` renders: one way from the result to
every output format."""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from provenance.document import Figure, Finding, Section, Severity, model_name
from provenance.errors import CheckpointError

if TYPE_CHECKING:
    from provenance.compare import CompareResult
    from provenance.investigate.state import Investigation


def _tensor_bytes(*paths: str) -> int | None:
    """The tensor bytes of the checkpoints (what a comparison streams, at most); None when one
    cannot be opened (the comparison reports why)."""
    from provenance.formats import open_checkpoint

    total = 0
    for path in paths:
        try:
            with open_checkpoint(path) as ckpt:
                total += sum(info.n_bytes for info in ckpt.tensors.values())
        except CheckpointError:
            return None
    return total


def lineage_sentence(result: CompareResult, candidate: str, reference: str) -> str:
    """The verdict in one sentence naming both files; its p-value is reported beside it."""
    v, cand, ref = result.verdict, os.path.basename(candidate), model_name(reference)
    if v.related:
        return f"{cand} derives from {ref}: {v.description}"
    return f"{cand} is {v.kind.replace('-', ' ')} with respect to {ref}: {v.description}"


def _alignment_rows(result: CompareResult) -> list[dict[str, Any]]:
    if result.alignment is None or result.alignment.identity:
        return []
    rows = []
    for layer in result.alignment.layers:
        rows.append({
            "layer": layer.layer,
            "mlp_units_moved": layer.mlp.moved if layer.mlp else None,
            "mlp_units": layer.mlp.units if layer.mlp else None,
            "kv_groups_moved": layer.attention.kv_groups.moved if layer.attention else None,
            "q_heads_moved": layer.attention.q_heads_moved if layer.attention else None,
            "attn_norm_rescaled": layer.attn_norm_rescale.applied,
            "ffn_norm_rescaled": layer.ffn_norm_rescale.applied,
        })
    return rows


def lineage_parts(result: CompareResult, candidate: str, reference: str, *,
                  prefix_figures: bool = True, with_figures: bool = True) -> tuple[Finding, Section]:
    """The finding (verdict, p-value, evidence) and the section (tables, figures) of one comparison.
    ``prefix_figures``: name figures after the reference (several references in one report);
    ``with_figures=False``: no figures (rendering them with matplotlib costs seconds, wasted
    when no file will hold them)."""
    from provenance.compare.figures import figures

    v, claims = result.verdict, result.claims
    cand, ref = os.path.basename(candidate), model_name(reference)
    text = lineage_sentence(result, candidate, reference)
    finding = Finding(
        id="lineage.verdict", title=f"Derived from {ref}?", verdict=v.kind, summary=text,
        severity=Severity.WARNING if claims.disagreements else Severity.INFO, p_value=v.p_asymptotic,
        statistic={"z": v.z, "p_exact": v.p_exact, "p_asymptotic": v.p_asymptotic,
                   "permutations": result.test.permutations if result.test else None,
                   "permutations_planned": result.test.permutations_planned if result.test else None},
        evidence={"reference": reference, "evidence": list(v.evidence), "overall_rel_delta": v.overall_rel_delta,
                  "claims_status": claims.status, "claims_disagreements": list(claims.disagreements),
                  "declared_relation": claims.declared_relation, "declared_relation_agrees": claims.relation_agrees,
                  "alignment": result.alignment.to_dict() if result.alignment else None,
                  "adapter": result.adapter.finding if result.adapter else None,
                  "structure_kinds": list(result.structure.kinds) if result.structure else [],
                  "unpaired": [u.name for u in result.structure.left_out] if result.structure else []})
    test = result.test.to_dict() if result.test else {}
    tables = {"layers": result.layer_records()}
    if rows := _alignment_rows(result):
        tables["recovered alignment"] = rows
    if result.structure is not None and result.structure.layer_map is not None and v.related:
        tables["layer map"] = [m.to_dict() for m in result.structure.layer_map.matches]
    if result.structure is not None and result.structure.unpaired:
        tables["unpaired tensors"] = [u.to_dict() for u in result.structure.unpaired]
    if result.adapter is not None:
        tables["adapter modules"] = [m.to_dict() for m in result.adapter.modules]
    tables["tensors"] = result.table_records()
    section = Section(
        kind="compare", title=f"Lineage against {ref}", summary=". ".join([text, *v.evidence]) + ".",
        data={"verdict": v.to_dict(), "test": {k: val for k, val in test.items() if k != "layers"},
              "claims": claims.to_dict(), "layout": result.layout.to_dict(),
              "alignment": result.alignment.to_dict() if result.alignment else None, "timing": result.timing.to_dict(),
              "adapter": result.adapter.to_dict() if result.adapter else None,
              "structure": {k: val for k, val in result.structure.to_dict().items() if k != "layer_map"}
              if result.structure else None},
        tables=tables,
        figures=[Figure(f"{ref}-{f.name}" if prefix_figures else f.name, f"{f.caption} ({cand} vs {ref})", f.png)
                 for f in (figures(result) if with_figures else [])])
    return finding, section


def lineage_analysis(state: Investigation) -> None:
    """Each reference's comparison; the first that reads the candidate also hashes it as it
    goes (``state.candidate_hashes``), so the candidate is read once for both, and, with a key
    registry, judges the traced client's mark as it reads (:func:`.known_mark_analysis.mark_in_pass`)."""
    from provenance.compare import compare
    from provenance.investigate.known_mark_analysis import mark_in_pass
    from provenance.progress import Meter

    for index, reference in enumerate(state.inputs.references):
        hashes = state.inputs.hashes and state.candidate_hashes is None
        with ExitStack() as stack:
            taps = mark_in_pass(state, reference, stack) if index == 0 else None
            meter = Meter(state.progress, f"lineage vs {model_name(reference)}",
                          _tensor_bytes(state.inputs.candidate, reference))
            try:
                result = compare(state.inputs.candidate, reference, base=state.inputs.base, hashes=hashes, taps=taps,
                                 progress=lambda name, n, meter=meter: meter.advance(n, name))  # type: ignore[misc]
            except CheckpointError as exc:
                state.report.errors.append(exc.to_dict())
                continue
            if taps is not None and state.mark_in_pass is not None:
                state.mark_in_pass = replace(state.mark_in_pass, checks=taps.checks())
        state.lineage[reference] = result
        if result.candidate_hashes is not None:
            state.candidate_hashes = result.candidate_hashes
        finding, section = lineage_parts(result, state.inputs.candidate, reference, with_figures=state.inputs.figures)
        state.report.findings.append(finding)
        state.report.sections.append(section)
