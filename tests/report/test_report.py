"""The report model and its renderers: escaping, figures, atomic writes, the published schema."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from provenance.document import Figure, Finding, Report, Section, Severity
from provenance.report import render as render_module
from provenance.report import render_html, render_markdown, write_report
from tests.conftest import ROOT

EVIL = "<script>alert(1)</script>{{7*7}} ${7*7} [x](javascript:alert(1)) \x1b[31m\u202e"


def sample_report() -> Report:
    figure, axis = plt.subplots()
    axis.plot([0, 1, 2], [0.1, 0.5, 0.9])
    return Report(
        subject={"path": f"/models/{EVIL}.gguf", "format": "gguf"},
        executive_summary="Derived from the reference (fine-tune), p = 1e-12.",
        findings=[Finding("lineage.verdict", "Lineage", "fine-tune", f"name {EVIL}", Severity.WARNING, 1e-12,
                          {"z": 7.1}, {"layers": [1, 2]})],
        claims={"general.name": EVIL},
        sections=[Section("compare", "Per-layer similarity", f"summary {EVIL}",
                          tables={"layers": [{"layer": 0, "rho": 0.99, "name": EVIL}]},
                          figures=[Figure.from_matplotlib("similarity", "similarity per layer", figure)])],
    )


def test_html_escapes_everything_and_embeds_figures() -> None:
    page = render_html(sample_report())
    assert "<script>" not in page and "\x1b" not in page and "\u202e" not in page
    assert "&lt;script&gt;" in page and "{{7*7}}" in page  # shown literally, never evaluated
    assert page.count("data:image/png;base64,") == 1
    assert "default-src 'none'" in page  # the page may load nothing and run nothing


def test_markdown_escapes_markup() -> None:
    text = render_markdown(sample_report())
    assert "<script>" not in text and "[x](javascript" not in text and "\x1b" not in text
    assert "\\[x\\](javascript" in text  # brackets escaped: no link can form
    assert "![similarity per layer](similarity.png)" in text


def test_write_report_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    files = write_report(sample_report(), out, formats=("json", "md", "html", "csv"))
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html", "similarity.png", "compare-layers.csv"}
    assert files["html"].read_text().startswith("<!DOCTYPE html>")

    def broken(report: Report) -> str:
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(render_module, "render_html", broken)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        write_report(sample_report(), fresh)
    assert not fresh.exists() and not list(tmp_path.glob(".fresh*"))
    # An existing directory keeps the user's other files and gets no partial report.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        write_report(sample_report(), out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.json").exists()


def test_report_json_matches_published_schema() -> None:
    schema = json.loads((ROOT / "docs" / "report-schema.json").read_text())
    document = json.loads(render_module.render_json(sample_report()))
    jsonschema.validate(document, schema)
    assert document["findings"][0]["severity"] == "warning"
    assert document["sections"][0]["figures"][0]["file"] == "similarity.png"


def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    from tests.support.browser import rendered_text, screenshot

    files = write_report(sample_report(), tmp_path / "r", formats=("html",))
    dom = rendered_text(files["html"], tmp_path / "profile")
    assert "Derived from the reference (fine-tune)" in dom and "<script>alert" not in dom
    pixels = screenshot(files["html"], tmp_path / "shot.png", tmp_path / "profile")
    assert pixels.shape[0] > 1000
    # The embedded figure is drawn: some rows carry many non-white pixels (the plot line and axes).
    ink = (pixels[..., :3].mean(axis=-1) < 0.8).sum(axis=1)
    assert ink.max() > 200
