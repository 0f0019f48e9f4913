"""``provenance investigate``: the full report on one candidate."""
from __future__ import annotations

import click
from rich.text import Text

from provenance.commands.common import EXIT_ERROR, EXIT_OK, stderr_console
from provenance.errors import CheckpointError
from provenance.report import write_report
from provenance.textsafe import safe_text

FORMATS = ("json", "md", "html", "csv")


@click.command("investigate")
@click.argument("candidate", type=click.Path())
@click.option("--reference", "references", multiple=True, type=click.Path(),
              help="A reference checkpoint to compare with (repeatable): lineage, and grid consistency for quantized candidates.")
@click.option("--keys", "key_registry", type=click.Path(), help="A watermark key registry: trace which client's copy this is.")
@click.option("--refdb", type=click.Path(file_okay=False), help="Reference database directory (default: the shipped one).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for report.json, report.md, report.html, figures and CSV tables (written atomically).")
@click.option("--format", "formats", default="json,md,html,csv", show_default=True,
              help="Comma-separated outputs among json, md, html, csv.")
def command(candidate: str, references: tuple[str, ...], key_registry: str | None, refdb: str | None,
            out_dir: str, formats: str) -> None:
    """Investigate one checkpoint and write the full report, executive summary first.

    Runs inspect, identify, compare and quantcheck against each --reference, and
    watermark tracing with --keys, as applicable. Exit status: 0 report written, 2 the
    candidate could not be read (nothing is written), 64 usage error.
    """
    from provenance.investigate import investigate

    chosen = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = set(chosen) - set(FORMATS)
    if unknown:
        raise click.UsageError(f"unknown formats {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    try:
        report = investigate(candidate, references, key_registry, refdb,
                             progress=lambda step: stderr_console.print(Text(f"… {step}")) if stderr_console.is_terminal else None)
    except CheckpointError as exc:
        stderr_console.print(Text(f"error: {exc.one_line()}"))
        raise SystemExit(EXIT_ERROR) from None
    files = write_report(report, out_dir, chosen)
    stderr_console.print(Text(safe_text(report.executive_summary)))
    for error in report.errors:
        stderr_console.print(Text(f"warning: {safe_text(error.get('path', ''))}: {safe_text(error.get('message', ''))}"))
    if "html" in files:
        stderr_console.print(Text(f"HTML report: {files['html']}"))
    raise SystemExit(EXIT_OK)
