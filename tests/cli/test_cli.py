"""The CLI as a user and a CI job meet it: exit codes, JSON, escaping, batches, docs."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

from provenance.clidocs import commands, render_cli_reference
from tests.conftest import QUANT_DIR, ROOT, SHARED_DATA


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], capture_output=True, text=True, timeout=120)


def test_inspect_json_schema_and_hashes() -> None:
    path = QUANT_DIR / "tiny-llama-Q4_K_M.gguf"
    result = run_cli("inspect", "--json", "--hashes", str(path))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "provenance.inspect-batch/1" and document["errors"] == []
    (report,) = document["reports"]
    assert report["schema"] == "provenance.inspect/1"
    assert report["format"] == "gguf" and report["architecture"]["n_layer"] == 2
    assert report["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["tokenizer"]["vocab_size"] == 1024
    assert set(report["quant_types"]) == {"Q4_K", "Q6_K", "F32"}
    assert len(report["tensors"]) == 21 and all(len(t["sha256"]) == 64 for t in report["tensors"])
    assert report["metadata"]["tokenizer.ggml.tokens"]["count"] == 1024


def test_batch_keeps_going_past_bad_files(tmp_path: Path) -> None:
    good = QUANT_DIR / "tiny-llama-Q8_0.gguf"
    bad = SHARED_DATA / "corrupted" / "utf8-mangled-ggml-vocab-llama-spm.gguf"
    missing = tmp_path / "nope.gguf"
    out = tmp_path / "report.json"
    result = run_cli("inspect", "--json", "-o", str(out), str(bad), str(good), str(missing))
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert [r["path"] for r in document["reports"]] == [str(good)]
    assert [e["path"] for e in document["errors"]] == [str(bad), str(missing)]
    assert document["errors"][0]["offset"] == 399 and document["errors"][0]["kind"] == "limit-exceeded"
    assert json.loads(out.read_text()) == document
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 2 and str(bad) in error_lines[0]
    assert "Traceback" not in result.stderr


def test_hostile_strings_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "evil.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("evil\x1b[2J\x1b]0;pwned\x07\u202egnp.exe [bold red]markup[/bold red]")
    writer.add_tensor("blk.0.\x1b[31mred.weight", np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for args in (("inspect", str(path)), ("inspect", "--json", str(path))):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        for stream in (result.stdout, result.stderr):
            assert "\x1b" not in stream and "\u202e" not in stream and "\x07" not in stream
    human = run_cli("inspect", str(path)).stdout
    assert "[bold red]markup[/bold red]" in human and "\\x1b[2J" in human


def test_usage_errors_do_not_collide_with_findings_or_errors() -> None:
    assert run_cli("inspect").returncode == 64
    assert run_cli("inspect", "--no-such-flag", "x").returncode == 64
    assert run_cli("no-such-command").returncode == 64


def test_every_command_is_documented() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text()
    assert reference == render_cli_reference(), "docs/cli.md is stale: python -m provenance.clidocs > docs/cli.md"
    for name, command in commands():
        assert command.help and len(command.help.strip()) > 20, f"{name} has no help text"
        assert f"## `{name}`" in reference
        for param in command.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"{name} {param.opts} has no help"


def test_options_come_from_the_options_dataclasses() -> None:
    """Each analysis option is declared once (default and help in the dataclass) and means the
    same thing in every command that has it."""
    from provenance.commands.options import cli_fields
    from provenance.compare import CompareOptions
    from provenance.quant import QuantCheckOptions
    from provenance.refdb.options import IdentifyOptions
    from provenance.watermark import AnalyzeOptions, EmbedOptions, TraceOptions

    by_name = dict(commands())
    expected = {"provenance compare": CompareOptions, "provenance quantcheck": QuantCheckOptions,
                "provenance identify": IdentifyOptions, "provenance watermark detect": TraceOptions,
                "provenance watermark trace": TraceOptions, "provenance watermark embed": EmbedOptions,
                "provenance watermark analyze": AnalyzeOptions}
    for name, cls in expected.items():
        params = {p.name: p for p in by_name[name].params}
        for field, _, spec in cli_fields(cls):
            assert params[field.name].help == spec.help and params[field.name].default == field.default, (name, field.name)
    for flag in ("--threads", "--seed", "--precision", "--refdb"):
        helps = {p.help for _, cmd in commands() for p in cmd.params if flag in getattr(p, "opts", [])}
        assert len(helps) == 1, (flag, helps)
    json_flags = [p for _, cmd in commands() for p in cmd.params if "--json" in getattr(p, "opts", [])]
    assert len(json_flags) >= 5 and all(p.is_flag and p.help.startswith("Print") for p in json_flags)


def test_command_line_builds_the_options_dataclass(monkeypatch) -> None:
    from click.testing import CliRunner

    from provenance.cli import cli
    from provenance.commands import compare_cmd
    from provenance.compare import CompareOptions

    seen: list[CompareOptions] = []

    def fake_run(candidate: str, reference: str, options: CompareOptions, base: str | None) -> None:
        assert base is None  # --base (PEFT adapters) only when given
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr(compare_cmd, "_run", fake_run)
    path = str(QUANT_DIR / "tiny-llama-Q8_0.gguf")
    CliRunner().invoke(cli, ["compare", path, path, "--no-align", "--threads", "1", "--seed", "3", "--layout", "same"])
    CliRunner().invoke(cli, ["compare", path, path])
    assert seen == [CompareOptions(align=False, threads=1, seed=3, layout="same"), CompareOptions()]
    assert CliRunner().invoke(cli, ["compare", path, path, "--permutations", "5"]).exit_code == 2  # below the declared range
