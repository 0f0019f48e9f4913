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
from provenance.formats import open_checkpoint
from provenance.hashing import CheckpointHashes, checkpoint_sha256s
from provenance.inspect import add_hashes, inspect_checkpoint
from provenance.investigate.inspect_analysis import inspect_section
from provenance.investigate.state import Inputs, Investigation
from provenance.investigate.summary import executive_summary, finding_rank
from provenance.progress import Meter, ProgressCallback
from provenance.threads import torch_threads

Analysis = Callable[[Investigation], None]
"""Adds its typed result, findings and sections; raises only on bugs (file errors become report errors)."""

__all__ = ["Analysis", "Inputs", "Investigation", "investigate", "run_investigation"]


def _analyses() -> tuple[list[Analysis], str]:
    """The analyses in the report's order, and the name of the one that runs first."""
    # Imported here so each analysis module stays independent of the others.
    from provenance.investigate import registry

    return registry.ANALYSES, registry.STREAMED_FIRST


def run_investigation(inputs: Inputs, progress: ProgressCallback | None = None) -> Investigation:
    """Every applicable analysis on ``inputs.candidate``: the typed results and the report.

    The candidate is read once: the lineage pass against the first reference streams it
    tensor by tensor and hashes it as it goes (identify and the report's hashes use those
    digests); only without a reference do the hashes take a pass of their own. ``progress``
    is told the bytes each pass reads (:mod:`provenance.progress`). Torch runs on one thread
    throughout (docs/cli.md, ``--threads``): the analyses before and after the pass (the
    watermark screen and fit, the re-judgement) are many small torch operations, which two
    intra-op threads made 3.5x slower on a busy 2-core machine (the MLP identity screen of
    32 layers: 9.0 s against 2.6)."""
    with torch_threads(1):
        return _run_investigation(inputs, progress)


def _run_investigation(inputs: Inputs, progress: ProgressCallback | None) -> Investigation:
    inspected = inspect_checkpoint(inputs.candidate)
    report = Report(subject={"path": inputs.candidate, "format": inspected["format"],
                             "sha256": [f.get("sha256") for f in inspected["files"]]},
                    command="investigate", claims=inspected["claims"])
    state = Investigation(inputs, report, progress=progress)
    analyses, streamed_first = _analyses()
    spans: dict[int, range] = {}
    """Where each analysis's sections sit in ``report.sections`` (in run order). A later analysis
    may replace a section in place (the known-mark re-judgement does), never add or remove one
    of another's, so the spans hold until the sections are put in the registry's order."""

    def run(index: int) -> None:
        before = len(report.sections)
        analyses[index](state)
        spans[index] = range(before, len(report.sections))

    # The streamed pass first (it hashes the candidate), the others after, in the registry's order
    first = [i for i, analysis in enumerate(analyses) if analysis.__name__ == streamed_first]
    for index in first:
        run(index)
    if inputs.hashes:
        if state.candidate_hashes is None:
            state.candidate_hashes = _hash_pass(inputs.candidate, progress)
        add_hashes(inspected["files"], inspected["tensors"], state.candidate_hashes)
        report.subject["sha256"] = [f.get("sha256") for f in inspected["files"]]
        # identify reuses them instead of reading the file again
        state.inputs = replace(inputs, digests=(state.candidate_hashes.files, state.candidate_hashes.tensors))
    for index in range(len(analyses)):
        if index not in spans:
            run(index)
    report.sections = [report.sections[at] for index in range(len(analyses)) for at in spans[index]]
    section, findings = inspect_section(inspected, with_figures=inputs.figures)
    # Evidence first; the description of the file (long tensor tables) closes the report.
    report.sections.append(section)
    report.findings = sorted(report.findings + findings, key=finding_rank)
    report.executive_summary = executive_summary(state)
    return state


def _hash_pass(candidate: str, progress: ProgressCallback | None) -> CheckpointHashes:
    """The candidate's hashes in a pass of their own (no lineage pass read it)."""
    with open_checkpoint(candidate) as checkpoint:
        meter = Meter(progress, "hashes", sum(span.size for span in checkpoint.files))
        return CheckpointHashes(*checkpoint_sha256s(checkpoint, meter.advance))


@input_boundary
def investigate(candidate: str | Path, references: tuple[str | Path, ...] | list[str | Path] = (),
                key_registry: str | Path | None = None, refdb: str | Path | None = None,
                progress: ProgressCallback | None = None, base: str | Path | None = None,
                merge_base: str | Path | None = None, figures: bool = True) -> Report:
    """Run every applicable analysis on ``candidate`` and return the report.

    ``base``: the base model a PEFT adapter candidate (or reference) applies to.
    ``merge_base``: the common base of merged references (task arithmetic, TIES, DARE),
    for the merge estimate with two or more references.
    ``figures=False``: no figures (for reports written only in formats that do not show them,
    :func:`provenance.report.shows_figures`; every finding, table and number is the same).
    A :class:`provenance.errors.CheckpointError` on the candidate propagates (there is
    nothing to report on); a failure on a reference is recorded in ``report.errors``.
    """
    inputs = Inputs(os.fspath(candidate), tuple(os.fspath(r) for r in references),
                    os.fspath(key_registry) if key_registry else None, os.fspath(refdb) if refdb else None,
                    base=os.fspath(base) if base is not None else None,
                    merge_base=os.fspath(merge_base) if merge_base is not None else None, figures=figures)
    return run_investigation(inputs, progress).report
