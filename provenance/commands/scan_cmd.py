"""``provenance scan``: gate many models at once, locally or on a Ray cluster (docs/scan.md)."""
from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

import click
from rich.text import Text

from provenance.commands.common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, stderr_console
from provenance.commands.refdb_cmd import refdb_option
from provenance.errors import CheckpointError, ProvenanceError
from provenance.fileio import to_json, write_atomic
from provenance.textsafe import safe_text

if TYPE_CHECKING:
    from provenance.scan import ScanOptions, ScanReport

SHOWN_ROWS = 50
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_memory(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """``4GiB``, ``512M``, ``2g`` (binary units) or ``none``."""
    if value.strip().lower() in ("none", "0"):
        return None
    match = _SIZE.match(value)
    if not match:
        raise click.BadParameter("a size such as 4GiB, 512M or none")
    return int(float(match.group(1)) * 1024 ** "bkmgt".index((match.group(2) or "b").lower()))


def _validate(options: ScanOptions) -> None:
    """Fail before scanning on what would fail every model: the policy, references, keys. The
    driver stays light (no torch): the reference database is only checked to be a folder here,
    its entries are read by the workers."""
    from provenance.formats import open_checkpoint
    from provenance.policy import load_policy
    from provenance.policy.engine import _reference_digests

    if options.policy:
        policy = load_policy(options.policy)
        for forbidden in policy.forbid_copies:
            _reference_digests(forbidden.reference)
    for reference in options.references:
        with open_checkpoint(reference):
            pass
    if options.keys:
        from provenance.watermark import load_registry

        load_registry(options.keys)
    if options.refdb and not os.path.isdir(options.refdb):
        raise click.BadParameter(f"{options.refdb} is not a directory", param_hint="--refdb")


def _summary(report: ScanReport) -> None:
    counts = report.counts
    stderr_console.print(Text(
        f"{len(report.results)} models: {counts['pass']} passed, {counts['violation']} flagged, {counts['error']} errors; "
        f"scanned {report.scanned}, reused {report.reused} finished before"
        + (f", {report.unchanged} unchanged (same sha256)" if report.unchanged else "")
        + f"; {len(report.skipped_files)} non-model files skipped"))
    summary = report.to_dict()
    repairs = report.journal_repairs
    if repairs.get("torn_bytes") or repairs.get("bad_lines"):
        stderr_console.print(Text(f"journal: cut a torn last line ({repairs['torn_bytes']} bytes) and skipped "
                                  f"{repairs['bad_lines']} unreadable lines left by an interrupted run; those models were rescanned"))
    if report.scanned:
        stderr_console.print(Text(f"{report.seconds:.1f} s on {report.executor}: {summary['models_per_minute']} models/min, "
                                  f"{summary['gb_per_second']} GB/s"))
    flagged = [r.row for r in report.results if r.row.status != "pass"]
    for row in flagged[:SHOWN_ROWS]:
        detail = row.error if row.status == "error" else row.findings
        stderr_console.print(Text(f"{row.status.upper():9} {safe_text(row.id)}: {safe_text(detail, 300)}"))
    if len(flagged) > SHOWN_ROWS:
        stderr_console.print(Text(f"... and {len(flagged) - SHOWN_ROWS} more in {safe_text(report.out)}/scan.csv"))
    stderr_console.print(Text(f"table: {safe_text(report.out)}/scan.parquet and scan.csv; one document per model in models/"))


@click.command("scan")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Output directory: journal, scan.parquet, scan.csv, models/*.json. Rerunning with the same "
                   "directory skips the models already done.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, exists=True),
              help="Policy file, as for `provenance check` (docs/ci.md). Without one, only pickles and unreadable files are flagged.")
@refdb_option
@click.option("--reference", "references", multiple=True, type=click.Path(exists=True),
              help="Test every model's lineage against this checkpoint (repeatable); a related model is flagged.")
@click.option("--keys", type=click.Path(exists=True),
              help="Watermark key registry (docs/watermark.md); a model carrying a client's mark is flagged.")
@click.option("--hashes", is_flag=True, help="Key finished models by the SHA-256 of their files (read in the workers), "
                                             "not by size and mtime.")
@click.option("-j", "--jobs", type=click.IntRange(1, 4096), default=None,
              help="Worker processes (default: one per core); with --ray local, the CPUs of the private Ray.")
@click.option("--ray", "ray_address", metavar="local|auto|ADDRESS", default=None,
              help="Run on Ray: `local` starts a private Ray here, `auto` joins this machine's cluster (`ray start`), "
                   "or a cluster address. Needs `pip install 'provenance[ray]'`.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Wall-time limit per model, in seconds; a model past it becomes an error row.")
@click.option("--memory", default="4GiB", show_default=True, callback=parse_memory,
              help="Memory one model may allocate in its worker (or `none`); past it the model becomes an error row.")
@click.option("--retry-errors", is_flag=True, help="Also rescan models that timed out or ran out of memory before "
                                                   "(models whose worker was lost are always rescanned).")
@click.option("--sarif", type=click.Path(dir_okay=False), help="Also write SARIF 2.1.0 results (as `provenance check`).")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write JUnit XML results (as `provenance check`).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal).")
def command(inputs: tuple[str, ...], out: str, policy_path: str | None, refdb_dir: str | None, references: tuple[str, ...],
            keys: str | None, hashes: bool, jobs: int | None, ray_address: str | None, timeout: float, memory: int | None,
            retry_errors: bool, sarif: str | None, junit: str | None, progress: bool | None) -> None:
    """Scan INPUTS (files, directories, JSONL/CSV manifests) in parallel into one table.

    Every model gets `check`'s policy rules, inspect and identify, and with --reference /
    --keys lineage and watermark tracing. Each model runs in a worker under --timeout and
    --memory; one that crashes, hangs or runs out of memory becomes an error row and the
    scan goes on. Results: OUT/scan.parquet and OUT/scan.csv (one row per model), one JSON
    document per model, a summary on stderr. Interrupt and rerun at will: finished models
    are kept and skipped. Exit status as `provenance check`: 0 every model passes,
    1 at least one flagged, 2 at least one error (errors win), 64 usage error.
    """
    from provenance.policy import PolicyError
    from provenance.scan import Limits, LocalExecutor, RayExecutor, ScanOptions, scan
    from provenance.scan.manifest import ManifestError
    from provenance.scan.progress import RichProgress
    from provenance.scan.ray_executor import RayUnavailable, require_ray

    options = ScanOptions(policy_path, refdb_dir, references, keys, hashes)
    limits = Limits(timeout, memory)
    try:
        _validate(options)
        if ray_address:
            require_ray()
        executor = RayExecutor(ray_address, limits, jobs) if ray_address else LocalExecutor(jobs, limits)
        show = sys.stderr.isatty() if progress is None else progress
        report = scan(inputs, out, options, executor, retry_errors=retry_errors,
                      progress=RichProgress(stderr_console) if show else None)
    except (PolicyError, ManifestError, RayUnavailable) as exc:
        stderr_console.print(Text(f"error: {safe_text(exc)}"))
        raise SystemExit(EXIT_USAGE) from None
    except CheckpointError as exc:
        stderr_console.print(Text(f"error: reference unreadable: {exc.one_line()}"))
        raise SystemExit(EXIT_ERROR) from None
    except ProvenanceError as exc:  # another scan holds OUT, a database or registry that cannot be read
        stderr_console.print(Text(f"error: {safe_text(exc)}"))
        raise SystemExit(EXIT_ERROR) from None
    checks = [r.check_result() for r in report.results]
    if sarif or junit:
        from provenance.report.ci import to_junit, to_sarif

        if sarif:
            write_atomic(sarif, to_json(to_sarif(checks, policy_path or "(no policy)")))
        if junit:
            write_atomic(junit, to_junit(checks, policy_path or "(no policy)"))
    _summary(report)
    counts = report.counts
    if counts["error"]:
        raise SystemExit(EXIT_ERROR)
    raise SystemExit(EXIT_FINDINGS if counts["violation"] else EXIT_OK)
