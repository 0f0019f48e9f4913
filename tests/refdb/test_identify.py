"""``identify`` on real files: tokenizer lineage, quantized and re-laid-out weights, and true negatives."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from provenance.refdb import IdentifyResult, RefDB, identify
from tests.conftest import QUANT_DIR, ROOT, SHARED_DATA, VOCAB_DIR
from tests.refdb.test_refdb import run_main

FAMILIES = {"llama-spm": "llama-2", "phi-3": "phi-3", "gpt-2": "gpt-2", "gpt-neox": "gpt-neox", "mpt": "mpt",
            "bert-bge": "bert-bge", "starcoder": "starcoder", "refact": "refact", "deepseek-coder": "deepseek-coder"}
SYNTH = ROOT / "data" / "synth" / "models"


@pytest.fixture(scope="module")
def db() -> RefDB:
    return RefDB()


def relation(result: IdentifyResult, entry_id: str) -> dict:
    match = next(c for c in result.candidates if c.entry_id == entry_id)
    ev = match.evidence_for("tokenizer")
    assert ev is not None
    return ev.data


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_vocabulary_names_its_own_family_first(name: str, db: RefDB) -> None:
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    # Without hashes: tokenizer and architecture alone must put the family first.
    result = identify(path, db, hashes="never")
    assert result.identified and result.best is not None
    assert result.best.family == FAMILIES[name], [(c.entry_id, c.verdict) for c in result.candidates[:3]]
    assert relation(result, f"gguf-vocab-{name}")["relation"] == "identical"
    # With hashes the exact file is named, as the strongest signal.
    hashed = identify(path, db)
    assert hashed.best is not None and hashed.best.entry_id == f"gguf-vocab-{name}" and hashed.best.verdict == "same file"


def test_phi3_is_llama2_plus_64_tokens(db: RefDB) -> None:
    result = identify(VOCAB_DIR / "ggml-vocab-phi-3.gguf", db, hashes="never")
    for ref in ("llama-2-tokenizer", "gguf-vocab-llama-spm"):
        rel = relation(result, ref)
        assert rel["relation"] == "extends" and rel["exact_prefix"] and rel["extra_tokens"] == 64
    assert relation(result, "mistral-7b-tokenizer")["relation"] == "shares-tokens"
    assert relation(result, "mistral-7b-tokenizer")["rule"] is None
    ranked = [c.entry_id for c in result.candidates]
    assert ranked.index("gguf-vocab-llama-spm") < ranked.index("mistral-7b-tokenizer")


def test_mpt_vocabulary_is_gpt_neox(db: RefDB) -> None:
    result = identify(VOCAB_DIR / "ggml-vocab-mpt.gguf", db, hashes="never")
    rel = relation(result, "gguf-vocab-gpt-neox")
    assert rel["relation"] == "identical" and rel["merges_equal"] is True
    assert result.candidates[1].entry_id == "gguf-vocab-gpt-neox"  # second only to mpt itself (architecture)


def test_starcoder_and_refact_same_tokens_other_ids(db: RefDB) -> None:
    for candidate, ref in (("starcoder", "refact"), ("refact", "starcoder")):
        rel = relation(identify(VOCAB_DIR / f"ggml-vocab-{candidate}.gguf", db, hashes="never"), f"gguf-vocab-{ref}")
        assert rel["relation"] == "reordered"
        assert 0.98 < rel["jaccard"] < 1.0 and rel["same_id_share"] < 0.05


def test_ollama_random_llama2_is_llama2_tokenizer_and_no_weights(db: RefDB) -> None:
    result = identify(SHARED_DATA / "ollama" / "llama-2-tiny-random.gguf", db)
    assert result.best is not None and result.best.family == "llama-2"
    assert relation(result, "llama-2-tokenizer")["relation"] == "identical"
    assert relation(result, "mistral-7b-tokenizer")["relation"] != "identical"
    assert "matches no shipped weight fingerprint" in result.weights_summary
    assert not result.weight_matches()
    for cand in result.candidates:
        ev = cand.evidence_for("weight-fingerprint")
        assert ev is not None and ev.status == "unavailable"


@pytest.mark.parametrize("path", sorted(QUANT_DIR.glob("*.gguf")), ids=lambda p: p.name)
def test_llamacpp_quantizations_name_their_source_by_weights(path: Path, db: RefDB) -> None:
    source = "stories260k" if path.name.startswith("stories") else "tiny-llama-f32"
    # No hashes and no summaries: sampled blocks only, so the weights alone must say it.
    result = identify(path, db, hashes="never", summary_budget=0)
    assert [c.entry_id for c in result.weight_matches()] == [source]
    ev = next(c for c in result.candidates if c.entry_id == source).evidence_for("weight-fingerprint")
    assert ev is not None and ev.data["layout"] == "as-is"
    assert ev.data["calibrated_z"] > 50 and ev.data["median_r"] > 0.9 and ev.data["empirical_p"] <= 0.01
    # the null was measured, and unrelated fingerprints score like it
    assert abs(ev.data["null_mean"]) < 3 and 0.3 < ev.data["null_sd"] < 3
    assert all(abs(z) < 6 for z in ev.data["other_entries_z"])


def test_transposed_stories260k_is_found_and_layout_reported(db: RefDB) -> None:
    result = identify(SHARED_DATA / "stories260K" / "stories260K.transpose.bin", db, hashes="never")
    assert [c.entry_id for c in result.weight_matches()] == ["stories260k"]
    ev = result.candidates[0].evidence_for("weight-fingerprint")
    assert result.candidates[0].entry_id == "stories260k" and ev is not None
    assert ev.data["layout"] == "transposed" and ev.data["layouts"]["as-is"] < 6 < ev.data["layouts"]["transposed"]
    assert ev.data["summary"]["better_layout"] == "transposed"
    assert ev.data["summary"]["median_distance_transposed"] < 1e-6 < ev.data["summary"]["median_distance_as_is"]


def write_random_tiny_llama(path: Path, seed: int) -> Path:
    """tiny-llama-f32.gguf's exact shapes and names, other Gaussian weights, half stored as Q8_0; no tokenizer."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    n_vocab, n_embd, n_ff = 1024, 256, 768
    writer.add_context_length(256), writer.add_embedding_length(n_embd), writer.add_block_count(2)
    writer.add_feed_forward_length(n_ff), writer.add_head_count(4), writer.add_head_count_kv(4)

    def add(name: str, shape: tuple[int, ...], quantize: bool) -> None:
        values = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if quantize:
            q = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)

    add("token_embd.weight", (n_vocab, n_embd), True)
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for j, role in enumerate(("attn_q", "attn_k", "attn_v", "attn_output")):
            add(f"blk.{i}.{role}.weight", (n_embd, n_embd), j % 2 == 0)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        add(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd), True)
        add(f"blk.{i}.ffn_up.weight", (n_ff, n_embd), False)
        add(f"blk.{i}.ffn_down.weight", (n_embd, n_ff), True)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    add("output.weight", (n_vocab, n_embd), False)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return path


def test_random_model_of_the_same_shape_is_no_match(tmp_path: Path, db: RefDB, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_random_tiny_llama(tmp_path / "other-tiny-llama.gguf", seed=1)
    result = identify(path, db)
    tiny = next(c for c in result.candidates if c.entry_id == "tiny-llama-f32")
    ev = tiny.evidence_for("weight-fingerprint")
    assert ev is not None and ev.status == "no-match" and abs(ev.data["calibrated_z"]) < 6
    assert ev.data["tensors_compared"] == 16 and ev.data["constant_skipped"] == 5  # the all-ones norms prove nothing
    tensors = tiny.evidence_for("tensor-hashes")
    assert tensors is not None and tensors.status == "no-match" and tensors.data["constant_ignored"] == 5
    assert tiny.evidence_for("architecture").status == "match" and tiny.verdict == "architecture only"
    assert not result.identified and result.weights_summary.startswith("no match")
    code, out, err = run_main(capsys, "identify", "--json", str(path))
    assert code == 1 and "no match" in err and json.loads(out)["identified"] is False


def test_hf_checkpoints_through_save_pretrained(tmp_path: Path, db: RefDB) -> None:
    """stories260K as an HF checkpoint (q/k rows in rotate-half order) is still stories260K;
    a random init of the same shape is not."""
    torch = pytest.importorskip("torch")
    from provenance.synth.convert import load_stories260k_as_hf

    model = load_stories260k_as_hf(SHARED_DATA / "stories260K" / "stories260K.bin")
    model.save_pretrained(tmp_path / "stories-hf")
    result = identify(tmp_path / "stories-hf", db, hashes="never", summary_budget=0)
    assert [c.entry_id for c in result.weight_matches()] == ["stories260k"]
    from transformers import LlamaForCausalLM

    torch.manual_seed(7)
    LlamaForCausalLM(model.config).save_pretrained(tmp_path / "random-hf")
    result = identify(tmp_path / "random-hf", db, hashes="never", summary_budget=0)
    assert not result.weight_matches()
    ev = next(c for c in result.candidates if c.entry_id == "stories260k").evidence_for("weight-fingerprint")
    assert ev is not None and ev.status == "no-match" and ev.data["tensors_compared"] >= 30


@pytest.mark.skipif(not (SYNTH / "synth-s01" / "model.safetensors").is_file(), reason="data/synth not built yet")
def test_independently_trained_models_are_not_stories260k(db: RefDB) -> None:
    """Trained, not random: same shape, same data, other seeds (provenance.synth); while
    fine-tunes and a merged LoRA of stories260K still match it."""
    pool = sorted(p for p in SYNTH.glob("synth-s[0-9][0-9]") if (p / "model.safetensors").is_file())[:4]
    for model in pool:
        result = identify(model, db, hashes="never", summary_budget=0)
        ev = next(c for c in result.candidates if c.entry_id == "stories260k").evidence_for("weight-fingerprint")
        assert ev is not None and ev.status == "no-match", (model.name, ev.detail)
    for name in ("stories260k-ft-heavy", "stories260k-lora"):  # derivatives with a known parent
        if (SYNTH / name / "model.safetensors").is_file():
            result = identify(SYNTH / name, db, hashes="never", summary_budget=0)
            assert [c.entry_id for c in result.weight_matches()] == ["stories260k"], name


def test_identify_cli_json_and_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "id.json"
    code, out, err = run_main(capsys, "identify", "--json", "-o", str(out_file), str(QUANT_DIR / "tiny-llama-Q4_0.gguf"))
    assert code == 0, err
    doc = json.loads(out)
    assert doc == json.loads(out_file.read_text())
    assert doc["schema"] == "provenance.identify/1" and doc["best"] == "tiny-llama-q4_0" and doc["identified"]
    assert doc["candidates"][0]["verdict"] == "same file"
    assert "identified: tiny-llama-q4_0" in err
    # the summary names the evidence that decided, the rule, and what it rules out
    assert doc["decision"]["signal"] == "file-hash" and "by file-hash (a file is byte-identical" in err
    assert doc["summary"] in err and "rules out the" in doc["summary"]
    code, out, _ = run_main(capsys, "identify", str(VOCAB_DIR / "ggml-vocab-phi-3.gguf"))
    assert code == 0 and "plus 64 more" in out
    bad = SHARED_DATA / "corrupted" / "utf8-mangled-ggml-vocab-llama-spm.gguf"
    code, _, err = run_main(capsys, "identify", str(bad))
    assert code == 2 and "utf8-mangled-ggml-vocab-llama-spm.gguf" in err and "offset" in err
    code, _, err = run_main(capsys, "identify", "--hashes", "sometimes", str(VOCAB_DIR / "ggml-vocab-phi-3.gguf"))
    assert code == 64 and "--hashes" in err
    assert run_main(capsys, "identify")[0] == 64  # no model named


def test_summary_names_the_weights_when_they_decided(db: RefDB) -> None:
    """No hashes: the weight fingerprint decides, and the summary says so with its z and the
    null beside it (no other shipped fingerprint has these shapes: the null measured on
    mismatched positions), the tokenizer's relatives listed apart."""
    result = identify(QUANT_DIR / "tiny-llama-Q4_0.gguf", db, hashes="never", summary_budget=0)
    decision = result.decision
    assert decision is not None and decision.signal == "weight-fingerprint" and decision.entry_id == "tiny-llama-f32"
    assert decision.rule.startswith("calibrated z ") and decision.rule.endswith(">= 6")
    assert decision.unrelated_max == "null measured on mismatched positions"
    assert {"llama-2", "phi-3"} <= set(decision.other_families_matched)  # the Llama 2 vocabulary it carries
    assert result.summary.startswith("identified: tiny-llama-f32 (") and "by weight-fingerprint (calibrated z" in result.summary
    assert "rules out the" in result.summary and "weights derive" not in result.summary
