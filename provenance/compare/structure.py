"""What was done to the reference besides changing its weights: typed evidence for the verdict.

* the layer map (:mod:`.layermap`): depth upscaling, removed or reordered layers;
* shape changes: a longer, shorter, reordered or changed vocabulary (shared token rows paired
  by id, or by token string when both tokenizers are known), fewer
  MLP units or KV heads (tensors compared through their circuits only);
* a rotation of the residual stream, seen by the unit-space test (:mod:`.unitspace`) and
  recovered from the shared embedding rows (orthogonal Procrustes);
* every tensor that could not be paired, and why.

The verdict (:mod:`.verdict`) reads these fields; reports print them. Nothing here
parses a sentence back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from provenance.compare.layermap import LayerMap
from provenance.compare.result import PermutationTestResult
from provenance.compare.rotgrid import RotatedGridCheck
from provenance.formats.pairing import Unpaired
from provenance.textsafe import safe_text

#: the Procrustes fit must explain the candidate's probe embedding rows this well (relative
#: residual; a fine-tune's own change of the embedding stays below it: 0.06-0.07 measured on the
#: synth medium fine-tunes, 2e-4 for a rotated copy, 0.03 after Q4_K_M) and at least halve
#: the residual without it
ROTATION_FIT_MAX = 0.25


@dataclass(frozen=True)
class UnpairedTensor:
    """A tensor left out of the per-tensor comparison, and why (in words for reports)."""

    name: str
    reason: str
    """``missing-in-candidate``, ``missing-in-reference``, ``shape-mismatch``, ``not-learned``,
    ``layer-removed``, ``layer-unmatched``, ``vocabulary-rows``, ``width-changed``, ``untied-output``."""
    detail: str
    candidate_shape: tuple[int, ...] | None = None
    reference_shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, u: Unpaired, detail: str | None = None, reason: str | None = None) -> UnpairedTensor:
        return cls(u.name, reason or u.reason, detail or u.describe(), u.candidate_shape, u.reference_shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "detail": self.detail,
                "candidate_shape": None if self.candidate_shape is None else list(self.candidate_shape),
                "reference_shape": None if self.reference_shape is None else list(self.reference_shape)}


@dataclass(frozen=True)
class VocabularyChange:
    """Token-indexed rows (embedding, output head) of two vocabularies, and how they were paired:
    by token id (a longer or shorter vocabulary with the same tokens first), or by token string
    when both tokenizers are known and their lists differ (a reordered or changed vocabulary)."""

    candidate_rows: int
    reference_rows: int
    shared_rows: int
    paired_by: str = "token id"
    """``token id`` or ``token string``."""
    moved: int = 0
    """Rows paired by string whose token id differs between the two."""
    only_candidate: tuple[str, ...] = ()
    """Tokens (or ``row N`` past the tokenizer) of the candidate with no counterpart, first 8."""
    only_candidate_count: int = 0
    only_reference: tuple[str, ...] = ()
    only_reference_count: int = 0
    candidate_ids: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Paired rows, in the reference's order (string pairing only)."""
    reference_ids: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        if self.candidate_rows > self.reference_rows:
            return "vocabulary-extended"
        if self.candidate_rows < self.reference_rows:
            return "vocabulary-truncated"
        return "vocabulary-changed" if self.only_candidate_count or self.only_reference_count else "vocabulary-reordered"

    def describe(self) -> str:
        if self.paired_by == "token id":
            verb = "extended" if self.candidate_rows > self.reference_rows else "truncated"
            return (f"vocabulary {verb} {self.reference_rows} -> {self.candidate_rows} tokens "
                    f"({self.shared_rows} shared rows paired by {self.paired_by})")
        verb = {"vocabulary-extended": "extended", "vocabulary-truncated": "truncated",
                "vocabulary-changed": "changed", "vocabulary-reordered": "reordered"}[self.kind]
        text = (f"vocabulary {verb} {self.reference_rows} -> {self.candidate_rows} tokens ({self.shared_rows} rows "
                f"paired by token string, {self.moved} of them at other ids")
        for count, sample, side in ((self.only_candidate_count, self.only_candidate, "candidate"),
                                    (self.only_reference_count, self.only_reference, "reference")):
            if count:
                text += f"; {count} only in the {side}: {', '.join(sample)}{', ...' if count > len(sample) else ''}"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "candidate_rows": self.candidate_rows, "reference_rows": self.reference_rows,
                "shared_rows": self.shared_rows, "paired_by": self.paired_by, "moved": self.moved,
                "only_candidate": list(self.only_candidate), "only_candidate_count": self.only_candidate_count,
                "only_reference": list(self.only_reference), "only_reference_count": self.only_reference_count,
                "description": self.describe()}


#: unpaired tokens named in a description (the counts are complete)
_SAMPLE = 8


def _token_label(token: bytes) -> str:
    return safe_text(repr(token.decode("utf-8", errors="replace")), 40)


def pair_vocabularies(candidate_tokens: Sequence[bytes], reference_tokens: Sequence[bytes], candidate_rows: int,
                      reference_rows: int) -> VocabularyChange | None:
    """Pair token rows by token string (each string's first id on each side; rows past a
    tokenizer's list, e.g. padding, pair with nothing). None when the lists agree on every
    shared id (pairing by id is the same pairing)."""
    cand = list(candidate_tokens[:candidate_rows])
    ref = list(reference_tokens[:reference_rows])
    n = min(len(cand), len(ref))
    if cand[:n] == ref[:n] and len(cand) == candidate_rows and len(ref) == reference_rows:
        return None
    first: dict[bytes, int] = {}
    for i, token in enumerate(cand):
        first.setdefault(token, i)
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for j, token in enumerate(ref):
        i = first.get(token)
        if i is not None and i not in used:
            used.add(i)
            pairs.append((i, j))
    paired_ref = {j for _, j in pairs}
    only_c = [_token_label(t) for i, t in enumerate(cand) if i not in used]
    only_c += [f"row {i}" for i in range(len(cand), candidate_rows)]
    only_r = [_token_label(t) for j, t in enumerate(ref) if j not in paired_ref]
    only_r += [f"row {j}" for j in range(len(ref), reference_rows)]
    ci = np.array([i for i, _ in pairs], dtype=np.int64)
    ri = np.array([j for _, j in pairs], dtype=np.int64)
    return VocabularyChange(candidate_rows, reference_rows, len(pairs), "token string", int((ci != ri).sum()),
                            tuple(only_c[:_SAMPLE]), len(only_c), tuple(only_r[:_SAMPLE]), len(only_r), ci, ri)


@dataclass(frozen=True)
class WidthChange:
    """A dimension the candidate has fewer (or more) of: MLP units, KV heads, heads."""

    what: str
    candidate: int
    reference: int

    @property
    def kind(self) -> str:
        if self.what == "KV heads" and self.candidate < self.reference:
            return "gqa-converted"
        return "width-pruned" if self.candidate < self.reference else "width-grown"

    def describe(self) -> str:
        return f"{self.what} {self.reference} -> {self.candidate}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "candidate": self.candidate, "reference": self.reference}


@dataclass(frozen=True)
class RotationEstimate:
    """The orthogonal map ``Q`` with ``E_c ~ E_r Q`` on the shared probe embedding rows."""

    rows: int
    """Probe rows it was fitted on (at least the width for a full-rank estimate)."""
    fit_residual: float
    """``||E_c - E_r Q|| / ||E_c||``: ~0 when the candidate's residual basis is a rotation of the reference's."""
    identity_residual: float
    """The same with ``Q = I`` (how far the bases are without the rotation)."""
    permutation_likeness: float
    """Mean over rows of ``max_j |Q_ij|``: 1 for a signed permutation, ~sqrt(2 log d / d) for a generic rotation."""
    recovered: bool
    width: int = 0
    """The residual width: with ``rows >= width`` the map is determined on the whole space."""
    matrix: np.ndarray | None = field(default=None, repr=False, compare=False)
    """``Q`` itself (``d x d``, float64), when determined on the whole space."""

    @property
    def full_rank(self) -> bool:
        return self.rows >= self.width > 0

    def describe(self) -> str:
        if not self.recovered:
            return (f"no orthogonal map explains the embedding rows (fit residual {self.fit_residual:.3g} on "
                    f"{self.rows} rows)")
        shape = "a signed permutation" if self.permutation_likeness > 0.99 else "a dense rotation"
        return (f"residual stream mapped by {shape} (recovered from {self.rows} shared embedding rows: fit residual "
                f"{self.fit_residual:.2g}, {self.identity_residual:.2g} without it)")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "width": self.width, "fit_residual": self.fit_residual, "identity_residual": self.identity_residual,
                "permutation_likeness": self.permutation_likeness, "recovered": self.recovered,
                "description": self.describe()}


def estimate_rotation(reference_rows: np.ndarray, candidate_rows: np.ndarray) -> RotationEstimate | None:
    """Orthogonal Procrustes (``Q = U V^T`` from the SVD of ``E_r^T E_c``) on the probe rows
    of both embeddings (same token ids), float64, in torch (one thread inside ``compare``;
    numpy's BLAS would start its own per core).

    With fewer probe rows ``n`` than the width ``d`` (7B: 1,024 rows of 4,096) ``Q`` is
    determined on the rows' span only, and a ``d x d`` SVD would cost tens of seconds: the
    fit then goes through thin QR factors (``E^T = Q_E R_E``), so everything is ``n x n``
    except the ``|S| x d`` slice of ``Q`` its permutation-likeness is read from."""
    if reference_rows.shape != candidate_rows.shape or reference_rows.ndim != 2 or len(reference_rows) < 2:
        return None
    er = torch.from_numpy(reference_rows.astype(np.float64))
    ec = torch.from_numpy(candidate_rows.astype(np.float64))
    norm = float(torch.linalg.norm(ec))
    if norm == 0:
        return None
    n, d = er.shape
    if n >= d:
        u, _, vt = torch.linalg.svd(er.T @ ec)
        q = u @ vt
        fit = float(torch.linalg.norm(ec - er @ q)) / norm
        like_rows = q
    else:
        q_r, r_r = torch.linalg.qr(er.T)  # d x n, n x n
        q_c, r_c = torch.linalg.qr(ec.T)
        u, _, vt = torch.linalg.svd(r_r @ r_c.T)
        fit = float(torch.linalg.norm(r_c.T - r_r.T @ u @ vt)) / norm
        rows = torch.from_numpy(np.linspace(0, d - 1, min(d, 128)).astype(np.int64))
        like_rows = q_r[rows] @ u @ vt @ q_c.T
    ident = float(torch.linalg.norm(ec - er)) / norm
    like = float(like_rows.abs().amax(dim=1).mean())
    return RotationEstimate(n, fit, ident, like, fit <= ROTATION_FIT_MAX and fit <= 0.5 * ident, d,
                            q.numpy() if n >= d else None)


@dataclass(frozen=True)
class DerotatedTest:
    """The residual-permutation test on the candidate with the embedding's rotation undone
    (:class:`provenance.compare.rotview.RotatedView`): what sees through a rotation combined
    with permuted MLP units."""

    test: PermutationTestResult
    rel_delta: float | None
    """Overall ``||C - R|| / ||R||`` over matrices after undoing the rotation and aligning."""
    moves: tuple[str, ...] = ()
    """What the alignment undid besides the rotation (``permuted units``, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test.to_dict(), "rel_delta": self.rel_delta, "moves": list(self.moves)}


@dataclass(frozen=True)
class RotatedDetails:
    """Why a candidate is called rotated, and how much its unit circuits moved."""

    unit_rel_delta: float | None
    strength: str
    copy: bool
    """The unit circuits moved no more than float storage does, the stored codes are the
    reference's rotated (:attr:`grid`), or the de-rotated weights equal the reference's: a rotated copy."""
    rotation: RotationEstimate | None
    grid: RotatedGridCheck | None = None
    """The candidate's cells against the reference rotated into its basis (a lossy candidate)."""
    derotated: DerotatedTest | None = None
    """Set when the relation came from the de-rotated test (rotation and permuted MLP units)."""

    def to_dict(self) -> dict[str, Any]:
        return {"unit_rel_delta": self.unit_rel_delta, "strength": self.strength, "copy": self.copy,
                "rotation": self.rotation.to_dict() if self.rotation else None,
                "grid": self.grid.to_dict() if self.grid else None,
                "derotated": self.derotated.to_dict() if self.derotated else None,
                "undetermined_rotation": list(self.undetermined_rotation) if self.undetermined_rotation else None}


@dataclass(frozen=True)
class StructureEvidence:
    """Everything about the candidate's structure relative to the reference."""

    layer_map: LayerMap | None = None
    vocabulary: VocabularyChange | None = None
    widths: tuple[WidthChange, ...] = ()
    rotation: RotationEstimate | None = None
    unit_test: PermutationTestResult | None = None
    """The unit-permutation test (:mod:`.unitspace`): unit permutations instead of residual ones."""
    unit_rel_delta: dict[int, float] = field(default_factory=dict)
    """Per candidate layer: relative change of its unit circuits (rotation-blind)."""
    unpaired: tuple[UnpairedTensor, ...] = ()
    rotated_grid: RotatedGridCheck | None = None
    """A rotated lossy candidate's cells against the reference rotated into its basis (:mod:`.rotgrid`)."""
    derotated: DerotatedTest | None = None
    """The residual test on the candidate with the embedding's rotation undone (neither test related)."""
    undetermined_rotation: tuple[int, int] | None = None
    """``(probe rows, width)`` when neither test related and the shared embedding rows kept are
    fewer than the width: no rotation is determined on the whole residual space, so a rotation
    combined with permuted MLP units could not be looked for."""

    @property
    def kinds(self) -> tuple[str, ...]:
        out: list[str] = []
        if self.layer_map is not None and not self.layer_map.is_identity:
            out.extend(self.layer_map.structure)
        if self.vocabulary is not None:
            out.append(self.vocabulary.kind)
        out.extend(w.kind for w in self.widths)
        if self.rotation is not None and self.rotation.recovered and self.rotation.permutation_likeness <= 0.99:
            out.append("residual-rotated")
        return tuple(dict.fromkeys(out))

    @property
    def left_out(self) -> tuple[UnpairedTensor, ...]:
        """Unpaired learned tensors (precomputed tables such as RoPE frequencies carry no lineage)."""
        return tuple(u for u in self.unpaired if u.reason != "not-learned")

    @property
    def changed(self) -> bool:
        """Anything beyond the weights: a different structure or any unpaired learned tensor."""
        return bool(self.kinds) or bool(self.left_out)

    def phrases(self) -> list[str]:
        out: list[str] = []
        if self.layer_map is not None and not self.layer_map.is_identity:
            out.append(self.layer_map.description)
        if self.vocabulary is not None:
            out.append(self.vocabulary.describe())
        out.extend(w.describe() for w in self.widths)
        if self.rotation is not None and "residual-rotated" in self.kinds:
            out.append(self.rotation.describe())
        return out

    def unit_delta(self) -> float | None:
        vals = [v for v in self.unit_rel_delta.values() if np.isfinite(v)]
        return float(np.median(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "description": "; ".join(self.phrases()),
                "layer_map": self.layer_map.to_dict() if self.layer_map else None,
                "vocabulary": self.vocabulary.to_dict() if self.vocabulary else None,
                "widths": [w.to_dict() for w in self.widths],
                "rotation": self.rotation.to_dict() if self.rotation else None,
                "unit_test": self.unit_test.to_dict() if self.unit_test else None,
                "unit_rel_delta": {str(k): v for k, v in self.unit_rel_delta.items()},
                "unpaired": [u.to_dict() for u in self.unpaired],
                "rotated_grid": self.rotated_grid.to_dict() if self.rotated_grid else None,
                "derotated": self.derotated.to_dict() if self.derotated else None,
                "undetermined_rotation": list(self.undetermined_rotation) if self.undetermined_rotation else None}
