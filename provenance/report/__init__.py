"""Renderers of the report document (:mod:`provenance.document`): JSON, Markdown, HTML, and
the CI formats (SARIF, JUnit)."""
from provenance.report.render import render_html, render_json, render_markdown, write_report

__all__ = ["render_html", "render_json", "render_markdown", "write_report"]
