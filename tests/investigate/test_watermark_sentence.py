"""The investigation's watermark sentence says when the sequential rule stopped early: its z
is then over part of the model (smaller than a full pass's), so the reader is told which part."""
from __future__ import annotations

from pathlib import Path

from provenance.investigate.watermark_analysis import trace_sentence
from provenance.watermark import DerivedKey, TraceOptions, embed_checkpoint, trace
from tests.conftest import QUANT_DIR

SOURCE = QUANT_DIR / "tiny-llama-f16.gguf"


def test_sentence_states_the_share_read_when_stopped_early(tmp_path: Path) -> None:
    secret = b"provenance-sentence-secret-0001"
    marked = tmp_path / "acme.gguf"
    embed_checkpoint(SOURCE, marked, DerivedKey(secret, "acme"), 1e-2)
    keys = [DerivedKey(secret, c) for c in ("acme", "globex", "initech")]
    early = trace(marked, keys, SOURCE, TraceOptions(decoys=0))
    full = trace(marked, keys, SOURCE, TraceOptions(decoys=0, sequential=False))
    assert early.accused == full.accused == ("acme",)
    assert not early.score.complete and full.score.complete
    share = early.score.weights_read / early.score.n_weights
    sentence = trace_sentence(early, str(marked))
    assert f"decided after {share:.0%} of the weights" in sentence
    assert f"{early.score.blocks_read} of {early.score.blocks_total} blocks" in sentence
    assert "decided after" not in trace_sentence(full, str(marked))
