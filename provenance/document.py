"""The report model: plain dataclasses, JSON-ready through ``to_dict()``.

A report is what an investigator hands to a sceptic: an executive summary (one sentence,
with its p-value), findings (each a verdict with evidence and, where the statistic has
one, a calibrated p-value), then sections with tables and figures. Metadata claims are
kept apart from weight evidence. The schema is versioned (``SCHEMA``) and published in
docs/report-schema.json; fields are only added within a major version.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from provenance.version import __version__

SCHEMA = "provenance.report/1"


def model_name(path: str | os.PathLike[str]) -> str:
    """How reports name a model given by its path: its file or folder name (a trailing separator
    ignored; the path itself when it has no name, as ``/``)."""
    text = os.fspath(path)
    return os.path.basename(os.path.normpath(text)) or text


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    VIOLATION = "violation"
    ERROR = "error"


@dataclass
class Figure:
    """A rendered figure: PNG bytes plus a caption. Stored as a file next to JSON/Markdown,
    embedded (base64) in HTML."""

    name: str
    caption: str
    png: bytes = field(repr=False, default=b"")

    @property
    def filename(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)[:80] or "figure"
        return f"{safe}.png"

    @classmethod
    def from_matplotlib(cls, name: str, caption: str, figure: Any, dpi: int = 110) -> Figure:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
        return cls(name, caption, buffer.getvalue())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "caption": self.caption, "file": self.filename,
                "sha256": hashlib.sha256(self.png).hexdigest(), "bytes": len(self.png)}


@dataclass
class Finding:
    """One conclusion with its evidence."""

    id: str
    """Stable identifier, e.g. ``lineage.verdict``, ``watermark.client``, ``format.safety``."""
    title: str
    verdict: str
    """Short machine-readable outcome, e.g. ``fine-tune``, ``exact-quantization``, ``no-match``."""
    summary: str
    """One or two plain sentences for people."""
    severity: Severity = Severity.INFO
    p_value: float | None = None
    statistic: dict[str, Any] = field(default_factory=dict)
    """Named statistic values (z, rho, mismatches...) behind the verdict."""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["severity"] = self.severity.value
        return out


@dataclass
class Section:
    """One analysis (inspect, identify, compare, quantcheck, watermark...) in a report."""

    kind: str
    title: str
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "summary": self.summary, "data": self.data,
                "tables": self.tables, "figures": [f.to_dict() for f in self.figures]}


@dataclass
class Report:
    subject: dict[str, Any]
    """What was examined: ``{"path", "format", ...}``."""
    executive_summary: str = ""
    findings: list[Finding] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    claims: dict[str, Any] = field(default_factory=dict)
    """Declared identity from metadata: shown beside, never as, evidence."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "tool": {"name": "provenance", "version": __version__},
            "created": self.created,
            "command": self.command,
            "subject": self.subject,
            "executive_summary": self.executive_summary,
            "findings": [f.to_dict() for f in self.findings],
            "claims": self.claims,
            "sections": [s.to_dict() for s in self.sections],
            "errors": self.errors,
        }

    @property
    def figures(self) -> list[Figure]:
        return [figure for section in self.sections for figure in section.figures]

    def worst_severity(self) -> Severity:
        order = [Severity.INFO, Severity.WARNING, Severity.VIOLATION, Severity.ERROR]
        worst = Severity.ERROR if self.errors else Severity.INFO
        for finding in self.findings:
            if order.index(finding.severity) > order.index(worst):
                worst = finding.severity
        return worst
