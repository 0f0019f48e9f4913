"""``investigate``: every applicable analysis on one candidate, as one report.

inspect always; identify against the reference database; for each reference given,
lineage comparison and (for a quantized candidate) grid consistency; watermark
tracing when a key registry is given. Each analysis adds findings and a section; the
executive summary is composed last from the findings, strongest evidence first.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from provenance.document import Report
from provenance.inspect import inspect_checkpoint
from provenance.investigate.inspect_analysis import inspect_section
from provenance.investigate.summary import executive_summary, finding_rank


@dataclass(frozen=True)
class Inputs:
    candidate: str
    references: tuple[str, ...] = ()
    key_registry: str | None = None
    refdb: str | None = None
    hashes: bool = True
    digests: tuple[dict[str, str], dict[str, str]] | None = None
    """``({file path: sha256}, {tensor name: sha256})`` from inspect, reused by identify."""


Analysis = Callable[[Inputs, Report], None]
"""Adds findings and sections to the report; raises only on bugs (file errors become report errors)."""


def _analyses() -> list[Analysis]:
    # Imported here so each analysis module stays independent of the others.
    from provenance.investigate import registry

    return registry.ANALYSES


def investigate(candidate: str | Path, references: tuple[str | Path, ...] | list[str | Path] = (),
                key_registry: str | Path | None = None, refdb: str | Path | None = None,
                progress: Callable[[str], None] | None = None) -> Report:
    """Run every applicable analysis on ``candidate`` and return the report.

    A :class:`provenance.errors.CheckpointError` on the candidate propagates (there is
    nothing to report on); a failure on a reference is recorded in ``report.errors``.
    """
    inputs = Inputs(os.fspath(candidate), tuple(os.fspath(r) for r in references),
                    os.fspath(key_registry) if key_registry else None, os.fspath(refdb) if refdb else None)
    inspected = inspect_checkpoint(inputs.candidate, hashes=inputs.hashes)
    if inputs.hashes:  # hashed once here; identify reuses them instead of reading the file again
        inputs = replace(inputs, digests=({f["path"]: f["sha256"] for f in inspected["files"]},
                                          {t["name"]: t["sha256"] for t in inspected["tensors"]}))
    report = Report(subject={"path": inputs.candidate, "format": inspected["format"],
                             "sha256": [f.get("sha256") for f in inspected["files"]]},
                    command="investigate", claims=inspected["claims"])
    section, findings = inspect_section(inspected)
    for analysis in _analyses():
        if progress:
            progress(analysis.__name__)
        analysis(inputs, report)
    # Evidence first; the description of the file (long tensor tables) closes the report.
    report.sections.append(section)
    report.findings = sorted(report.findings + findings, key=finding_rank)
    report.executive_summary = executive_summary(report)
    return report
