"""``investigate``: every applicable analysis on one candidate, as one report.

inspect always; identify against the reference database; for each reference given,
lineage comparison and (for a quantized candidate) grid consistency; watermark
tracing when a key registry is given. Each analysis keeps its typed result in the
:class:`Investigation` and adds findings and a section to the report; the executive
summary is composed last from the typed results, strongest evidence first.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from provenance.document import Report
from provenance.errors import input_boundary
from provenance.inspect import inspect_checkpoint
from provenance.investigate.inspect_analysis import inspect_section
from provenance.investigate.state import Inputs, Investigation
from provenance.investigate.summary import executive_summary, finding_rank

Analysis = Callable[[Investigation], None]
"""Adds its typed result, findings and sections; raises only on bugs (file errors become report errors)."""

__all__ = ["Analysis", "Inputs", "Investigation", "investigate", "run_investigation"]


def _analyses() -> list[Analysis]:
    # Imported here so each analysis module stays independent of the others.
    from provenance.investigate import registry

    return registry.ANALYSES


def run_investigation(inputs: Inputs, progress: Callable[[str], None] | None = None) -> Investigation:
    """Every applicable analysis on ``inputs.candidate``: the typed results and the report."""
    inspected = inspect_checkpoint(inputs.candidate, hashes=inputs.hashes)
    if inputs.hashes:  # hashed once here; identify reuses them instead of reading the file again
        inputs = replace(inputs, digests=({f["path"]: f["sha256"] for f in inspected["files"]},
                                          {t["name"]: t["sha256"] for t in inspected["tensors"]}))
    report = Report(subject={"path": inputs.candidate, "format": inspected["format"],
                             "sha256": [f.get("sha256") for f in inspected["files"]]},
                    command="investigate", claims=inspected["claims"])
    state = Investigation(inputs, report)
    section, findings = inspect_section(inspected)
    for analysis in _analyses():
        if progress:
            progress(analysis.__name__)
        analysis(state)
    # Evidence first; the description of the file (long tensor tables) closes the report.
    report.sections.append(section)
    report.findings = sorted(report.findings + findings, key=finding_rank)
    report.executive_summary = executive_summary(state)
    return state


@input_boundary
def investigate(candidate: str | Path, references: tuple[str | Path, ...] | list[str | Path] = (),
                key_registry: str | Path | None = None, refdb: str | Path | None = None,
                progress: Callable[[str], None] | None = None, base: str | Path | None = None,
                merge_base: str | Path | None = None) -> Report:
    """Run every applicable analysis on ``candidate`` and return the report.

    ``base``: the base model a PEFT adapter candidate (or reference) applies to.
    ``merge_base``: the common base of merged references (task arithmetic, TIES, DARE),
    for the merge estimate with two or more references.
    A :class:`provenance.errors.CheckpointError` on the candidate propagates (there is
    nothing to report on); a failure on a reference is recorded in ``report.errors``.
    """
    inputs = Inputs(os.fspath(candidate), tuple(os.fspath(r) for r in references),
                    os.fspath(key_registry) if key_registry else None, os.fspath(refdb) if refdb else None,
                    base=os.fspath(base) if base is not None else None,
                    merge_base=os.fspath(merge_base) if merge_base is not None else None)
    return run_investigation(inputs, progress).report
