"""Manifests: the list of models to scan as JSONL or CSV, one model per line.

Each line names a ``path`` (relative to the manifest's directory unless absolute) and may
give an ``id`` for the row; other fields are ignored, so a hub can export its own records
unchanged. Every entry is one model: a file, a split GGUF part or a model folder, never
walked. A bad line stops the scan before it starts, with the file, line, field and byte
offset (docs/scan.md).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

from provenance.errors import CheckpointError, UsageProblem
from provenance.formats.jsonsafe import loads_strict
from provenance.textsafe import safe_text

SUFFIXES = (".jsonl", ".ndjson", ".csv")
MAX_MANIFEST_BYTES = 1 << 30
MAX_FIELD_CHARS = 4096


class ManifestError(UsageProblem):
    """A manifest that cannot be used (a usage problem, exit 64: nothing was scanned)."""


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    id: str | None = None
    line: int = 0


def is_manifest(path: str) -> bool:
    return path.lower().endswith(SUFFIXES) and os.path.isfile(path)


def _fail(path: str, line: int, field: str, offset: int, message: str) -> ManifestError:
    return ManifestError(f"{safe_text(path)} (line {line}, field {field}, offset {offset}): {safe_text(message)}")


def _entry(manifest: str, record: dict[str, object], line: int, offset: int) -> ManifestEntry:
    value = record.get("path")
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > MAX_FIELD_CHARS:
        raise _fail(manifest, line, "path", offset, "each entry needs a non-empty string `path`")
    ident = record.get("id")
    if ident in (None, ""):
        ident = None
    elif not isinstance(ident, str) or len(ident) > MAX_FIELD_CHARS:
        raise _fail(manifest, line, "id", offset, "`id` must be a string")
    path = value if os.path.isabs(value) else os.path.join(os.path.dirname(manifest), value)
    return ManifestEntry(os.path.normpath(path), ident, line)


def _jsonl(manifest: str, data: bytes) -> list[ManifestEntry]:
    entries, offset = [], 0
    for number, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():
            try:
                record = loads_strict(raw, manifest, f"line {number}", offset)
            except CheckpointError as exc:
                raise _fail(manifest, number, "json", exc.offset or offset, exc.message) from None
            if not isinstance(record, dict):
                raise _fail(manifest, number, "json", offset, "each line must be a JSON object")
            entries.append(_entry(manifest, record, number, offset))
        offset += len(raw) + 1
    return entries


def _csv(manifest: str, data: bytes) -> list[ManifestEntry]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(manifest, 1, "encoding", exc.start, "not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise _fail(manifest, 1, "header", 0, "the header row must name a `path` column")
        return [_entry(manifest, record, reader.line_num, 0) for record in reader]
    except csv.Error as exc:
        raise _fail(manifest, reader.line_num, "csv", 0, str(exc)) from None


def read_manifest(manifest: str) -> list[ManifestEntry]:
    """The entries of a JSONL or CSV manifest, in order; raises :class:`ManifestError`."""
    try:
        with open(manifest, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{safe_text(manifest)}: cannot read manifest: {safe_text(exc.strerror)}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise _fail(manifest, 1, "size", MAX_MANIFEST_BYTES, f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    entries = _csv(manifest, data) if manifest.lower().endswith(".csv") else _jsonl(manifest, data)
    seen: set[str] = set()
    for entry in entries:
        if entry.id is None:
            continue
        if entry.id in seen:
            raise _fail(manifest, entry.line, "id", 0, f"id {entry.id!r} is used twice")
        seen.add(entry.id)
    return entries
