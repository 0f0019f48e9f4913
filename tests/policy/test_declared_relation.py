"""A model card's declared relation (base_model_relation) checked against the weights, in compare,
investigate and the CI policy, on derivatives written by the real writers (transformers, PEFT)
with cards written by huggingface_hub."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provenance.cli import run
from provenance.compare import compare
from provenance.compare.claims import relation_agrees
from tests.formats.test_model_card import hub_card
from tests.support.peft_models import save_adapter, save_merged

BASE_ID = "example-org/tiny-base"


@pytest.fixture(scope="module")
def derivatives(hf_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bf16 conversion (the weights rounded: 'requantized'), a LoRA fine-tune merged, an adapter."""
    import torch
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("derived")
    LlamaForCausalLM.from_pretrained(hf_llama, dtype=torch.bfloat16).save_pretrained(root / "bf16")
    adapter = save_adapter(hf_llama, root / "adapter", seed=1)
    return {"bf16": root / "bf16", "merged": save_merged(hf_llama, adapter, root / "merged"), "adapter": adapter}


def _with_card(source: Path, tmp_path: Path, relation: str) -> Path:
    folder = Path(shutil.copytree(source, tmp_path / f"{source.name}-{relation}"))
    return hub_card(folder, base_model=BASE_ID, base_model_relation=relation, license="mit")


CASES = [("bf16", "quantized", True), ("bf16", "finetune", False), ("merged", "finetune", True), ("merged", "merge", True),
         ("merged", "quantized", False), ("merged", "adapter", False), ("adapter", "adapter", True),
         ("adapter", "finetune", False)]


@pytest.mark.parametrize(("model", "relation", "agrees"), CASES)
def test_compare_checks_the_declared_relation(model: str, relation: str, agrees: bool, derivatives: dict[str, Path],
                                              hf_llama: Path, tmp_path: Path) -> None:
    candidate = _with_card(derivatives[model], tmp_path, relation)
    result = compare(candidate, hf_llama, base=hf_llama if model == "adapter" else None)
    claims = result.claims
    assert result.verdict.related and claims.declared_relation == relation and claims.relation_agrees is agrees
    flagged = [d for d in claims.disagreements if "base_model_relation" in d]
    assert bool(flagged) is not agrees
    assert claims.candidate["card.base_model"] == BASE_ID


def test_the_relation_table_follows_the_hub() -> None:
    assert relation_agrees("quantized", "requantized", True, False)
    assert not relation_agrees("finetune", "identical", True, False)  # unchanged weights are no fine-tune
    assert relation_agrees("merge", "fine-tune", True, False)
    assert relation_agrees("adapter", "lora-merge", True, True) and not relation_agrees("adapter", "lora-merge", True, False)
    assert relation_agrees("finetune", "unrelated", False, False) is False
    assert relation_agrees("finetune", "inconclusive", None, False) is None


def test_compare_exits_1_and_investigate_reports_it(derivatives: dict[str, Path], hf_llama: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    candidate = _with_card(derivatives["merged"], tmp_path, "quantized")
    capsys.readouterr()
    assert run(["compare", str(candidate), str(hf_llama)]) == 1
    assert "claims: model card declares base_model_relation 'quantized'" in capsys.readouterr().err
    assert run(["investigate", str(candidate), "--reference", str(hf_llama), "-o", str(tmp_path / "out"),
                "--format", "json"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    finding = next(f for f in report["findings"] if f["id"] == "lineage.verdict")
    assert finding["severity"] == "warning" and finding["evidence"]["declared_relation_agrees"] is False
    assert report["claims"]["card.base_model_relation"] == "quantized"


@pytest.mark.parametrize(("relation", "expected"), [("finetune", 0), ("quantized", 1)])
def test_the_policy_rule(relation: str, expected: int, derivatives: dict[str, Path], hf_llama: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    candidate = _with_card(derivatives["merged"], tmp_path, relation)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'version = 1\n[lineage]\nreferences = {{ "{BASE_ID}" = "{hf_llama}" }}\n'
                      "declared_relation_must_match = true\n")
    capsys.readouterr()
    assert run(["check", "--policy", str(policy), str(candidate)]) == expected
    document = json.loads(capsys.readouterr().out)
    ids = [f["id"] for f in document["results"][0]["findings"]]
    assert ids == ([] if expected == 0 else ["lineage.declared_relation_mismatch"])
    policy.write_text(policy.read_text().replace("= true", "= false"))
    assert run(["check", "--policy", str(policy), str(candidate)]) == 0


def test_a_policy_flag_must_be_a_boolean(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = 1\n[lineage]\ndeclared_relation_must_match = "yes"\n')
    assert run(["check", "--policy", str(policy), str(tmp_path)]) == 64


def test_a_reference_from_the_hub_cache_goes_by_its_repo_id(derivatives: dict[str, Path], hf_llama: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compare hf:ORG/DERIVED hf:ORG/BASE``: the base's config names it by the local path it was
    saved from (as transformers 4 wrote ``_name_or_path``), yet the card's ``base_model: ORG/BASE``
    names it, since the cache files it under that repo id; so the declared relation is checked."""
    from huggingface_hub import constants, snapshot_download

    from tests.support.hub_server import Repo, hub_endpoint

    base = Path(shutil.copytree(hf_llama, tmp_path / "base"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "_name_or_path": "/home/trainer/runs/run-7"}))
    repos = {BASE_ID: Repo.from_folder(base, "b" * 40),
             "example-org/tiny-derived": Repo.from_folder(_with_card(derivatives["merged"], tmp_path, "quantized"),
                                                          "d" * 40)}
    cache = tmp_path / "hub"
    with hub_endpoint(repos) as endpoint:
        for repo_id in repos:
            snapshot_download(repo_id, cache_dir=str(cache), endpoint=endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    result = compare("hf:example-org/tiny-derived", f"hf:{BASE_ID}")
    claims = result.claims
    assert result.verdict.related and claims.reference["hub.repo_id"] == BASE_ID
    assert claims.status == "candidate claims the reference as its base"
    assert claims.relation_agrees is False  # declared "quantized", the weights show a LoRA merge
    assert [d for d in claims.disagreements if "base_model_relation" in d]
    assert not [d for d in claims.disagreements if "names another base" in d]
    # the same folder named by path: only the config's name is known, which is not the card's base
    by_path = compare(cache / "models--example-org--tiny-derived" / "snapshots" / ("d" * 40), base)
    assert by_path.claims.status == "candidate claims a different base model than the reference"
