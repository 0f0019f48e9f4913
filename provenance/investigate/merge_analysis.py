"""Is the candidate a merge of the references, or a stack of their layers? (two or more
``--reference``; ``--merge-base``)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Finding, Section, Severity
from provenance.errors import CheckpointError

if TYPE_CHECKING:
    from provenance.investigate.state import Investigation


def merge_analysis(state: Investigation) -> None:
    """Least-squares mixing weights of the candidate on all references at once
    (:func:`provenance.compare.merge.estimate_merge`); one finding, merge or not."""
    inputs = state.inputs
    if len(inputs.references) < 2:
        return
    from provenance.compare.merge import estimate_merge

    try:
        estimate = estimate_merge(inputs.candidate, inputs.references, inputs.merge_base)
    except CheckpointError as exc:
        state.report.errors.append(exc.to_dict())
        return
    except ValueError as exc:  # nothing shared to fit on
        state.report.errors.append({"path": inputs.candidate, "message": f"merge estimate: {exc}"})
        return
    state.merge = estimate
    _layer_slices(state)
    names = estimate.names()
    state.report.findings.append(Finding(
        id="lineage.merge", title="A merge of the references?", verdict="merge" if estimate.is_merge else "not a merge",
        summary=estimate.describe(), severity=Severity.INFO,
        statistic={"weights": dict(zip(names, estimate.weights, strict=True)), "residual": estimate.residual},
        evidence=estimate.to_dict()))
    state.report.sections.append(Section(
        kind="merge", title="Merge weights", summary=estimate.describe(), data=estimate.to_dict(),
        tables={"layers": [{"layer": "global" if m.layer is None else m.layer,
                            **{os.path.basename(n): w for n, w in zip(names, m.weights, strict=True)},
                            "residual": m.residual} for m in estimate.layers]}))


def _layer_slices(state: Investigation) -> None:
    """The candidate's layers mapped onto all references at once: a frankenmerge (layer
    slices of several references) is named with its slices."""
    from provenance.compare.api import map_layers_onto

    try:
        lmap = map_layers_onto(state.inputs.candidate, list(state.inputs.references))
    except CheckpointError as exc:
        state.report.errors.append(exc.to_dict())
        return
    state.layer_slices = lmap
    if lmap is None or "frankenmerge" not in lmap.structure:
        return
    state.report.findings.append(Finding(
        id="lineage.layers", title="Layers taken from several references?", verdict="frankenmerge",
        summary=lmap.description, severity=Severity.INFO, evidence=lmap.to_dict()))
    state.report.sections.append(Section(
        kind="layer-map", title="Layer map onto all references", summary=lmap.description,
        tables={"layer map": [m.to_dict() for m in lmap.matches]}))
