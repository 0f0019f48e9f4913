"""One versioned report model, filled in by every command, rendered to JSON, Markdown and HTML."""
from provenance.report.model import Figure, Finding, Report, Section, Severity
from provenance.report.render import render_html, render_json, render_markdown, write_report

__all__ = ["Figure", "Finding", "Report", "Section", "Severity", "render_html", "render_json",
           "render_markdown", "write_report"]
