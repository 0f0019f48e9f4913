"""The renderer interface and its registry: one small protocol every output format implements.

A renderer turns report documents (:class:`provenance.document.Report`) into the bytes of one
format. It receives a *sequence* of reports: one for an investigation, one per file for a batch
(``check``, ``scan``); formats that describe a batch natively (SARIF runs, JUnit suites, a
findings CSV) list every report, the others render them one after the other.

Each renderer neutralises what its own format interprets, so file-derived text (names,
metadata) can never become markup, a link, a formula or a terminal escape; the tests feed
every renderer the same hostile document (HTML/JS, ANSI escapes, Markdown, CSV formulas).

To add a format: implement :class:`Renderer` and call :func:`register`; ``write_report`` and
every command that takes ``--format`` then offer it by name.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from provenance.document import Report
from provenance.errors import UsageProblem


@runtime_checkable
class Renderer(Protocol):
    name: str
    """What users type after ``--format`` (``json``, ``md``, ``html``, ``csv``, ``sarif``, ``junit``)."""
    suffix: str
    """File suffix of the main output, with its dot."""
    description: str

    def render(self, reports: Sequence[Report]) -> str:
        """The main output for ``reports`` (printable on stdout)."""
        ...

    def files(self, reports: Sequence[Report], basename: str) -> dict[str, str | bytes]:
        """Every file this format writes into an output directory: the main output
        (``basename + suffix``) and what it refers to (figures, per-table CSVs)."""
        ...


class UnknownFormat(UsageProblem):
    """No renderer of that name (a usage error at the command line)."""


_REGISTRY: dict[str, Renderer] = {}
MAX_TABLE_ROWS = 500
"""Rows a table shows in Markdown/HTML (JSON and CSV keep them all)."""


def register(renderer: Renderer) -> Renderer:
    """Make ``renderer`` available by its name (a later registration of the same name wins)."""
    if not isinstance(renderer, Renderer):
        raise TypeError(f"{renderer!r} does not implement provenance.report.Renderer")
    _REGISTRY[renderer.name] = renderer
    return renderer


def renderer(name: str) -> Renderer:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownFormat(f"unknown format {name!r}; choose from {', '.join(renderer_names())}") from None


def renderer_names() -> list[str]:
    return list(_REGISTRY)


def renderers(names: Iterable[str]) -> list[Renderer]:
    """The renderers for ``names`` (each once, in order); :class:`UnknownFormat` on any other."""
    chosen: list[Renderer] = []
    for name in names:
        r = renderer(name)
        if r not in chosen:
            chosen.append(r)
    return chosen


def shows_figures(chosen: Iterable[Renderer]) -> bool:
    """Whether any of ``chosen`` shows figures. Drawing them with matplotlib costs seconds
    (2.5 s of an ``investigate`` of a 135M model, docs/benchmarks.md), wasted on formats that
    never display them (JSON, CSV, SARIF, JUnit); a plug-in renderer that does not say is
    assumed to show them."""
    return any(getattr(r, "shows_figures", True) for r in chosen)


class BaseRenderer:
    """What most renderers share: ``files()`` is the main output alone."""

    name: str
    suffix: str
    description: str
    shows_figures = False
    """Whether a reader of this format sees the report's figures (HTML embeds them, Markdown
    links them): commands draw figures only when a chosen format shows them (:func:`shows_figures`)."""

    def render(self, reports: Sequence[Report]) -> str:
        raise NotImplementedError

    def files(self, reports: Sequence[Report], basename: str) -> dict[str, str | bytes]:
        return {basename + self.suffix: self.render(reports)}


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Column names of a table of records, in first-seen order."""
    found: list[str] = []
    for row in rows:
        for key in row:
            if key not in found:
                found.append(key)
    return found


def located_findings(reports: Sequence[Report]) -> Iterable[tuple[Report, Any]]:
    """(report, finding) for every finding of every report, in order."""
    for report in reports:
        for finding in report.findings:
            yield report, finding


def subject_path(report: Report) -> str:
    return str(report.subject.get("path", ""))
