"""``provenance quantcheck``: is a quantized checkpoint a clean quantization of a reference?"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import click

from provenance.commands.common import ExitCode, say
from provenance.commands.options import build, options_from
from provenance.commands.paths import EXISTING_MODEL, download_option
from provenance.commands.progress import progress_display
from provenance.fileio import to_json, write_files_atomic
from provenance.quant.options import QuantCheckOptions

if TYPE_CHECKING:
    from provenance.document import Report
    from provenance.quant import QuantCheckResult


def summary_lines(result: QuantCheckResult) -> list[str]:
    verdicts = ", ".join(f"{v} {k}" for k, v in sorted(result.verdicts.items())) or "none"
    evidence = result.precision_evidence
    lines = [
        f"candidate: {result.candidate}",
        f"reference: {result.reference}",
        f"verdict: {result.verdict_text} ({len(result.checked)} of {len(result.tensors)} tensors grid-checked: {verdicts})",
        f"source precision seen by the quantizer: {result.source_precision}"
        + (f" (unexplained mismatches per hypothesis on a sample: {evidence})" if evidence else ""),
        f"unexplained code mismatches: {result.n_unexplained} of {result.n_weights_checked} weights",
    ]
    if result.flagged and math.isfinite(result.amplitude_rel):
        lines.append(f"estimated source perturbation: {result.amplitude_rel:.2e} x weight RMS")
    if result.unchecked:
        # GPTQ/AWQ writers move codes on purpose (error feedback, scale search), some ggml types lack
        # a recipe: either way the codes are not predictable from the reference (docs/formats.md)
        types = ", ".join(sorted({t.qtype for t in result.tensors if t.status == "unchecked-type"}))
        lines.append(f"not grid-checked (codes not predictable from the reference for {types}): "
                     f"{len(result.unchecked)} tensors")
    return lines


def as_report(result: QuantCheckResult, candidate: str, reference: str) -> Report:
    from provenance.document import Report
    from provenance.investigate.quant_analysis import quant_parts

    finding, section = quant_parts(result, candidate, reference)
    return Report(subject={"path": candidate}, command="quantcheck", executive_summary=finding.summary + ".",
                  findings=[finding], sections=[section])


@click.command("quantcheck")
@click.argument("candidate", type=EXISTING_MODEL)
@click.option("-r", "--reference", required=True, type=EXISTING_MODEL,
              help="The reference weights (GGUF, safetensors, HF directory, llama2.c).")
@download_option
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False),
              help="Write quantcheck.json, quantcheck.csv, quantcheck.md and its figure here.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result (schema provenance.quantcheck/1) on stdout.")
@click.option("--realign", is_flag=True,
              help="Undo MLP unit permutations/rescaling recovered from the weights before checking (a reshuffled leak).")
@options_from(QuantCheckOptions)
def command(candidate: str, reference: str, out_dir: str | None, as_json: bool, realign: bool,
            **options: Any) -> ExitCode:
    """Grid-consistency check of a quantized CANDIDATE against --reference weights.

    Recomputes every stored code from the reference with llama.cpp's own arithmetic (GGUF)
    or the writer's round-to-nearest (bitsandbytes, MLX and compressed-tensors int8/fp8
    safetensors; GPTQ/AWQ get their dequantization error only) and reports, per tensor:
    exact quantization of the reference, quantized from a perturbed reference (with the
    perturbation amplitude estimated from the flip rate), or unrelated; plus dequantization
    error against that of a clean quantization.
    With --realign, MLP units permuted or rescaled in the candidate are matched first and the
    reference is checked in the candidate's frame (docs/quantization.md).
    Exit status: 0 exact quantization, 1 flagged, 2 input error.
    """
    from provenance.quant.api import quantcheck
    from provenance.report import frame_csv, renderer

    frames = None
    if realign:
        from provenance.formats import open_checkpoint
        from provenance.watermark.realign import realign as recover

        with open_checkpoint(candidate) as cand, open_checkpoint(reference) as ref:
            frames = recover(cand, ref).tensors
        say(f"realigned: {len(frames)} tensors carried into the candidate's frame")
    with progress_display() as progress:
        result = quantcheck(candidate, reference, build(QuantCheckOptions, options), progress=progress, frames=frames)
    for line in summary_lines(result):
        say(line)
    if out_dir:
        files: dict[str, str | bytes] = {"quantcheck.json": to_json(result.to_dict()), "quantcheck.csv": frame_csv(result.table)}
        files.update(renderer("md").files([as_report(result, candidate, reference)], "quantcheck"))
        write_files_atomic(out_dir, files)
    if as_json:
        click.echo(to_json(result.to_dict()), nl=False)
    return ExitCode.FINDINGS if result.flagged else ExitCode.OK
