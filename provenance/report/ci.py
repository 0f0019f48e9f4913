"""CI outputs for ``provenance check``: SARIF 2.1.0 and JUnit XML."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from provenance.document import Severity
from provenance.policy.engine import CheckResult
from provenance.textsafe import safe_text
from provenance.version import __version__

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {Severity.VIOLATION: "error", Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _uri(path: str) -> str:
    relative = os.path.relpath(path) if not os.path.isabs(path) or path.startswith(os.getcwd()) else path
    return Path(relative).as_posix()


def to_sarif(results: list[CheckResult], policy_path: str) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    sarif_results = []
    for result in results:
        for finding in result.findings:
            if finding.severity == Severity.INFO:
                continue
            rules.setdefault(finding.id, {
                "id": finding.id,
                "name": "".join(part.capitalize() for part in finding.id.replace(".", "_").split("_")),
                "shortDescription": {"text": safe_text(finding.title)},
                "defaultConfiguration": {"level": _LEVEL[finding.severity]},
            })
            sarif_results.append({
                "ruleId": finding.id,
                "ruleIndex": list(rules).index(finding.id),
                "level": _LEVEL[finding.severity],
                "message": {"text": safe_text(finding.summary)},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(result.path)}}}],
                "properties": {"verdict": finding.verdict, "evidence": finding.evidence},
            })
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "provenance", "version": __version__, "semanticVersion": __version__,
                                "rules": list(rules.values())}},
            "invocations": [{"executionSuccessful": all(r.status != "error" for r in results),
                             "commandLine": f"provenance check --policy {safe_text(policy_path)}"}],
            "results": sarif_results,
        }],
    }


def to_junit(results: list[CheckResult], policy_path: str) -> str:
    suite = ET.Element("testsuite", name=f"provenance check ({safe_text(os.path.basename(policy_path))})",
                       tests=str(len(results)),
                       failures=str(sum(r.status == "violation" for r in results)),
                       errors=str(sum(r.status == "error" for r in results)))
    for result in results:
        case = ET.SubElement(suite, "testcase", classname="provenance.check", name=safe_text(result.path))
        for finding in result.findings:
            if finding.severity in (Severity.VIOLATION, Severity.ERROR):
                tag = "error" if finding.severity == Severity.ERROR else "failure"
                node = ET.SubElement(case, tag, type=finding.id, message=safe_text(finding.summary))
                node.text = safe_text(finding.summary)
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
