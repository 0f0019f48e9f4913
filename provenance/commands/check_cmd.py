"""``provenance check``: a CI gate for uploaded checkpoints."""
from __future__ import annotations

import click
from rich.text import Text

from provenance.commands.common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, stderr_console
from provenance.errors import CheckpointError
from provenance.fileio import to_json, write_atomic
from provenance.policy import PolicyError, check_paths, load_policy
from provenance.policy.engine import _reference_digests
from provenance.report.ci import to_junit, to_sarif
from provenance.textsafe import safe_text

SCHEMA = "provenance.check/1"


@click.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False),
              help="Policy file (TOML, see docs/ci.md).")
@click.option("--sarif", type=click.Path(dir_okay=False), help="Also write SARIF 2.1.0 results to this file.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write JUnit XML results to this file.")
def command(paths: tuple[str, ...], policy_path: str, sarif: str | None, junit: str | None) -> None:
    """Check checkpoints against a policy, for CI gates on uploaded models.

    Prints a JSON document (schema provenance.check/1) on stdout and a human summary on
    stderr. Every path is checked, even after a bad one. Exit status: 0 every file
    passes, 1 at least one policy violation, 2 an unreadable file or invalid policy
    (errors win over violations: the scan was incomplete), 64 usage error or invalid
    policy file.
    """
    try:
        policy = load_policy(policy_path)
        for forbidden in policy.forbid_copies:  # fail early and clearly on a bad reference
            _reference_digests(forbidden.reference)
    except PolicyError as exc:
        stderr_console.print(Text(f"error: {safe_text(exc)}"))
        raise SystemExit(EXIT_USAGE) from None
    except CheckpointError as exc:
        stderr_console.print(Text(f"error: policy reference unreadable: {exc.one_line()}"))
        raise SystemExit(EXIT_ERROR) from None
    results = check_paths(paths, policy)
    document = {"schema": SCHEMA, "policy": policy_path, "results": [r.to_dict() for r in results],
                "summary": {status: sum(r.status == status for r in results) for status in ("pass", "violation", "error")}}
    if sarif:
        write_atomic(sarif, to_json(to_sarif(results, policy_path)))
    if junit:
        write_atomic(junit, to_junit(results, policy_path))
    click.echo(to_json(document), nl=False)
    for result in results:
        stderr_console.print(Text(f"{result.status.upper():9} {safe_text(result.path)}"))
        for finding in result.findings:
            stderr_console.print(Text(f"          {finding.id}: {safe_text(finding.summary)}"))
    summary = document["summary"]
    stderr_console.print(Text(f"{summary['pass']} passed, {summary['violation']} violations, {summary['error']} errors"))
    if summary["error"]:
        raise SystemExit(EXIT_ERROR)
    raise SystemExit(EXIT_FINDINGS if summary["violation"] else EXIT_OK)
