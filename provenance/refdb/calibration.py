"""How much independently developed tokenizers overlap: the null that tokenizer rules are held to.

``scripts/build_refdb.py`` compares every pair of the real tokenizers it builds the
database from (``compare_vocabulary`` both ways) and writes, for the pairs of *different*
lineages, the statistics into ``_tokenizer_calibration.json`` beside the entries (a name
no entry id can take). ``identify`` reads it to say, for a candidate that meets no lineage
rule, how its overlap with the nearest families compares with what unrelated families of
the same relative size reach; the tests hold every rule's threshold above these maxima.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from provenance.errors import CheckpointError
from provenance.formats.jsonsafe import loads_strict
from provenance.refdb.schema import RefDBError

CALIBRATION_FILE = "_tokenizer_calibration.json"
SCHEMA = "provenance.refdb-tokenizer-calibration/1"
STATISTICS = ("aligned_share", "jaccard", "ref_in_candidate", "same_id_share")
COLUMNS = ("candidate", "reference", "candidate_lineage", "reference_lineage", "candidate_size", "reference_size",
           "relation", "rule", "special_tokens_equal", *STATISTICS)
SIZE_WINDOW = 1.0
"""Unrelated pairs whose log2(candidate size / reference size) is at most the candidate's plus
this are "of this size" (containment grows with the candidate's relative size)."""


@dataclass
class PairStatistics:
    candidate: str
    reference: str
    candidate_lineage: str
    reference_lineage: str
    candidate_size: int
    reference_size: int
    relation: str
    rule: str | None
    values: dict[str, float | None]
    special_tokens_equal: bool | None = None

    @property
    def log_ratio(self) -> float:
        return math.log2(max(self.candidate_size, 1) / max(self.reference_size, 1))

    def row(self) -> list[Any]:
        """The pair as one row of :data:`COLUMNS`."""
        return [self.candidate, self.reference, self.candidate_lineage, self.reference_lineage, self.candidate_size,
                self.reference_size, self.relation, self.rule, self.special_tokens_equal,
                *(round(v, 5) if isinstance(v, float) else v for v in (self.values.get(k) for k in STATISTICS))]

    @classmethod
    def from_row(cls, row: list[Any]) -> PairStatistics:
        doc = dict(zip(COLUMNS, row, strict=True))
        return cls(candidate=str(doc["candidate"]), reference=str(doc["reference"]),
                   candidate_lineage=str(doc["candidate_lineage"]), reference_lineage=str(doc["reference_lineage"]),
                   candidate_size=int(doc["candidate_size"]), reference_size=int(doc["reference_size"]),
                   relation=str(doc["relation"]), rule=doc["rule"], special_tokens_equal=doc["special_tokens_equal"],
                   values={k: (float(doc[k]) if doc[k] is not None else None) for k in STATISTICS})


@dataclass
class TokenizerCalibration:
    pairs: list[PairStatistics] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    """Each tokenizer compared: ``name``, ``lineage``, ``entry``, ``size``, ``files`` (name, sha256)."""
    _containment: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def unrelated(self) -> list[PairStatistics]:
        return [p for p in self.pairs if p.candidate_lineage != p.reference_lineage]

    @property
    def related(self) -> list[PairStatistics]:
        return [p for p in self.pairs if p.candidate_lineage == p.reference_lineage]

    def unrelated_max(self, statistic: str) -> float:
        return max((p.values.get(statistic) or 0.0 for p in self.unrelated), default=0.0)

    def containment_max(self, candidate_size: int, reference_size: int) -> float | None:
        """The largest share of a reference's tokens that an unrelated candidate of at most about
        this relative size holds (None without calibration pairs)."""
        if self._containment is None:  # (log2 size ratio, containment) of every unrelated pair, once
            unrelated = self.unrelated
            self._containment = (np.array([p.log_ratio for p in unrelated]),
                                 np.array([p.values.get("ref_in_candidate") or 0.0 for p in unrelated]))
        ratios, shares = self._containment
        ratio = math.log2(max(candidate_size, 1) / max(reference_size, 1))
        # Containment grows with the candidate's relative size, so pairs of a smaller ratio bound it from below
        # too: their maximum is what "this size or smaller" reaches (also past the table's largest ratio).
        near = shares[ratios <= ratio + SIZE_WINDOW]
        return float(near.max()) if near.size else None

    def dumps(self) -> str:
        """The file's text: sorted, one source and one pair per line (small, diffable)."""
        maxima = {k: round(self.unrelated_max(k), 5) for k in STATISTICS}
        lines = ["{", f' "schema": {json.dumps(SCHEMA)},', f" \"unrelated_maxima\": {json.dumps(maxima, sort_keys=True)},",
                 f" \"columns\": {json.dumps(list(COLUMNS))},", ' "sources": [']
        lines += [f"  {json.dumps(src, sort_keys=True)}," for src in self.sources]
        lines[-1] = lines[-1].rstrip(",")
        lines += [" ],", ' "pairs": [']
        lines += [f"  {json.dumps(p.row())}," for p in self.pairs]
        lines[-1] = lines[-1].rstrip(",")
        return "\n".join([*lines, " ]", "}"]) + "\n"


def load_calibration(directory: str | Path) -> TokenizerCalibration | None:
    """The calibration beside a database's entries (parsed once per file version), or None."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    stat = path.stat()
    return _load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(where: str, mtime_ns: int, size: int) -> TokenizerCalibration:
    path = Path(where)
    if path.stat().st_size > 16 * 1024 * 1024:
        raise RefDBError(f"{path}: larger than 16 MiB")
    try:
        doc = loads_strict(path.read_bytes(), str(path), "calibration")
        if doc.get("schema") != SCHEMA:
            raise RefDBError(f"{path}: schema {doc.get('schema')!r}, expected {SCHEMA}")
        return TokenizerCalibration(pairs=[PairStatistics.from_row(p) for p in doc["pairs"]], sources=list(doc["sources"]))
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RefDBError(f"{path}: malformed calibration ({type(exc).__name__}: {exc})") from None
