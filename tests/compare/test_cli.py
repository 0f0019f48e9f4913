"""`provenance compare`: outputs, JSON, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from provenance.cli import cli

ROOT = Path(__file__).resolve().parents[2]
STORIES = ROOT.parent / "shared" / "data" / "stories260K"
QUANT = ROOT.parent / "shared" / "data" / "llamacpp-quant"


def test_compare_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["compare", str(STORIES / "stories260K.transpose.bin"), str(STORIES / "stories260K.bin"),
                                   "-o", str(out), "--permutations", "99"])
    assert res.exit_code == 0, res.output
    assert "| **identical** |" in res.output and "stories260K.transpose.bin derives from stories260K.bin" in res.output
    for name in ("report.json", "tensors.csv", "layers.csv", "summary.md", "similarity_by_layer.png", "delta_heatmap.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "report.json").read_text())
    assert doc["verdict"]["kind"] == "identical" and doc["test"]["permutations"] == 99
    assert (out / "delta_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "![Relative change" in (out / "summary.md").read_text() and "(delta_heatmap.png)" in (out / "summary.md").read_text()
    assert "blk.4.ffn_down.weight" in (out / "tensors.csv").read_text()


def test_markdown_on_stdout_renders_no_figures(monkeypatch) -> None:
    """Without -o nothing would hold the PNGs: matplotlib is not run (seconds per compare)."""
    import provenance.compare.figures

    def no_figures(*_args: object) -> None:
        raise AssertionError("figures rendered for stdout")

    monkeypatch.setattr(provenance.compare.figures, "figures", no_figures)
    res = CliRunner().invoke(cli, ["compare", str(STORIES / "stories260K.transpose.bin"), str(STORIES / "stories260K.bin"),
                                   "--permutations", "99"])
    assert res.exit_code == 0, res.output
    assert "| **identical** |" in res.output and ".png)" not in res.output


def test_json_on_stdout_and_summary_on_stderr() -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "compare", "--json", "--permutations", "49",
                           str(QUANT / "tiny-llama-Q8_0.gguf"), str(QUANT / "tiny-llama-f32.gguf")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verdict"]["kind"] == "requantized"
    assert "verdict: requantized" in proc.stderr


def test_usage_and_missing_file_exit_codes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "compare", str(tmp_path / "nope.gguf"),
                           str(STORIES / "stories260K.bin")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 64
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "compare", str(bad), str(STORIES / "stories260K.bin")],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "error:" in proc.stderr
