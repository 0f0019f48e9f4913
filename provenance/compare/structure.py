"""What was done to the reference besides changing its weights: typed evidence for the verdict.

* the layer map (:mod:`.layermap`): depth upscaling, removed or reordered layers;
* shape changes: a longer or shorter vocabulary (shared token rows paired by id), fewer
  MLP units or KV heads (tensors compared through their circuits only);
* a rotation of the residual stream, seen by the unit-space test (:mod:`.unitspace`) and
  recovered from the shared embedding rows (orthogonal Procrustes);
* every tensor that could not be paired, and why.

The verdict (:mod:`.verdict`) reads these fields; reports print them. Nothing here
parses a sentence back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from provenance.compare.layermap import LayerMap
from provenance.compare.result import PermutationTestResult
from provenance.formats.pairing import Unpaired

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
    candidate_rows: int
    reference_rows: int
    shared_rows: int
    paired_by: str = "token id"

    @property
    def kind(self) -> str:
        return "vocabulary-extended" if self.candidate_rows > self.reference_rows else "vocabulary-truncated"

    def describe(self) -> str:
        verb = "extended" if self.candidate_rows > self.reference_rows else "truncated"
        return (f"vocabulary {verb} {self.reference_rows} -> {self.candidate_rows} tokens "
                f"({self.shared_rows} shared rows paired by {self.paired_by})")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "candidate_rows": self.candidate_rows, "reference_rows": self.reference_rows,
                "shared_rows": self.shared_rows, "paired_by": self.paired_by, "description": self.describe()}


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

    def describe(self) -> str:
        if not self.recovered:
            return (f"no orthogonal map explains the embedding rows (fit residual {self.fit_residual:.3g} on "
                    f"{self.rows} rows)")
        shape = "a signed permutation" if self.permutation_likeness > 0.99 else "a dense rotation"
        return (f"residual stream mapped by {shape} (recovered from {self.rows} shared embedding rows: fit residual "
                f"{self.fit_residual:.2g}, {self.identity_residual:.2g} without it)")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "fit_residual": self.fit_residual, "identity_residual": self.identity_residual,
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
    return RotationEstimate(n, fit, ident, like, fit <= ROTATION_FIT_MAX and fit <= 0.5 * ident)


@dataclass(frozen=True)
class RotatedDetails:
    """Why a candidate is called rotated, and how much its unit circuits moved."""

    unit_rel_delta: float | None
    strength: str
    copy: bool
    """The unit circuits moved no more than float storage does (a rotated copy)."""
    rotation: RotationEstimate | None

    def to_dict(self) -> dict[str, Any]:
        return {"unit_rel_delta": self.unit_rel_delta, "strength": self.strength, "copy": self.copy,
                "rotation": self.rotation.to_dict() if self.rotation else None}


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
                "unpaired": [u.to_dict() for u in self.unpaired]}
