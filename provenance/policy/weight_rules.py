"""Policy rules that need the weights: declared base models must agree with the lineage
evidence, and watermark keys must (or must not) be present.

Policy sections (validated here, strictly)::

    [lineage]
    references = { "llama-2-7b" = "refs/llama-2-7b" }   # declared base name -> checkpoint path (or hf:/ollama: name)
    declared_base_must_match = true                       # a declared base listed here must test as related
    declared_relation_must_match = true                   # the model card's base_model_relation must fit the weights
    require_known_base = false                            # the declared base must be one of `references`

    [watermark]
    registry = "keys/"                                    # a key registry (see docs/watermark.md)
    reference = "refs/our-model"                          # optional: the owner's unmarked model
    require = ["acme"]                                    # each listed client's mark must be detected
    forbid = ["internal-only"]                            # no listed client's mark may be detected
"""
from __future__ import annotations

from typing import Any

from provenance.document import Finding, Severity
from provenance.formats import Checkpoint
from provenance.policy.load import Policy, resolve_path


def _violation(rule: str, title: str, summary: str, p_value: float | None = None, **evidence: Any) -> Finding:
    return Finding(id=rule, title=title, verdict="violation", summary=summary, severity=Severity.VIOLATION,
                   p_value=p_value, evidence=evidence)


def rule_lineage(checkpoint: Checkpoint, policy: Policy) -> list[Finding]:
    section = policy.extra.get("lineage")
    if not section:
        return []
    from provenance.compare import compare
    from provenance.compare.claims import RELATION_KEY, claimed_bases, names_match, relation_agrees

    claims = checkpoint.metadata_claims
    declared = claimed_bases(claims)
    relation = claims.get(RELATION_KEY)
    references: dict[str, str] = section.get("references", {})
    listed = [name for name in references if declared and names_match(declared, [name])]
    findings = []
    if declared and not listed and section.get("require_known_base", False):
        findings.append(_violation("lineage.unknown_base", "Declared base model not allowed",
                                   f"declared base model {declared} is not among the policy's references", declared=declared))
    check_base = section.get("declared_base_must_match", True)
    check_relation = section.get("declared_relation_must_match", True) and isinstance(relation, str)
    if not (check_base or check_relation):
        return findings
    name_as_given = checkpoint.location.locator if checkpoint.location else checkpoint.path
    for name in listed:
        result = compare(name_as_given, resolve_path(policy, references[name]))
        if check_base and not result.verdict.related:
            findings.append(_violation(
                "lineage.declared_base_mismatch", "Declared base model contradicted by the weights",
                f"declares base model {name}, but the weights test as {result.verdict.kind} to it",
                p_value=result.verdict.p_asymptotic, declared=declared, reference=name,
                verdict=result.verdict.kind))
        adapter = result.adapter is not None and result.adapter.side == "candidate"
        if check_relation and relation_agrees(relation, result.verdict.kind, result.verdict.related, adapter) is False:
            findings.append(_violation(
                "lineage.declared_relation_mismatch", "Declared relation contradicted by the weights",
                f"the model card declares base_model_relation {relation!r} to {name}, but the weights test as "
                f"{'an adapter on' if adapter else result.verdict.kind + ' of'} it",
                p_value=result.verdict.p_asymptotic, declared_relation=relation, reference=name,
                verdict=result.verdict.kind))
    return findings


def rule_watermark(checkpoint: Checkpoint, policy: Policy) -> list[Finding]:
    section = policy.extra.get("watermark")
    if not section:
        return []
    from provenance.watermark import trace
    from provenance.watermark.trace import cached_registry

    keys = cached_registry(resolve_path(policy, section["registry"]), checkpoint.architecture)
    reference = resolve_path(policy, section["reference"]) if section.get("reference") else None
    result = trace(checkpoint.path, keys, reference=reference)
    detected = set(result.accused)
    findings = []
    for client in section.get("require", []):
        if client not in detected:
            findings.append(_violation("watermark.required_missing", "Required watermark missing",
                                       f"the mark of client {client} is not detected (threshold z >= {result.threshold_z:g})",
                                       client=client, detected=sorted(detected)))
    for client in section.get("forbid", []):
        if client in detected:
            best = next(c for c in result.clients() if c.key == client).best
            statistic, z = (best[0], best[1].z) if best else (None, float("nan"))
            findings.append(_violation("watermark.forbidden_present", "Forbidden watermark present",
                                       f"the mark of client {client} is present (z = {z:.1f} by the {statistic} statistic)",
                                       client=client, z=z, statistic=statistic))
    return findings
