"""Hostile files on disk, replayed through the Python API and the command line (issue 15's
CLI replay): FIFOs and devices, symlinks out of a model folder and in loops, files that open
but cannot be read, the one error boundary of every public entry point, and metadata
payloads that must reach every output inert."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from provenance.cli import run
from provenance.errors import FileAccessError, MalformedCheckpoint, ProvenanceError, UnsupportedCheckpoint
from provenance.formats import open_checkpoint
from tests.conftest import QUANT_DIR
from tests.fuzz.targets import SPLIT_NAMES, TINY_LLAMA, read_everything, tiny_llama_tensors, unpack_parts

REFERENCE = QUANT_DIR / "tiny-llama-f32.gguf"
SPLIT_SEED = Path(__file__).resolve().parents[1] / "fuzz" / "corpus" / "gguf-split" / "two-parts.bin"


def hf_folder(root: Path, tensors: dict[str, np.ndarray] | None = None) -> Path:
    folder = root / "model"
    folder.mkdir()
    save_file(tensors if tensors is not None else tiny_llama_tensors(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    return folder


def finishes(action: Callable[[], Any], seconds: float = 20.0) -> Any:
    """Run ``action`` in a thread; fail (instead of hanging the suite) if it blocks."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    return line


# ----- files that are not regular files ------------------------------------------------------------
def test_a_fifo_named_model_safetensors_does_not_hang_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = hf_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")  # nobody ever writes: a plain open() would wait forever
    with pytest.raises(UnsupportedCheckpoint, match="a FIFO, not a regular file"):
        finishes(lambda: open_checkpoint(folder))
    assert finishes(lambda: run(["inspect", str(folder)])) == 2
    assert "FIFO" in one_error_line(capsys)
    fifo = tmp_path / "direct.gguf"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedCheckpoint, match="FIFO"):
        finishes(lambda: open_checkpoint(fifo))


def test_a_fifo_config_or_tokenizer_beside_the_weights_is_refused(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    os.mkfifo(folder / "tokenizer.json")
    with pytest.raises(UnsupportedCheckpoint, match="FIFO"):
        finishes(lambda: read_everything(folder))
    (folder / "tokenizer.json").unlink()
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    with pytest.raises(UnsupportedCheckpoint, match="FIFO"):
        finishes(lambda: open_checkpoint(folder))


def test_a_character_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    os.symlink("/dev/zero", tmp_path / "model" / "model.safetensors")  # endless zeros; also resolves outside
    with pytest.raises(ProvenanceError):
        finishes(lambda: open_checkpoint(tmp_path / "model"))
    with pytest.raises(UnsupportedCheckpoint, match="character device"):
        finishes(lambda: open_checkpoint("/dev/zero"))


# ----- symlinks ------------------------------------------------------------------------------------
def write_split(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    parts = unpack_parts(SPLIT_SEED.read_bytes())
    for name, data in zip(SPLIT_NAMES, parts, strict=True):
        (directory / name).write_bytes(data)
    return [directory / name for name in SPLIT_NAMES]


def test_split_gguf_parts_that_symlink_out_of_the_directory_are_refused(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    first, second = write_split(tmp_path / "model")
    assert open_checkpoint(first).format == "gguf-split"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.replace(second, outside / second.name)
    os.symlink(outside / second.name, second)
    with pytest.raises(MalformedCheckpoint, match="resolves outside the model directory"):
        open_checkpoint(first)
    assert run(["inspect", str(first)]) == 2
    assert "outside the model directory" in one_error_line(capsys)


def test_split_gguf_parts_that_symlink_inside_the_directory_are_read(tmp_path: Path) -> None:
    first, second = write_split(tmp_path / "model")
    os.replace(second, tmp_path / "model" / "real-part-2")
    os.symlink("real-part-2", second)
    with open_checkpoint(first) as checkpoint:
        assert checkpoint.format == "gguf-split" and len(checkpoint.tensors) == 3


def test_a_config_json_in_a_symlink_loop_is_an_error_not_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = hf_folder(tmp_path)
    (folder / "config.json").unlink()
    os.symlink("loop-b", folder / "config.json")
    os.symlink("config.json", folder / "loop-b")
    with pytest.raises(MalformedCheckpoint, match="symlink loop"):
        open_checkpoint(folder)
    assert run(["inspect", str(folder)]) == 2
    assert "config.json" in one_error_line(capsys)


def test_a_dangling_config_json_is_an_error(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    (folder / "config.json").unlink()
    os.symlink("nowhere.json", folder / "config.json")
    with pytest.raises(ProvenanceError, match=r"config\.json"):
        open_checkpoint(folder)


def test_weights_symlinked_out_of_an_hf_folder_are_refused(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    os.replace(folder / "model.safetensors", tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", folder / "model.safetensors")
    with pytest.raises(MalformedCheckpoint, match="outside the model directory"):
        open_checkpoint(folder)


# ----- check reads what the other commands read ----------------------------------------------------
def unreadable_rows(tmp_path: Path) -> Path:
    """Valid safetensors that inspect lists, but whose fp6 rows no codec here decodes."""
    tensors = {"a": np.zeros((2, 8), np.float32)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    header["a"] = {"dtype": "F6_E2M3", "shape": [2, 8], "data_offsets": [0, 12]}
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(12))
    return path


def test_check_fails_a_file_that_inspect_accepts_but_whose_rows_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = unreadable_rows(tmp_path)
    policy = tmp_path / "p.toml"
    policy.write_text('version = 1\n[format]\nallow = ["safetensors"]\n')
    assert run(["inspect", str(path)]) == 0
    capsys.readouterr()
    assert run(["check", "--policy", str(policy), str(path)]) == 2
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["status"] == "error" and result["findings"][0]["id"] == "format.malformed"
    assert "F6_E2M3 values cannot be decoded" in result["findings"][0]["summary"]
    assert run(["check", "--policy", str(policy), str(QUANT_DIR / "tiny-llama-Q4_K_M.gguf")]) == 1  # format not allowed
    assert run(["check", "--policy", str(tmp_path / "p.toml"), str(hf_folder(tmp_path) / "model.safetensors")]) == 0


# ----- one error boundary for the Python API -------------------------------------------------------
def _entry_points(tmp_path: Path) -> dict[str, Callable[[], Any]]:
    from provenance import inspect_checkpoint
    from provenance.compare import compare
    from provenance.compare.api import map_layers_onto
    from provenance.compare.merge import estimate_merge
    from provenance.investigate import investigate
    from provenance.quant import quantcheck
    from provenance.refdb import identify
    from provenance.watermark import DerivedKey, analyze_checkpoint, embed_checkpoint, score_checkpoint, trace

    key = DerivedKey(b"a long enough owner secret, 2024", "acme")
    candidate = str(QUANT_DIR / "tiny-llama-Q8_0.gguf")
    return {
        "open_checkpoint": lambda: read_everything(candidate),
        "inspect_checkpoint": lambda: inspect_checkpoint(candidate, hashes=True),
        "compare": lambda: compare(candidate, REFERENCE),
        "quantcheck": lambda: quantcheck(candidate, REFERENCE),
        "identify": lambda: identify(candidate, hashes=False),
        "investigate": lambda: investigate(candidate, [REFERENCE]),
        "estimate_merge": lambda: estimate_merge(candidate, [REFERENCE, QUANT_DIR / "tiny-llama-Q4_K_M.gguf"]),
        "map_layers_onto": lambda: map_layers_onto(candidate, [REFERENCE, QUANT_DIR / "tiny-llama-Q4_K_M.gguf"]),
        "watermark trace": lambda: trace(REFERENCE, [key]),
        "watermark detect": lambda: score_checkpoint(REFERENCE, [key]),
        "watermark embed": lambda: embed_checkpoint(REFERENCE, tmp_path / "marked.gguf", key),
        "watermark analyze": lambda: analyze_checkpoint(candidate, REFERENCE),
    }


def _fail_reads(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Every read of tensor bytes and of whole files for hashes (``os.preadv``, buffered, direct
    or read ahead: ``formats.direct.ModelFile``) raises ``error``."""
    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(os, "preadv", failing)


ENTRY_POINTS = ["open_checkpoint", "inspect_checkpoint", "compare", "quantcheck", "identify", "investigate",
                "estimate_merge", "map_layers_onto",
                "watermark trace", "watermark detect", "watermark embed", "watermark analyze"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_turns_an_os_failure_into_an_input_error(name: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    call = _entry_points(tmp_path)[name]
    _fail_reads(monkeypatch, OSError(errno.EIO, "Input/output error", str(REFERENCE)))
    with pytest.raises(FileAccessError) as info:
        call()
    assert info.value.path in (str(REFERENCE), str(QUANT_DIR / "tiny-llama-Q8_0.gguf")) and "input/output error" in str(info.value)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_no_entry_point_disguises_a_bug_as_an_input_error(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    call = _entry_points(tmp_path)[name]
    _fail_reads(monkeypatch, ZeroDivisionError("an internal invariant broke"))
    with pytest.raises(ZeroDivisionError) as info:
        call()
    assert not isinstance(info.value, ProvenanceError)
    if name != "open_checkpoint":  # there the read happens after open_checkpoint returned (in the caller's code)
        assert any("a bug, raised inside provenance" in note for note in getattr(info.value, "__notes__", []))


# ----- identify on weights that are all NaN ---------------------------------------------------------
def test_identify_survives_a_matrix_that_is_all_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.refdb import identify

    tensors = tiny_llama_tensors()
    tensors = {name: np.full_like(array, np.nan) for name, array in tensors.items()}
    folder = hf_folder(tmp_path, tensors)
    result = identify(folder, hashes=False, summary_budget=1 << 30)
    assert result.candidates and not result.identified
    assert run(["identify", str(folder)]) in (0, 1)


# ----- metadata payloads, end to end through every output -------------------------------------------
FORMULA = "=cmd|' /C calc'!A0"
PAYLOAD = "<script>alert(1)</script>\x1b[2J\x1b]0;owned\x07 **bold** [x](javascript:alert(1)) | "


def hostile_gguf(tmp_path: Path) -> Path:
    import gguf

    path = tmp_path / "hostile.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(PAYLOAD)
    writer.add_string("general.base_model.0.name", FORMULA)
    writer.add_tensor(FORMULA + "\x1b[31m", np.ones((2, 32), np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_terminal_never_receives_a_raw_escape_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = hostile_gguf(tmp_path)
    for args in (["inspect", str(path)], ["identify", str(path)], ["compare", str(path), str(path)]):
        capsys.readouterr()
        run(args)
        out = capsys.readouterr()
        for stream in (out.out, out.err):
            assert "\x1b" not in stream and "\x07" not in stream, args
    capsys.readouterr()
    assert run(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\\x1b[2J" in out and "<script>" in out  # shown, escaped, inert on a terminal


def test_every_report_format_of_a_hostile_file_is_inert(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    path = hostile_gguf(tmp_path)
    out = tmp_path / "report"
    assert run(["investigate", str(path), "-o", str(out), "--format", "json,md,html,csv,sarif,junit"]) in (0, 1)
    files = {p.name: p.read_text(encoding="utf-8") for p in out.rglob("*") if p.is_file() and p.suffix != ".png"}
    assert {"report.json", "report.md", "report.html", "report.csv", "report.sarif", "report.xml"} <= set(files)
    for name, text in files.items():
        assert "\x1b" not in text and "\x07" not in text, name
    assert "<script>" not in files["report.html"] and "&lt;script&gt;" in files["report.html"]
    assert "[x](javascript" not in files["report.md"] and "<script>" not in files["report.md"]
    cells = [cell for name, text in files.items() if name.endswith(".csv") for row in csv.reader(io.StringIO(text)) for cell in row]
    assert any(FORMULA in cell for cell in cells)  # the tensor name reached a table...
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]  # ...and no cell is a formula
    json.loads(files["report.json"]) and json.loads(files["report.sarif"])
    ET.fromstring(files["report.xml"].split("?>", 1)[-1])
