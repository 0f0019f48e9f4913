"""A self-contained HTML page: figures embedded as base64 PNG, no script, a Content Security
Policy that lets the page load nothing and run nothing.

No template engine: every file-derived string is escaped by the code that places it
(:func:`h`: control characters escaped, then ``html.escape`` with quotes), so metadata can
never be evaluated or inject markup."""
from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from typing import Any

from provenance.document import Report, Section
from provenance.numbers import format_p, format_value
from provenance.report.base import MAX_TABLE_ROWS, BaseRenderer, columns
from provenance.textsafe import safe_text
from provenance.version import __version__

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d8dde6;padding-bottom:.2rem;margin-top:2rem}
.summary{background:#eef4ff;border-left:5px solid #2f6fde;padding:.8rem 1rem;font-size:1.1rem;margin:1rem 0}
.meta{color:#5a6477;font-size:.9rem}table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #d8dde6;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f3f5f9}
.sev-violation,.sev-error{color:#b3261e;font-weight:600}.sev-warning{color:#9a6700;font-weight:600}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #e3e7ee}figcaption{color:#5a6477;font-size:.9rem}
.claims{background:#fff8e6;border-left:5px solid #d19a00;padding:.5rem 1rem}code{background:#f3f5f9;padding:0 .2rem}
article+article{border-top:3px solid #d8dde6;margin-top:3rem}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def h(value: Any) -> str:
    return html.escape(safe_text(value), quote=True)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>(empty)</em></p>"
    names = columns(rows)
    head = "".join(f"<th>{h(c)}</th>" for c in names)
    body = "".join("<tr>" + "".join(f"<td>{h(format_value(row.get(c, '')))}</td>" for c in names) + "</tr>"
                   for row in rows[:MAX_TABLE_ROWS])
    more = f"<p class=meta>{len(rows) - MAX_TABLE_ROWS} more rows in the JSON/CSV output.</p>" if len(rows) > MAX_TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _section(section: Section) -> str:
    parts = [f"<section class='kind-{h(section.kind)}'><h2>{h(section.title)}</h2>"]
    if section.summary:
        parts.append(f"<p>{h(section.summary)}</p>")
    for figure in section.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure><img alt='{h(figure.caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{h(figure.caption)}</figcaption></figure>")
    for name, rows in section.tables.items():
        parts.append(f"<h3>{h(name)}</h3>{_table(rows)}")
    parts.append("</section>")
    return "".join(parts)


def _article(report: Report, first: bool) -> str:
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
        f"{h(__version__)} · schema {h(report.to_dict()['schema'])}</p>",
        f"<div class=summary{' id=executive-summary' if first else ''}>{h(report.executive_summary)}</div>",
    ]
    if findings:
        body.append(f"<h2>Findings</h2><table{' id=findings' if first else ''}><thead><tr><th>finding</th><th>verdict</th>"
                    f"<th>p-value</th><th>severity</th><th>summary</th></tr></thead><tbody>{findings}</tbody></table>")
    if claims:
        body.append(f"<h2>Claims in the metadata</h2><div class=claims><p>What the file says about itself: "
                    f"claims, not evidence.</p><ul>{claims}</ul></div>")
    body += [_section(s) for s in report.sections]
    if errors:
        body.append(f"<h2>Errors</h2><ul>{errors}</ul>")
    return "".join(body)


def render_html(report: Report) -> str:
    return HtmlRenderer().render([report])


class HtmlRenderer(BaseRenderer):
    name = "html"
    suffix = ".html"
    description = "one self-contained page (figures embedded, no script)"
    shows_figures = True

    def render(self, reports: Sequence[Report]) -> str:
        if len(reports) == 1:
            title = f"Provenance report: {os.path.basename(str(reports[0].subject.get('path', '')))}"
            body = _article(reports[0], True)
        else:
            title = f"Provenance reports ({len(reports)} files)"
            body = "".join(f"<article>{_article(r, i == 0)}</article>" for i, r in enumerate(reports))
        return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
                f"<title>{h(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")

