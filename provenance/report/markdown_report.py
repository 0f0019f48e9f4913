"""Markdown: for people and for code-review comments.

Every file-derived string goes through :func:`provenance.textsafe.md_escape` (control
characters escaped, then every character Markdown interprets: no HTML, no link, no emphasis,
no table break); figures are linked by their own sanitised file names."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from provenance.document import Finding, Report
from provenance.numbers import format_p, format_value
from provenance.report.base import MAX_TABLE_ROWS, BaseRenderer, columns
from provenance.report.json_report import figure_files
from provenance.textsafe import md_escape
from provenance.version import __version__


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["_(empty)_", ""]
    names = columns(rows)
    lines = ["| " + " | ".join(md_escape(c) for c in names) + " |", "|" + "---|" * len(names)]
    for row in rows[:MAX_TABLE_ROWS]:
        lines.append("| " + " | ".join(md_escape(format_value(row.get(c, ""))) for c in names) + " |")
    if len(rows) > MAX_TABLE_ROWS:
        lines.append(f"\n_{len(rows) - MAX_TABLE_ROWS} more rows in the JSON/CSV output._")
    return lines + [""]


def _finding(finding: Finding) -> str:
    return (f"| {md_escape(finding.title)} | **{md_escape(finding.verdict)}** | {format_p(finding.p_value)} | "
            f"{md_escape(finding.severity.value)} | {md_escape(finding.summary)} |")


def render_markdown(report: Report) -> str:
    subject = report.subject
    lines = [f"# Provenance report: {md_escape(os.path.basename(str(subject.get('path', ''))))}", "",
             f"**{md_escape(report.executive_summary)}**", "",
             f"- subject: {md_escape(subject.get('path', ''))}",
             f"- created {md_escape(report.created)} by provenance {md_escape(__version__)}", ""]
    if report.findings:
        lines += ["## Findings", "", "| finding | verdict | p-value | severity | summary |", "|---|---|---|---|---|"]
        lines += [_finding(f) for f in report.findings] + [""]
    if report.claims:
        lines += ["## Claims in the metadata (not evidence)", ""]
        lines += [f"- {md_escape(k)}: {md_escape(format_value(v))}" for k, v in report.claims.items()] + [""]
    for section in report.sections:
        lines += [f"## {md_escape(section.title)}", ""]
        if section.summary:
            lines += [md_escape(section.summary), ""]
        for figure in section.figures:
            lines += [f"![{md_escape(figure.caption)}]({figure.filename})", "", f"_{md_escape(figure.caption)}_", ""]
        for name, rows in section.tables.items():
            lines += [f"### {md_escape(name)}", ""] + _table(rows)
    if report.errors:
        lines += ["## Errors", ""] + [f"- {md_escape(e.get('path', ''))}: {md_escape(e.get('message', ''))}" for e in report.errors]
    return "\n".join(lines).rstrip() + "\n"


class MarkdownRenderer(BaseRenderer):
    name = "md"
    suffix = ".md"
    description = "Markdown for people (figures linked as PNG files beside it)"
    shows_figures = True

    def render(self, reports: Sequence[Report]) -> str:
        return "\n---\n\n".join(render_markdown(r) for r in reports)

    def files(self, reports: Sequence[Report], basename: str) -> dict[str, str | bytes]:
        out: dict[str, str | bytes] = {basename + self.suffix: self.render(reports)}
        out.update(figure_files(reports))
        return out
