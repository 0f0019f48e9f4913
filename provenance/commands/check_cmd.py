"""``provenance check``: a CI gate for uploaded checkpoints."""
from __future__ import annotations

import click

from provenance.commands.common import ExitCode, debug_enabled, say
from provenance.commands.paths import MODEL, download_option
from provenance.document import Report
from provenance.errors import CheckpointError
from provenance.fileio import to_json, write_atomic
from provenance.policy import CheckResult, Policy, check_paths, load_policy
from provenance.policy.engine import INTERNAL_ERROR, _reference_digests

SCHEMA = "provenance.check/1"


def as_report(result: CheckResult, policy_path: str) -> Report:
    """One checked file as a report document (what the SARIF and JUnit renderers draw)."""
    return Report(subject={"path": result.path, "format": result.format}, findings=list(result.findings),
                  command=f"check --policy {policy_path}")


def load_gate_policy(policy_path: str) -> Policy:
    """The policy file, with every ``forbid_copies`` reference read now: a bad reference fails
    the gate at once and clearly (exit 2), not once per checked file."""
    policy = load_policy(policy_path)
    for forbidden in policy.forbid_copies:
        try:
            _reference_digests(forbidden.reference)
        except CheckpointError as exc:
            raise type(exc)(exc.path, f"policy reference unreadable: {exc.message}", field=exc.field,
                            offset=exc.offset) from exc
    return policy


def write_ci_reports(reports: list[Report], sarif: str | None, junit: str | None) -> None:
    """``--sarif`` and ``--junit``: one report per checked model, by the report renderers."""
    from provenance.report import renderer

    for path, name in ((sarif, "sarif"), (junit, "junit")):
        if path:
            write_atomic(path, renderer(name).render(reports))


def gate_exit(counts: dict[str, int], internal_error: bool, debug_hint: str) -> ExitCode:
    """The gate's exit status (check and scan alike): a bug 70, else an unreadable model 2
    (errors win: the gate was incomplete), else a violation 1, else 0."""
    if internal_error:
        say(f"error: internal error (a bug in provenance) on at least one model; {debug_hint} and please report it")
        return ExitCode.SOFTWARE
    if counts["error"]:
        return ExitCode.INPUT_ERROR
    return ExitCode.FINDINGS if counts["violation"] else ExitCode.OK


@click.command("check")
@click.argument("paths", nargs=-1, required=True, type=MODEL)
@download_option
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False),
              help="Policy file (TOML, see docs/ci.md).")
@click.option("--sarif", type=click.Path(dir_okay=False), help="Also write SARIF 2.1.0 results to this file.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write JUnit XML results to this file.")
def command(paths: tuple[str, ...], policy_path: str, sarif: str | None, junit: str | None) -> ExitCode:
    """Check checkpoints against a policy, for CI gates on uploaded models.

    Prints a JSON document (schema provenance.check/1) on stdout and a human summary on
    stderr. Every path is checked, even after a bad one. Exit status: 0 every file
    passes, 1 at least one policy violation, 2 an unreadable file (errors win over
    violations: the scan was incomplete), 64 usage error or invalid policy file, 70 a bug.
    """
    policy = load_gate_policy(policy_path)
    results = check_paths(paths, policy, catch_bugs=not debug_enabled())
    document = {"schema": SCHEMA, "policy": policy_path, "results": [r.to_dict() for r in results],
                "summary": {status: sum(r.status == status for r in results) for status in ("pass", "violation", "error")}}
    write_ci_reports([as_report(r, policy_path) for r in results], sarif, junit)
    click.echo(to_json(document), nl=False)
    for result in results:
        say(f"{result.status.upper():9} {result.path}")
        for finding in result.findings:
            say(f"          {finding.id}: {finding.summary}")
    summary = document["summary"]
    say(f"{summary['pass']} passed, {summary['violation']} violations, {summary['error']} errors")
    internal = any(f.id == INTERNAL_ERROR for r in results for f in r.findings)
    return gate_exit(summary, internal, "rerun as `provenance --debug check ...` for the traceback")
