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


def test_progress_lines_off_a_terminal(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr is not a terminal here: plain progress lines (bytes, %, ETA) and a closing one."""
    monkeypatch.setenv("PROVENANCE_PROGRESS_SECONDS", "0")
    secret = tmp_path / "owner.secret"
    secret.write_text("correct horse battery staple 2024\n")
    marked = tmp_path / "acme.gguf"
    embed = run_cli("embed", str(SOURCE), "--secret-file", str(secret), "--client", "acme", "-o", str(marked))
    lines = [line for line in embed.stderr.splitlines() if line.startswith("provenance: watermark embed")]
    assert any("%" in line and "MB" in line for line in lines) and "done" in lines[-1], embed.stderr
    detect = run_cli("detect", str(marked), "--secret-file", str(secret), "--client", "acme", "--reference", str(SOURCE),
                     "--no-sequential")
    assert any(line.startswith("provenance: watermark detect") and "%" in line for line in detect.stderr.splitlines())
    assert "provenance: watermark detect done" in detect.stderr


def _model(path: Path, layers: int, hidden: int, ffn: int) -> None:
    """A Llama-shaped F16 GGUF big enough that marking or scoring it takes seconds."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, layers), (w.add_embedding_length, hidden), (w.add_feed_forward_length, ffn),
                       (w.add_head_count, 16), (w.add_head_count_kv, 16), (w.add_context_length, 256)):
        add(value)
    for layer in range(layers):
        for role, shape in (("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            w.add_tensor(f"blk.{layer}.{role}.weight", (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
def test_ctrl_c_stops_promptly_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT in the middle of embed and of a full-pass detect: exit 130, no output and no
    temp file left, within a second or two of the signal (the machine is shared: measured
    ~0.1-0.5 s, asserted < 3 s)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model = tmp_path / "model.gguf"
    _model(model, layers=6, hidden=1024, ffn=4096)  # 100 M weights, 200 MB
    secret = tmp_path / "owner.secret"
    secret.write_text("correct horse battery staple 2024\n")
    marked = tmp_path / "out" / "marked.gguf"
    marked.parent.mkdir()
    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "0"}
    commands = {
        "embed": ["watermark", "embed", str(model), "--secret-file", str(secret), "--client", "acme", "-o", str(marked)],
        "detect": ["watermark", "detect", str(model), "--reference", str(model), "--secret-file", str(secret),
                   "--client", "acme", "--no-sequential", "-o", str(tmp_path / "out" / "detect.json")],
    }
    for name, args in commands.items():
        proc = subprocess.Popen([sys.executable, "-m", "provenance.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the work is under way
            if line.startswith(f"provenance: watermark {name}") and "%" in line:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
        assert proc.returncode == 130, (name, proc.returncode)
        print(f"{name}: exited {elapsed:.2f} s after SIGINT")
        assert elapsed < 3.0, (name, elapsed)
        assert list((tmp_path / "out").iterdir()) == [], name
