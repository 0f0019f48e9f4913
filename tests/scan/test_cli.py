"""``provenance scan`` as a user meets it: exit codes, summary, SARIF and JUnit, usage errors."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from provenance.cli import main
from provenance.scan.table import write_csv
from tests.conftest import ROOT
from tests.scan.conftest import Baseline
from tests.support.cli import Run, run_in_process
from tests.support.model_corpus import Corpus

SARIF_SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    def run(*args: str) -> Run:
        return run_in_process(capsys, "scan", *args)
    return run


def test_exit_codes_summary_sarif_and_junit(corpus: Corpus, policy_file: Path, tmp_path: Path, run_cli) -> None:
    models = corpus.models
    clean = run_cli(str(models["tiny-0.gguf"]), str(models["tiny-1.gguf"]), "-o", str(tmp_path / "clean"), "--jobs", "1")
    assert clean.returncode == 0 and "2 models: 2 passed, 0 flagged, 0 errors" in clean.stderr  # no policy: readable passes
    flagged = run_cli(str(models["tiny-0.gguf"]), str(models["tiny-1.gguf"]), "-o", str(tmp_path / "flagged"),
                      "--policy", str(policy_file), "--jobs", "1")
    assert flagged.returncode == 1 and "VIOLATION" in flagged.stderr and "metadata.required" in flagged.stderr
    sarif, junit = tmp_path / "out.sarif", tmp_path / "out.xml"
    names = ["tiny-0.gguf", "tiny-1.gguf", "truncated.gguf", "legacy.pt", next(n for n in models if n.startswith("evil"))]
    mixed = run_cli(*(str(models[n]) for n in names), "-o", str(tmp_path / "mixed"), "--policy", str(policy_file),
                    "--sarif", str(sarif), "--junit", str(junit))
    assert mixed.returncode == 2  # errors win over violations: the scan was incomplete
    assert "5 models: 2 passed, 2 flagged, 1 errors" in mixed.stderr and "(field tensor data, offset " in mixed.stderr
    assert "\x1b" not in mixed.stderr
    document = json.loads(sarif.read_text())
    jsonschema.validate(document, SARIF_SCHEMA)
    assert sorted(r["ruleId"] for r in document["runs"][0]["results"]) == ["format.malformed", "format.pickle", "metadata.required"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "2", "1")


def test_a_manifest_and_a_rerun(baseline: Baseline, tmp_path: Path, run_cli) -> None:
    manifest = tmp_path / "uploads.jsonl"
    models = baseline.corpus.models
    manifest.write_text("".join(json.dumps({"path": str(models[n]), "id": f"hub/{n}"}) + "\n" for n in ("tiny-0.gguf", "hf-llama")))
    first = run_cli(str(manifest), "-o", str(tmp_path / "out"), "--no-progress", "--jobs", "1")
    assert first.returncode == 0 and "scanned 2, reused 0" in first.stderr
    rows = (tmp_path / "out" / "scan.csv").read_text().splitlines()
    assert rows[1].startswith("hub/hf-llama,") and rows[2].startswith("hub/tiny-0.gguf,")
    again = run_cli(str(manifest), "-o", str(tmp_path / "out"))
    assert again.returncode == 0 and "scanned 0, reused 2 finished before" in again.stderr


def test_usage_errors(corpus: Corpus, tmp_path: Path, run_cli) -> None:
    model = str(corpus.models["tiny-0.gguf"])
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("version = 2\n")
    assert run_cli(model, "-o", str(tmp_path / "a"), "--policy", str(bad_policy)).returncode == 64
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{not json}\n")
    broken = run_cli(str(manifest), "-o", str(tmp_path / "b"))
    assert broken.returncode == 64 and "(line 1, field json, offset 1)" in broken.stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", model, "-o", str(tmp_path / "c"), "--memory", "lots"])
    assert exit_info.value.code == 64
    missing = run_cli(str(tmp_path / "nowhere.gguf"), "-o", str(tmp_path / "d"), "--jobs", "1")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unreadable_reference = tmp_path / "ref.gguf"
    unreadable_reference.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert run_cli(model, "-o", str(tmp_path / "e"), "--reference", str(unreadable_reference)).returncode == 2


def test_csv_cells_cannot_become_formulas(tmp_path: Path, baseline: Baseline) -> None:
    from dataclasses import replace

    row = replace(baseline.report.results[0].row, id="=HYPERLINK(\"http://x\")", declared_name="+1")
    write_csv([row], tmp_path / "t.csv")
    line = (tmp_path / "t.csv").read_text().splitlines()[1]
    assert line.startswith("\"'=HYPERLINK(") and ",'+1," in line


def test_the_readme_command(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: `provenance scan ../shared/data -o out/scan` from the project root."""
    monkeypatch.chdir(ROOT)
    result = run_cli("../shared/data", "-o", str(tmp_path / "scan"))
    assert result.returncode == 2 and "28 models: 26 passed, 0 flagged, 2 errors" in result.stderr
    assert "utf8-mangled-ggml-vocab-llama-spm.gguf (field kv[9].key, offset 399)" in result.stderr
    readme = (ROOT / "README.md").read_text()
    assert "provenance scan ../shared/data -o out/scan " in readme and "--ray local" in readme


def test_ray_missing_is_a_clear_usage_error(corpus: Corpus, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    result = run_cli(str(corpus.models["tiny-0.gguf"]), "-o", str(tmp_path / "out"), "--ray", "local")
    assert result.returncode == 64 and "pip install 'provenance[ray]'" in result.stderr


def test_progress_goes_through_the_shared_facility(corpus: Corpus, tmp_path: Path, run_cli,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reports bytes and model counts to a callback; the CLI renders them as every
    command does (plain lines here, stderr not being a terminal), or not at all with --no-progress."""
    from provenance.progress import ProgressUpdate
    from provenance.scan import LocalExecutor, scan

    models = [corpus.models["tiny-0.gguf"], corpus.models["tiny-1.gguf"]]
    updates: list[ProgressUpdate] = []
    scan([str(m) for m in models], tmp_path / "lib", executor=LocalExecutor(1), progress=updates.append)
    total = sum(m.stat().st_size for m in models)
    assert [u.task for u in updates] == ["scan (local)"] * 3 and updates[0].done == 0
    assert (updates[-1].done, updates[-1].total, updates[-1].unit) == (total, total, "B")
    assert updates[-1].item == "2/2 models: 2 ok 0 flagged 0 err" and updates[0].item == "0/2 models: 0 ok 0 flagged 0 err"
    monkeypatch.setenv("PROVENANCE_PROGRESS_SECONDS", "0")
    shown = run_cli(*(str(m) for m in models), "-o", str(tmp_path / "shown"), "--jobs", "1")
    assert shown.returncode == 0 and "provenance: scan (local) 100%" in shown.stderr
    assert "provenance: scan (local) done" in shown.stderr
    quiet = run_cli(*(str(m) for m in models), "-o", str(tmp_path / "quiet"), "--jobs", "1", "--no-progress")
    assert quiet.returncode == 0 and "provenance: scan" not in quiet.stderr
