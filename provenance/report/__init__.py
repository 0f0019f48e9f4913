"""Renderers of the report document (:mod:`provenance.document`) as plug-ins.

Built in: ``json``, ``md``, ``html``, ``csv``, ``sarif``, ``junit`` (:func:`renderer_names`).
Each implements :class:`Renderer`; :func:`register` adds another format, and ``write_report``
and the commands' ``--format`` options pick renderers by name.
"""
from provenance.report.base import BaseRenderer, Renderer, UnknownFormat, register, renderer, renderer_names, renderers, shows_figures
from provenance.report.csv_report import CsvRenderer, csv_cell, frame_csv
from provenance.report.html_report import HtmlRenderer, render_html
from provenance.report.json_report import JsonRenderer, render_json
from provenance.report.junit_report import JunitRenderer
from provenance.report.markdown_report import MarkdownRenderer, render_markdown
from provenance.report.sarif_report import SarifRenderer
from provenance.report.write import DEFAULT_FORMATS, render_files, write_report

for _builtin in (JsonRenderer(), MarkdownRenderer(), HtmlRenderer(), CsvRenderer(), SarifRenderer(), JunitRenderer()):
    register(_builtin)

__all__ = ["DEFAULT_FORMATS", "BaseRenderer", "Renderer", "UnknownFormat", "csv_cell", "frame_csv", "register",
           "render_files", "render_html", "render_json", "render_markdown", "renderer", "renderer_names", "renderers",
           "shows_figures", "write_report"]
