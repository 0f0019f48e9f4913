"""Declared identity (metadata claims) set beside the weight evidence.

Claims are what the files say: GGUF ``general.base_model.*`` / ``general.name``, HF
config ``_name_or_path`` / ``base_model``. They can be wrong or forged, so they never
feed the verdict; they are reported next to it and every disagreement is flagged.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from provenance.textsafe import safe_text

_BASE_KEYS = re.compile(
    r"^(general\.base_model\.\d+\.(name|repo_url|organization)|config\.base_model|general\.source\.huggingface\.repository)$"
)
_SELF_KEYS = (
    "general.name",
    "general.basename",
    "general.repo_url",
    "config._name_or_path",
    "general.source.huggingface.repository",
    "general.organization",
)


def _norm(value: Any) -> str:
    text = str(value).lower()
    text = re.sub(r"^https?://(www\.)?huggingface\.co/", "", text)
    return re.sub(r"[^a-z0-9]+", "", text)


def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if isinstance(v, (str, int, float))]
    return [str(value)] if isinstance(value, (str, int, float)) and str(value) else []


def claimed_bases(claims: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in claims.items():
        if _BASE_KEYS.match(key):
            out += _strings(value)
    return out


def self_names(claims: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key in _SELF_KEYS:
        if key in claims:
            out += _strings(claims[key])
    return out


def _matches(names_a: list[str], names_b: list[str]) -> bool:
    na = {_norm(n) for n in names_a if _norm(n)}
    nb = {_norm(n) for n in names_b if _norm(n)}
    return any(a == b or (len(a) >= 6 and len(b) >= 6 and (a in b or b in a)) for a in na for b in nb)


def compare_claims(candidate: Mapping[str, Any], reference: Mapping[str, Any], related: bool | None) -> dict[str, Any]:
    """Claims of both sides, and flags where claims disagree with each other or the weights."""
    bases = claimed_bases(candidate)
    ref_names = self_names(reference)
    flags: list[str] = []
    claim_names_reference = bool(bases) and bool(ref_names) and _matches(bases, ref_names)
    if not bases:
        status = "no base-model claim in the candidate"
    elif not ref_names:
        status = "candidate claims a base model; the reference does not name itself, so the claim cannot be checked"
    elif claim_names_reference:
        status = "candidate claims the reference as its base"
    else:
        status = "candidate claims a different base model than the reference"
    if related is True and bases and ref_names and not claim_names_reference:
        flags.append(
            "weights show the candidate derives from the reference, but its metadata names another base: "
            + ", ".join(safe_text(b, 80) for b in bases)
        )
    if related is False and claim_names_reference:
        flags.append("metadata claims the reference as base model, but the weights show no relation")
    notes: list[str] = []
    if related is True and not bases:
        notes.append(
            "weights show the candidate derives from the reference; its metadata does not declare a base model"
        )
    same_name = bool(self_names(candidate)) and bool(ref_names) and _matches(self_names(candidate), ref_names)
    if related is False and same_name:
        flags.append("both files carry the same name, but the weights show no relation")
    return {
        "candidate": {k: safe_text(v, 200) for k, v in candidate.items()},
        "reference": {k: safe_text(v, 200) for k, v in reference.items()},
        "candidate_claimed_bases": [safe_text(b, 200) for b in bases],
        "reference_names": [safe_text(n, 200) for n in ref_names],
        "status": status,
        "disagreements": flags,
        "notes": notes,
    }
