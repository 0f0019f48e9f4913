"""``provenance demo``: the miqu-style case study on built-in data."""
from __future__ import annotations

import click

from provenance.commands.common import ExitCode, say


@click.command("demo")
@click.option("-o", "--output", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the generated scenario (scenario/) and the investigation report (report/).")
def command(out_dir: str) -> ExitCode:
    """Build a miqu-style leak from the shipped model families and investigate it.

    A base model, the vendor's continued-pretrained derivative (new rope base and
    context), watermarked copies for five clients, one leaked as Q4_K_M and Q5_K_M, and
    an unrelated model. Writes the scenario and the full report (JSON, Markdown, HTML
    with figures) and prints the executive summary and where the HTML report is.
    """
    from provenance.demo import run_demo

    run = run_demo(out_dir)
    say(run.report.executive_summary)
    say(f"HTML report: {run.files['html'].resolve()}")
    return ExitCode.OK
