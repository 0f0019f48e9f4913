"""SARIF 2.1.0 for code-scanning dashboards (GitHub ``upload-sarif``): one run, one result per
finding above ``info``, located at the report's subject file; rules named after finding ids.

Messages are plain text made safe (:func:`provenance.textsafe.safe_text`) inside strict,
ASCII-escaped JSON; the document validates against the OASIS schema (tests/data)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provenance.document import Report, Severity
from provenance.fileio import to_json
from provenance.report.base import BaseRenderer, located_findings, subject_path
from provenance.textsafe import safe_text
from provenance.version import __version__

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {Severity.VIOLATION: "error", Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _uri(path: str) -> str:
    relative = os.path.relpath(path) if not os.path.isabs(path) or path.startswith(os.getcwd()) else path
    return Path(relative).as_posix()


def to_sarif(reports: Sequence[Report]) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for report, finding in located_findings(reports):
        if finding.severity == Severity.INFO:
            continue
        rules.setdefault(finding.id, {
            "id": safe_text(finding.id),
            "name": "".join(part.capitalize() for part in safe_text(finding.id).replace(".", "_").split("_")),
            "shortDescription": {"text": safe_text(finding.title)},
            "defaultConfiguration": {"level": _LEVEL[finding.severity]},
        })
        results.append({
            "ruleId": safe_text(finding.id),
            "ruleIndex": list(rules).index(finding.id),
            "level": _LEVEL[finding.severity],
            "message": {"text": safe_text(finding.summary)},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": safe_text(_uri(subject_path(report)))}}}],
            "properties": {"verdict": finding.verdict, "evidence": finding.evidence},
        })
    ok = all(not r.errors and r.worst_severity() != Severity.ERROR for r in reports)
    command = next((r.command for r in reports if r.command), "")
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "provenance", "version": __version__, "semanticVersion": __version__,
                                "rules": list(rules.values())}},
            "invocations": [{"executionSuccessful": ok, "commandLine": safe_text(f"provenance {command}".strip())}],
            "results": results,
        }],
    }


class SarifRenderer(BaseRenderer):
    name = "sarif"
    suffix = ".sarif"
    description = "SARIF 2.1.0 for code scanning (one result per warning, violation or error)"

    def render(self, reports: Sequence[Report]) -> str:
        return to_json(to_sarif(reports))

