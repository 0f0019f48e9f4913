"""The watermark commands as a user meets them: files, JSON, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import QUANT_DIR
from tests.support.cli import Run, run_in_process

SOURCE = QUANT_DIR / "tiny-llama-f16.gguf"


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    def run(*args: str) -> Run:
        return run_in_process(capsys, "watermark", *args)
    return run


def test_embed_detect_trace_analyze(tmp_path: Path, run_cli) -> None:
    secret = tmp_path / "owner.secret"
    secret.write_text("correct horse battery staple 2024\n")
    marked = tmp_path / "acme.gguf"
    embed = run_cli("embed", str(SOURCE), "--secret-file", str(secret), "--client", "acme", "-o", str(marked), "--amplitude", "1e-2")
    assert embed.returncode == 0, embed.stderr
    report = json.loads(embed.stdout)
    assert report["schema"] == "provenance.watermark-embed/1"
    assert 0.009 < report["summary"]["rel_change_rms"] < 0.011 and report["summary"]["n_marked"] == 1_703_936

    detect = run_cli("detect", str(marked), "--secret-file", str(secret), "--client", "acme", "--reference", str(SOURCE))
    assert detect.returncode == 1, detect.stderr  # 1 = finding: the mark is there
    doc = json.loads(detect.stdout)
    assert doc["detected"] and doc["decoys"]["reference"]["n"] == 1000
    innocent = run_cli("detect", str(marked), "--secret-file", str(secret), "--client", "initech")
    assert innocent.returncode == 0 and not json.loads(innocent.stdout)["detected"]

    (tmp_path / "registry.json").write_text(json.dumps({"schema": "provenance.watermark-registry/1", "secret_file": "owner.secret",
                                                        "clients": ["initech", "acme", "umbrella"]}))
    out = tmp_path / "trace.json"
    trace = run_cli("trace", str(marked), "--registry", str(tmp_path / "registry.json"), "--reference", str(SOURCE), "-o", str(out))
    assert trace.returncode == 1, trace.stderr
    doc = json.loads(out.read_text())
    assert doc["accused"] == ["acme"] and not doc["collusion_suspected"]
    assert doc["rule"]["family_wise_false_accusation_bound"] < 1e-10
    assert "per_tensor" in doc["clients"][0] and "ACCUSED acme" in trace.stderr

    analyze = run_cli("analyze", str(marked), "--reference", str(SOURCE))
    assert analyze.returncode == 1 and json.loads(analyze.stdout)["verdict"] == "iid-perturbation"


def test_usage_and_input_errors(tmp_path: Path, run_cli) -> None:
    secret = tmp_path / "s"
    secret.write_text("short")
    assert run_cli("detect", str(SOURCE)).returncode == 64  # no key given
    bad = run_cli("embed", str(SOURCE), "--secret-file", str(secret), "--client", "a", "-o", str(tmp_path / "o.gguf"))
    assert bad.returncode == 2 and "at least 16 bytes" in bad.stderr
    (tmp_path / "reg.json").write_text(json.dumps({"secret_file": "../../etc/passwd", "clients": ["a"]}))
    escape = run_cli("trace", str(SOURCE), "--registry", str(tmp_path / "reg.json"))
    assert escape.returncode == 2 and "outside" in escape.stderr
    good = tmp_path / "good"
    good.write_text("a long enough owner secret")
    quantized = run_cli(
        "embed",
        str(QUANT_DIR / "tiny-llama-Q4_K_M.gguf"),
        "--secret-file",
        str(good),
        "--client",
        "a",
        "-o",
        str(tmp_path / "x.gguf"),
    )
    assert quantized.returncode == 2 and "quantized input" in quantized.stderr and not (tmp_path / "x.gguf").exists()
