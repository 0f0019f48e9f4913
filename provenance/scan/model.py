"""Scan one model: the unit of work that runs in a worker, local or on a Ray node.

``scan_task`` is a pure function of a picklable :class:`ScanTask` (paths and options) to
strict JSON text; the only state it keeps between calls is the per-worker caches of
:mod:`provenance.scan.caches`, which do not change results. Each analysis is the one the
single-model commands run: ``check``'s policy engine, ``inspect``, ``identify``, ``compare``
and watermark ``trace`` (docs/scan.md, "What is checked").
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from provenance.document import Finding, Severity
from provenance.errors import CheckpointError, ProvenanceError
from provenance.hashing import file_sha256
from provenance.inspect import inspect_checkpoint
from provenance.policy import evaluate
from provenance.scan import caches
from provenance.scan.options import ScanOptions
from provenance.scan.row import (
    ModelResult,
    Unchanged,
    empty_row,
    encode,
    row_with,
    status_of,
    worker_name,
)
from provenance.scan.units import ModelUnit
from provenance.textsafe import safe_text

TOP_CANDIDATES = 5
OUT_OF_MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "failed to map segment from shared object")
"""How a refused allocation reads: numpy raises MemoryError, torch's allocator a RuntimeError
saying so, the dynamic loader an ImportError (a module :func:`warm_up` did not load)."""
TEXT_CAP = 300


@dataclass(frozen=True)
class ScanTask:
    """Everything a worker needs for one model; no bytes of the model travel with it."""

    unit: ModelUnit
    options: ScanOptions
    options_key: str
    known_sha256: str | None = None
    """With ``--hashes``: the digest of the finished row for this path, if any."""


WARM_UP_SKIPS = ("provenance.cli", "provenance.clidocs", "provenance.commands", "provenance.fuzz", "provenance.synth",
                 "provenance.demo", "provenance.casestudy", "provenance.scan.ray_executor", "provenance.__main__")
"""Modules a worker never runs: the CLI shell, authoring of demo and test models (they import
transformers), fuzz harnesses and the Ray driver side."""


def warm_up() -> None:
    """In a new worker, before any memory limit applies: import every module an analysis can
    reach and the native libraries under them. Under the limit, a first import can fail as a
    bare ``ImportError`` (the loader cannot map a shared object) or hang (OpenBLAS, through
    scipy, allocates its buffers at import and waits rather than fails when refused), so
    nothing may be imported for the first time while a model is scanned. The provenance
    packages load their members lazily, so they are walked rather than listed: a list went
    stale each time an analysis gained an import. Use one torch thread: one worker runs per
    core (why more threads hurt on busy cores: :mod:`provenance.threads`)."""
    import importlib
    import pkgutil

    import gguf.quants  # noqa: F401  (the reference kernels some codecs hand over to)
    import huggingface_hub.file_download  # what the hf: locators resolve with
    import huggingface_hub.utils  # noqa: F401
    import scipy.stats  # noqa: F401
    import torch

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package, not its facade
    modules = [m.name for m in pkgutil.walk_packages([package_root], "provenance.")]
    for name in [*modules, "provenance.data"]:  # data: a folder of data files, which the walk does not list
        if not name.startswith(WARM_UP_SKIPS):
            importlib.import_module(name)
    torch.set_num_threads(1)


def scan_task(task: ScanTask) -> str:
    """The function every worker runs: one model in, its result as strict JSON out."""
    return encode(scan_model(task))


def unit_sha256(unit: ModelUnit) -> str | None:
    """One digest over the SHA-256 of every file of the model (name and content)."""
    if not unit.members:
        return None
    digest = hashlib.sha256()
    for member in sorted(unit.members, key=lambda m: m.path):
        digest.update(f"{os.path.basename(member.path)}\0{file_sha256(member.path)}\n".encode())
    return digest.hexdigest()


def scan_model(task: ScanTask) -> ModelResult | Unchanged:
    started = time.perf_counter()
    unit, options = task.unit, task.options
    findings: list[Finding] = []
    facts: dict[str, Any] = {}
    details: dict[str, Any] = {"files": [asdict(m) for m in unit.members]}
    try:
        if options.hashes:
            facts["sha256"] = unit_sha256(unit)
            if facts["sha256"] is not None and facts["sha256"] == task.known_sha256:
                return Unchanged(facts["sha256"])
        check = evaluate(unit.path, caches.policy(options.policy))
        findings += check.findings
        facts["format"] = check.format
        if check.format is not None and status_of(findings) != "error":  # opened: the analyses can read it
            _analyses(unit.path, options, facts, findings, details)
    except CheckpointError as exc:  # bytes the header checks let through, found bad deeper in
        findings.append(Finding(id="format.malformed", title="Unreadable checkpoint", verdict="error", summary=exc.one_line(),
                                severity=Severity.ERROR, evidence=exc.to_dict()))
    except OSError as exc:  # the file went away or became unreadable between discovery and now
        findings.append(Finding(id="format.malformed", title="Unreadable checkpoint", verdict="error",
                                summary=safe_text(f"{unit.path}: {exc.strerror or exc}"), severity=Severity.ERROR,
                                evidence={"kind": "unreadable"}))
    except ProvenanceError as exc:  # an analysis refused its own inputs (registry, database)
        findings.append(Finding(id="scan.analysis_failed", title="An analysis could not run", verdict="error",
                                summary=safe_text(exc, TEXT_CAP), severity=Severity.ERROR, evidence={"kind": "analysis"}))
    except MemoryError:
        findings.append(_internal("MemoryError: the model needs more memory than the scan's limit"))
    except Exception as exc:  # keep scanning the batch; the bug is reported on this row
        findings.append(_internal(f"{type(exc).__name__}: {exc}"))
    row = row_with(empty_row(unit, task.options_key, worker_name()), **_text_facts(facts), **_outcome(findings),
                   seconds=round(time.perf_counter() - started, 3))
    return ModelResult(row, findings, details)


def _internal(summary: str) -> Finding:
    return Finding(id="internal.error", title="Internal error", verdict="error", summary=safe_text(summary, TEXT_CAP),
                   severity=Severity.ERROR)


def _outcome(findings: list[Finding]) -> dict[str, Any]:
    status = status_of(findings)
    error = next((f for f in findings if f.severity == Severity.ERROR), None)
    kind = None
    if error is not None:
        kind = str(error.evidence.get("kind", "internal"))
        if error.id == "internal.error" and any(sign in error.summary for sign in OUT_OF_MEMORY_SIGNS):
            kind = "out-of-memory"
    return {"status": status, "findings": ";".join(f.id for f in findings), "error_kind": kind,
            "error": error.summary if error is not None else None}


def _text_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """File-derived text is escaped and capped before it reaches a table cell."""
    return {k: safe_text(v, TEXT_CAP) if isinstance(v, str) and k != "sha256" else v for k, v in facts.items()}


def _analyses(path: str, options: ScanOptions, facts: dict[str, Any], findings: list[Finding], details: dict[str, Any]) -> None:
    from provenance.refdb import identify

    inspected = inspect_checkpoint(path)
    details["inspect"] = inspected
    facts.update(_inspect_facts(inspected))
    found = identify(path, caches.refdb(options.refdb))
    identified = found.to_dict()
    identified["candidates"] = identified["candidates"][:TOP_CANDIDATES]
    details["identify"] = identified
    best = found.best
    facts.update(identified_as=best.entry_id if best else None, identify_family=best.family if best else None,
                 identify_verdict=best.verdict if best else "no match")
    related = _lineage(path, options.references, facts, findings, details) if options.references else []
    if options.keys:
        _watermark(path, options.keys, related[0] if related else None, facts, findings, details)


def _inspect_facts(inspected: dict[str, Any]) -> dict[str, Any]:
    from provenance.compare.claims import claimed_bases, self_names

    claims = inspected.get("claims", {})
    tokenizer = inspected.get("tokenizer") or {}
    base = next(iter(claimed_bases(claims)), None)
    name = next(iter(self_names(claims)), None)
    return {
        "architecture": inspected["architecture"].get("arch"),
        "parameters": inspected["summary"]["parameters"],
        "tensors": inspected["summary"]["tensors"],
        "quant_types": ";".join(inspected["quant_types"]) or None,
        "tokenizer": f"{tokenizer['model']}/{tokenizer.get('vocab_size')}" if tokenizer.get("model") else None,
        "declared_name": str(name) if name else None,
        "declared_base": str(base) if base else None,
    }


def _lineage(path: str, references: tuple[str, ...], facts: dict[str, Any], findings: list[Finding],
             details: dict[str, Any]) -> list[str]:
    """Compare against every reference; returns the related ones, closest (smallest change) first."""
    from provenance.compare import compare

    entries, related = [], []
    for reference in references:
        result = compare(path, reference)
        verdict = result.verdict
        label = os.path.basename(os.path.normpath(reference))
        test = result.test.to_dict() if result.test else {}
        test.pop("layers", None)
        entries.append({"reference": reference, "label": label, "verdict": verdict.to_dict(), "claims": result.claims.to_dict(),
                        "test": test, "timing": result.timing.to_dict()})
        if verdict.related:
            delta = verdict.overall_rel_delta
            related.append((delta if delta is not None else float("inf"), reference))
            findings.append(Finding(
                id="lineage.related", title=f"Derived from {label}", verdict=verdict.kind,
                summary=f"the weights derive from {label}: {verdict.summary}", severity=Severity.VIOLATION,
                p_value=verdict.p_asymptotic, statistic={"z": verdict.z, "p_exact": verdict.p_exact},
                evidence={"reference": reference, "kind": verdict.kind, "overall_rel_delta": delta}))
    details["lineage"] = entries
    facts["lineage"] = "; ".join(f"{e['label']}: {e['verdict']['kind']}" for e in entries)
    facts["related_to"] = ";".join(os.path.basename(os.path.normpath(r)) for _, r in sorted(related)) or None
    return [r for _, r in sorted(related)]


def _watermark(path: str, registry: str, reference: str | None, facts: dict[str, Any], findings: list[Finding],
               details: dict[str, Any]) -> None:
    """Trace every client of the registry; with a related reference (the owner's unmarked model,
    as ``investigate`` does) the test is much stronger than blind."""
    from provenance.watermark import trace
    from provenance.watermark.trace import candidate_arch

    result = trace(path, caches.registry(registry, candidate_arch(path)), reference=reference)
    details["watermark"] = result.to_dict(per_tensor=False)
    for client in result.clients():
        if client.accused and client.best is not None:
            statistic, score = client.best
            findings.append(Finding(
                id="watermark.detected", title="Client watermark present", verdict="detected",
                summary=f"the mark of client {client.key} is present (z = {score.z:.1f} by the {statistic} statistic)",
                severity=Severity.VIOLATION, statistic={"z": score.z, "statistic": statistic},
                evidence={"client": client.key, "reference": reference, "threshold_z": result.threshold_z}))
    facts["watermark_accused"] = ";".join(result.accused) or None
