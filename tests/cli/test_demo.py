"""The README's main job: the miqu-style demo recovers every fact of the scenario, with evidence."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provenance.demo import CLIENTS, LEAKER, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Path]]:
    run = run_demo(tmp_path_factory.mktemp("demo"))
    return json.loads(run.files["json"].read_text()), run.files


def findings(document: dict, finding_id: str) -> list[dict]:
    return [f for f in document["findings"] if f["id"] == finding_id]


def test_demo_recovers_the_scenario(demo: tuple[dict, dict[str, Path]]) -> None:
    document, _ = demo
    lineage = {Path(f["evidence"]["reference"]).name: f for f in findings(document, "lineage.verdict")}
    assert lineage["synth-s00"]["verdict"] == "continued-pretraining" and lineage["synth-s00"]["p_value"] < 1e-6
    assert any("RoPE base changed 10000 -> 100000" in e for e in lineage["synth-s00"]["evidence"]["evidence"])
    assert lineage["synth-s00-cpt"]["p_value"] < 1e-6
    assert lineage["synth-s07"]["verdict"] == "unrelated" and lineage["synth-s07"]["p_value"] > 1e-3
    (accusation,) = findings(document, "watermark.accusation")
    assert accusation["verdict"] == LEAKER and accusation["evidence"]["collusion_suspected"] is False
    section = next(s for s in document["sections"] if s["kind"] == "watermark")
    innocents = [row for row in section["tables"]["clients"] if row["client"] != LEAKER]
    assert len(innocents) == len(CLIENTS) - 1 and not any(row["accused"] for row in innocents)
    quant = {Path(f["evidence"]["reference"]).name: f for f in findings(document, "quant.verdict")}
    assert quant["synth-s00-cpt"]["verdict"] == "quantized from a perturbed reference"
    assert quant["synth-s07"]["verdict"] == "unrelated"
    summary = document["executive_summary"]
    assert summary.startswith("miqu-style-Q4_K_M.gguf is a quantized copy of synth-s00-cpt, watermarked for client acme-corp")
    assert "unrelated to synth-s07" in summary


def test_demo_html_report_renders(demo: tuple[dict, dict[str, Path]], tmp_path: Path) -> None:
    from tests.support.browser import rendered_text, screenshot

    document, files = demo
    dom = rendered_text(files["html"], tmp_path / "profile")
    assert document["executive_summary"].split(" (")[0] in dom
    assert dom.count("<img") >= 6 and "watermarked for client acme-corp" in dom
    pixels = screenshot(files["html"], tmp_path / "shot.png", tmp_path / "profile", size="1200,6000")
    ink = (pixels[..., :3].mean(axis=-1) < 0.8).sum(axis=1)
    # Figures are drawn: many rows of the page carry substantial ink (plots, bars, axes).
    assert (ink > 150).sum() > 300
