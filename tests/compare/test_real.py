"""Verdicts on real files and on the shipped synth pool (GGUF, safetensors, llama2.c)."""
from __future__ import annotations

from pathlib import Path

import pytest

from provenance.compare import CompareOptions, compare

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
STORIES = SHARED / "stories260K"
QUANT = SHARED / "llamacpp-quant"
SYNTH = ROOT / "data" / "synth" / "models"
FAST = CompareOptions(permutations=199)
needs_synth = pytest.mark.skipif(not (ROOT / "data" / "synth" / "manifest.json").is_file(), reason="synth pool not built")


def test_transposed_llama2c_is_the_same_weights() -> None:
    res = compare(STORIES / "stories260K.transpose.bin", STORIES / "stories260K.bin", FAST)
    assert res.verdict.kind == "identical"
    assert "transposed layout" in res.verdict.summary
    assert res.layout.transposed_bytes and res.layout.detection.median_abs_pearson_plain < 0.1
    # decided far from every threshold after the first 99 of the 199 permutations: the
    # exact p is exact for those (its floor, 0.01, what the verdict asks of an exact p)
    assert res.test is not None and (res.test.permutations, res.test.permutations_planned) == (99, 199)
    assert res.verdict.p_asymptotic < 1e-6 and res.verdict.p_exact <= 1 / 100


def test_llamacpp_q4_k_m_is_the_f32_source_requantized() -> None:
    res = compare(QUANT / "tiny-llama-Q4_K_M.gguf", QUANT / "tiny-llama-f32.gguf", FAST)
    assert res.verdict.kind == "requantized", res.verdict
    assert set(res.verdict.details.types) == {"Q4_K", "Q6_K"}
    mats = res.table[res.table["kind"] == "matrix"]
    assert (mats["pearson"] > 0.99).all() and (mats["grid_outside_fraction"] <= 1e-3).all()


@pytest.mark.parametrize("name", ["tiny-llama-Q2_K.gguf", "tiny-llama-f16.gguf"])
def test_other_llamacpp_outputs_are_requantized_too(name: str) -> None:
    res = compare(QUANT / name, QUANT / "tiny-llama-f32.gguf", FAST)
    assert res.verdict.kind == "requantized", res.verdict


def test_quantized_reference_either_way() -> None:
    # the f32 source as candidate against its llama.cpp Q8_0 (F16 for rows of 172) as reference
    res = compare(STORIES / "stories260K.bin", QUANT / "stories260K-Q8_0.gguf", FAST)
    assert res.verdict.kind == "requantized", res.verdict
    assert {r.grid_lossy_side for r in res.tensors if r.grid_lossy_side} == {"reference"}


@needs_synth
@pytest.mark.parametrize("cand, ref, kind", [
    ("stories260k-ft-medium", "stories260k", "fine-tune"),
    ("synth-s00-lora", "synth-s00", "lora-merge"),
    ("stories260k-cpt", "stories260k", "continued-pretraining"),
    ("synth-s03", "stories260k", "unrelated"),
    ("synth-s05", "synth-s04", "unrelated"),
])
def test_synth_derivatives_and_independent_models(cand: str, ref: str, kind: str) -> None:
    res = compare(SYNTH / cand, SYNTH / ref, FAST)
    assert res.verdict.kind == kind, res.verdict
    if kind == "unrelated":
        assert res.verdict.p_asymptotic > 1e-3
    else:
        assert res.verdict.p_asymptotic < 1e-6
        top = res.verdict.details.layers_changed_most
        assert len(top) == 3 and top[0].mean_rel_delta >= top[-1].mean_rel_delta > 0


@needs_synth
def test_real_stories260k_vs_its_synth_fine_tune_across_formats() -> None:
    # llama2.c float32 reference vs an HF safetensors float16 fine-tune (q/k permuted on read)
    res = compare(SYNTH / "stories260k-ft-light", STORIES / "stories260K.bin", FAST)
    assert res.verdict.kind == "fine-tune" and res.verdict.details.strength == "light"
    lora = compare(SYNTH / "stories260k-lora", STORIES / "stories260K.bin", FAST)
    assert lora.verdict.kind == "lora-merge"
    low = lora.verdict.details.low_rank
    assert set(low.roles) <= {"attn_q", "attn_v", "ffn_gate", "ffn_up", "ffn_down"} and max(low.ranks_90pct_energy) <= 4


def test_result_api_is_complete_and_picklable() -> None:
    import json
    import pickle  # noqa: TID251 - our own result object, round-tripped to show it can cross a process boundary

    res = compare(QUANT / "stories260K-Q8_0.gguf", STORIES / "stories260K.bin", FAST)
    again = pickle.loads(pickle.dumps(res))  # noqa: S301
    assert again == res and again.to_dict() == res.to_dict()
    doc = json.loads(json.dumps(res.to_dict(), allow_nan=False, default=str))
    assert doc["schema"] == "provenance.compare/1" and len(doc["tensors"]) == 47
    table = res.table
    assert {"pearson", "one_minus_cos", "rel_delta_norm", "rank_energy"} <= set(table.columns)
    norms = table[table["kind"] == "vector"]
    assert norms["cosine"].isna().all() and len(norms) == 11  # never report raw cosine of norms
    assert len(res.layer_table) == 6
    assert res.claims.reference == {} and "stories260K" in res.claims.candidate["general.name"]
