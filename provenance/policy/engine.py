"""Evaluate a policy on checkpoints. Each rule is a small function returning findings.

A scan of many files keeps going past a bad one: an unreadable file becomes an error
result with the reader's one-line message, and the others are still checked.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from provenance.document import Finding, Severity
from provenance.errors import CheckpointError, PickleCheckpointRefused, input_boundary
from provenance.formats import Checkpoint, open_checkpoint
from provenance.formats.verify import verify_readable
from provenance.hashing import checkpoint_sha256s
from provenance.policy.load import Policy

CheckStatus = Literal["pass", "violation", "error"]


@dataclass
class CheckResult:
    path: str
    status: CheckStatus = "pass"
    findings: list[Finding] = field(default_factory=list)
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "format": self.format,
                "findings": [f.to_dict() for f in self.findings]}


def _violation(rule: str, title: str, summary: str, **evidence: Any) -> Finding:
    return Finding(id=rule, title=title, verdict="violation", summary=summary, severity=Severity.VIOLATION, evidence=evidence)


def rule_format(checkpoint: Checkpoint, policy: Policy) -> list[Finding]:
    findings = []
    if checkpoint.format not in policy.allow_formats:
        findings.append(_violation("format.allowed", "Format not allowed",
                                   f"format {checkpoint.format} is not allowed by the policy", format=checkpoint.format))
    size = sum(span.size for span in checkpoint.files)
    if policy.max_file_bytes is not None and size > policy.max_file_bytes:
        findings.append(_violation("format.size", "Checkpoint too large",
                                   f"{size} bytes exceed the policy's {policy.max_file_bytes}", bytes=size))
    return findings


def rule_metadata(checkpoint: Checkpoint, policy: Policy) -> list[Finding]:
    claims = {**checkpoint.metadata_claims}
    findings = []
    for key in policy.require_claims:
        value = claims.get(key, checkpoint.metadata.get(key))
        if value in (None, "", []):
            findings.append(_violation("metadata.required", "Required metadata missing", f"metadata key {key} is missing", key=key))
    if policy.require_base_model and not _declares_derivation(claims):
        findings.append(_violation("metadata.base_model", "No declared base model",
                                   "the checkpoint declares no base model or source (general.base_model.*, "
                                   "general.source.*, config base_model)"))
    return findings


def _declares_derivation(claims: dict[str, Any]) -> bool:
    # imported here: the compare package loads torch, which a policy without this rule never needs
    from provenance.compare.claims import claimed_bases

    return bool(claimed_bases(claims))


@lru_cache(maxsize=16)
def _reference_digests(path: str) -> tuple[frozenset[str], dict[str, str]]:
    with open_checkpoint(path) as reference:
        files, tensors = checkpoint_sha256s(reference)
    return frozenset(files.values()), tensors


def rule_forbidden_copies(checkpoint: Checkpoint, policy: Policy, digests: tuple[dict[str, str], dict[str, str]] | None) -> list[Finding]:
    if not policy.forbid_copies or digests is None:
        return []
    file_digests, tensor_digests = digests
    findings = []
    for forbidden in policy.forbid_copies:
        ref_files, ref_tensors = _reference_digests(forbidden.reference)
        identical_files = set(file_digests.values()) & ref_files
        # Compare by stored-bytes hash regardless of names: renaming tensors does not hide a copy.
        ref_hashes = set(ref_tensors.values())
        identical = sum(1 for digest in tensor_digests.values() if digest in ref_hashes)
        fraction = identical / max(1, len(tensor_digests))
        if identical_files or fraction >= forbidden.min_identical_fraction:
            findings.append(_violation(
                "copy.forbidden", "Exact copy of a forbidden reference",
                f"{identical} of {len(tensor_digests)} tensors are byte-identical to {forbidden.label}"
                + (" (whole file identical)" if identical_files else ""),
                reference=forbidden.label, identical_tensors=identical, fraction=round(fraction, 6),
                identical_file=bool(identical_files)))
    return findings


ExtraRule = Callable[[Checkpoint, Policy], list[Finding]]


def _weight_rules() -> list[ExtraRule]:
    from provenance.policy.weight_rules import rule_lineage, rule_watermark

    return [rule_lineage, rule_watermark]


INTERNAL_ERROR = "internal.error"
"""Finding id of a bug met while checking a file (the batch goes on; the command exits 70)."""


@input_boundary
def _evaluate(path: str, policy: Policy, result: CheckResult) -> None:
    with open_checkpoint(path) as checkpoint:
        result.format = checkpoint.format
        # Read what the other commands read (architecture, tokenizer, every tensor's decoding
        # path): a file that opens but whose rows cannot be read is an error, never a pass.
        verify_readable(checkpoint)
        result.findings += rule_format(checkpoint, policy)
        result.findings += rule_metadata(checkpoint, policy)
        digests = checkpoint_sha256s(checkpoint) if policy.forbid_copies else None
        result.findings += rule_forbidden_copies(checkpoint, policy, digests)
        for rule in _weight_rules():
            result.findings += rule(checkpoint, policy)


def evaluate(path: str, policy: Policy, catch_bugs: bool = True) -> CheckResult:
    """Check one file; ``catch_bugs=False`` lets a bug propagate (``provenance --debug``)."""
    result = CheckResult(path=path)
    try:
        _evaluate(path, policy, result)
    except PickleCheckpointRefused as exc:
        result.findings.append(_violation("format.pickle", "Pickle checkpoint",
                                          "pickle checkpoints can execute code when loaded; publish safetensors or GGUF",
                                          message=exc.one_line()))
    except CheckpointError as exc:
        result.findings.append(Finding(id="format.malformed", title="Unreadable checkpoint", verdict="error",
                                       summary=exc.one_line(), severity=Severity.ERROR, evidence=exc.to_dict()))
    except Exception as exc:  # keep scanning the batch; report the bug as an error result
        if not catch_bugs:
            raise
        result.findings.append(Finding(id=INTERNAL_ERROR, title="Internal error", verdict="error",
                                       summary=f"{type(exc).__name__}: {exc}", severity=Severity.ERROR))
    if any(f.severity == Severity.ERROR for f in result.findings):
        result.status = "error"
    elif any(f.severity == Severity.VIOLATION for f in result.findings):
        result.status = "violation"
    return result


def check_paths(paths: Iterable[str], policy: Policy, catch_bugs: bool = True) -> list[CheckResult]:
    return [evaluate(os.fspath(p), policy, catch_bugs) for p in paths]
