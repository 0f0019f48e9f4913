"""``provenance quantize`` as a user meets it: llama.cpp's bytes, progress on stderr,
refusals before any byte is written, and Ctrl-C leaving nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from provenance.progress import ProgressUpdate
from provenance.quant.writer import quantize_model, supported_ftypes
from tests.conftest import QUANT_DIR

ENV = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "0", "OMP_WAIT_POLICY": "PASSIVE"}


def run_cli(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_writes_llama_cpps_bytes_with_plain_progress(tmp_path: Path) -> None:
    out = tmp_path / "model-Q4_K_M.gguf"
    result = run_cli("quantize", str(QUANT_DIR / "tiny-llama-f16.gguf"), str(out), "--type", "q4_k_m", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (QUANT_DIR / "tiny-llama-Q4_K_M.gguf").read_bytes()
    lines = result.stderr.splitlines()
    progress = [line for line in lines if line.startswith("provenance: quantize ") and "%" in line]
    assert progress and progress[-1].startswith("provenance: quantize 100% 4.5/4.5 MB")
    assert any(line.startswith("provenance: quantize done 4.5 MB in ") for line in lines)
    assert "16 tensors quantized, 5 copied" in lines[-1]
    assert "\r" not in result.stderr  # plain lines, not a redrawn bar


def test_progress_reaches_the_total(tmp_path: Path) -> None:
    seen: list[ProgressUpdate] = []
    quantize_model(QUANT_DIR / "tiny-llama-f32.gguf", tmp_path / "q.gguf", "Q8_0", threads=1, progress=seen.append)
    assert seen and all(u.task == "quantize" and u.unit == "B" for u in seen)
    done = [u.done for u in seen]
    assert done == sorted(done) and done[-1] == seen[-1].total == sum(
        t.n_bytes for t in gguf.GGUFReader(QUANT_DIR / "tiny-llama-f32.gguf").tensors)


def test_refusals_come_before_any_byte(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    unsupported = run_cli("quantize", str(QUANT_DIR / "tiny-llama-f32.gguf"), str(out), "--type", "IQ2_XXS")
    assert unsupported.returncode == 64 and "IQ2_XXS" in unsupported.stderr and "Traceback" not in unsupported.stderr
    unknown = run_cli("quantize", str(QUANT_DIR / "tiny-llama-f32.gguf"), str(out), "--type", "Q9_Z")
    assert unknown.returncode == 64
    requant = run_cli("quantize", str(QUANT_DIR / "tiny-llama-Q8_0.gguf"), str(out), "--type", "Q4_K_M")
    assert requant.returncode == 64 and "allow_requantize" in requant.stderr
    source = tmp_path / "same.gguf"
    source.write_bytes((QUANT_DIR / "tiny-llama-f32.gguf").read_bytes())
    same = run_cli("quantize", str(source), str(source))
    assert same.returncode == 64 and source.read_bytes() == (QUANT_DIR / "tiny-llama-f32.gguf").read_bytes()
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["same.gguf"]
    assert {"Q4_K_M", "Q8_0", "Q6_K", "IQ4_XS", "F16"} <= set(supported_ftypes()) and "IQ2_XXS" not in supported_ftypes()


@pytest.fixture(scope="module")
def big_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama-shaped F16 GGUF large enough that Q4_K_M takes several seconds (24M weights)."""
    path = tmp_path_factory.mktemp("big") / "big-f16.gguf"
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    for layer in range(2):
        for role, shape in (("ffn_up", (2048, 2048)), ("ffn_gate", (2048, 2048)), ("ffn_down", (2048, 2048))):
            writer.add_tensor(f"blk.{layer}.{role}.weight", (rng.standard_normal(shape) * 0.02).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_ctrl_c_stops_within_a_second_and_leaves_nothing(big_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "big-Q4_K_M.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "provenance.cli", "quantize", str(big_f16), str(out), "--threads", "2"],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until the quantizer is well under way
        if line.startswith("provenance: quantize ") and "%" in line and not line.startswith("provenance: quantize 0%"):
            break
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code = proc.wait(timeout=30)
    stopped = time.monotonic() - sent
    proc.stderr.read()
    assert code == 130
    assert stopped < 1.0, f"took {stopped:.2f} s to stop"
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temp file either
