"""``provenance demo``: the miqu-style case study on built-in data."""
from __future__ import annotations

import click
from rich.text import Text

from provenance.commands.common import EXIT_OK, stderr_console
from provenance.textsafe import safe_text


@click.command("demo")
@click.option("-o", "--output", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the generated scenario (scenario/) and the investigation report (report/).")
def command(out_dir: str) -> None:
    """Build a miqu-style leak from the shipped model families and investigate it.

    A base model, the vendor's continued-pretrained derivative (new rope base and
    context), watermarked copies for five clients, one leaked as Q4_K_M and Q5_K_M, and
    an unrelated model. Writes the scenario and the full report (JSON, Markdown, HTML
    with figures) and prints the executive summary and where the HTML report is.
    """
    from provenance.demo import run_demo

    _, files = run_demo(out_dir)
    import json

    summary = json.loads(files["json"].read_text())["executive_summary"]
    stderr_console.print(Text(safe_text(summary)))
    stderr_console.print(Text(f"HTML report: {files['html'].resolve()}"))
    raise SystemExit(EXIT_OK)
