"""Token rows paired by token string when both tokenizers are known: a vocabulary whose ids were
shuffled and partly replaced (provenance.synth.structure.reorder_vocabulary over the trained
stories260k synth model; token strings: the first 512 of the real Llama 2 vocabulary GGUF that
llama.cpp's converter wrote, ../shared/data/gguf-vocab), written with the gguf writer, and
quantized by the project's llama.cpp-exact writer (Q4_K_M)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from provenance.compare import CompareOptions, compare
from provenance.compare.structure import pair_vocabularies
from provenance.formats import open_checkpoint
from provenance.formats.vocabulary import checkpoint_vocabulary
from provenance.synth import structure as st
from tests.support.synth_models import synth_model

LLAMA_VOCAB = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gguf-vocab" / "ggml-vocab-llama-spm.gguf"
OPTS = CompareOptions(permutations=199)


@pytest.fixture(scope="module")
def tokens() -> list[bytes]:
    if not LLAMA_VOCAB.is_file():
        pytest.skip("shared data not present")
    with open_checkpoint(LLAMA_VOCAB) as ckpt:
        vocab = checkpoint_vocabulary(ckpt)
    assert vocab is not None
    return vocab.tokens[:512]


@pytest.fixture(scope="module")
def parent() -> Path:
    return synth_model("stories260k")


@pytest.mark.parametrize("scheme", [None, "Q4_K_M"])
def test_reordered_and_changed_vocabulary_is_paired_by_token_string(tmp_path: Path, tokens: list[bytes], parent: Path,
                                                                    scheme: str | None) -> None:
    ref = st.with_vocabulary(parent, tmp_path / "ref.gguf", tokens)
    cand, perm = st.reorder_vocabulary(parent, tmp_path / "cand.gguf", tokens, seed=3, replaced=12, scheme=scheme)
    res = compare(cand, ref, OPTS)
    assert res.verdict.related is True and res.verdict.p_asymptotic < 1e-6
    vocab = res.structure.vocabulary
    assert vocab is not None and vocab.paired_by == "token string" and vocab.kind == "vocabulary-changed"
    assert vocab.shared_rows == 500 and vocab.only_candidate_count == 12 and vocab.only_reference_count == 12
    assert vocab.moved == int((perm[vocab.reference_ids] != vocab.reference_ids).sum())
    # every paired row is the reference row of the same token: its id moved by the shuffle
    assert np.array_equal(vocab.candidate_ids, perm[vocab.reference_ids])
    emb = next(t for t in res.tensors if t.name == "token_embd.weight")
    assert emb.shape == "500x64"
    if scheme is None:
        assert res.verdict.kind == "restructured" and emb.max_abs_delta == 0.0
    else:
        assert res.verdict.kind == "requantized" and emb.grid_outside == 0
    (rows,) = [u for u in res.verdict.unpaired if u.reason == "vocabulary-rows"]
    assert "500 rows paired by token string" in rows.detail and "12 rows only in the candidate" in rows.detail
    assert "'<new-" in res.verdict.description and "500 rows paired by token string" in res.verdict.description


def test_pairing_by_string_only_when_rows_moved() -> None:
    same = [b"a", b"b", b"c"]
    assert pair_vocabularies(same, same, 3, 3) is None
    assert pair_vocabularies([*same, b"d"], same, 4, 3) is None  # an extension: pairing by id is the same
    moved = pair_vocabularies([b"c", b"a", b"x"], same, 3, 3)
    assert moved is not None and moved.shared_rows == 2 and moved.moved == 2
    assert list(moved.candidate_ids) == [1, 0] and list(moved.reference_ids) == [0, 2]
    assert moved.only_candidate == ("'x'",) and moved.only_reference == ("'b'",)
    padded = pair_vocabularies([b"b", b"a"], same, 3, 3)  # a row past the candidate's token list
    assert padded is not None and "row 2" in padded.only_candidate
