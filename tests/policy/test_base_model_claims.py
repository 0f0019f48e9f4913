"""One list of the keys that declare a base model, read alike by the CI policy and by lineage."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from provenance.compare.claims import DERIVATION_CLAIMS, claimed_bases, compare_claims, self_names
from provenance.compare.variants import load_canonical
from provenance.formats import open_checkpoint
from provenance.policy import load_policy
from provenance.policy.engine import evaluate
from tests.conftest import QUANT_DIR

BASE = "https://huggingface.co/example-org/example-base-7b"
GGUF_KEYS = [key.replace("{id}", "1") for key, _ in DERIVATION_CLAIMS if key.startswith("general.")]


def _gguf_with(path: Path, key: str) -> Path:
    """stories260K's weights in a GGUF (gguf's writer) whose one identity claim is ``key``."""
    tensors, _, _ = load_canonical(QUANT_DIR / "stories260K-f32.gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string(key, BASE)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _base_model_findings(path: Path, tmp_path: Path) -> list[str]:
    policy = tmp_path / "policy.toml"
    policy.write_text("version = 1\n[metadata]\nrequire_base_model = true\n")
    return [f.id for f in evaluate(str(path), load_policy(policy)).findings if f.id == "metadata.base_model"]


@pytest.mark.parametrize("key", [*GGUF_KEYS, "general.base_model.1.author", "general.name"])
def test_policy_and_lineage_read_the_same_gguf_keys(tmp_path: Path, key: str) -> None:
    path = _gguf_with(tmp_path / "candidate.gguf", key)
    declares = key in GGUF_KEYS  # a parent's author, or the file's own name, declares no base
    with open_checkpoint(path) as ckpt:
        claims = dict(ckpt.metadata_claims)
    assert claimed_bases(claims) == ([BASE] if declares else [])
    assert _base_model_findings(path, tmp_path) == ([] if declares else ["metadata.base_model"])
    reference = {"general.repo_url": "https://huggingface.co/example-org/example-base-7b"}
    status = compare_claims(claims, reference, related=True).status
    assert status == ("candidate claims the reference as its base" if declares else "no base-model claim in the candidate")


def test_name_or_path_names_a_model_but_declares_no_base(hf_llama: Path, tmp_path: Path) -> None:
    """config ``_name_or_path`` is the path a config was loaded from: a name, not a claim of a parent."""
    folder = shutil.copytree(hf_llama, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "example-org/example-base-7b"}))
    with open_checkpoint(folder) as ckpt:
        claims = dict(ckpt.metadata_claims)
    assert claimed_bases(claims) == [] and self_names(claims) == ["example-org/example-base-7b"]
    assert _base_model_findings(folder, tmp_path) == ["metadata.base_model"]
    (folder / "config.json").write_text(json.dumps({**config, "base_model": "example-org/example-base-7b"}))
    assert _base_model_findings(folder, tmp_path) == []
