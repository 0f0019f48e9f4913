"""Render a :class:`Report` to JSON, Markdown and a self-contained HTML page.

No template engine: every file-derived string is escaped by the code that places it
(``html.escape`` for HTML, :func:`md_escape` for Markdown, both after
:func:`provenance.textsafe.safe_text`), so metadata can never be evaluated or inject
markup. The HTML page embeds figures as base64 PNG and runs no script.
"""
from __future__ import annotations

import base64
import html
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provenance.document import Finding, Report, Section
from provenance.fileio import to_json
from provenance.numbers import format_p, format_value
from provenance.textsafe import md_escape, safe_text

MAX_TABLE_ROWS = 500


def h(value: Any) -> str:
    return html.escape(safe_text(value), quote=True)


def render_json(report: Report) -> str:
    return to_json(report.to_dict())


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


# ----- Markdown -------------------------------------------------------------------------
def _md_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["_(empty)_", ""]
    columns = _columns(rows)
    lines = ["| " + " | ".join(md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:MAX_TABLE_ROWS]:
        lines.append("| " + " | ".join(md_escape(format_value(row.get(c, ""))) for c in columns) + " |")
    if len(rows) > MAX_TABLE_ROWS:
        lines.append(f"\n_{len(rows) - MAX_TABLE_ROWS} more rows in the JSON/CSV output._")
    return lines + [""]


def _md_finding(finding: Finding) -> str:
    return (f"| {md_escape(finding.title)} | **{md_escape(finding.verdict)}** | {format_p(finding.p_value)} | "
            f"{md_escape(finding.severity.value)} | {md_escape(finding.summary)} |")


def render_markdown(report: Report) -> str:
    subject = report.subject
    lines = [f"# Provenance report: {md_escape(os.path.basename(str(subject.get('path', ''))))}", "",
             f"**{md_escape(report.executive_summary)}**", "",
             f"- subject: {md_escape(subject.get('path', ''))}",
             f"- created {md_escape(report.created)} by provenance {md_escape(report.to_dict()['tool']['version'])}", ""]
    if report.findings:
        lines += ["## Findings", "", "| finding | verdict | p-value | severity | summary |", "|---|---|---|---|---|"]
        lines += [_md_finding(f) for f in report.findings] + [""]
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
            lines += [f"### {md_escape(name)}", ""] + _md_table(rows)
    if report.errors:
        lines += ["## Errors", ""] + [f"- {md_escape(e.get('path', ''))}: {md_escape(e.get('message', ''))}" for e in report.errors]
    return "\n".join(lines).rstrip() + "\n"


# ----- HTML -----------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d8dde6;padding-bottom:.2rem;margin-top:2rem}
.summary{background:#eef4ff;border-left:5px solid #2f6fde;padding:.8rem 1rem;font-size:1.1rem;margin:1rem 0}
.meta{color:#5a6477;font-size:.9rem}table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #d8dde6;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f3f5f9}
.sev-violation,.sev-error{color:#b3261e;font-weight:600}.sev-warning{color:#9a6700;font-weight:600}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #e3e7ee}figcaption{color:#5a6477;font-size:.9rem}
.claims{background:#fff8e6;border-left:5px solid #d19a00;padding:.5rem 1rem}code{background:#f3f5f9;padding:0 .2rem}
"""


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>(empty)</em></p>"
    columns = _columns(rows)
    head = "".join(f"<th>{h(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{h(format_value(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for row in rows[:MAX_TABLE_ROWS])
    more = f"<p class=meta>{len(rows) - MAX_TABLE_ROWS} more rows in the JSON/CSV output.</p>" if len(rows) > MAX_TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _html_section(section: Section) -> str:
    parts = [f"<section class='kind-{h(section.kind)}'><h2>{h(section.title)}</h2>"]
    if section.summary:
        parts.append(f"<p>{h(section.summary)}</p>")
    for figure in section.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure><img alt='{h(figure.caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{h(figure.caption)}</figcaption></figure>")
    for name, rows in section.tables.items():
        parts.append(f"<h3>{h(name)}</h3>{_html_table(rows)}")
    parts.append("</section>")
    return "".join(parts)


def render_html(report: Report) -> str:
    subject = report.subject
    findings = "".join(
        f"<tr><td>{h(f.title)}</td><td><strong>{h(f.verdict)}</strong></td><td>{h(format_p(f.p_value))}</td>"
        f"<td class='sev-{h(f.severity.value)}'>{h(f.severity.value)}</td><td>{h(f.summary)}</td></tr>"
        for f in report.findings)
    claims = "".join(f"<li><code>{h(k)}</code>: {h(format_value(v))}</li>" for k, v in report.claims.items())
    errors = "".join(f"<li>{h(e.get('path', ''))}: {h(e.get('message', ''))}</li>" for e in report.errors)
    body = [
        f"<h1>Provenance report: {h(os.path.basename(str(subject.get('path', ''))))}</h1>",
        f"<p class=meta>{h(subject.get('path', ''))} · created {h(report.created)} · provenance "
        f"{h(report.to_dict()['tool']['version'])} · schema {h(report.to_dict()['schema'])}</p>",
        f"<div class=summary id=executive-summary>{h(report.executive_summary)}</div>",
    ]
    if findings:
        body.append("<h2>Findings</h2><table id=findings><thead><tr><th>finding</th><th>verdict</th><th>p-value</th>"
                    f"<th>severity</th><th>summary</th></tr></thead><tbody>{findings}</tbody></table>")
    if claims:
        body.append(f"<h2>Claims in the metadata</h2><div class=claims><p>What the file says about itself: "
                    f"claims, not evidence.</p><ul>{claims}</ul></div>")
    body += [_html_section(s) for s in report.sections]
    if errors:
        body.append(f"<h2>Errors</h2><ul>{errors}</ul>")
    title = h(f"Provenance report: {os.path.basename(str(subject.get('path', '')))}")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{title}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


# ----- files ----------------------------------------------------------------------------
def _tables_csv(report: Report) -> Iterable[tuple[str, str]]:
    import pandas as pd

    for section in report.sections:
        for name, rows in section.tables.items():
            if rows:
                slug = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{section.kind}-{name}")[:80]
                yield f"{slug}.csv", pd.DataFrame(rows).to_csv(index=False)


def write_report(report: Report, out_dir: str | Path, formats: Iterable[str] = ("json", "md", "html"),
                 basename: str = "report") -> dict[str, Path]:
    """Write the report into ``out_dir`` all at once or not at all.

    Everything is rendered in memory first, written into a temporary sibling directory,
    and only then swapped into place, so a failure leaves no half-written report.
    """
    formats = list(formats)
    files: dict[str, bytes] = {}
    if "json" in formats:
        files[f"{basename}.json"] = render_json(report).encode()
    if "md" in formats:
        files[f"{basename}.md"] = render_markdown(report).encode()
    if "html" in formats:
        files[f"{basename}.html"] = render_html(report).encode()
    if "md" in formats or "json" in formats:
        for figure in report.figures:
            files[figure.filename] = figure.png
    if "csv" in formats:
        for name, text in _tables_csv(report):
            files[name] = text.encode()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if out_dir.exists():
            # Never replace a directory the user owns: move our files in one by one (each
            # rename is atomic; everything was rendered before the first one).
            for name in files:
                os.replace(staging / name, out_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name.rsplit(".", 1)[-1] if name.startswith(basename + ".") else name: out_dir / name for name in files}
