"""``provenance investigate``: the full report on one candidate."""
from __future__ import annotations

import click

from provenance.commands.common import ExitCode, say
from provenance.commands.paths import BASE_HELP, MERGE_BASE_HELP, MODEL, download_option
from provenance.commands.progress import progress_display
from provenance.commands.refdb_cmd import refdb_option
from provenance.report import DEFAULT_FORMATS, renderer_names, renderers, shows_figures, write_report

FORMAT_HELP = ("Comma-separated outputs among " + ", ".join(renderer_names())
               + ". Figures (PNG) are drawn only when a format that shows them (md, html) is chosen.")


@click.command("investigate")
@click.argument("candidate", type=MODEL)
@click.option("--reference", "references", multiple=True, type=MODEL,
              help="A reference checkpoint to compare with (repeatable): lineage, and grid consistency for quantized candidates.")
@click.option("--base", type=MODEL, default=None, help=BASE_HELP)
@click.option("--merge-base", type=MODEL, default=None, help=MERGE_BASE_HELP)
@download_option
@click.option("--keys", "key_registry", type=click.Path(), help="A watermark key registry: trace which client's copy this is.")
@refdb_option
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the report files (report.json, report.md, report.html, figures, tables), written atomically.")
@click.option("--format", "formats", default=",".join((*DEFAULT_FORMATS, "csv")), show_default=True, help=FORMAT_HELP)
def command(candidate: str, references: tuple[str, ...], base: str | None, merge_base: str | None,
            key_registry: str | None, refdb_dir: str | None, out_dir: str, formats: str) -> ExitCode:
    """Investigate one checkpoint and write the full report, executive summary first.

    Runs inspect, identify, compare and quantcheck against each --reference, the
    merge weights with two or more references (on --merge-base when given), and watermark
    tracing with --keys, as applicable. The candidate is read once: the comparison with
    the first reference hashes it as it streams it. Progress shows as a bar on a terminal,
    as plain periodic lines otherwise; Ctrl-C stops within about a second and writes
    nothing. Exit status: 0 report written, 2 the candidate could not be read (nothing is
    written), 64 usage error, 130 interrupted.
    """
    from provenance.investigate import investigate

    chosen = renderers(f.strip() for f in formats.split(",") if f.strip())  # usage error first
    _import_analyses(bool(references), key_registry is not None)
    with progress_display() as progress:
        report = investigate(candidate, references, key_registry, refdb_dir, progress=progress, base=base,
                             merge_base=merge_base, figures=shows_figures(chosen))
    files = write_report(report, out_dir, [r.name for r in chosen])
    say(report.executive_summary)
    for error in report.errors:
        say(f"warning: {error.get('path', '')}: {error.get('message', '')}")
    if "html" in files:
        say(f"HTML report: {files['html']}")
    return ExitCode.OK


def _import_analyses(references: bool, keys: bool) -> None:
    """Import the modules the analyses of this investigation run before the progress display
    opens. The analyses import them on first use; here, before the analysis starts, they are
    imported under the startup collector settings and then frozen with the rest of startup
    (:mod:`provenance.commands.process`), instead of ~1,500 modules (torch, numba, scipy among
    them) being imported with Python's default thresholds and walked by every full collection
    of the analysis. Only what this run uses: lineage and grid consistency with a reference,
    tracing and the known-mark judgement with keys (identify always)."""
    import importlib

    modules = ["provenance.investigate.registry", "provenance.refdb.identify"]
    if references:
        modules += ["provenance.compare.api", "provenance.compare.multi", "provenance.compare.figures", "provenance.quant.api"]
    if keys:
        modules += ["provenance.watermark.trace", "provenance.watermark.known_mark", "provenance.compare.known"]
    for module in modules:
        importlib.import_module(module)
