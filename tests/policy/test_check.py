"""`provenance check` as a CI gate: policies, exit codes, SARIF 2.1.0 and JUnit outputs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import torch

from tests.conftest import QUANT_DIR, ROOT, SHARED_DATA

SARIF_SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())


def run_check(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", "check", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def uploads(tmp_path: Path) -> dict[str, Path]:
    """A small upload area: a clean GGUF, a byte copy of the forbidden reference, a pickle, a broken file."""
    area = tmp_path / "uploads"
    area.mkdir()
    files = {
        "clean": shutil.copy(QUANT_DIR / "stories260K-Q8_0.gguf", area / "clean.gguf"),
        "copy": shutil.copy(QUANT_DIR / "tiny-llama-Q4_K_M.gguf", area / "renamed-copy.gguf"),
        "broken": shutil.copy(SHARED_DATA / "corrupted" / "utf8-mangled-ggml-vocab-bert-bge.gguf", area / "broken.gguf"),
    }
    torch.save({"w": torch.zeros(2)}, area / "pytorch_model.bin")
    files["pickle"] = area / "pytorch_model.bin"
    return {k: Path(v) for k, v in files.items()}


POLICY = f"""
version = 1
[format]
allow = ["gguf", "gguf-split", "safetensors", "safetensors-sharded", "hf-directory"]
[metadata]
require = ["general.name"]
[[forbid_copy]]
reference = "{QUANT_DIR / 'tiny-llama-Q4_K_M.gguf'}"
label = "tiny-llama (licensed reference)"
"""


def test_clean_file_passes(tmp_path: Path, uploads: dict[str, Path]) -> None:
    policy = write_policy(tmp_path / "p.toml", POLICY)
    result = run_check("--policy", str(policy), str(uploads["clean"]))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "provenance.check/1" and document["results"][0]["status"] == "pass"


def test_forbidden_copy_is_a_violation(tmp_path: Path, uploads: dict[str, Path]) -> None:
    policy = write_policy(tmp_path / "p.toml", POLICY)
    result = run_check("--policy", str(policy), str(uploads["copy"]), str(uploads["clean"]))
    assert result.returncode == 1, result.stderr
    first, second = json.loads(result.stdout)["results"]
    assert first["status"] == "violation" and second["status"] == "pass"
    (finding,) = first["findings"]
    assert finding["id"] == "copy.forbidden" and finding["evidence"]["identical_tensors"] == 21
    assert finding["evidence"]["identical_file"] is True


def test_errors_win_and_the_batch_goes_on(tmp_path: Path, uploads: dict[str, Path]) -> None:
    policy = write_policy(tmp_path / "p.toml", POLICY)
    sarif, junit = tmp_path / "out.sarif", tmp_path / "out.xml"
    order = [uploads["broken"], uploads["pickle"], uploads["copy"], uploads["clean"]]
    result = run_check("--policy", str(policy), "--sarif", str(sarif), "--junit", str(junit), *map(str, order))
    assert result.returncode == 2
    statuses = [r["status"] for r in json.loads(result.stdout)["results"]]
    assert statuses == ["error", "violation", "violation", "pass"]
    # SARIF validates against the official 2.1.0 schema and names each offending file.
    document = json.loads(sarif.read_text())
    jsonschema.validate(document, SARIF_SCHEMA)
    rule_ids = {r["ruleId"] for r in document["runs"][0]["results"]}
    assert rule_ids == {"format.malformed", "format.pickle", "copy.forbidden"}
    assert document["runs"][0]["invocations"][0]["executionSuccessful"] is False
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "2" and suite.get("errors") == "1"


def test_missing_metadata_and_format_rules(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.toml", 'version = 1\n[format]\nallow = ["safetensors"]\n'
                                               '[metadata]\nrequire = ["general.license"]\nrequire_base_model = true\n')
    result = run_check("--policy", str(policy), str(QUANT_DIR / "tiny-llama-Q8_0.gguf"))
    assert result.returncode == 1
    ids = [f["id"] for f in json.loads(result.stdout)["results"][0]["findings"]]
    assert ids == ["format.allowed", "metadata.required", "metadata.base_model"]


@pytest.mark.parametrize(
    "text",
    ["version = 2\n", "version = 1\n[surprise]\nx = 1\n", "not toml [[[", 'version = 1\n[format]\nallow = ["exe"]\n'],
)
def test_invalid_policy_is_a_usage_error(tmp_path: Path, text: str) -> None:
    policy = write_policy(tmp_path / "p.toml", text)
    result = run_check("--policy", str(policy), str(QUANT_DIR / "tiny-llama-Q8_0.gguf"))
    assert result.returncode == 64 and result.stdout == ""
    assert "error:" in result.stderr


def test_github_actions_example_is_documented() -> None:
    docs = (ROOT / "docs" / "ci.md").read_text()
    assert "provenance check" in docs and "upload-sarif" in docs and "--policy" in docs


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory):
    from provenance.demo import build_scenario

    return build_scenario(tmp_path_factory.mktemp("scenario"))


def _with_declared_base(source: Path, target: Path, base: str) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["base_model"] = base
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_declared_base_must_agree_with_the_weights(tmp_path: Path) -> None:
    from provenance.synth.store import synth_model_path

    honest = _with_declared_base(synth_model_path("synth-s00-ft-light"), tmp_path / "honest", "synth-s00")
    liar = _with_declared_base(synth_model_path("synth-s07"), tmp_path / "liar", "synth-s00")
    policy = write_policy(
        tmp_path / "p.toml",
        f'version = 1\n[lineage]\nreferences = {{ "synth-s00" = "{synth_model_path("synth-s00")}" }}\n',
    )
    result = run_check("--policy", str(policy), str(honest), str(liar))
    assert result.returncode == 1, result.stderr
    honest_result, liar_result = json.loads(result.stdout)["results"]
    assert honest_result["status"] == "pass"
    (finding,) = liar_result["findings"]
    assert finding["id"] == "lineage.declared_base_mismatch" and finding["evidence"]["verdict"] == "unrelated"


def test_required_and_forbidden_watermarks(tmp_path: Path, scenario) -> None:
    leaked = str(scenario.leaked["Q4_K_M"])
    common = f'version = 1\n[watermark]\nregistry = "{scenario.registry}"\nreference = "{scenario.internal}"\n'
    ok = write_policy(tmp_path / "ok.toml", common + 'require = ["acme-corp"]\nforbid = ["globex"]\n')
    assert run_check("--policy", str(ok), leaked).returncode == 0
    bad = write_policy(tmp_path / "bad.toml", common + 'require = ["globex"]\nforbid = ["acme-corp"]\n')
    result = run_check("--policy", str(bad), leaked)
    assert result.returncode == 1
    ids = sorted(f["id"] for f in json.loads(result.stdout)["results"][0]["findings"])
    assert ids == ["watermark.forbidden_present", "watermark.required_missing"]


def test_documented_policy_example_is_valid(tmp_path: Path) -> None:
    from provenance.policy import load_policy

    docs = (ROOT / "docs" / "ci.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    policy = load_policy(write_policy(tmp_path / "example.toml", example))
    assert policy.require_base_model and policy.forbid_copies and set(policy.extra) == {"lineage", "watermark"}
