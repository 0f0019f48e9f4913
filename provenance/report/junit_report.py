"""JUnit XML for CI test reports: one test case per report (per file of a batch), a failure per
violation, an error per error finding; warnings and notes are not failures.

XML is built with ElementTree, which escapes markup; the text first goes through
:func:`provenance.textsafe.safe_text`, which removes what XML 1.0 cannot hold at all (control
characters, lone surrogates, U+FFFE/U+FFFF)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from provenance.document import Report, Severity
from provenance.report.base import BaseRenderer, subject_path
from provenance.textsafe import safe_text


def to_junit(reports: Sequence[Report]) -> str:
    command = next((r.command for r in reports if r.command), "report")
    suite = ET.Element("testsuite", name=safe_text(f"provenance {command}"), tests=str(len(reports)),
                       failures=str(sum(r.worst_severity() == Severity.VIOLATION for r in reports)),
                       errors=str(sum(r.worst_severity() == Severity.ERROR for r in reports)))
    classname = "provenance." + safe_text(command.split(" ", 1)[0])
    for report in reports:
        case = ET.SubElement(suite, "testcase", classname=classname, name=safe_text(subject_path(report)))
        for finding in report.findings:
            if finding.severity in (Severity.VIOLATION, Severity.ERROR):
                tag = "error" if finding.severity == Severity.ERROR else "failure"
                node = ET.SubElement(case, tag, type=safe_text(finding.id), message=safe_text(finding.summary))
                node.text = safe_text(finding.summary)
        for error in report.errors:
            node = ET.SubElement(case, "error", type=safe_text(error.get("kind", "error")),
                                 message=safe_text(error.get("message", "")))
            node.text = safe_text(f"{error.get('path', '')}: {error.get('message', '')}")
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


class JunitRenderer(BaseRenderer):
    name = "junit"
    suffix = ".xml"
    description = "JUnit XML for CI test reports (a test case per file, a failure per violation)"

    def render(self, reports: Sequence[Report]) -> str:
        return to_junit(reports)

