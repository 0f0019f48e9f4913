"""A scan's output directory: the journal, one JSON document per model, and the tables.

::

    OUT/journal.jsonl      one line per finished model (row + findings), the source of truth
    OUT/models/<id>.json   the model's full document (inspect, identify, lineage, watermark)
    OUT/scan.parquet       the table, latest row per model, rebuilt from the journal
    OUT/scan.csv           the same table as CSV
    OUT/summary.json       counts and timings of the last run

A model's document is written atomically before its journal line, so every journaled row
has its document; a document without a line (the driver died in between) is rewritten
when the model is scanned again.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from provenance.fileio import to_json, write_atomic
from provenance.scan.journal import Journal
from provenance.scan.row import ModelResult, WireError, finding_from_dict, row_from_dict
from provenance.scan.table import write_csv, write_parquet
from provenance.scan.units import ModelUnit

JOURNAL, PARQUET, CSV, SUMMARY = "journal.jsonl", "scan.parquet", "scan.csv", "summary.json"
RETRIED_ALWAYS = ("worker-lost",)
"""Error kinds a rerun always retries: a killed node says nothing about the model. Time
and memory limits are properties of the model under the limits: ``--retry-errors`` retries them."""


class ScanStore:
    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "models").mkdir(exist_ok=True)
        self.journal = Journal(self.out / JOURNAL).open()
        try:
            self.latest: dict[str, ModelResult] = self._read_journal()
            """Key path -> the model's latest finished result (row and findings; details are in its document)."""
        except BaseException:
            self.journal.close()
            raise

    def _read_journal(self) -> dict[str, ModelResult]:
        latest = {}
        for record in self.journal.records():
            try:
                key = record["key"]
                findings = record["findings"]
                if not isinstance(key, str) or not isinstance(findings, list):
                    raise WireError("key or findings")
                latest[key] = ModelResult(row_from_dict(record["row"]), [finding_from_dict(f) for f in findings])
            except (KeyError, WireError, TypeError):
                self.journal.bad_lines += 1  # a line from another version, or damaged: the model is scanned again
        return latest

    def __enter__(self) -> ScanStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.journal.close()

    def previous(self, unit: ModelUnit) -> ModelResult | None:
        return self.latest.get(unit.key_path)

    def _reusable(self, unit: ModelUnit, options_key: str, retry_errors: bool) -> ModelResult | None:
        """The finished row, if it was made with the same options and did not fail for a reason to retry."""
        previous = self.previous(unit)
        if previous is None or previous.row.options_key != options_key:
            return None
        if previous.row.status == "error" and (retry_errors or previous.row.error_kind in RETRIED_ALWAYS):
            return None
        return previous

    def is_done(self, unit: ModelUnit, options_key: str, hashes: bool, retry_errors: bool) -> bool:
        """Done: a reusable row from the same files (names, sizes, mtimes). With ``hashes`` the
        worker decides, from the files' digest (:meth:`known_digest`)."""
        previous = self._reusable(unit, options_key, retry_errors)
        return previous is not None and not hashes and previous.row.stat_key == unit.stat_key

    def known_digest(self, unit: ModelUnit, options_key: str, retry_errors: bool) -> str | None:
        """With ``--hashes``: the digest a worker compares the files' with before it redoes the model."""
        previous = self._reusable(unit, options_key, retry_errors)
        return previous.row.sha256 if previous is not None else None

    def record(self, unit: ModelUnit, result: ModelResult) -> None:
        """The document atomically, then the journal line (fsynced): a finished model is never lost or half-written."""
        write_atomic(self.out / result.row.document, to_json(result.document()))
        self.journal.append({"key": unit.key_path, "row": asdict(result.row), "findings": [f.to_dict() for f in result.findings]})
        self.latest[unit.key_path] = replace(result, details={})

    def rows(self) -> list[ModelResult]:
        return sorted(self.latest.values(), key=lambda r: (r.row.id, r.row.path))

    def write_tables(self) -> None:
        """The tables from the journal file, not from memory: a Ctrl-C that lands after a line is
        written but before :meth:`record` returns leaves that finished row in the tables too."""
        bad_lines = self.journal.bad_lines
        self.latest = self._read_journal()
        self.journal.bad_lines = bad_lines  # counted when the journal was opened
        rows = [r.row for r in self.rows()]
        write_parquet(rows, self.out / PARQUET)
        write_csv(rows, self.out / CSV)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.out / SUMMARY, to_json(summary))
