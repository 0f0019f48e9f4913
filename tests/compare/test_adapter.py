"""PEFT adapters in lineage: base + adapter as a candidate, and "is this model the merge of that
adapter?" with adapters written by PEFT and merges written by PEFT + transformers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance.cli import run
from provenance.compare import compare
from provenance.compare.adapter import ROUNDING_FACTOR, module_matches
from tests.conftest import save_tiny_model
from tests.support.peft_models import save_adapter, save_merged


@pytest.fixture(scope="module")
def models(hf_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft")
    adapter = save_adapter(hf_llama, root / "adapter", seed=1)
    other = save_adapter(hf_llama, root / "adapter-2", seed=2)
    return {
        "base": hf_llama, "adapter": adapter, "other-adapter": other,
        "merged-float32": save_merged(hf_llama, adapter, root / "merged-f32"),
        "merged-bfloat16": save_merged(hf_llama, adapter, root / "merged-bf16", "bfloat16"),
        "merged-float16": save_merged(hf_llama, adapter, root / "merged-f16", "float16"),
        "merged-other": save_merged(hf_llama, other, root / "merged-other"),
        "unrelated": save_tiny_model(root / "unrelated", seed=9),
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_merge_is_the_lora_merge_of_its_adapter(dtype: str, models: dict[str, Path]) -> None:
    result = compare(models[f"merged-{dtype}"], models["adapter"], base=models["base"])
    adapter = result.adapter
    assert adapter is not None and adapter.side == "reference" and adapter.merged is True
    assert result.verdict.kind == "lora-merge" and result.verdict.description.startswith("lora-merge of this adapter")
    assert len(adapter.modules) == 8  # q, k, v, down in 2 layers
    for fit in adapter.modules:
        assert fit.coefficient is not None and abs(fit.coefficient - 1) < 5e-3
        assert fit.residual is not None and fit.rounding is not None
        # storage rounding explains what is left (measured ratio ~1.35 for bf16/f16 merges: W and M both rounded)
        assert fit.residual <= math.sqrt(ROUNDING_FACTOR) * fit.rounding or fit.residual < 1e-5
    if dtype != "float32":
        assert min(f.residual or 0 for f in adapter.modules) > 1e-3  # the rounding is real, and was explained


@pytest.mark.parametrize(("candidate", "coefficient"), [("merged-other", None), ("base", 0.0)])
def test_other_merges_are_not_this_adapter(candidate: str, coefficient: float | None, models: dict[str, Path]) -> None:
    result = compare(models[candidate], models["adapter"], base=models["base"])
    adapter = result.adapter
    assert adapter is not None and adapter.merged is False
    assert "not this adapter merged" in result.verdict.description
    for fit in adapter.modules:
        assert fit.coefficient is not None and abs(fit.coefficient) < 0.1
        if coefficient is not None:
            assert fit.coefficient == coefficient and fit.residual == pytest.approx(1.0)
    assert not any(module_matches(f) for f in adapter.modules)


def _edited(source: Path, out: Path, edit: str) -> Path:
    import shutil

    shutil.copytree(source, out)
    tensors = load_file(out / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    name = {"targeted": "model.layers.0.self_attn.q_proj.weight", "untargeted": "model.layers.0.mlp.gate_proj.weight"}[edit]
    weight = tensors[name]
    tensors[name] = weight + 1e-3 * weight.std() * torch.randn(weight.shape, generator=generator)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("edit", ["targeted", "untargeted"])
def test_a_merge_changed_afterwards_is_not_the_plain_merge(edit: str, models: dict[str, Path], tmp_path: Path) -> None:
    candidate = _edited(models["merged-float32"], tmp_path / "edited", edit)
    result = compare(candidate, models["adapter"], base=models["base"])
    adapter = result.adapter
    assert adapter is not None and adapter.merged is False
    assert all(f.coefficient is not None and abs(f.coefficient - 1) < 0.05 for f in adapter.modules)
    assert "contains this LoRA adapter" in adapter.finding and "plus other changes" in adapter.finding
    edited = [f for f in adapter.modules if not module_matches(f)]
    assert [f.name for f in edited] == (["blk.0.attn_q.weight"] if edit == "targeted" else [])


def test_an_adapter_candidate_is_its_base_plus_the_update(models: dict[str, Path]) -> None:
    result = compare(models["adapter"], models["base"], base=models["base"])
    adapter = result.adapter
    assert adapter is not None and adapter.side == "candidate" and adapter.merged is None
    assert result.candidate.format == "peft-adapter" and result.verdict.related
    assert result.verdict.kind == "lora-merge" and "adapter applied to the reference" in result.verdict.description
    changed = {t.name for t in result.tensors if t.max_abs_delta > 0}
    assert changed == {f.name for f in adapter.modules}
    # ||D|| from the factors equals the streamed ||C - R|| of each updated weight
    streamed = {t.name: t.rel_delta_norm * t.norm_reference for t in result.tensors}
    for fit in adapter.modules:
        assert fit.delta_norm == pytest.approx(streamed[fit.name], rel=1e-5)
    factors = load_file(models["adapter"] / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.1.mlp.down_proj"
    direct = float(torch.linalg.norm(2.0 * factors[f"{prefix}.lora_B.weight"] @ factors[f"{prefix}.lora_A.weight"]))
    assert next(f.delta_norm for f in adapter.modules if f.name == "blk.1.ffn_down.weight") == pytest.approx(direct, rel=1e-5)


def test_an_adapter_on_its_declared_base_against_an_unrelated_model(models: dict[str, Path]) -> None:
    # no --base: adapter_config.json's base_model_name_or_path (the path PEFT recorded) is opened
    result = compare(models["adapter"], models["unrelated"])
    assert result.verdict.kind == "unrelated" and result.adapter is not None
    assert result.adapter.base == str(models["base"])


@pytest.mark.parametrize("config", [
    {"rank_pattern": {"down_proj": 2}, "alpha_pattern": {"v_proj": 32.0}},
    {"use_rslora": True, "r": 8},
    {"targets": ("q_proj", "embed_tokens"), "modules_to_save": ["lm_head"]},
])
def test_config_semantics_follow_peft(config: dict[str, object], hf_llama: Path, tmp_path: Path) -> None:
    """rank/alpha patterns, rsLoRA scaling, embedding LoRA and saved modules: a PEFT merge of each
    is recognised only if the update is computed as PEFT computes it."""
    adapter = save_adapter(hf_llama, tmp_path / "adapter", seed=3, **config)  # type: ignore[arg-type]
    if "modules_to_save" in config:  # a saved module that changed during "training"
        tensors = load_file(adapter / "adapter_model.safetensors")
        tensors["base_model.model.lm_head.weight"] = tensors["base_model.model.lm_head.weight"] * 1.01
        save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    merged = save_merged(hf_llama, adapter, tmp_path / "merged")
    result = compare(merged, adapter, base=hf_llama)
    assert result.adapter is not None and result.adapter.merged is True, result.adapter.finding if result.adapter else ""
    ranks = {f.module.rsplit(".", 1)[-1]: f.rank for f in result.adapter.modules}
    if "rank_pattern" in config:
        assert ranks["down_proj"] == 2 and ranks["q_proj"] == 4
    if "use_rslora" in config:
        assert all(f.scale == pytest.approx(8.0 / math.sqrt(8)) for f in result.adapter.modules)


@pytest.mark.slow
def test_an_adapter_on_a_gguf_base(hf_llama_spm: Path, converter, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The update's q/k rows are put in llama.cpp's order, like the base's: the HF merge is the
    merge of the adapter on the base converted by llama.cpp's converter."""
    adapter = save_adapter(hf_llama_spm, tmp_path / "adapter", seed=4)
    merged = save_merged(hf_llama_spm, adapter, tmp_path / "merged")
    gguf_base = converter(hf_llama_spm, tmp_path / "base.gguf")
    result = compare(merged, adapter, base=gguf_base)
    assert result.adapter is not None and result.adapter.merged is True, result.adapter.finding if result.adapter else ""
    assert {f.name for f in result.adapter.modules} >= {"blk.0.attn_q.weight", "blk.0.attn_k.weight"}
    on_gguf = compare(adapter, hf_llama_spm, base=gguf_base)
    assert on_gguf.verdict.kind == "lora-merge" and "adapter applied to the reference" in on_gguf.verdict.description


def test_the_cli_runs_the_adapter_test(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = run(["compare", str(models["merged-bfloat16"]), str(models["adapter"]), "--base", str(models["base"]), "--json",
                "-o", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "adapter: the candidate is this LoRA adapter" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["adapter"]["merged"] is True and report["verdict"]["kind"] == "lora-merge"
    assert run(["investigate", str(models["adapter"]), "--reference", str(models["base"]), "--base", str(models["base"]),
                "-o", str(tmp_path / "inv"), "--format", "json"]) == 0
    document = json.loads((tmp_path / "inv" / "report.json").read_text())
    section = next(s for s in document["sections"] if s["kind"] == "compare")
    assert section["data"]["adapter"]["side"] == "candidate" and section["tables"]["adapter modules"]
