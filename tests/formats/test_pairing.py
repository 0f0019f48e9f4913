"""Pairing two checkpoints by canonical name: every tensor is paired or unpaired with its reason,
and every analysis of two checkpoints reports the same fate for it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provenance.compare.pairing import pair_tensors as lineage_pairing
from provenance.compare.variants import Q, load_canonical, write_gguf
from provenance.formats import open_checkpoint
from provenance.formats.pairing import TensorPair, Unpaired, pair_tensors
from provenance.quant.api import quantcheck
from tests.conftest import QUANT_DIR

REFERENCE = QUANT_DIR / "stories260K-f32.gguf"  # written by llama.cpp's converter


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference's weights with one tensor dropped, one stored transposed, one cut
    short, and a precomputed RoPE table added: a GGUF written by the gguf writer."""
    tensors, arch, _ = load_canonical(REFERENCE)
    del tensors["blk.0.ffn_norm.weight"]
    tensors["blk.1.ffn_up.weight"] = np.ascontiguousarray(tensors["blk.1.ffn_up.weight"].T)
    tensors["blk.2.ffn_down.weight"] = np.ascontiguousarray(tensors["blk.2.ffn_down.weight"][:, :160])
    tensors["rope_freqs.weight"] = np.linspace(1.0, 2.0, 4, dtype=np.float32)
    path = tmp_path_factory.mktemp("pairing") / "candidate.gguf"
    write_gguf(path, {name: (value, Q.F32) for name, value in tensors.items()}, arch, "candidate")
    return path


def test_every_tensor_is_paired_or_unpaired_with_its_reason(candidate: Path) -> None:
    with open_checkpoint(candidate) as cand, open_checkpoint(REFERENCE) as ref:
        strict = pair_tensors(cand, ref)
        lenient = pair_tensors(cand, ref, transposed=True, skip_not_learned=True)
        names = set(cand.tensors) | set(ref.tensors)
    for pairing in (strict, lenient):
        fate = pairing.by_name()
        assert set(fate) == names and len(pairing.pairs) + len(pairing.unpaired) == len(names)
        assert fate["blk.0.ffn_norm.weight"] == Unpaired("blk.0.ffn_norm.weight", "missing-in-candidate", None, (64,))
        assert fate["blk.2.ffn_down.weight"] == Unpaired("blk.2.ffn_down.weight", "shape-mismatch", (64, 160), (64, 172))
        assert fate["blk.2.ffn_down.weight"].describe() == "shape 64x160 in the candidate, 64x172 in the reference"
        assert isinstance(fate["blk.1.ffn_gate.weight"], TensorPair) and fate["blk.1.ffn_gate.weight"].layout == "same"
    # reversed storage is a pair only for an analysis that reads it, a mismatch for the others
    assert strict.by_name()["blk.1.ffn_up.weight"].reason == "shape-mismatch"  # type: ignore[union-attr]
    assert lenient.by_name()["blk.1.ffn_up.weight"].layout == "transposed"  # type: ignore[union-attr]
    assert strict.by_name()["rope_freqs.weight"].reason == "missing-in-reference"  # type: ignore[union-attr]
    assert lenient.by_name()["rope_freqs.weight"].reason == "not-learned"  # type: ignore[union-attr]


def test_lineage_and_quantcheck_report_the_same_fates(candidate: Path) -> None:
    with open_checkpoint(candidate) as cand, open_checkpoint(REFERENCE) as ref:
        pairing = lineage_pairing(cand, ref).to_dict()
    assert pairing["only_reference"] == ["blk.0.ffn_norm.weight"]
    assert pairing["only_candidate"] == [] and pairing["skipped_non_learned"] == ["rope_freqs.weight"]
    assert pairing["shape_mismatch"] == [{"name": "blk.2.ffn_down.weight", "candidate": [64, 160], "reference": [64, 172]}]
    status = {t.name: t.status for t in quantcheck(candidate, REFERENCE).tensors}
    assert status["rope_freqs.weight"] == "missing-in-reference"
    assert status["blk.2.ffn_down.weight"] == "shape-mismatch" and status["blk.1.ffn_up.weight"] == "shape-mismatch"
    assert status["blk.1.ffn_gate.weight"] == "identical"
    assert "blk.0.ffn_norm.weight" not in status  # quantcheck lists the candidate's tensors
