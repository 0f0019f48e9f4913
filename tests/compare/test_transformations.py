"""Transformations are claimed only when they are there: fine-tunes are never "aligned" into a
permutation or a rescale, and every move made to a copy is named (docs/lineage.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provenance.compare import CompareOptions, compare
from provenance.compare.variants import load_canonical, write_variant
from provenance.synth.store import load_manifest, synth_model_path
from provenance.watermark import attacks
from tests.conftest import QUANT_DIR, ROOT

needs_synth = pytest.mark.skipif(not (ROOT / "data" / "synth" / "manifest.json").is_file(), reason="synth pool not built")
TINY = QUANT_DIR / "tiny-llama-f32.gguf"


def _derived() -> list[tuple[str, str]]:
    if not (ROOT / "data" / "synth" / "manifest.json").is_file():
        return []
    return [(m["id"], m["parent"]) for m in load_manifest()["models"] if m.get("parent")]


@needs_synth
@pytest.mark.parametrize(("child", "parent"), _derived())
def test_no_transformation_is_claimed_for_a_fine_tune(child: str, parent: str) -> None:
    """Every synth derivative (fine-tunes of three strengths, LoRA, continued pretraining, of a
    synth base and of the real stories260K) against its parent: trained, never moved."""
    result = compare(synth_model_path(child), synth_model_path(parent), CompareOptions(permutations=199, threads=1))
    verdict = result.verdict
    assert verdict.related and not verdict.is_copy
    assert verdict.transformations == () and "permut" not in verdict.description and "rescal" not in verdict.description
    assert result.alignment is not None and result.alignment.identity
    for layer in result.alignment.layers:  # the gain statistics the rescale rule reads, recorded
        for norm in (layer.attn_norm_rescale, layer.ffn_norm_rescale):
            assert not norm.applied


@pytest.fixture(scope="module")
def permuted_q4km(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama (real llama.cpp layout, rows of 256: real K-quants) with every MLP's units
    permuted and rescaled, then Q4_K_M by the llama.cpp-exact quantizer."""
    tensors, arch, _ = load_canonical(TINY)
    moved = attacks.permute_rescale(tensors, list(range(int(arch.n_layer or 0))), seed=3)
    path = tmp_path_factory.mktemp("perm") / "perm-Q4_K_M.gguf"
    write_variant(path, moved, arch, "Q4_K_M", "permuted")
    return path


def test_permuted_rescaled_quantized_copy_is_exact_in_its_own_frame(permuted_q4km: Path) -> None:
    verdict = compare(permuted_q4km, TINY, CompareOptions(permutations=199, threads=1)).verdict
    assert verdict.kind == "requantized", verdict
    assert verdict.transformations == ("permuted units", "rescaled units")
    assert "after permuting units, rescaling units (exact: 2,228,224 of 2,228,224 codes)" in verdict.description


def test_quantcheck_realign_finds_the_exact_quantization(permuted_q4km: Path) -> None:
    from provenance.formats import open_checkpoint
    from provenance.quant import quantcheck
    from provenance.watermark.realign import realign

    plain = quantcheck(permuted_q4km, TINY)
    assert plain.verdict != "exact" and plain.n_unexplained > 100_000
    with open_checkpoint(permuted_q4km) as cand, open_checkpoint(TINY) as ref:
        frames = realign(cand, ref).tensors
    realigned = quantcheck(permuted_q4km, TINY, frames=frames)
    assert realigned.verdict == "exact" and realigned.n_unexplained == 0
    assert sum(t.realigned for t in realigned.tensors) == len(frames) >= 4


def test_quantcheck_realign_on_the_command_line(permuted_q4km: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.cli import run

    assert run(["quantcheck", str(permuted_q4km), "-r", str(TINY)]) == 1
    assert run(["quantcheck", str(permuted_q4km), "-r", str(TINY), "--realign"]) == 0
    err = capsys.readouterr().err
    assert "realigned: 6 tensors carried into the candidate's frame" in err and "verdict: exact quantization" in err


def test_a_gain_carried_across_zero_by_training_is_not_a_sign_flip() -> None:
    """SmolLM2's 30-step fine-tune moved three gains of ~1e-4 across zero while the others moved
    ~1e-4 each (docs/lineage.md): no flip claimed. A fold with a flipped gain, or a flip on an
    otherwise untouched copy, is."""
    from provenance.compare.align import _deliberate_flips

    rng = np.random.default_rng(0)
    g = rng.normal(0.2, 0.05, 576)
    g[7] = -1e-4
    trained = g + rng.choice([-1.2e-4, 1.2e-4], g.size)
    trained[7] = 2.4e-4
    assert _deliberate_flips(g, trained, trained / g) == 0
    flipped = trained.copy()
    flipped[[3, 9]] *= -1
    assert _deliberate_flips(g, flipped, flipped / g) == 2
    copy = g.copy()
    copy[5] *= -1
    assert _deliberate_flips(g, copy, copy / g) == 1
