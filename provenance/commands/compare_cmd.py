"""``provenance compare``: is CANDIDATE derived from REFERENCE, and how?"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from provenance.commands.common import ExitCode, say
from provenance.commands.options import build, options_from
from provenance.commands.paths import BASE_HELP, EXISTING_MODEL, MERGE_BASE_HELP, MODEL, download_option
from provenance.commands.progress import progress_display
from provenance.compare.options import CompareOptions
from provenance.fileio import to_json, write_files_atomic
from provenance.progress import Meter
from provenance.textsafe import safe_text

if TYPE_CHECKING:  # the analysis modules import torch/pandas: load them only when a command runs
    from provenance.compare import CompareResult
    from provenance.compare.multi import MultiCompareResult
    from provenance.document import Report



def _run(candidate: str, reference: str, options: CompareOptions, base: str | None) -> CompareResult:
    from provenance.compare import compare
    from provenance.formats import PeftAdapterCheckpoint, open_checkpoint

    with open_checkpoint(reference) as ref:  # tensor count for the bar (header only; an adapter's: unknown)
        total = None if isinstance(ref, PeftAdapterCheckpoint) else len(ref.tensors)
    with progress_display() as show:
        meter = Meter(show, "compare", total, unit="tensors")
        return compare(candidate, reference, options, base=base, progress=lambda name, _n: meter.advance(1, name))


def _run_many(candidate: str, references: list[str], options: CompareOptions, base: str | None,
              merge_base: str | None) -> MultiCompareResult:
    from provenance.compare.multi import compare_references

    with progress_display() as show:
        meter = Meter(show, "compare", None, unit="tensors")
        return compare_references(candidate, references, options, merge_base=merge_base, base=base,
                                  progress=lambda name, _n: meter.advance(1, name))


def as_multi_report(result: MultiCompareResult, with_figures: bool = True) -> Report:
    """Several references: one finding and section per reference, then the references read
    together (slices, merge weights); the executive summary is the parents verdict."""
    from provenance.document import Report
    from provenance.investigate.lineage_analysis import lineage_parts
    from provenance.investigate.merge_analysis import parents_parts
    from provenance.numbers import format_p

    parts = [lineage_parts(r, result.candidate, ref, with_figures=with_figures)
             for ref, r in zip(result.references, result.results, strict=True)]
    parts = parents_parts(result.parents) + parts
    verdict = result.verdict
    ps = "; ".join(f"{os.path.basename(os.path.normpath(ref))} {format_p(r.verdict.p_asymptotic)}"
                   for ref, r in zip(result.references, result.results, strict=True) if r.verdict.p_asymptotic is not None)
    name = os.path.basename(os.path.normpath(result.candidate))
    return Report(subject={"path": result.candidate, "format": result.results[0].candidate.format}, command="compare",
                  executive_summary=f"{name}: {verdict.description} (lineage {ps}).",
                  findings=[f for f, _ in parts], sections=[s for _, s in parts],
                  claims=dict(result.results[0].claims.candidate))


def as_report(result: CompareResult, candidate: str, reference: str, with_figures: bool = True) -> Report:
    """The comparison as a report document (what every renderer draws); ``with_figures=False``
    leaves out the PNG figures (the Markdown on stdout alone has nowhere to put them)."""
    from provenance.document import Report
    from provenance.investigate.lineage_analysis import lineage_parts
    from provenance.numbers import format_p

    finding, section = lineage_parts(result, candidate, reference, prefix_figures=False, with_figures=with_figures)
    p = f" ({format_p(finding.p_value)})" if finding.p_value is not None else ""
    return Report(subject={"path": candidate, "format": result.candidate.format}, command="compare",
                  executive_summary=f"{finding.summary}{p}.", findings=[finding], sections=[section],
                  claims=dict(result.claims.candidate))


def output_files(result: CompareResult, report: Report) -> dict[str, str | bytes]:
    """report.json (schema provenance.compare/1), tensors.csv, layers.csv, summary.md and the figures."""
    from provenance.report import frame_csv, renderer

    files: dict[str, str | bytes] = {
        "report.json": to_json(result.to_dict()),
        "tensors.csv": frame_csv(result.table),
        "layers.csv": frame_csv(result.layer_table),
    }
    files.update(renderer("md").files([report], "summary"))
    return files


@click.command("compare")
@click.argument("candidate", type=EXISTING_MODEL)
@click.argument("reference", type=EXISTING_MODEL, required=False)
@click.option("--reference", "references", multiple=True, type=EXISTING_MODEL,
              help="A reference (repeatable, instead of or besides REFERENCE): with two or more, each is compared "
              "and they are read together (merge weights, layer slices).")
@click.option("--merge-base", type=MODEL, default=None, help=MERGE_BASE_HELP)
@click.option("--base", type=MODEL, default=None, help=BASE_HELP)
@download_option
@click.option("-o", "--output", "output", type=click.Path(file_okay=False),
              help="Write report.json, tensors.csv, layers.csv, summary.md and the figures (PNG) into this directory.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON report (schema provenance.compare/1) instead of the Markdown summary.")
@options_from(CompareOptions)
def command(candidate: str, reference: str | None, references: tuple[str, ...], merge_base: str | None,
            base: str | None, output: str | None, as_json: bool, **options: Any) -> ExitCode:
    """Is CANDIDATE derived from REFERENCE, and how?

    Pairs tensors across formats (GGUF, quantized or not, safetensors, llama2.c),
    undoes transposed layouts, tests lineage with a calibrated residual-permutation
    test on circuits that permutations and rescalings cannot change, recovers MLP/head
    permutations and scales, maps layers by evidence (depth upscaling, removed or
    reordered layers), pairs shared vocabulary rows and partial widths, sees through
    residual rotations, and gives a verdict (identical, requantized, restructured,
    rotated, fine-tune, lora-merge, continued-pretraining, unrelated, inconclusive) with
    exact and asymptotic p-values, every unpaired tensor and why, per-tensor statistics
    and the metadata claims beside them.

    CANDIDATE or REFERENCE may be a PEFT adapter folder, applied to --base: a candidate
    adapter is compared as base + adapter; an adapter reference also tests whether the
    candidate is that adapter merged into the base.
    With several references (--reference A --reference B) each is compared and they are
    read together: "merge of A (0.50) and B (0.50)" (least-squares mixing weights, on
    --merge-base's deltas when given), a frankenmerge of layer slices, or derived from the
    closest one.
    Exit status: 0 done, 1 metadata claims disagree with the weights, 2 input error, 64 usage.
    """
    from provenance.report import renderer

    refs = [*([reference] if reference else []), *references]
    if not refs:
        raise click.UsageError("give a REFERENCE or --reference")
    if merge_base and len(refs) < 2:
        raise click.UsageError("--merge-base needs two or more references")
    if len(refs) > 1:
        return _command_many(candidate, refs, build(CompareOptions, options), base, merge_base, output, as_json)
    result = _run(candidate, refs[0], build(CompareOptions, options), base)
    reference = refs[0]
    report = as_report(result, candidate, reference, with_figures=bool(output))
    if output:
        write_files_atomic(output, output_files(result, report))
    click.echo(to_json(result.to_dict()) if as_json else renderer("md").render([report]), nl=False)
    say(f"verdict: {result.verdict.kind}: {safe_text(result.verdict.summary, 300)}")
    if result.adapter is not None:
        say(f"adapter: {safe_text(result.adapter.finding, 400)}")
    for flag in result.claims.disagreements:
        say(f"claims: {safe_text(flag, 300)}")
    return ExitCode.FINDINGS if result.claims.disagreements else ExitCode.OK


def _command_many(candidate: str, references: list[str], options: CompareOptions, base: str | None,
                  merge_base: str | None, output: str | None, as_json: bool) -> ExitCode:
    from provenance.report import frame_csv, renderer

    result = _run_many(candidate, references, options, base, merge_base)
    report = as_multi_report(result, with_figures=bool(output))
    if output:
        files: dict[str, str | bytes] = {"report.json": to_json(result.to_dict())}
        for k, one in enumerate(result.results):
            files[f"tensors-{k}.csv"] = frame_csv(one.table)
            files[f"layers-{k}.csv"] = frame_csv(one.layer_table)
        files.update(renderer("md").files([report], "summary"))
        write_files_atomic(output, files)
    click.echo(to_json(result.to_dict()) if as_json else renderer("md").render([report]), nl=False)
    say(f"verdict: {result.verdict.kind}: {safe_text(result.verdict.description, 400)}")
    disagree = [flag for one in result.results for flag in one.claims.disagreements]
    for flag in disagree:
        say(f"claims: {safe_text(flag, 300)}")
    return ExitCode.FINDINGS if disagree else ExitCode.OK
