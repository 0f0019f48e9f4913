"""The scan on this machine: rows, documents, tables, resuming, limits (local executor)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from provenance.scan import Limits, LocalExecutor, ScanOptions, scan
from provenance.scan.journal import Journal
from provenance.scan.row import DOCUMENT_SCHEMA
from provenance.watermark import DerivedKey, embed_checkpoint, read_secret
from tests.conftest import QUANT_DIR, ROOT
from tests.scan.conftest import Baseline, comparable
from tests.scan.faults import cache_probe_scan_task, faulty_scan_task
from tests.support.model_corpus import Corpus


def by_name(baseline: Baseline) -> dict[str, pd.Series]:
    table = pd.read_parquet(baseline.out / "scan.parquet")
    return {os.path.basename(p): row for p, row in zip(table["path"], table.itertuples(), strict=True)}


def test_every_model_gets_one_row_that_says_what_it_is(baseline: Baseline) -> None:
    report, corpus = baseline.report, baseline.corpus
    assert len(report.results) == len(corpus.models) + 28 == 50 and report.scanned == 50 and report.reused == 0
    table = pd.read_parquet(baseline.out / "scan.parquet")
    assert len(table) == 50 and table["path"].is_unique
    rows = {os.path.basename(p): r for p, r in zip(table["path"], table.to_dict("records"), strict=True)}
    for name in corpus.hostile:
        assert rows[name]["status"] == "error" and rows[name]["findings"] == "format.malformed", rows[name]
    assert "(field tensor data, offset " in rows["truncated.gguf"]["error"] and rows["truncated.gguf"]["error_kind"] == "malformed"
    assert rows["tensor-count.gguf"]["error_kind"] == "limit-exceeded"
    for name in corpus.pickles:
        assert rows[name]["status"] == "violation" and rows[name]["findings"] == "format.pickle"
    assert rows["tiny-0.gguf"]["status"] == "pass" and rows["tiny-1.gguf"]["findings"] == "metadata.required"
    assert rows["tiny-0.gguf"]["declared_base"] == "tiny-base" and rows["tiny-2.gguf"]["quant_types"] == "Q8_0;F32"
    assert rows["hf-sharded"]["format"] == "hf-directory" and rows["hf-sharded"]["parameters"] > 0
    assert rows["tiny-split-00001-of-00003.gguf"]["format"] == "gguf-split" and rows["tiny-split-00001-of-00003.gguf"]["files"] == 3
    # Real files: the shipped reference database knows them (identify ran in the workers).
    assert rows["tiny-llama-Q4_K_M.gguf"]["identified_as"] == "tiny-llama-q4_k_m"
    assert rows["ggml-vocab-phi-3.gguf"]["identified_as"] == "gguf-vocab-phi-3" and rows["ggml-vocab-phi-3.gguf"]["tokenizer"]
    assert rows["utf8-mangled-ggml-vocab-llama-spm.gguf"]["error_kind"] == "limit-exceeded"
    assert rows["stories260K.bin"]["format"] == "llama2c"
    # A file name with an escape sequence is shown escaped; the document keeps the exact name.
    evil = next(r for n, r in rows.items() if n.startswith("evil"))
    assert "\x1b" not in evil["path"] and "\\x1b" in evil["path"] and evil["status"] == "pass"
    evil_doc = json.loads((baseline.out / evil["document"]).read_text())
    assert "\x1b" in evil_doc["files"][0]["path"]
    assert report.counts == {"pass": int((table["status"] == "pass").sum()), "violation": 39, "error": 6}


def test_documents_and_tables_agree(baseline: Baseline) -> None:
    table = pd.read_parquet(baseline.out / "scan.parquet")
    csv = pd.read_csv(baseline.out / "scan.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table)
    assert csv["path"].tolist() == table["path"].tolist() and csv["status"].tolist() == table["status"].tolist()
    assert (csv["bytes"] == table["bytes"]).all()
    for row in table.to_dict("records"):
        document = json.loads((baseline.out / row["document"]).read_text())
        assert document["schema"] == DOCUMENT_SCHEMA and document["row"]["path"] == row["path"]
        assert [f["id"] for f in document["findings"]] == [i for i in row["findings"].split(";") if i]
        if isinstance(row["format"], str):
            assert document["inspect"]["format"] == row["format"] and document["identify"]["path"]
    summary = json.loads((baseline.out / "summary.json").read_text())
    assert summary["schema"] == "provenance.scan/1" and summary["models"] == 50 and summary["scanned"] == 50


def test_rerun_skips_what_is_done(baseline: Baseline) -> None:
    before = baseline.table()
    again = scan(baseline.inputs, baseline.out, baseline.options, LocalExecutor(2))
    assert again.scanned == 0 and again.reused == 50 and len(again.results) == 50
    assert comparable(baseline.out).equals(before)
    assert [r.row for r in again.results] == [r.row for r in baseline.report.results]


def copy_models(corpus: Corpus, names: list[str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(corpus.models[n], directory / n)) for n in names]


def test_changed_files_and_options_are_rescanned(corpus: Corpus, tmp_path: Path) -> None:
    paths = copy_models(corpus, ["tiny-0.gguf", "tiny-1.gguf", "tiny-2.gguf"], tmp_path / "in")
    out, executor = tmp_path / "out", LocalExecutor(1)
    assert scan([str(tmp_path / "in")], out, executor=executor).scanned == 3
    os.utime(paths[0], ns=(10**18, 10**18))
    touched = scan([str(tmp_path / "in")], out, executor=executor)
    assert (touched.scanned, touched.reused) == (1, 2)
    # --hashes keys by content: the workers hash, a touched file is unchanged, a rewritten one is not.
    assert scan([str(tmp_path / "in")], out, ScanOptions(hashes=True), executor).scanned == 3
    os.utime(paths[1], ns=(10**18, 10**18))
    paths[2].write_bytes(corpus.models["tiny-3.gguf"].read_bytes())
    hashed = scan([str(tmp_path / "in")], out, ScanOptions(hashes=True), executor)
    assert (hashed.scanned, hashed.unchanged) == (1, 2)
    assert {r.row.sha256 for r in hashed.results} == {r.row.sha256 for r in hashed.results if r.row.sha256}
    policy = tmp_path / "policy.toml"
    policy.write_text("version = 1\n[metadata]\nrequire = ['general.license']\n")
    strict = scan([str(tmp_path / "in")], out, ScanOptions(policy=str(policy)), executor)
    assert strict.scanned == 3 and [r.row.status for r in strict.results] == ["pass", "violation", "violation"]
    table = pd.read_parquet(out / "scan.parquet")
    assert len(table) == 3 and len((out / "journal.jsonl").read_text().splitlines()) == 3 + 1 + 3 + 1 + 3


def test_a_torn_last_line_is_cut_and_its_model_rescanned(corpus: Corpus, tmp_path: Path) -> None:
    copy_models(corpus, ["tiny-0.gguf", "tiny-1.gguf"], tmp_path / "in")
    out = tmp_path / "out"
    first = scan([str(tmp_path / "in")], out, executor=LocalExecutor(1))
    journal = out / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # power lost in the middle of the second line
    again = scan([str(tmp_path / "in")], out, executor=LocalExecutor(1))
    assert (again.scanned, again.reused) == (1, 1)
    text = journal.read_bytes()
    assert text.endswith(b"\n") and len(text.splitlines()) == 2 and all(json.loads(line) for line in text.splitlines())
    assert [r.row.status for r in again.results] == [r.row.status for r in first.results]


def test_one_writer_per_output_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    holder = Journal(tmp_path / "out" / "journal.jsonl").open()
    try:
        result = subprocess.run([sys.executable, "-m", "provenance.cli", "scan", str(QUANT_DIR / "tiny-llama-f32.gguf"),
                                 "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    finally:
        holder.close()
    assert result.returncode == 2 and "another scan is writing" in result.stderr


def test_ctrl_c_keeps_every_finished_row_and_the_rerun_finishes(baseline: Baseline, tmp_path: Path) -> None:
    corpus = baseline.corpus
    inputs = [str(corpus.root / "gguf")]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "provenance.cli", "scan", *inputs, "-o", str(out), "--jobs", "1",
               "--policy", baseline.options.policy]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not journal.exists() or journal.read_bytes().count(b"\n") < 3):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    process.communicate(timeout=120)
    assert process.returncode == 130
    text = journal.read_bytes()
    done = text.count(b"\n")
    assert text.endswith(b"\n") and 3 <= done < 9
    assert len(pd.read_parquet(out / "scan.parquet")) == done  # tables rebuilt from what finished
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr
    assert f"scanned {9 - done}, reused {done} finished before" in rerun.stderr
    finished = comparable(out)
    expected = baseline.table()
    expected = expected[expected["path"].isin(finished["path"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(finished, expected)
    assert len(finished) == 9


def test_ctrl_c_just_after_a_journal_line_still_puts_its_row_in_the_tables(corpus: Corpus, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copy_models(corpus, ["tiny-0.gguf", "tiny-1.gguf", "tiny-2.gguf"], tmp_path / "in")
    out, append = tmp_path / "out", Journal.append

    def append_then_interrupt(journal: Journal, record: dict[str, object]) -> None:
        append(journal, record)
        if journal.path.read_bytes().count(b"\n") == 2:
            raise KeyboardInterrupt  # the line is on disk; the driver had not yet noted the row

    monkeypatch.setattr(Journal, "append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        scan([str(tmp_path / "in")], out, executor=LocalExecutor(1))
    assert len(pd.read_parquet(out / "scan.parquet")) == 2 == (out / "journal.jsonl").read_bytes().count(b"\n")
    monkeypatch.setattr(Journal, "append", append)
    rerun = scan([str(tmp_path / "in")], out, executor=LocalExecutor(1))
    assert (rerun.scanned, rerun.reused) == (1, 2) and len(pd.read_parquet(out / "scan.parquet")) == 3


def test_a_model_that_hangs_crashes_or_hogs_memory_is_one_error_row(corpus: Corpus, tmp_path: Path) -> None:
    names = ["hang-a.gguf", "crash-b.gguf", "hog-c.gguf", "tiny-0.gguf", "tiny-1.gguf"]
    for name in names:
        source = corpus.models["tiny-0.gguf" if "-" in name[:6] else name]
        shutil.copy2(source, tmp_path / name)
    started = time.monotonic()
    report = scan([str(tmp_path / n) for n in names], tmp_path / "out", executor=LocalExecutor(2, Limits(8.0, 512 << 20)),
                  work=faulty_scan_task)
    elapsed = time.monotonic() - started
    rows = {os.path.basename(r.row.path): r.row for r in report.results}
    assert rows["hang-a.gguf"].error_kind == "timeout" and 8 <= rows["hang-a.gguf"].seconds < 18
    assert rows["crash-b.gguf"].error_kind == "worker-lost" and "exited with status 70" in rows["crash-b.gguf"].error
    assert rows["hog-c.gguf"].error_kind == "out-of-memory"
    assert rows["tiny-0.gguf"].status == "pass" and rows["tiny-1.gguf"].status == "pass"
    assert elapsed < 120 and len(pd.read_parquet(tmp_path / "out" / "scan.parquet")) == 5
    # A lost worker says nothing sure about the model: a rerun retries it. Time and memory
    # failures are the model's under these limits: kept unless asked.
    rerun = scan([str(tmp_path / n) for n in names], tmp_path / "out", executor=LocalExecutor(1))
    assert rerun.scanned == 1 and {os.path.basename(r.row.path): r.row.status for r in rerun.results}["crash-b.gguf"] == "pass"
    retried = scan([str(tmp_path / n) for n in names], tmp_path / "out", executor=LocalExecutor(2), retry_errors=True)
    assert retried.scanned == 2 and {r.row.status for r in retried.results} == {"pass"}


def test_real_allocation_past_the_limit(tmp_path: Path) -> None:
    report = scan([str(QUANT_DIR / "tiny-llama-f32.gguf")], tmp_path / "out", executor=LocalExecutor(1, Limits(120.0, 1 << 20)))
    row = report.results[0].row
    assert row.status == "error" and row.error_kind == "out-of-memory", row


def test_lineage_and_watermark_flag_models_and_reference_data_loads_once_per_worker(tmp_path: Path) -> None:
    registry = tmp_path / "keys"
    registry.mkdir()
    (registry / "secret").write_text("correct horse battery staple 2024\n")
    (registry / "clients.txt").write_text("initech\nacme\numbrella\n")
    models = tmp_path / "models"
    models.mkdir()
    acme = DerivedKey(read_secret(registry / "secret"), "acme")
    embed_checkpoint(QUANT_DIR / "tiny-llama-f16.gguf", models / "leak.gguf", acme, amplitude=1e-2)
    for name in ("tiny-llama-Q4_K_M.gguf", "stories260K-Q8_0.gguf", "tiny-llama-Q8_0.gguf"):
        shutil.copy2(QUANT_DIR / name, models / name)
    options = ScanOptions(references=(str(QUANT_DIR / "tiny-llama-f32.gguf"),), keys=str(registry))
    report = scan([str(models)], tmp_path / "out", options, LocalExecutor(2, Limits(300.0)), work=cache_probe_scan_task)
    rows = {os.path.basename(r.row.path): r.row for r in report.results}
    assert rows["leak.gguf"].watermark_accused == "acme" and "watermark.detected" in rows["leak.gguf"].findings
    assert rows["tiny-llama-Q4_K_M.gguf"].related_to == "tiny-llama-f32.gguf"
    assert rows["tiny-llama-Q4_K_M.gguf"].lineage == "tiny-llama-f32.gguf: requantized"
    assert rows["tiny-llama-Q4_K_M.gguf"].status == "violation" and rows["tiny-llama-Q4_K_M.gguf"].watermark_accused is None
    assert rows["stories260K-Q8_0.gguf"].related_to is None and rows["stories260K-Q8_0.gguf"].status == "pass"
    probes = [json.loads((tmp_path / "out" / r.row.document).read_text())["probe"] for r in report.results]
    for pid in {p["pid"] for p in probes}:  # each worker read the database and the registry once, whatever it scanned
        mine = [p for p in probes if p["pid"] == pid]
        assert max(p["refdb_loads"] for p in mine) == 1 and max(p["registry_loads"] for p in mine) == 1
    assert len(probes) == 4 and len({p["pid"] for p in probes}) <= 2


def test_a_named_pipe_in_an_upload_never_blocks_the_scan(corpus: Corpus, tmp_path: Path) -> None:
    """A real hang: an HF folder whose weights file is a FIFO blocks a reader that opens it
    (nothing ever writes to it). The scan cuts it at the limit (or the reader refuses it)."""
    folder = tmp_path / "uploads" / "fifo-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    os.mkfifo(folder / "model.safetensors")
    shutil.copy2(corpus.models["tiny-0.gguf"], tmp_path / "uploads" / "tiny-0.gguf")
    started = time.monotonic()
    report = scan([str(tmp_path / "uploads")], tmp_path / "out", executor=LocalExecutor(1, Limits(8.0)))
    rows = {os.path.basename(r.row.path): r.row for r in report.results}
    assert rows["fifo-model"].status == "error" and rows["fifo-model"].error_kind in ("timeout", "unsupported", "malformed")
    assert rows["tiny-0.gguf"].status == "pass" and time.monotonic() - started < 90
