"""The report model and its renderers: escaping per format, figures, atomic writes, the
published schema, the plug-in registry."""
from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from provenance.document import Figure, Finding, Report, Section, Severity
from provenance.errors import UsageProblem
from provenance.report import (
    BaseRenderer,
    HtmlRenderer,
    UnknownFormat,
    register,
    render_html,
    render_json,
    render_markdown,
    renderer,
    renderer_names,
    write_report,
)
from tests.conftest import ROOT

EVIL = "<script>alert(1)</script>{{7*7}} ${7*7} [x](javascript:alert(1)) \x1b[31m\u202e"
FORMULAS = ["=cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]
RAW_CONTROLS = ("\x1b", "\u202e", "\x07", "\x00", "\ud800")
SARIF_SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())


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


def hostile_report() -> Report:
    """Every text a file can put into a report, carrying HTML/JS, ANSI, Markdown, CSV formulas,
    bell/NUL and a lone surrogate (a leniently decoded name)."""
    payload = EVIL + " \x07\x00 \ud800 ![img](http://x/y.png) | pipe | `code` **bold**"
    return Report(
        subject={"path": f"{FORMULAS[0]}{payload}.gguf", "format": "gguf"},
        executive_summary=f"summary {payload}",
        findings=[Finding(f"copy.forbidden{payload}", f"title {payload}", FORMULAS[0], f"{FORMULAS[3]} {payload}",
                          Severity.VIOLATION, 1e-3, {"z": 3.0}, {"name": payload}),
                  Finding("format.malformed", "bad", "error", f"{FORMULAS[1]}", Severity.ERROR)],
        claims={f"general.name{payload}": payload, "general.url": FORMULAS[2]},
        sections=[Section("compare", f"section {payload}", f"text {payload}",
                          tables={f"tensors {payload}": [{"name": f, "value": -1.5, f"col{payload}": f} for f in FORMULAS]})],
        errors=[{"path": payload, "message": FORMULAS[4]}],
        command="check --policy p.toml",
    )


def _no_raw_controls(text: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, repr(char)


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


@pytest.mark.parametrize("name", ["json", "md", "html", "csv", "sarif", "junit"])
def test_every_renderer_neutralises_hostile_text(name: str) -> None:
    text = renderer(name).render([hostile_report(), sample_report()])
    _no_raw_controls(text)
    text.encode("utf-8")  # writable as a file: no lone surrogate left
    check = {"json": _json_keeps_the_data, "md": _markdown_is_inert, "html": _html_is_inert, "csv": _csv_has_no_formulas,
             "sarif": _sarif_is_valid, "junit": _junit_is_well_formed}[name]
    check(text)


def _json_keeps_the_data(text: str) -> None:
    document = json.loads(text)  # ASCII-escaped JSON: the values themselves are kept, not altered
    first = document["reports"][0]
    assert document["schema"] == "provenance.report-batch/1"
    assert first["findings"][0]["verdict"] == FORMULAS[0] and EVIL in first["executive_summary"]
    assert "\\u001b" in text and "\\u202e" in text


def _markdown_is_inert(text: str) -> None:
    assert "<script>" not in text and "[x](javascript" not in text and "![img](http" not in text
    for line in text.splitlines():  # no table row gains or loses a cell from a pipe in a name
        if line.startswith("| ") and "pipe" in line:
            assert "\\|" in line


def _html_is_inert(text: str) -> None:
    assert "<script" not in text and "javascript:alert" not in text.replace("javascript:alert(1)) ", "")
    assert "&lt;script&gt;" in text and text.count("<article>") == 2


def _csv_has_no_formulas(text: str) -> None:
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert cells[:7] == ["subject", "id", "title", "verdict", "severity", "p_value", "summary"]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=cmd|' /C calc'!A0" in cells and any(c.startswith("'@SUM") for c in cells)


def _sarif_is_valid(text: str) -> None:
    document = json.loads(text)
    jsonschema.validate(document, SARIF_SCHEMA)
    results = document["runs"][0]["results"]
    assert [r["level"] for r in results] == ["error", "error", "warning"]  # violation, error, warning; info left out
    assert document["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert "\\x1b" in results[0]["message"]["text"]  # escaped, visible, inert


def _junit_is_well_formed(text: str) -> None:
    suite = ET.fromstring(text.split("?>", 1)[1]).find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("errors") == "1"
    cases = suite.findall("testcase")
    assert [len(c.findall("failure")) for c in cases] == [1, 0] and len(cases[0].findall("error")) == 2
    assert "<script>" in cases[0].find("failure").get("message")  # an attribute value: text, not markup


def test_csv_files_of_every_table_are_safe(tmp_path: Path) -> None:
    files = write_report(hostile_report(), tmp_path / "r", formats=("csv",))
    tables = [p for p in (tmp_path / "r").iterdir() if p.name != "report.csv"]
    assert len(tables) == 1 and files["csv"].name == "report.csv"
    rows = list(csv.reader(io.StringIO(tables[0].read_text())))
    # formulas get a leading quote; a leading tab or CR is escaped as text (no longer a formula lead-in)
    assert [r[0] for r in rows[1:]] == ["'" + f for f in FORMULAS[:4]] + ["\\x09=1+1", "\\x0d=1+1"]
    assert rows[1][1] == "-1.5"  # numbers stay numbers


def test_write_report_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    files = write_report(sample_report(), out, formats=("json", "md", "html", "csv"))
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html", "report.csv", "similarity.png",
                                               "compare-layers.csv"}
    assert files["html"].read_text().startswith("<!DOCTYPE html>")

    def broken(self: HtmlRenderer, reports: Sequence[Report]) -> str:
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(HtmlRenderer, "render", broken)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        write_report(sample_report(), fresh)
    assert not fresh.exists() and not list(tmp_path.glob(".fresh*"))
    # An existing directory keeps the user's other files and gets no partial report.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        write_report(sample_report(), out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.json").exists()


def test_renderers_are_plug_ins(tmp_path: Path) -> None:
    class Plain(BaseRenderer):
        name, suffix, description = "plain", ".txt", "one line per finding"

        def render(self, reports: Sequence[Report]) -> str:
            return "".join(f"{f.id} {f.verdict}\n" for r in reports for f in r.findings)

    register(Plain())
    try:
        assert "plain" in renderer_names()
        files = write_report(sample_report(), tmp_path / "r", formats=("plain", "json"))
        assert files["plain"].read_text() == "lineage.verdict fine-tune\n"
    finally:
        from provenance.report import base

        base._REGISTRY.pop("plain")
    with pytest.raises(UnknownFormat) as info:
        write_report(sample_report(), tmp_path / "nope", formats=("pdf",))
    assert isinstance(info.value, UsageProblem) and not (tmp_path / "nope").exists()


def test_report_json_matches_published_schema() -> None:
    schema = json.loads((ROOT / "docs" / "report-schema.json").read_text())
    document = json.loads(render_json(sample_report()))
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
