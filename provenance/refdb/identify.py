"""``identify``: rank reference entries against a candidate, from the candidate file alone.

Each entry is scored on independent signals, strongest first: exact file hash, exact
tensor hashes, weight fingerprint (calibrated z), tokenizer relation, architecture.
Every signal is reported with its evidence, whether it matched or not, so a reader
can see *why* an entry ranks where it does. The candidate is read once: hashes only
when ``hashes`` allows it (a full pass), the fingerprint by sampled blocks (a small,
metered share of the bytes), metadata from the header.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.formats.vocabulary import checkpoint_vocabulary
from provenance.hashing import checkpoint_sha256s
from provenance.names.arch import ArchRecord
from provenance.refdb.calibration import TokenizerCalibration, load_calibration
from provenance.refdb.schema import RefEntry
from provenance.refdb.store import RefDB
from provenance.refdb.tokfp import CandidateVocabulary, compare_vocabulary
from provenance.refdb.weightfp import CandidateReader, WeightMatch, score

SCHEMA = "provenance.identify/1"
HASH_AUTO_LIMIT = 1 << 30
"""``hashes="auto"`` hashes candidates up to this many bytes (a full read); larger ones
are identified from sampled blocks and metadata only."""
SHAPE_FIELDS = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "vocab_size", "n_expert")
SOFT_FIELDS = ("arch", "context_length", "rope_freq_base", "n_expert_used")


Signal = Literal["file-hash", "tensor-hashes", "weight-fingerprint", "tokenizer", "architecture"]
EvidenceStatus = Literal["match", "partial", "no-match", "unavailable"]


@dataclass
class Evidence:
    signal: Signal
    status: EvidenceStatus
    detail: str
    """One sentence for people; the numbers behind it are in ``data``."""
    data: dict[str, Any] = field(default_factory=dict)
    """The signal's own record (its JSON form): hits, counts, the fingerprint's z and p..."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CandidateMatch:
    entry_id: str
    family: str
    verdict: str
    score: float
    evidence: list[Evidence]

    @property
    def matched(self) -> bool:
        return self.verdict not in ("no match", "architecture only")

    def evidence_for(self, signal: Signal) -> Evidence | None:
        return next((e for e in self.evidence if e.signal == signal), None)

    @property
    def weight_p_value(self) -> float | None:
        """The weight fingerprint's calibrated p-value when the weights matched."""
        e = self.evidence_for("weight-fingerprint")
        p = e.data.get("p_value") if e is not None and e.status == "match" else None
        return float(p) if isinstance(p, (int, float)) else None

    @property
    def token_overlap(self) -> tuple[float, float] | None:
        """(Jaccard share of tokens, share of those with the same ids) against this entry."""
        e = self.evidence_for("tokenizer")
        if e is None or "jaccard" not in e.data:
            return None
        return float(e.data["jaccard"] or 0.0), float(e.data.get("same_id_share") or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry_id, "family": self.family, "verdict": self.verdict, "score": round(self.score, 3),
                "matched": self.matched, "evidence": [e.to_dict() for e in self.evidence]}


@dataclass(frozen=True)
class TokenizerSummary:
    """The candidate's tokenizer as identify fingerprinted it."""

    model: str | None
    vocab_size: int
    tokens_sha256: str
    scores_sha256: str | None
    merges_sha256: str | None
    source: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """Which evidence named the family, the rule it met, and what that rule is held to."""

    entry_id: str
    family: str
    signal: str
    """``file-hash``, ``tensor-hashes``, ``weight-fingerprint`` or ``tokenizer``."""
    rule: str
    unrelated_max: str
    """What unrelated pairs reach on the same statistic, in words (the rule sits above it)."""
    rules_out: str
    other_families_matched: list[str] = field(default_factory=list)
    """Other families that met a rule too (declared relatives, e.g. a vocabulary it extends)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NearestFamily:
    """A family whose tokenizer the candidate overlaps without meeting any lineage rule."""

    family: str
    entry_id: str
    shared: float
    """Share of the family's tokens the candidate holds."""
    unrelated_max: float | None
    """The most any unrelated family of the candidate's relative size holds (calibration)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IdentifyResult:
    path: str
    format: str
    refdb: str
    candidates: list[CandidateMatch]
    architecture: ArchRecord
    tokenizer: TokenizerSummary | None
    claims: dict[str, Any]
    hashed: bool
    bytes_total: int
    fingerprint_bytes_read: int
    fingerprint_page_bytes: int
    fingerprint_reads: int
    seconds: float
    weights_summary: str
    decision: Decision | None = None
    nearest: list[NearestFamily] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def identified(self) -> bool:
        return any(c.matched for c in self.candidates)

    @property
    def best(self) -> CandidateMatch | None:
        return next((c for c in self.candidates if c.matched), None)

    @property
    def summary(self) -> str:
        """One line: what was identified, by which evidence and rule, and what it rules out;
        or, with no match, the nearest families beside what unrelated families reach."""
        d = self.decision
        if d is not None:
            return (f"identified: {d.entry_id} ({d.family}) by {d.signal} ({d.rule}; {d.unrelated_max}); "
                    f"{d.rules_out}")
        if not self.nearest:
            return "no match"
        near = "; ".join(
            f"{n.family} ({n.entry_id}): shares {100 * n.shared:.1f}% of tokens"
            + (f" (unrelated families of this size share up to {100 * n.unrelated_max:.1f}%)" if n.unrelated_max is not None
               else "") for n in self.nearest)
        return f"no match: no entry meets a rule that unrelated pairs never reach; nearest: {near}"

    def weight_matches(self) -> list[CandidateMatch]:
        return [c for c in self.candidates if (e := c.evidence_for("weight-fingerprint")) and e.status == "match"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "path": self.path, "format": self.format, "refdb": self.refdb,
            "identified": self.identified, "best": self.best.entry_id if self.best else None,
            "best_family": self.best.family if self.best else None, "weights_summary": self.weights_summary,
            "architecture": {k: v for k, v in self.architecture.to_dict().items() if v is not None},
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer else None, "claims": self.claims,
            "hashed": self.hashed, "bytes_total": self.bytes_total,
            "fingerprint_read": {"bytes": self.fingerprint_bytes_read, "page_bytes": self.fingerprint_page_bytes,
                                 "reads": self.fingerprint_reads,
                                 "share_of_bytes": round(self.fingerprint_bytes_read / self.bytes_total, 6) if self.bytes_total else None},
            "seconds": round(self.seconds, 3),
            "decision": self.decision.to_dict() if self.decision else None,
            "nearest": [n.to_dict() for n in self.nearest],
            "summary": self.summary,
            "candidates": [c.to_dict() for c in self.candidates],
        }


# ----- signals ------------------------------------------------------------------------

def _file_evidence(entry: RefEntry, file_hashes: dict[str, str] | None) -> Evidence:
    if not entry.files:
        return Evidence("file-hash", "unavailable", "the entry records no file hashes")
    if file_hashes is None:
        return Evidence("file-hash", "unavailable", "candidate not hashed (too large for --hashes auto)")
    known = {f["sha256"]: f["name"] for f in entry.files}
    hits = [known[h] for h in file_hashes.values() if h in known]
    if hits:
        return Evidence("file-hash", "match", f"file identical to {hits[0]}", {"files": hits})
    return Evidence("file-hash", "no-match", "no file identical")


def _tensor_evidence(entry: RefEntry, tensor_hashes: dict[str, str] | None) -> Evidence:
    if not entry.tensors:
        return Evidence("tensor-hashes", "unavailable", "the entry records no tensor hashes")
    if tensor_hashes is None:
        return Evidence("tensor-hashes", "unavailable", "candidate not hashed")
    useful = {n: t for n, t in entry.tensors.items() if t.get("informative", not t.get("constant", False))}
    by_hash: dict[str, list[str]] = {}
    for name, digest in tensor_hashes.items():
        by_hash.setdefault(digest, []).append(name)
    same = [n for n, t in useful.items() if t["sha256"] in by_hash]
    renamed = [n for n in same if n not in by_hash[useful[n]["sha256"]]]
    data = {"equal": len(same), "informative": len(useful), "renamed": renamed[:20],
            "constant_ignored": len(entry.tensors) - len(useful)}
    if useful and len(same) == len(useful):
        return Evidence("tensor-hashes", "match", f"all {len(useful)} informative tensors byte-identical", data)
    if same:
        return Evidence("tensor-hashes", "partial", f"{len(same)} of {len(useful)} informative tensors byte-identical", data)
    return Evidence("tensor-hashes", "no-match", f"none of {len(useful)} informative tensors byte-identical", data)


def _tokenizer_evidence(entry: RefEntry, candidate: CandidateVocabulary | None,
                        calibration: TokenizerCalibration | None) -> tuple[Evidence, float]:
    if entry.tokenizer is None:
        return Evidence("tokenizer", "unavailable", "the entry records no tokenizer"), 0.0
    if candidate is None:
        return Evidence("tokenizer", "unavailable", "the candidate holds no tokenizer"), 0.0
    rel = compare_vocabulary(candidate, entry.tokenizer)
    ref_size = entry.tokenizer.vocab_size
    null = calibration.containment_max(candidate.fingerprint.vocab_size, ref_size) if calibration else None
    shares = (f"shares {100 * rel.ref_in_candidate:.1f}% of the reference's tokens"
              + (f" (unrelated families of this size share up to {100 * null:.1f}%)" if null is not None else ""))
    detail = {
        "identical": "identical token list",
        "extends": f"the reference's {ref_size} tokens, same ids, plus {rel.extra_tokens} more",
        "prefix-of": f"the reference's first {candidate.fingerprint.vocab_size} tokens, same ids",
        "same-ids": f"~{100 * (rel.aligned_share or 0):.1f}% of the reference's tokens at the same ids "
                    f"({rel.extra_tokens:+d} tokens)",
        "reordered": f"the same tokens (Jaccard ~{rel.jaccard or 0:.3f}) at other ids",
    }.get(rel.relation, shares + (", at other ids" if rel.ref_in_candidate else ""))
    if rel.rule in ("merges", "scores"):
        detail += f"; {rel.rule} identical"
    extras = [f"{name} {'equal' if value else 'differ'}" for name, value in
              (("scores", rel.scores_equal), ("merges", rel.merges_equal)) if value is not None]
    if extras:
        detail += " (" + ", ".join(extras) + ")"
    data = {"relation": rel.relation, "rule": rel.rule, "unrelated_containment_max": null, **rel.to_dict()}
    return Evidence("tokenizer", "match" if rel.lineage else "no-match", detail, data), rel.strength


def _architecture_evidence(entry: RefEntry, arch: dict[str, Any]) -> tuple[Evidence, float]:
    ref = entry.architecture
    if not ref:
        return Evidence("architecture", "unavailable", "the entry records no architecture"), 0.0
    compared = [f for f in SHAPE_FIELDS if ref.get(f) is not None and arch.get(f) is not None]
    if not compared:
        return Evidence("architecture", "unavailable", "no shape field known on both sides"), 0.0
    differ = {f: {"reference": ref[f], "candidate": arch[f]} for f in compared if ref[f] != arch[f]}
    soft = {f: {"reference": ref.get(f), "candidate": arch.get(f)} for f in SOFT_FIELDS
            if ref.get(f) is not None and arch.get(f) is not None and ref.get(f) != arch.get(f)}
    data = {"compared": compared, "differ": differ, "other_differences": soft, "reference_source": ref.get("source")}
    if not differ:
        note = f"; differs in {', '.join(soft)}" if soft else ""
        return Evidence("architecture", "match", f"same shapes ({', '.join(compared)}){note}", data), 1.0 - 0.1 * len(soft)
    share = 1 - len(differ) / len(compared)
    return Evidence("architecture", "no-match", f"differs in {', '.join(differ)}", data), 0.0 if share < 0.5 else share * 0.3


def _weight_evidence(entry: RefEntry, reader: CandidateReader | None) -> tuple[Evidence, WeightMatch | None]:
    if entry.weights is None:
        return Evidence("weight-fingerprint", "unavailable", "the entry has no weight fingerprint"), None
    if reader is None:
        return Evidence("weight-fingerprint", "unavailable", "the candidate holds no tensors"), None
    match = score(entry.weights, reader)
    if match.status == "not-comparable":
        return Evidence("weight-fingerprint", "unavailable", "no tensor of the same name and size", match.to_dict(False)), match
    detail = (f"z={match.calibrated_z:.1f} (p={match.p_value:.2g}), median r={match.median_r:.3f} over "
              f"{match.tensors_compared} tensors, layout {match.layout}")
    status = "match" if match.status == "match" else "no-match"
    return Evidence("weight-fingerprint", status, detail, match.to_dict(True)), match


def _verdict(ev: dict[str, Evidence], tok_strength: float, arch_strength: float) -> tuple[str, float]:
    """A label from the strongest signal that matched, and a score that orders entries by it."""
    s = 0.0
    verdict = "no match"
    tensors, weights, tok = ev["tensor-hashes"], ev["weight-fingerprint"], ev["tokenizer"]
    share = tensors.data["equal"] / max(1, tensors.data["informative"]) if tensors.status in ("match", "partial") else 0.0
    if ev["file-hash"].status == "match":
        s += 1000
        verdict = "same file"
    s += 500 * share
    if weights.status == "match":
        s += 200 + min(float(weights.data.get("calibrated_z") or 0), 100.0)
    if verdict == "no match":
        if tensors.status == "match":
            verdict = "same tensors"
        elif weights.status == "match":
            verdict = "weights match the reference's fingerprint"
            if share:
                verdict += f" ({tensors.data['equal']} tensors byte-identical)"
        elif share:
            verdict = "some tensors identical"
    # Exact side hashes break ties between entries with the same token list.
    s += 60 * tok_strength + 30 * arch_strength
    s += sum(2.0 for key in ("scores_equal", "merges_equal", "special_tokens_equal") if tok.data.get(key))
    if verdict == "no match":
        relation = tok.data.get("relation")
        if relation == "identical" and ev["architecture"].status == "match":
            verdict = "same tokenizer and architecture"
        elif relation == "identical":
            verdict = "same tokenizer"
        elif tok.status == "match":
            verdict = f"related tokenizer ({tok.data['rule']})"
        elif ev["architecture"].status == "match":
            verdict = "architecture only"
    return verdict, s


# ----- the pass -----------------------------------------------------------------------

def _should_hash(ckpt: Checkpoint, hashes: str | bool) -> bool:
    if hashes in (True, "always"):
        return True
    if hashes in (False, "never"):
        return False
    return sum(span.size for span in ckpt.files) <= HASH_AUTO_LIMIT


@input_boundary
def identify(path: str | Path, refdb: RefDB | str | Path | None = None, *, hashes: str | bool = "auto",
             summary_budget: int | None = None,
             digests: tuple[dict[str, str], dict[str, str]] | None = None) -> IdentifyResult:
    """Rank the entries of ``refdb`` (default: the shipped database) against the model at ``path``.

    ``summary_budget`` caps the bytes read whole for layout-invariant summaries (default:
    0.5% of the candidate's tensor bytes, at least 2 MiB); 0 reads sampled blocks only.
    ``digests``: ``({file path: sha256}, {tensor name: sha256})`` the caller already computed
    (``checkpoint_sha256s``), so the file is not read a second time to hash it.
    """
    started = time.perf_counter()
    db = refdb if isinstance(refdb, RefDB) else RefDB(refdb)
    path = os.fspath(path)
    with open_checkpoint(path) as ckpt:
        arch = asdict(ckpt.architecture)
        file_hashes = tensor_hashes = None
        if digests is not None:
            file_hashes, tensor_hashes = digests
        elif _should_hash(ckpt, hashes):
            file_hashes, tensor_hashes = checkpoint_sha256s(ckpt)
        vocab = checkpoint_vocabulary(ckpt)
        calibration = load_calibration(db.directory)
        candidate_vocab = CandidateVocabulary(vocab) if vocab is not None and vocab.tokens else None
        reader = CandidateReader(ckpt, summary_budget) if ckpt.tensors else None
        matches, weight_results = [], []
        for entry in db.entries():
            tok_ev, tok_strength = _tokenizer_evidence(entry, candidate_vocab, calibration)
            arch_ev, arch_strength = _architecture_evidence(entry, arch)
            weight_ev, weight_match = _weight_evidence(entry, reader)
            if weight_match is not None and weight_match.status != "not-comparable":
                weight_results.append((entry.id, weight_match))
            ev = {"file-hash": _file_evidence(entry, file_hashes), "tensor-hashes": _tensor_evidence(entry, tensor_hashes),
                  "weight-fingerprint": weight_ev, "tokenizer": tok_ev, "architecture": arch_ev}
            verdict, total = _verdict(ev, tok_strength, arch_strength)
            matches.append(CandidateMatch(entry.id, entry.family, verdict, total, list(ev.values())))
        _add_entry_null(matches, weight_results)
        matches.sort(key=lambda m: (-m.score, m.entry_id))
        tokenizer = None
        if candidate_vocab is not None:
            fp = candidate_vocab.fingerprint
            tokenizer = TokenizerSummary(fp.model, fp.vocab_size, fp.tokens_sha256, fp.scores_sha256, fp.merges_sha256,
                                         vocab.source if vocab else None)
        claims = {k: v for k, v in ckpt.metadata_claims.items() if isinstance(v, (str, int, float, bool))}
        return IdentifyResult(
            path=path, format=ckpt.format, refdb=str(db.directory), candidates=matches,
            decision=_decision(matches, calibration), nearest=_nearest(matches),
            architecture=ckpt.architecture, tokenizer=tokenizer, claims=claims,
            hashed=file_hashes is not None, bytes_total=sum(span.size for span in ckpt.files),
            fingerprint_bytes_read=reader.meter.bytes_read if reader else 0,
            fingerprint_page_bytes=reader.meter.page_bytes if reader else 0,
            fingerprint_reads=reader.meter.reads if reader else 0,
            seconds=time.perf_counter() - started,
            weights_summary=_weights_summary(weight_results, bool(ckpt.tensors)),
        )


_TOKEN_RULE_NULL = {"same-ids": "aligned_share", "prefix-of": "aligned_share", "reordered": "jaccard"}


def _decision(matches: list[CandidateMatch], calibration: TokenizerCalibration | None) -> Decision | None:
    best = next((c for c in matches if c.matched), None)
    if best is None:
        return None
    ev = {e.signal: e for e in best.evidence}
    others = sorted({c.family for c in matches if c.matched and c.family != best.family})
    n_families = len({c.family for c in matches}) - 1 - len(others)
    if ev["file-hash"].status == "match":
        signal, rule, null = "file-hash", "a file is byte-identical", "a SHA-256 collision is not a plausible accident"
    elif ev["tensor-hashes"].status in ("match", "partial"):
        signal, rule = "tensor-hashes", ev["tensor-hashes"].detail
        null = "constant tensors (norms at 1.0) are not counted"
    elif ev["weight-fingerprint"].status == "match":
        z = ev["weight-fingerprint"].data.get("calibrated_z") or 0.0
        other_z = [abs(v) for v in ev["weight-fingerprint"].data.get("other_entries_z", [])]
        signal, rule = "weight-fingerprint", f"calibrated z {z:.1f} >= 6"
        null = f"the other fingerprints reach |z| <= {max(other_z):.1f}" if other_z else "null measured on mismatched positions"
    else:
        tok = ev["tokenizer"].data
        signal, rule = "tokenizer", f"{tok['rule']}: {ev['tokenizer'].detail}"
        statistic = _TOKEN_RULE_NULL.get(str(tok["rule"]))
        if calibration is not None and statistic is not None:
            null = f"unrelated pairs reach {statistic} {calibration.unrelated_max(statistic):.3f} at most"
        else:
            null = "no unrelated pair of the calibration table has an identical list, exact prefix, merges or scores"
    rules_out = f"rules out the {n_families} other families of the database (no rule met)"
    if signal == "tokenizer":
        rules_out += "; a shared tokenizer does not show that the weights derive from this family"
    return Decision(best.entry_id, best.family, signal, rule, null, rules_out, others)


def _nearest(matches: list[CandidateMatch], n: int = 3) -> list[NearestFamily]:
    """The families whose tokens the candidate holds most of, one entry each, when none matched."""
    if any(c.matched for c in matches):
        return []
    best: dict[str, NearestFamily] = {}
    for c in matches:
        ev = c.evidence_for("tokenizer")
        if ev is None or ev.status != "no-match":
            continue
        near = NearestFamily(c.family, c.entry_id, float(ev.data["ref_in_candidate"]), ev.data.get("unrelated_containment_max"))
        if c.family not in best or near.shared > best[c.family].shared:
            best[c.family] = near
    return sorted(best.values(), key=lambda f: (-f.shared, f.family))[:n]


def _add_entry_null(matches: list[CandidateMatch], weight_results: list[tuple[str, WeightMatch]]) -> None:
    """Beside each fingerprint score, the scores of the *other* fingerprints: an unrelated-entry null."""
    for match in matches:
        ev = match.evidence_for("weight-fingerprint")
        if ev is None or ev.status not in ("match", "no-match"):
            continue
        others = [round(m.calibrated_z, 2) for eid, m in weight_results if eid != match.entry_id and m.calibrated_z is not None]
        ev.data["other_entries_z"] = others


def _weights_summary(results: list[tuple[str, WeightMatch]], has_tensors: bool) -> str:
    if not has_tensors:
        return "the candidate holds no tensors"
    if not results:
        return "the architecture matches no shipped weight fingerprint (no tensor of equal name and size)"
    hits = [eid for eid, m in results if m.status == "match"]
    if hits:
        return "weights match the fingerprint of " + ", ".join(hits)
    return f"no match: weights unrelated to the {len(results)} comparable fingerprint(s)"
