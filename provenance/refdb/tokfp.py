"""Tokenizer fingerprints and how a candidate's vocabulary relates to one.

A fingerprint holds exact hashes (ordered token list, scores, merges) and a bottom-k
sketch of the token *set*: the ``k`` smallest 64-bit hashes of the token byte strings,
each with its token id. Because the sketch keeps every token hash below its threshold
``tau`` (the k-th smallest), it answers, from a candidate's full token list and with
``k`` samples of precision:

* what share of the reference's tokens the candidate holds (containment), and the
  reverse share, from the candidate's own tokens that fall below ``tau``;
* whether shared tokens keep their ids (same order) or not (reordered);
* and exactly, by hashing a prefix of the candidate list, whether the candidate is the
  reference plus appended tokens (phi-3 = Llama 2 + 64).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.refdb.tokens import Vocabulary
from provenance.tokenizer import token_list_sha256

SKETCH_K = 2048
"""Sketch size: containment and id agreement are estimated to about +-1/sqrt(k) ~ 2%."""
_SALT = b"provenance.refdb token sketch v1\x00"


def token_hashes(tokens: list[bytes]) -> np.ndarray:
    """A salted 64-bit hash of each token's bytes, in id order (uint64)."""
    out = np.empty(len(tokens), dtype=np.uint64)
    for i, token in enumerate(tokens):
        out[i] = int.from_bytes(hashlib.sha256(_SALT + token).digest()[:8], "little")
    return out


def bottom_k(hashes: np.ndarray, k: int = SKETCH_K) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique hashes, ids)``: the ``k`` smallest distinct hashes and each one's first id."""
    unique, first = np.unique(hashes, return_index=True)  # sorted; first occurrence = lowest id
    return unique[:k].astype(np.uint64), first[:k].astype(np.uint32)


@dataclass
class TokenizerFingerprint:
    vocab_size: int
    tokens_sha256: str
    distinct_tokens: int
    model: str | None = None
    scores_sha256: str | None = None
    merges_count: int | None = None
    merges_sha256: str | None = None
    special_tokens: dict[str, int] = field(default_factory=dict)
    sketch_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    sketch_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON part; the sketch arrays go to the entry's .npz (see :mod:`schema`)."""
        return {
            "vocab_size": self.vocab_size,
            "distinct_tokens": self.distinct_tokens,
            "model": self.model,
            "tokens_sha256": self.tokens_sha256,
            "scores_sha256": self.scores_sha256,
            "merges_count": self.merges_count,
            "merges_sha256": self.merges_sha256,
            "special_tokens": dict(sorted(self.special_tokens.items())),
            "sketch": {"kind": "bottom-k", "k": SKETCH_K, "hash": "sha256(salt + token)[:8] little-endian",
                       "salt": _SALT.decode("ascii").rstrip("\x00"), "size": len(self.sketch_hashes)},
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], hashes: np.ndarray, ids: np.ndarray) -> TokenizerFingerprint:
        return cls(
            vocab_size=int(data["vocab_size"]), tokens_sha256=str(data["tokens_sha256"]),
            distinct_tokens=int(data.get("distinct_tokens", data["vocab_size"])), model=data.get("model"),
            scores_sha256=data.get("scores_sha256"), merges_count=data.get("merges_count"),
            merges_sha256=data.get("merges_sha256"), special_tokens=dict(data.get("special_tokens") or {}),
            sketch_hashes=np.asarray(hashes, np.uint64), sketch_ids=np.asarray(ids, np.uint32),
            source=str(data.get("source", "")),
        )


def fingerprint_vocabulary(vocab: Vocabulary) -> TokenizerFingerprint:
    hashes = token_hashes(vocab.tokens)
    sketch_hashes, sketch_ids = bottom_k(hashes)
    return TokenizerFingerprint(
        vocab_size=len(vocab.tokens),
        tokens_sha256=token_list_sha256(vocab.tokens),
        distinct_tokens=len(np.unique(hashes)),
        model=vocab.model,
        # Same bytes as GGUF's FLOAT32 array, so a GGUF's scores hash compares directly.
        scores_sha256=hashlib.sha256(np.asarray(vocab.scores, "<f4").tobytes()).hexdigest() if vocab.scores is not None else None,
        merges_count=len(vocab.merges) if vocab.merges is not None else None,
        merges_sha256=token_list_sha256(vocab.merges) if vocab.merges else None,
        special_tokens=dict(vocab.special_tokens),
        sketch_hashes=sketch_hashes,
        sketch_ids=sketch_ids,
        source=vocab.source,
    )


class CandidateVocabulary:
    """A candidate's full vocabulary, prepared once and compared against many references."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.fingerprint = fingerprint_vocabulary(vocab)
        self.hashes = token_hashes(vocab.tokens)
        order = np.argsort(self.hashes, kind="stable")
        self._sorted = self.hashes[order]
        self._ids = order.astype(np.int64)  # id of each sorted hash (first occurrence for duplicates)
        self._prefix_cache: dict[int, str] = {}

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """The candidate id of each hash, or -1 where the candidate lacks the token."""
        pos = np.searchsorted(self._sorted, hashes)
        pos = np.minimum(pos, len(self._sorted) - 1) if len(self._sorted) else pos
        found = (self._sorted[pos] == hashes) if len(self._sorted) else np.zeros(len(hashes), bool)
        return np.where(found, self._ids[pos] if len(self._sorted) else -1, -1)

    def prefix_sha256(self, n: int) -> str:
        if n not in self._prefix_cache:
            self._prefix_cache[n] = token_list_sha256(self.vocab.tokens[:n])
        return self._prefix_cache[n]


@dataclass
class TokenizerRelation:
    relation: str
    """``identical``, ``extends`` (reference + appended tokens, same ids), ``prefix-of``
    (candidate is the reference's first tokens), ``near-identical`` (same set and ids within
    the sketch's precision, list hashes differ), ``reordered`` (same tokens, other ids),
    ``superset``, ``subset``, ``partial-overlap`` or ``unrelated``."""
    ref_in_candidate: float
    """Estimated share of the reference's distinct tokens the candidate holds."""
    candidate_in_ref: float | None
    jaccard: float | None
    same_id_share: float | None
    """Among shared sketched tokens, the share with the same id in both."""
    shared_sampled: int
    scores_equal: bool | None
    merges_equal: bool | None
    special_tokens_equal: bool | None
    exact_prefix: bool = False
    extra_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    @property
    def strength(self) -> float:
        """0..1, how strongly this relation ties the candidate to the reference's family."""
        base = {"identical": 1.0, "extends": 0.9, "prefix-of": 0.85, "near-identical": 0.8, "reordered": 0.6, "superset": 0.5,
                "subset": 0.5, "partial-overlap": 0.2, "unrelated": 0.0}[self.relation]
        return base * (self.jaccard if self.relation == "partial-overlap" and self.jaccard is not None else 1.0)


# Thresholds on sketch estimates (k=2048: one standard error is ~1%).
_NEAR_ALL = 0.97
_SAME_ORDER = 0.95
_SHARED = 0.5


def compare_vocabulary(candidate: CandidateVocabulary, ref: TokenizerFingerprint) -> TokenizerRelation:
    cfp = candidate.fingerprint
    ids = candidate.lookup(ref.sketch_hashes)
    present = ids >= 0
    n_ref_sketch = len(ref.sketch_hashes)
    ref_in_cand = float(present.mean()) if n_ref_sketch else 0.0
    same_id = float((ids[present] == ref.sketch_ids[present].astype(np.int64)).mean()) if present.any() else None
    # The sketch is complete below tau, so the candidate's tokens below tau estimate the reverse share.
    tau = ref.sketch_hashes[-1] if n_ref_sketch >= SKETCH_K else np.uint64(np.iinfo(np.uint64).max)
    below = np.unique(candidate.hashes[candidate.hashes <= tau])
    cand_in_ref = float(np.isin(below, ref.sketch_hashes).mean()) if len(below) else None
    jaccard = None
    if cand_in_ref is not None:
        shared = ref_in_cand * ref.distinct_tokens
        union = ref.distinct_tokens + cfp.distinct_tokens - shared
        jaccard = float(shared / union) if union > 0 else None

    def equal(a: object, b: object) -> bool | None:
        return None if a is None or b is None else a == b

    relation = TokenizerRelation(
        relation="unrelated", ref_in_candidate=ref_in_cand, candidate_in_ref=cand_in_ref, jaccard=jaccard,
        same_id_share=same_id, shared_sampled=int(present.sum()),
        scores_equal=equal(cfp.scores_sha256, ref.scores_sha256), merges_equal=equal(cfp.merges_sha256, ref.merges_sha256),
        special_tokens_equal=equal(cfp.special_tokens or None, ref.special_tokens or None),
    )
    if cfp.tokens_sha256 == ref.tokens_sha256:
        relation.relation = "identical"
    elif cfp.vocab_size > ref.vocab_size and candidate.prefix_sha256(ref.vocab_size) == ref.tokens_sha256:
        relation.relation, relation.exact_prefix = "extends", True
        relation.extra_tokens = cfp.vocab_size - ref.vocab_size
    elif cfp.vocab_size < ref.vocab_size and (cand_in_ref or 0) >= _NEAR_ALL and (same_id or 0) >= _SAME_ORDER:
        relation.relation = "prefix-of" if _ids_are_prefix(candidate, ref) else "subset"
    elif ref_in_cand >= _NEAR_ALL and (cand_in_ref or 0) >= _NEAR_ALL:
        # Same set: either the ids moved, or a few tokens differ (the list hashes differ).
        relation.relation = "reordered" if (same_id or 0) < _SAME_ORDER else "near-identical"
    elif ref_in_cand >= _NEAR_ALL:
        relation.relation = "superset"
    elif (cand_in_ref or 0) >= _NEAR_ALL:
        relation.relation = "subset"
    elif max(ref_in_cand, cand_in_ref or 0) >= _SHARED or (jaccard or 0) >= 0.3:
        relation.relation = "partial-overlap"
    return relation


def _ids_are_prefix(candidate: CandidateVocabulary, ref: TokenizerFingerprint) -> bool:
    """Every sketched reference token with an id below the candidate's size is at that id."""
    inside = ref.sketch_ids < candidate.fingerprint.vocab_size
    if not inside.any():
        return False
    ids = candidate.lookup(ref.sketch_hashes[inside])
    return bool((ids == ref.sketch_ids[inside].astype(np.int64)).all())
