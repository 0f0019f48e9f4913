"""``provenance inspect``: describe checkpoints without trusting them."""
from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from provenance.commands.common import ExitCode, debug_enabled, say, stdout_console
from provenance.commands.paths import MODEL, download_option
from provenance.commands.progress import progress_display
from provenance.errors import CheckpointError
from provenance.fileio import to_json, write_atomic
from provenance.inspect import inspect_checkpoint
from provenance.progress import Meter
from provenance.textsafe import safe_text

BATCH_SCHEMA = "provenance.inspect-batch/1"
PROGRESS_MIN_BYTES = 256 * 1024 * 1024


def _inspect_one(path: str, hashes: bool) -> dict[str, Any]:
    if not hashes:
        return inspect_checkpoint(path)
    with progress_display() as show:
        meter = Meter(None, "hash", None)

        def on_total(total: int) -> None:
            meter.total = total
            if total >= PROGRESS_MIN_BYTES:  # small files hash in a blink: no bar
                meter.callback = show
                meter.start_item(path)

        return inspect_checkpoint(path, hashes=True, progress=meter.advance, on_total=on_total)


def _cell(value: Any, max_len: int = 80) -> Text:
    # Text(), not markup: file-derived strings are never interpreted.
    return Text(safe_text(value, max_len))


def render_report(report: dict[str, Any]) -> None:
    out = stdout_console
    out.print(Text(f"{safe_text(report['path'])}  [{report['format']}]", style="bold"))
    if report.get("location"):
        where = report["location"]
        out.print(_cell(f"  {where['source']}: {where['name']} -> {where['path']}", 300))
    for entry in report["files"]:
        digest = f"  sha256 {entry['sha256']}" if "sha256" in entry else ""
        out.print(_cell(f"  file {entry['path']}  {entry['size']:,} bytes{digest}", 200))
    arch = {k: v for k, v in report["architecture"].items() if v is not None}
    out.print(_cell("architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()), 400))
    tok = report["tokenizer"]
    if tok["source"] != "none":
        out.print(_cell(f"tokenizer: {tok['model']} ({tok['source']}), {tok['vocab_size']} tokens, "
                        f"token-list sha256 {tok['tokens_sha256']}", 300))
    if report["claims"]:
        out.print(Text("claims (metadata, not evidence):"))
        for key, value in report["claims"].items():
            out.print(_cell(f"  {key} = {value}", 200))
    summary = report["summary"]
    out.print(_cell(f"{summary['tensors']} tensors, {summary['parameters']:,} parameters, "
                    f"{summary['tensor_bytes']:,} bytes, {summary['bits_per_weight']} bits/weight"))
    types = Table("type", "tensors", "elements", "bytes", title="storage types", title_justify="left")
    for dtype, entry in report["quant_types"].items():
        types.add_row(_cell(dtype), str(entry["tensors"]), f"{entry['elements']:,}", f"{entry['bytes']:,}")
    out.print(types)
    table = Table("name", "stored as", "shape", "type", "bytes", title="tensors", title_justify="left")
    with_hash = any("sha256" in t for t in report["tensors"])
    if with_hash:
        table.add_column("sha256")
    for t in report["tensors"]:
        row = [_cell(t["name"], 60), _cell(t["stored_name"] if t["stored_name"] != t["name"] else "", 60),
               _cell("x".join(map(str, t["shape"]))), _cell(t["dtype"]), f"{t['n_bytes']:,}"]
        if with_hash:
            row.append(_cell(t.get("sha256", "")[:16]))
        table.add_row(*row)
    out.print(table)
    if report["metadata"]:
        meta = Table("key", "value", title="metadata", title_justify="left")
        for key, value in report["metadata"].items():
            meta.add_row(_cell(key, 60), _cell(value, 120))
        out.print(meta)


@click.command("inspect")
@click.argument("paths", nargs=-1, required=True, type=MODEL)
@download_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema provenance.inspect-batch/1) instead of tables.")
@click.option("--hashes", is_flag=True, help="Also compute file and per-tensor SHA-256 (streams every byte).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON document to this file (atomically).")
def command(paths: tuple[str, ...], as_json: bool, hashes: bool, output: str | None) -> ExitCode:
    """Describe checkpoints: format, architecture, metadata, tokenizer, tensors and hashes.

    PATHS may be GGUF files (split files via any part), safetensors files, sharded
    index.json files, HF model directories, PEFT adapter folders or llama2.c files,
    model names (hf:ORG/NAME[@REVISION][/FILE], ORG/NAME, ollama:NAME[:TAG]), or tokenizers alone
    (tokenizer.json, a SentencePiece tokenizer.model, a folder of tokenizer files). Each file is checked
    without being trusted; a bad one is reported on one line and the others are still
    inspected. Exit status: 0 all read, 2 any file failed, 70 a bug on any file.
    """
    reports, errors = [], []
    bug = False
    for path in paths:
        try:
            reports.append(_inspect_one(path, hashes))
        except CheckpointError as exc:
            errors.append(exc.to_dict())
            say(f"error: {exc.one_line()}")
        except Exception as exc:  # a bug must not stop a batch scan; report it, exit 70 at the end
            if debug_enabled():
                raise
            bug = True
            errors.append({"path": path, "kind": "internal-error", "field": None, "offset": None,
                           "message": f"{type(exc).__name__}: {exc}"})
            say(f"error: {path}: internal error (a bug) {type(exc).__name__}: {exc}; `provenance --debug` shows the traceback")
    document = {"schema": BATCH_SCHEMA, "reports": reports, "errors": errors}
    if output:
        write_atomic(output, to_json(document))
    if as_json:
        click.echo(to_json(document), nl=False)
    else:
        for report in reports:
            render_report(report)
    say(f"inspected {len(reports)} of {len(paths)} paths, {len(errors)} failed")
    return ExitCode.SOFTWARE if bug else ExitCode.INPUT_ERROR if errors else ExitCode.OK
