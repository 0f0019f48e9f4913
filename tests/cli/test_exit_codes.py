"""One exit-code policy for every command (provenance.cli.main): 2 with one line naming file,
field and offset for hostile input, 70 for a bug (traceback only under --debug), 130 on Ctrl-C."""
from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from provenance.cli import run
from tests.conftest import QUANT_DIR
from tests.support.gguf_bytes import ARRAY, UINT32, GGUFBytes, gstr

REFERENCE = QUANT_DIR / "tiny-llama-f32.gguf"
SECRET = "a long enough owner secret, 2024"


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A GGUF header claiming a 2^60-element array (released gguf-py readers hang on it), under a
    file name that carries a terminal escape sequence."""
    path = tmp_path / "evil\x1b[31m.gguf"
    path.write_bytes(GGUFBytes(kvs=[gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, UINT32, 1 << 60)]).build())
    return path


def _invocations(tmp_path: Path, bad: Path) -> dict[str, list[str]]:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "registry.json").write_text(json.dumps({"schema": "provenance.watermark-registry/1",
                                                        "secret_file": "secret", "clients": ["a", "b"]}))
    (tmp_path / "refdb").mkdir()
    out = tmp_path / "out"
    return {
        "inspect": ["inspect", str(bad)],
        "identify": ["identify", str(bad)],
        "compare": ["compare", str(bad), str(REFERENCE)],
        "compare-reference": ["compare", str(REFERENCE), str(bad)],
        "quantcheck": ["quantcheck", str(bad), "--reference", str(REFERENCE)],
        "investigate": ["investigate", str(bad), "-o", str(out)],
        "watermark-embed": ["watermark", "embed", str(bad), "--secret-file", str(tmp_path / "secret"), "--client", "a",
                            "-o", str(out / "m.gguf")],
        "watermark-detect": ["watermark", "detect", str(bad), "--secret-file", str(tmp_path / "secret"), "--client", "a"],
        "watermark-trace": ["watermark", "trace", str(bad), "--registry", str(tmp_path / "registry.json")],
        "watermark-analyze": ["watermark", "analyze", str(bad), "--reference", str(REFERENCE)],
        "refdb-add": ["refdb", "add", str(bad), "--id", "evil", "--refdb", str(tmp_path / "refdb")],
    }


COMMANDS = ["inspect", "identify", "compare", "compare-reference", "quantcheck", "investigate", "watermark-embed",
            "watermark-detect", "watermark-trace", "watermark-analyze", "refdb-add"]


@pytest.mark.parametrize("name", COMMANDS)
def test_hostile_input_exits_2_with_one_line(name: str, hostile: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = _invocations(tmp_path, hostile)[name]
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "\\x1b[31m.gguf" in line and "offset" in line and "tokenizer.ggml.tokens" in line, line
    assert "\x1b" not in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # nothing (half-)written


def test_check_reports_a_hostile_file_and_goes_on(hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("version = 1\n")
    capsys.readouterr()
    assert run(["check", "--policy", str(policy), str(hostile), str(QUANT_DIR / "tiny-llama-Q8_0.gguf")]) == 2
    out = capsys.readouterr()
    assert [r["status"] for r in json.loads(out.out)["results"]] == ["error", "pass"]
    assert "\x1b" not in out.err and "Traceback" not in out.err


CRASHES: dict[str, tuple[str, Callable[[Path, Path], list[str]]]] = {
    "compare": ("provenance.compare.api._compare_open", lambda t, b: ["compare", str(REFERENCE), str(REFERENCE)]),
    "quantcheck": ("provenance.quant.api._quantcheck",
                   lambda t, b: ["quantcheck", str(QUANT_DIR / "tiny-llama-Q8_0.gguf"), "-r", str(REFERENCE)]),
    "identify": ("provenance.refdb.identify", lambda t, b: ["identify", str(REFERENCE)]),
    "investigate": ("provenance.investigate.run_investigation", lambda t, b: ["investigate", str(REFERENCE), "-o", str(t / "o")]),
    "watermark-analyze": ("provenance.watermark.analyze.analyze_checkpoint",
                          lambda t, b: ["watermark", "analyze", str(REFERENCE), "--reference", str(REFERENCE)]),
    "inspect": ("provenance.commands.inspect_cmd._inspect_one", lambda t, b: ["inspect", str(REFERENCE)]),
    "check": ("provenance.policy.engine.rule_format", lambda t, b: ["check", "--policy", str(b), str(REFERENCE)]),
}


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom: an internal invariant broke")


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_a_bug_exits_70_and_shows_its_traceback_under_debug(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    target, make_args = CRASHES[name]
    policy = tmp_path / "p.toml"
    policy.write_text("version = 1\n")
    monkeypatch.setattr(target, _boom)
    args = make_args(tmp_path, policy)
    capsys.readouterr()
    assert run(args) == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" in err and "--debug" in err
    bug_lines = [line for line in err.splitlines() if "RuntimeError" in line]
    assert len(bug_lines) == 1 and ("internal error" in bug_lines[0] or "internal.error" in bug_lines[0]), err
    assert run(["--debug", *args]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "boom: an internal invariant broke" in err


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("provenance.compare.api._compare_open", interrupted)
    assert run(["compare", str(REFERENCE), str(REFERENCE)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_an_unwritable_output_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    capsys.readouterr()
    assert run(["identify", str(QUANT_DIR / "tiny-llama-Q8_0.gguf"), "-o", str(blocker / "sub" / "out.json")]) == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("error: ") and str(blocker) in line


def test_unknown_format_and_invalid_policy_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["investigate", str(REFERENCE), "-o", str(tmp_path / "r"), "--format", "json,pdf"]) == 64
    assert "unknown format 'pdf'" in capsys.readouterr().err and not (tmp_path / "r").exists()
    policy = tmp_path / "p.toml"
    policy.write_text("version = 2\n")
    assert run(["check", "--policy", str(policy), str(REFERENCE)]) == 64
