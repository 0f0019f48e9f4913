"""``provenance scan``: gate many models at once, locally or on a Ray cluster (docs/scan.md)."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from provenance.commands.check_cmd import as_report, gate_exit, load_gate_policy, write_ci_reports
from provenance.commands.common import ExitCode, say
from provenance.commands.options import build, options_from
from provenance.commands.progress import progress_display
from provenance.commands.refdb_cmd import refdb_option
from provenance.errors import CheckpointError
from provenance.scan.options import Limits, ScanOptions

if TYPE_CHECKING:
    from provenance.scan import ScanReport

SHOWN_ROWS = 50


def _validate(options: ScanOptions) -> None:
    """Fail before scanning on what would fail every model: the policy (exit 64), the
    references and keys (exit 2). The driver stays light (no torch): the reference database
    is only checked to be a folder here, its entries are read by the workers."""
    from provenance.formats import open_checkpoint

    if options.policy:
        load_gate_policy(options.policy)
    for reference in options.references:
        try:
            with open_checkpoint(reference):
                pass
        except CheckpointError as exc:
            raise type(exc)(exc.path, f"reference unreadable: {exc.message}", field=exc.field, offset=exc.offset) from exc
    if options.keys:
        from provenance.watermark import load_registry

        load_registry(options.keys)
    if options.refdb and not os.path.isdir(options.refdb):
        raise click.BadParameter(f"{options.refdb} is not a directory", param_hint="--refdb")


def _summary(report: ScanReport) -> None:
    counts = report.counts
    say(f"{len(report.results)} models: {counts['pass']} passed, {counts['violation']} flagged, {counts['error']} errors; "
        f"scanned {report.scanned}, reused {report.reused} finished before"
        + (f", {report.unchanged} unchanged (same sha256)" if report.unchanged else "")
        + f"; {len(report.skipped_files)} non-model files skipped")
    repairs = report.journal_repairs
    if repairs.get("torn_bytes") or repairs.get("bad_lines"):
        say(f"journal: cut a torn last line ({repairs['torn_bytes']} bytes) and skipped {repairs['bad_lines']} unreadable "
            "lines left by an interrupted run; their models were scanned again")
    summary = report.to_dict()
    if report.scanned:
        say(f"{report.seconds:.1f} s on {report.executor}: {summary['models_per_minute']} models/min, {summary['gb_per_second']} GB/s")
    flagged = [r.row for r in report.results if r.row.status != "pass"]
    for row in flagged[:SHOWN_ROWS]:
        say(f"{row.status.upper():9} {row.id}: {row.error if row.status == 'error' else row.findings}", 400)
    if len(flagged) > SHOWN_ROWS:
        say(f"... and {len(flagged) - SHOWN_ROWS} more in {report.out}/scan.csv")
    say(f"table: {report.out}/scan.parquet and scan.csv; one document per model in models/")


def _write_ci_outputs(report: ScanReport, policy_path: str | None, sarif: str | None, junit: str | None) -> None:
    """SARIF and JUnit exactly as ``provenance check`` writes them, one report per model."""
    if sarif or junit:
        write_ci_reports([as_report(r.check_result(), policy_path or "(no policy)") for r in report.results], sarif, junit)


@click.command("scan")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Output directory: journal, scan.parquet, scan.csv, models/*.json. Rerunning with the same "
                   "directory skips the models already done.")
@click.option("--policy", "policy", type=click.Path(dir_okay=False, exists=True),
              help="Policy file, as for `provenance check` (docs/ci.md). Without one, only pickles and unreadable files are flagged.")
@refdb_option
@click.option("--reference", "references", multiple=True, type=click.Path(exists=True),
              help="Test every model's lineage against this checkpoint (repeatable); a related model is flagged.")
@click.option("--keys", type=click.Path(exists=True),
              help="Watermark key registry (docs/watermark.md); a model carrying a client's mark is flagged.")
@options_from(ScanOptions)
@click.option("-j", "--jobs", type=click.IntRange(1, 4096), default=None,
              help="Worker processes, each running one model at a time on one CPU thread, so N is the scan's CPU "
                   "budget as --threads is for other commands (default: one per core); with --ray local, the CPUs "
                   "of the private Ray.")
@click.option("--ray", "ray_address", metavar="local|auto|ADDRESS", default=None,
              help="Run on Ray: `local` starts a private Ray here, `auto` joins this machine's cluster (`ray start`), "
                   "or a cluster address. Needs `pip install 'provenance[ray]'`.")
@options_from(Limits)
@click.option("--retry-errors", is_flag=True, help="Also rescan models that timed out or ran out of memory before "
                                                   "(models whose worker was lost are always rescanned).")
@click.option("--sarif", type=click.Path(dir_okay=False), help="Also write SARIF 2.1.0 results (as `provenance check`).")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write JUnit XML results (as `provenance check`).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: a bar on a terminal, a plain line every 10 s otherwise.")
def command(inputs: tuple[str, ...], out: str, policy: str | None, refdb_dir: str | None, references: tuple[str, ...],
            keys: str | None, jobs: int | None, ray_address: str | None, retry_errors: bool, sarif: str | None,
            junit: str | None, progress: bool, **options: Any) -> ExitCode:
    """Scan INPUTS (files, directories, JSONL/CSV manifests) in parallel into one table.

    Every model gets `check`'s policy rules, inspect and identify, and with --reference /
    --keys lineage and watermark tracing. Each model runs in a worker under --timeout and
    --memory; one that crashes, hangs or runs out of memory becomes an error row and the
    scan goes on. Results: OUT/scan.parquet and OUT/scan.csv (one row per model), one JSON
    document per model, a summary on stderr. Interrupt and rerun at will: finished models
    are kept and skipped. Exit status as `provenance check`: 0 every model passes,
    1 at least one flagged, 2 at least one error (errors win), 64 usage error, 70 a bug.
    """
    from provenance.scan import LocalExecutor, RayExecutor, scan
    from provenance.scan.ray_executor import require_ray

    limits = build(Limits, options)
    scan_options = replace(build(ScanOptions, options), policy=policy, refdb=refdb_dir, references=references, keys=keys)
    _validate(scan_options)
    if ray_address:
        require_ray()
    executor = RayExecutor(ray_address, limits, jobs) if ray_address else LocalExecutor(jobs, limits)
    with progress_display() if progress else nullcontext() as show:
        report = scan(inputs, out, scan_options, executor, retry_errors=retry_errors, progress=show)
    _write_ci_outputs(report, policy, sarif, junit)
    _summary(report)
    internal = any(r.row.error_kind == "internal" for r in report.results)
    return gate_exit(report.counts, internal, "those rows have error_kind internal in the table")
