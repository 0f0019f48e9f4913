"""`provenance investigate`: one report, executive summary first, nothing written on failure."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from provenance.investigate import investigate
from tests.conftest import QUANT_DIR, ROOT, SHARED_DATA


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], capture_output=True, text=True, timeout=600)


def test_investigate_api_on_a_quantized_file() -> None:
    report = investigate(QUANT_DIR / "tiny-llama-Q4_K_M.gguf")
    assert report.sections[-1].kind == "inspect" and report.findings[-1].id == "format.identity"
    assert report.executive_summary.startswith("tiny-llama-Q4_K_M.gguf is identified as tiny-llama-q4_k_m")
    assert report.claims["general.name"] == "tiny-llama-test"
    document = report.to_dict()
    jsonschema.validate(document, json.loads((ROOT / "docs" / "report-schema.json").read_text()))


def test_unreadable_candidate_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("investigate", str(SHARED_DATA / "corrupted" / "utf8-mangled-ggml-vocab-bert-bge.gguf"), "-o", str(out))
    assert result.returncode == 2 and "offset" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_output_format_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("investigate", str(QUANT_DIR / "tiny-llama-Q8_0.gguf"), "-o", str(tmp_path / "r"), "--format", "pdf")
    assert result.returncode == 64 and not (tmp_path / "r").exists()


def test_investigate_with_reference_reports_exact_quantization(tmp_path: Path) -> None:
    report = investigate(QUANT_DIR / "tiny-llama-Q4_K_M.gguf", [QUANT_DIR / "tiny-llama-f32.gguf"])
    (finding,) = [f for f in report.findings if f.id == "quant.verdict"]
    assert finding.verdict == "exact quantization" and finding.statistic["n_unexplained"] == 0
    assert finding.statistic["n_weights_checked"] == 2_228_224
    assert "is an exact quantization of tiny-llama-f32.gguf" in report.executive_summary
    assert any(s.kind == "quantcheck" and s.figures for s in report.sections)


def test_investigate_with_an_incomparable_reference() -> None:
    """Vocabulary-only files: nothing to compare per layer -> inconclusive, no empty figures."""
    from tests.conftest import VOCAB_DIR

    report = investigate(VOCAB_DIR / "ggml-vocab-phi-3.gguf", [VOCAB_DIR / "ggml-vocab-llama-spm.gguf"])
    (lineage,) = [f for f in report.findings if f.id == "lineage.verdict"]
    assert lineage.verdict == "inconclusive" and lineage.p_value is None
    (section,) = [s for s in report.sections if s.kind == "compare"]
    assert section.figures == []
    assert "identified as gguf-vocab-phi-3" in report.executive_summary


def test_typed_results_cross_a_process_boundary() -> None:
    """Every analysis' result is plain data: pickled and back it is equal and renders the same
    JSON (what a Ray worker would ship), and the report was built from those fields."""
    import pickle  # noqa: TID251 - our own result objects, round-tripped to show they can be shipped

    from provenance.fileio import to_json
    from provenance.investigate import Inputs, run_investigation

    reference = str(QUANT_DIR / "tiny-llama-f32.gguf")
    state = run_investigation(Inputs(str(QUANT_DIR / "tiny-llama-Q4_K_M.gguf"), (reference,)))
    results = [state.identified, state.lineage[reference], state.quantchecks[reference]]
    assert all(r is not None for r in results)
    for result in results:
        again = pickle.loads(pickle.dumps(result))  # noqa: S301
        assert to_json(again.to_dict()) == to_json(result.to_dict())  # NaN != NaN: compared as JSON
    lineage = state.lineage[reference]
    assert lineage.verdict.kind == "requantized" and lineage.verdict.description in state.report.findings[0].summary
    assert state.quantchecks[reference].verdict == "exact" and not state.quantchecks[reference].flagged


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Plain periodic lines (task, %, bytes, ETA) for each pass, and a last line when it ends."""
    import os

    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "0"}
    result = subprocess.run([sys.executable, "-m", "provenance.cli", "investigate", str(QUANT_DIR / "tiny-llama-Q8_0.gguf"),
                             "--reference", str(QUANT_DIR / "tiny-llama-f32.gguf"), "-o", str(tmp_path / "r"),
                             "--format", "json"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("provenance: lineage vs tiny-llama-f32.gguf")]
    assert any("%" in line and "MB" in line for line in lines), result.stderr
    assert "done" in lines[-1], result.stderr


def test_hashes_come_from_the_lineage_pass(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With a reference, the candidate is read once for lineage and hashes together: the
    report's hashes are the plain pass's, and no separate hash pass runs."""
    import provenance.investigate as investigation
    from provenance.formats import open_checkpoint
    from provenance.hashing import checkpoint_sha256s

    candidate, reference = QUANT_DIR / "tiny-llama-Q8_0.gguf", QUANT_DIR / "tiny-llama-f32.gguf"
    with open_checkpoint(candidate) as ckpt:
        files, tensors = checkpoint_sha256s(ckpt)
    monkeypatch.setattr(investigation, "checkpoint_sha256s", lambda *a, **k: pytest.fail("a separate hash pass ran"))
    state = investigation.run_investigation(investigation.Inputs(str(candidate), (str(reference),)))
    assert state.candidate_hashes is not None
    assert state.candidate_hashes.files == files and state.candidate_hashes.tensors == tensors
    assert state.report.subject["sha256"] == list(files.values())
    kinds = [s.kind for s in state.report.sections]  # the report's order, whatever ran first
    assert kinds[:2] == ["identify", "compare"] and kinds[-1] == "inspect"
    assert state.identified is not None and state.identified.best is not None


def _interrupted(tmp_path: Path, args: list[str], under_way: str) -> float:
    """Run ``investigate ARGS -o REPORT``, send SIGINT once a progress line starting with
    ``under_way`` shows a percentage, and return the seconds to its exit; asserts exit 130
    and no report directory."""
    import os
    import signal
    import time

    out = tmp_path / "report"
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "provenance.cli", "investigate", *args, "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the phase is under way
        seen.append(line)
        if line.startswith(under_way) and "%" in line:
            break
    else:
        raise AssertionError(f"no progress line {under_way!r}: {''.join(seen)[-2000:]}")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 130, proc.returncode
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    return elapsed


@pytest.mark.slow
def test_ctrl_c_stops_investigate_promptly_and_writes_nothing(tmp_path: Path) -> None:
    """SIGINT during the lineage pass: exit 130 within a second or so (measured on a shared
    machine; asserted < 3 s), no report directory."""
    from tests.watermark.test_cli import _model

    model = tmp_path / "model.gguf"
    _model(model, layers=6, hidden=1024, ffn=4096)  # 100 M weights, 200 MB
    elapsed = _interrupted(tmp_path, [str(model), "--reference", str(model)], "provenance: lineage vs")
    print(f"investigate: exited {elapsed:.2f} s after SIGINT")
    assert elapsed < 3.0, elapsed


@pytest.mark.slow
def test_ctrl_c_stops_the_known_mark_pass_promptly(tmp_path: Path) -> None:
    """SIGINT during the lineage pass that also judges the traced client's mark (the
    changed-reference check fed from each chunk read: docs/lineage.md): exit 130 within a
    second or so (asserted < 3 s on a shared machine), no report directory."""
    from provenance.watermark import DerivedKey, embed_checkpoint
    from tests.watermark.test_cli import _model

    reference, marked, registry = tmp_path / "model.gguf", tmp_path / "acme.gguf", tmp_path / "keys"
    _model(reference, layers=6, hidden=1024, ffn=4096)
    secret = b"ctrl-c test vendor secret 0123456789"
    registry.mkdir()
    (registry / "secret").write_bytes(secret)
    (registry / "clients.txt").write_text("acme\nglobex\n")
    embed_checkpoint(reference, marked, DerivedKey(secret, "acme"))
    elapsed = _interrupted(tmp_path, [str(marked), "--reference", str(reference), "--keys", str(registry),
                                      "--format", "json"], "provenance: lineage vs model.gguf")
    print(f"investigate, known-mark pass: exited {elapsed:.2f} s after SIGINT")
    assert elapsed < 3.0, elapsed


def test_figures_are_drawn_only_for_formats_that_show_them(tmp_path: Path) -> None:
    """``--format json`` draws no figure (matplotlib costs seconds, docs/benchmarks.md) and its
    report is the one ``--format json,md`` writes, less the figures; md links PNGs beside it."""
    args = ["investigate", str(QUANT_DIR / "tiny-llama-Q4_K_M.gguf"), "--reference", str(QUANT_DIR / "tiny-llama-f32.gguf")]
    plain, shown = tmp_path / "json", tmp_path / "md"
    for out, formats in ((plain, "json"), (shown, "json,md")):
        result = run_cli(*args, "-o", str(out), "--format", formats)
        assert result.returncode == 0, result.stderr
    assert not list(plain.glob("*.png"))
    pngs = sorted(p.name for p in shown.glob("*.png"))
    assert "grid-mismatch-per-layer.png" in pngs and "storage-types.png" in pngs
    assert all(f"]({name})" in (shown / "report.md").read_text() for name in pngs)

    def without_figures(document: dict) -> dict:  # type: ignore[type-arg]
        document.pop("created")
        for section in document["sections"]:  # figures, and the run times that vary run to run
            section.pop("figures")
            section["data"].pop("timing", None)
            section["data"].pop("seconds", None)
        return document

    before, after = (json.loads((out / "report.json").read_text()) for out in (shown, plain))
    assert [len(s["figures"]) for s in before["sections"]] != [0] * len(before["sections"])
    assert all(s["figures"] == [] for s in after["sections"])
    assert json.dumps(without_figures(after), sort_keys=True) == json.dumps(without_figures(before), sort_keys=True)


def test_which_formats_show_figures() -> None:
    from provenance.report import renderers, shows_figures

    assert not shows_figures(renderers(["json", "csv", "sarif", "junit"]))
    assert shows_figures(renderers(["json", "html"])) and shows_figures(renderers(["md"]))
