"""`provenance investigate`: one report, executive summary first, nothing written on failure."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

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
