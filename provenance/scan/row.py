"""The typed result of scanning one model: a flat table row, its findings and its details.

Workers hand results back as strict JSON text, never as pickles: a worker has parsed
hostile bytes, so the driver validates every field of what comes back
(:func:`decode_outcome`) before it is journaled.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any, get_type_hints

from provenance.document import Finding, Severity
from provenance.fileio import json_ready
from provenance.policy import CheckResult
from provenance.scan.units import ModelUnit
from provenance.textsafe import safe_text

DOCUMENT_SCHEMA = "provenance.scan-model/1"
STATUSES = ("pass", "violation", "error")
FAILURE_FINDINGS = {"timeout": "scan.timeout", "out-of-memory": "scan.out_of_memory", "worker-lost": "scan.worker_lost",
                    "internal": "internal.error"}
"""Error kinds that come from running the model, not from its bytes, and their finding ids."""


@dataclass(frozen=True)
class ModelRow:
    """One row of the scan table (Parquet and CSV): scalars only, file-derived text escaped."""

    id: str
    path: str
    """As found (control characters escaped; the document's ``files`` hold the exact names)."""
    status: str
    """``pass``, ``violation`` or ``error`` (as ``provenance check``)."""
    format: str | None
    files: int
    bytes: int
    mtime_ns: int
    sha256: str | None
    """Digest of the model's files (with ``--hashes``)."""
    architecture: str | None
    parameters: int | None
    tensors: int | None
    quant_types: str | None
    """Storage types, most bytes first, ``;``-separated."""
    tokenizer: str | None
    declared_name: str | None
    declared_base: str | None
    """Metadata claims: what the file says, not evidence."""
    identified_as: str | None
    identify_verdict: str | None
    identify_family: str | None
    lineage: str | None
    """``reference: verdict`` per ``--reference``, ``;``-separated."""
    related_to: str | None
    watermark_accused: str | None
    findings: str
    """Finding ids, ``;``-separated."""
    error_kind: str | None
    """The reader's kind (``malformed``, ``limit-exceeded``, ``unsupported``...), or
    ``timeout``, ``out-of-memory``, ``worker-lost``, ``internal``."""
    error: str | None
    """One line: file, field, offset and what is wrong."""
    seconds: float
    worker: str
    scanned_at: str
    stat_key: str
    options_key: str
    document: str
    """The model's JSON document, relative to the scan's output directory."""


VOLATILE_COLUMNS = ("seconds", "worker", "scanned_at")
"""Columns that differ between two scans of the same models (timing, placement)."""


@dataclass(frozen=True)
class Unchanged:
    """With ``--hashes``: the files hash to the finished row's digest, nothing to redo."""

    sha256: str


@dataclass
class ModelResult:
    row: ModelRow
    findings: list[Finding] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-ready sections of the model's document: ``files``, ``inspect``, ``identify``,
    ``lineage``, ``watermark``."""

    def document(self) -> dict[str, Any]:
        return {"schema": DOCUMENT_SCHEMA, "row": asdict(self.row), "findings": [f.to_dict() for f in self.findings],
                **self.details}

    def check_result(self) -> CheckResult:
        """The row as ``provenance check`` reports one path (for SARIF and JUnit)."""
        return CheckResult(path=self.row.path, status=self.row.status, findings=list(self.findings), format=self.row.format)


def worker_name(pid: int | None = None) -> str:
    """``host:pid`` of this process, or of process ``pid`` on this host."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def document_name(unit: ModelUnit) -> str:
    """``models/<digest of the path>.json``: one file per model, stable across runs."""
    return f"models/{hashlib.sha256(unit.key_path.encode()).hexdigest()[:24]}.json"


def status_of(findings: list[Finding]) -> str:
    if any(f.severity == Severity.ERROR for f in findings):
        return "error"
    return "violation" if any(f.severity == Severity.VIOLATION for f in findings) else "pass"


def failure_result(unit: ModelUnit, options_key: str, kind: str, message: str, seconds: float,
                   worker: str | None = None) -> ModelResult:
    """An error row for a model whose run failed (timed out, ran out of memory, lost its worker)."""
    finding = Finding(id=FAILURE_FINDINGS[kind], title="Scan of this model failed", verdict="error", summary=message,
                      severity=Severity.ERROR, evidence={"kind": kind})
    row = empty_row(unit, options_key, worker or worker_name())
    row = row_with(row, status="error", findings=finding.id, error_kind=kind, error=message, seconds=round(seconds, 3))
    return ModelResult(row, [finding], {"files": [asdict(m) for m in unit.members]})


def empty_row(unit: ModelUnit, options_key: str, worker: str) -> ModelRow:
    return ModelRow(
        id=safe_text(unit.id), path=safe_text(unit.path), status="pass", format=None, files=len(unit.members), bytes=unit.n_bytes,
        mtime_ns=unit.mtime_ns, sha256=None, architecture=None, parameters=None, tensors=None, quant_types=None,
        tokenizer=None, declared_name=None, declared_base=None, identified_as=None, identify_verdict=None,
        identify_family=None, lineage=None, related_to=None, watermark_accused=None, findings="", error_kind=None,
        error=None, seconds=0.0, worker=worker, scanned_at=now(), stat_key=unit.stat_key, options_key=options_key,
        document=document_name(unit))


def row_with(row: ModelRow, **changes: Any) -> ModelRow:
    return replace(row, **changes)


# ----- the wire format between worker and driver (strict JSON) --------------------------

def encode(outcome: ModelResult | Unchanged) -> str:
    if isinstance(outcome, Unchanged):
        return json.dumps({"unchanged": {"sha256": outcome.sha256}})
    return json.dumps(json_ready({"row": asdict(outcome.row), "findings": [f.to_dict() for f in outcome.findings],
                                  "details": outcome.details}), ensure_ascii=True, allow_nan=False)


class WireError(ValueError):
    """A worker's answer that is not a valid result (a bug, or a compromised worker)."""


_ROW_TYPES = get_type_hints(ModelRow)
_SCALARS = {str: (str,), int: (int,), float: (int, float)}


def row_from_dict(data: Any) -> ModelRow:
    if not isinstance(data, dict) or set(data) != set(_ROW_TYPES):
        raise WireError("row fields differ from ModelRow's")
    for item in fields(ModelRow):
        value, hint = data[item.name], _ROW_TYPES[item.name]
        allowed = tuple(t for arg in getattr(hint, "__args__", (hint,)) for t in _SCALARS.get(arg, (type(None),)))
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise WireError(f"row field {item.name} has type {type(value).__name__}")
    if data["status"] not in STATUSES:
        raise WireError(f"row status {data['status']!r}")
    return ModelRow(**data)


def finding_from_dict(data: Any) -> Finding:
    if not isinstance(data, dict) or not {"id", "title", "verdict", "summary", "severity"} <= set(data):
        raise WireError("a finding lacks id, title, verdict, summary or severity")
    try:
        severity = Severity(data["severity"])
    except ValueError:
        raise WireError(f"finding severity {data['severity']!r}") from None
    p_value = data.get("p_value")
    return Finding(id=str(data["id"]), title=str(data["title"]), verdict=str(data["verdict"]), summary=str(data["summary"]),
                   severity=severity, p_value=float(p_value) if isinstance(p_value, (int, float)) else None,
                   statistic=data.get("statistic") if isinstance(data.get("statistic"), dict) else {},
                   evidence=data.get("evidence") if isinstance(data.get("evidence"), dict) else {})


def _reject_constant(name: str) -> None:
    raise WireError(f"non-standard JSON constant {name}")


def decode_outcome(text: str | bytes) -> ModelResult | Unchanged:
    """Parse and validate a worker's answer; raises :class:`WireError`."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("not a JSON object")
    if set(data) == {"unchanged"}:
        digest = data["unchanged"].get("sha256") if isinstance(data["unchanged"], dict) else None
        if not isinstance(digest, str):
            raise WireError("unchanged without a digest")
        return Unchanged(digest)
    findings = data.get("findings")
    details = data.get("details")
    if not isinstance(findings, list) or not isinstance(details, dict):
        raise WireError("findings must be a list and details an object")
    return ModelResult(row_from_dict(data.get("row")), [finding_from_dict(f) for f in findings], details)
