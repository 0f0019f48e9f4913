"""Declared identity (metadata claims) set beside the weight evidence.

Claims are what the files say (the readers' ``metadata_claims``: GGUF ``general.*`` keys as
stored, HF ``config.*``, safetensors ``__metadata__`` as ``safetensors.*``). They can be
wrong or forged, so they never feed the verdict; they are reported next to it and every
disagreement is flagged. :data:`DERIVATION_CLAIMS` is the one list of keys that declare
what a checkpoint derives from; lineage's claim check and the CI policy's
``require_base_model`` both read it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gguf import Keys

from provenance.compare.result import ClaimsComparison
from provenance.textsafe import safe_text

_GGUF = Keys.General
#: Keys that declare what the weights derive from, each with what it means. ``{id}``
#: numbers a parent (0, 1, ...: a merge lists several). GGUF keys and meanings are
#: gguf-py's (``gguf.Keys.General``); a parent's author, version and description are
#: not listed because they do not identify it.
DERIVATION_CLAIMS: tuple[tuple[str, str], ...] = (
    (_GGUF.BASE_MODEL_NAME, "GGUF: name of a parent model (the weights were fine-tuned or merged from it)"),
    (_GGUF.BASE_MODEL_ORGANIZATION, "GGUF: organization of a parent model"),
    (_GGUF.BASE_MODEL_REPO_URL, "GGUF: repository URL of a parent model"),
    (_GGUF.BASE_MODEL_URL, "GGUF: website or paper URL of a parent model"),
    (_GGUF.BASE_MODEL_DOI, "GGUF: DOI of a parent model"),
    (_GGUF.BASE_MODEL_UUID, "GGUF: UUID of a parent model"),
    (_GGUF.SOURCE_URL, "GGUF: website or paper URL of the model this file was converted from (same weights)"),
    (_GGUF.SOURCE_REPO_URL, "GGUF: repository of the model this file was converted from"),
    (_GGUF.SOURCE_DOI, "GGUF: DOI of the model this file was converted from"),
    (_GGUF.SOURCE_UUID, "GGUF: UUID of the model this file was converted from"),
    ("general.source.huggingface.repository", "GGUF, early converters: the Hugging Face repository converted from"),
    ("config.base_model", "HF config.json: base_model, the Hub's name for the parent model, where a config carries it"),
    ("safetensors.base_model", "safetensors __metadata__: a base_model entry, as the writer states it"),
    ("card.base_model", "model card (README.md front matter): base_model, the Hub's model-tree parent(s)"),
    ("peft.base_model_name_or_path", "PEFT adapter_config.json: the model the adapter was trained on"),
)
RELATION_KEY = "card.base_model_relation"
"""The model card's declared relation to its ``base_model`` (adapter, merge, quantized, finetune)."""
#: The Hub's relations (huggingface.co/docs/hub/model-cards, "Specifying a base model") a measured
#: verdict is consistent with. Absent kinds: unchanged weights ("identical") fit no declared
#: relation, no relation is measured for an unrelated or undecided pair, and any other related
#: kind is a change of the weights (fine-tune or merge).
_RELATIONS_OF_KIND: dict[str, frozenset[str]] = {
    "requantized": frozenset({"quantized"}),
    "identical": frozenset(),
}
_CHANGED = frozenset({"finetune", "merge"})
# Not a derivation claim: config ``_name_or_path`` is whatever path ``from_pretrained`` was
# given when the config was loaded (often a local folder; transformers 5 no longer saves
# it). It can name the model itself, so it is one of the names a reference goes by.
_DERIVATION_KEYS = re.compile(
    "^(" + "|".join(re.escape(key).replace(re.escape("{id}"), r"\d+") for key, _ in DERIVATION_CLAIMS) + ")$"
)
_SELF_KEYS = (
    "general.name",
    "general.basename",
    "general.repo_url",
    "config._name_or_path",
    "general.source.huggingface.repository",
    "general.organization",
    # The repo id the Hugging Face cache files a model under (``hf:ORG/NAME``): the name a card's
    # ``base_model`` uses, also when the weights' own metadata names the model otherwise.
    "hub.repo_id",
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
    """The values of every :data:`DERIVATION_CLAIMS` key present, in the claims' order."""
    out: list[str] = []
    for key, value in claims.items():
        if _DERIVATION_KEYS.match(key):
            out += _strings(value)
    return out


def self_names(claims: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key in _SELF_KEYS:
        if key in claims:
            out += _strings(claims[key])
    return out


def names_match(names_a: list[str], names_b: list[str]) -> bool:
    """Whether any name of one list is, once normalised, any name of the other (or contains it,
    for names of six characters or more)."""
    na = {_norm(n) for n in names_a if _norm(n)}
    nb = {_norm(n) for n in names_b if _norm(n)}
    return any(a == b or (len(a) >= 6 and len(b) >= 6 and (a in b or b in a)) for a in na for b in nb)


def relation_agrees(declared: str, kind: str, related: bool | None, candidate_is_adapter: bool) -> bool | None:
    """Whether a declared Hub relation fits the measured verdict (None: nothing measured)."""
    if related is None:
        return None
    if not related:
        return False
    if candidate_is_adapter:
        return declared == "adapter"
    return declared in _RELATIONS_OF_KIND.get(kind, _CHANGED)


def compare_claims(candidate: Mapping[str, Any], reference: Mapping[str, Any], related: bool | None,
                   kind: str | None = None, candidate_is_adapter: bool = False) -> ClaimsComparison:
    """Claims of both sides, and flags where claims disagree with each other or the weights
    (``kind``: the verdict's, to check a declared ``base_model_relation``)."""
    bases = claimed_bases(candidate)
    ref_names = self_names(reference)
    flags: list[str] = []
    claim_names_reference = bool(bases) and bool(ref_names) and names_match(bases, ref_names)
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
    same_name = bool(self_names(candidate)) and bool(ref_names) and names_match(self_names(candidate), ref_names)
    if related is False and same_name:
        flags.append("both files carry the same name, but the weights show no relation")
    declared = candidate.get(RELATION_KEY)
    agrees = None
    # The relation is to the card's base_model: checked when a declared base is the reference, or when
    # the reference names itself nothing, the card declares one base and the candidate derives from
    # the reference.
    one_base = len(_strings(candidate.get("card.base_model"))) == 1
    if isinstance(declared, str) and kind is not None and (claim_names_reference
                                                           or (not ref_names and one_base and related)):
        agrees = relation_agrees(declared, kind, related, candidate_is_adapter)
        if agrees is False and related:  # unrelated: flagged above, the claim naming the reference
            measured = "an adapter on it" if candidate_is_adapter else f"a {kind.replace('-', ' ')} of it"
            flags.append(f"model card declares base_model_relation {safe_text(declared, 20)!r} to the reference, but "
                         f"the weights show {measured}")
    return ClaimsComparison(
        candidate={k: safe_text(v, 200) for k, v in candidate.items()},
        reference={k: safe_text(v, 200) for k, v in reference.items()},
        candidate_claimed_bases=tuple(safe_text(b, 200) for b in bases),
        reference_names=tuple(safe_text(n, 200) for n in ref_names),
        status=status,
        disagreements=tuple(flags),
        notes=tuple(notes),
        declared_relation=safe_text(declared, 40) if isinstance(declared, str) else None,
        relation_agrees=agrees,
    )
