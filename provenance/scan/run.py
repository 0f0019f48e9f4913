"""``scan``: every model named by the inputs, through an executor, into a resumable output.

The driver discovers the models (names and first bytes only), skips those already finished
in the output directory, hands the rest to the executor as tasks of paths and options,
validates each answer, journals it, and rebuilds the tables at the end, also when
interrupted (docs/scan.md).
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.errors import input_boundary
from provenance.progress import Meter, ProgressCallback
from provenance.scan.discover import discover
from provenance.scan.executor import Executor, TaskFailure, Work
from provenance.scan.local import LocalExecutor
from provenance.scan.model import ScanTask, scan_task
from provenance.scan.options import ScanOptions
from provenance.scan.row import ModelResult, Unchanged, WireError, decode_outcome, failure_result
from provenance.scan.store import PARQUET, ScanStore
from provenance.textsafe import safe_text

SCHEMA = "provenance.scan/1"


@dataclass
class ScanReport:
    """What one run of :func:`scan` did, over the models its inputs name."""

    out: str
    executor: str
    results: list[ModelResult]
    """One per model named by the inputs, in discovery order: scanned now or finished before."""
    scanned: int = 0
    reused: int = 0
    """Finished in an earlier run with the same options and files: not scanned again."""
    unchanged: int = 0
    """With ``--hashes``: rescheduled, but the files' digest equalled the finished row's."""
    bytes_scanned: int = 0
    seconds: float = 0.0
    skipped_files: list[str] = field(default_factory=list)
    interrupted: bool = False
    journal_repairs: dict[str, int] = field(default_factory=dict)
    """``torn_bytes`` cut from the journal's end, ``bad_lines`` skipped (their models rescanned)."""

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(r.row.status for r in self.results)
        return {status: counted.get(status, 0) for status in ("pass", "violation", "error")}

    def to_dict(self) -> dict[str, Any]:
        minutes = self.seconds / 60
        return {
            "schema": SCHEMA, "out": self.out, "executor": self.executor, "models": len(self.results), **self.counts,
            "scanned": self.scanned, "reused": self.reused, "unchanged": self.unchanged, "skipped_files": len(self.skipped_files),
            "bytes_scanned": self.bytes_scanned, "seconds": round(self.seconds, 3),
            "models_per_minute": round(self.scanned / minutes, 2) if minutes > 0 else None,
            "gb_per_second": round(self.bytes_scanned / self.seconds / 1e9, 4) if self.seconds > 0 else None,
            "interrupted": self.interrupted, "journal_repairs": self.journal_repairs, "table": str(Path(self.out) / PARQUET),
        }


class _ScanMeter:
    """A scan's progress through the shared facility (:mod:`provenance.progress`): bytes of the
    models done of the total, and as the item, models done of all with the outcome counts. The
    driver updates it as answers arrive, so a local pool and a Ray cluster report alike."""

    def __init__(self, callback: ProgressCallback | None, models: int, total_bytes: int, executor: str) -> None:
        self.meter = Meter(callback, f"scan ({executor})", total_bytes)
        self.models, self.done = models, 0
        self.counts = {"pass": 0, "violation": 0, "error": 0}
        self.meter.start_item(self._item())

    def _item(self) -> str:
        c = self.counts
        return f"{self.done}/{self.models} models: {c['pass']} ok {c['violation']} flagged {c['error']} err"

    def advance(self, status: str, n_bytes: int) -> None:
        self.done += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        self.meter.advance(n_bytes, self._item())


def _settle(task: ScanTask, answer: str | TaskFailure, previous: ModelResult | None) -> tuple[ModelResult, bool]:
    """The validated result for one answer, and whether it is new (False: ``--hashes`` found the
    files unchanged and the result is the finished row)."""
    if isinstance(answer, TaskFailure):
        return failure_result(task.unit, task.options_key, answer.kind, answer.message, answer.seconds, answer.worker), True
    try:
        outcome = decode_outcome(answer)
    except WireError as exc:
        return failure_result(task.unit, task.options_key, "internal", f"the worker's answer is invalid: {exc}", 0.0), True
    if isinstance(outcome, Unchanged):
        if previous is not None:
            return previous, False
        return failure_result(task.unit, task.options_key, "internal", "a worker reported an unchanged model that has no row", 0.0), True
    if outcome.row.path != safe_text(task.unit.path):
        return failure_result(task.unit, task.options_key, "internal", "the worker answered for another model", 0.0), True
    return outcome, True


@input_boundary
def scan(inputs: Sequence[str], out: str | Path, options: ScanOptions | None = None, executor: Executor | None = None, *,
         retry_errors: bool = False, progress: ProgressCallback | None = None, work: Work = scan_task) -> ScanReport:
    """Scan every model the ``inputs`` name into the output directory ``out``.

    ``executor``: :class:`~provenance.scan.local.LocalExecutor` (default, one worker per core)
    or :class:`~provenance.scan.ray_executor.RayExecutor`. ``work`` is the per-model function
    (tests wrap it to inject hangs and crashes). ``progress`` receives
    :class:`~provenance.progress.ProgressUpdate` s (bytes of the models done; the item says models
    done and the outcome counts); the CLI renders them with ``provenance.commands.progress``.
    Raises :class:`provenance.scan.manifest.ManifestError`
    on a bad manifest and :class:`provenance.scan.journal.ScanLocked` when another scan writes ``out``;
    a ``KeyboardInterrupt`` propagates after the tables are rebuilt from what finished.
    """
    started = time.monotonic()
    options = (options or ScanOptions()).resolved()
    options_key = options.fingerprint()
    executor = executor or LocalExecutor()
    found = discover(inputs)
    with ScanStore(out) as store:
        report = ScanReport(str(out), executor.name, [], skipped_files=found.skipped,
                            journal_repairs={"torn_bytes": store.journal.dropped_bytes, "bad_lines": store.journal.bad_lines})
        final: dict[str, ModelResult] = {}
        tasks = []
        for unit in found.units:
            previous = store.previous(unit)
            if previous is not None and store.is_done(unit, options_key, options.hashes, retry_errors):
                final[unit.key_path] = previous
                report.reused += 1
                continue
            known = store.known_digest(unit, options_key, retry_errors) if options.hashes else None
            tasks.append(ScanTask(unit, options, options_key, known))
        meter = _ScanMeter(progress, len(tasks), sum(t.unit.n_bytes for t in tasks), executor.name)
        try:
            for index, answer in executor.map(work, tasks):
                task = tasks[index]
                result, fresh = _settle(task, answer, store.previous(task.unit))
                if fresh:
                    store.record(task.unit, result)
                    report.scanned += 1
                else:
                    report.unchanged += 1
                final[task.unit.key_path] = result
                report.bytes_scanned += task.unit.n_bytes
                meter.advance(result.row.status, task.unit.n_bytes)
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            store.write_tables()  # from the journal: every finished row, none partial
            report.results = [final[u.key_path] for u in found.units if u.key_path in final]
            report.seconds = time.monotonic() - started
            store.write_summary(report.to_dict())
    return report
