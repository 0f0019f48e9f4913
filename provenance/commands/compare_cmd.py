"""``provenance compare``: is CANDIDATE derived from REFERENCE, and how?"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from provenance.commands.common import EXIT_FINDINGS, EXIT_OK, stderr_console
from provenance.fileio import to_json, write_atomic
from provenance.textsafe import safe_text

if TYPE_CHECKING:  # the analysis modules import torch/pandas: load them only when a command runs
    from provenance.compare import CompareOptions, CompareResult


def _run(candidate: str, reference: str, options: CompareOptions) -> CompareResult:
    from provenance.compare import compare
    from provenance.formats import open_checkpoint

    with open_checkpoint(reference) as ref:  # tensor count for the bar (header only)
        total = len(ref.tensors)
    progress = Progress(TextColumn("comparing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeRemainingColumn(), console=stderr_console, transient=True,
                        disable=not stderr_console.is_terminal)
    with progress:
        task = progress.add_task("", total=total)
        return compare(candidate, reference, options,
                       progress=lambda name, _n: progress.update(task, advance=1, description=safe_text(name, 40)))


def write_outputs(result: CompareResult, directory: Path) -> list[Path]:
    """report.json, tensors.csv, layers.csv, summary.md and figures/*.png under ``directory``."""
    from provenance.compare.report import figures, to_markdown

    written = []
    files: dict[str, str | bytes] = {
        "report.json": to_json(result.to_dict()),
        "tensors.csv": result.table.to_csv(index=False),
        "layers.csv": result.layer_table.to_csv(index=False),
        "summary.md": to_markdown(result),
    }
    for name, png in figures(result).items():
        files[f"figures/{name}"] = png
    for name, data in files.items():
        path = directory / name
        write_atomic(path, data)
        written.append(path)
    return written


@click.command("compare")
@click.argument("candidate", type=click.Path(exists=True))
@click.argument("reference", type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False),
    help="Write report.json, tensors.csv, layers.csv, summary.md and figures/*.png into this directory.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the JSON report (schema provenance.compare/1) instead of the Markdown summary.",
)
@click.option(
    "--permutations",
    default=999,
    show_default=True,
    type=click.IntRange(19, 1_000_000),
    help="Residual permutations for the exact p-value (floor 1/(N+1)).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of permutations and samples (results are reproducible).",
)
@click.option(
    "--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="Tensors streamed concurrently."
)
@click.option(
    "--layout",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "same", "transposed-bytes"]),
    help="Candidate data layout; auto detects transposed data.",
)
@click.option("--no-align", is_flag=True, help="Do not recover permutations/scales before the per-tensor statistics.")
@click.option(
    "--no-grid-check", is_flag=True, help="Skip the quantization-grid consistency check (requantization evidence)."
)
@click.option(
    "--max-residual",
    default=128,
    show_default=True,
    type=click.IntRange(8, 1 << 16),
    help="Residual coordinates sampled for the test and alignment.",
)
def command(
    candidate: str,
    reference: str,
    output: str | None,
    as_json: bool,
    permutations: int,
    seed: int,
    threads: int,
    layout: str,
    no_align: bool,
    no_grid_check: bool,
    max_residual: int,
) -> None:
    """Is CANDIDATE derived from REFERENCE, and how?

    Pairs tensors across formats (GGUF, quantized or not, safetensors, llama2.c),
    undoes transposed layouts, tests lineage with a calibrated residual-permutation
    test on circuits that permutations and rescalings cannot change, recovers MLP/head
    permutations and scales, and gives a verdict (identical, requantized, fine-tune,
    lora-merge, continued-pretraining, unrelated, inconclusive) with exact and
    asymptotic p-values, per-tensor statistics and the metadata claims beside them.
    Exit status: 0 done, 1 metadata claims disagree with the weights, 2 error.
    """
    from provenance.compare import CompareOptions

    options = CompareOptions(
        permutations=permutations,
        seed=seed,
        threads=threads,
        layout=layout,
        align=not no_align,
        grid_check=not no_grid_check,
        max_residual=max_residual,
    )
    result = _run(candidate, reference, options)
    if output:
        write_outputs(result, Path(output))
    if as_json:
        click.echo(to_json(result.to_dict()), nl=False)
    else:
        from provenance.compare.report import to_markdown

        click.echo(to_markdown(result))
    v = result.verdict
    stderr_console.print(Text(f"verdict: {v['kind']}: {safe_text(v['summary'], 300)}"))
    for flag in result.claims["disagreements"]:
        stderr_console.print(Text(f"claims: {safe_text(flag, 300)}"))
    raise SystemExit(EXIT_FINDINGS if result.claims["disagreements"] else EXIT_OK)
