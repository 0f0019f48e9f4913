"""Undo the free symmetries an adversary can apply to a marked copy, given the reference.

Handled here (a self-contained fallback; :mod:`provenance.compare` does the general job):

* MLP hidden-unit permutations: rows of ``ffn_gate``/``ffn_up`` and columns of
  ``ffn_down`` permuted together. Units are matched on their ``ffn_gate`` rows (the gate
  feeds a nonlinearity, so it cannot be rescaled for free) by correlation, with the
  Hungarian algorithm up to ``MAX_HUNGARIAN`` units and a greedy match above.
* Rescaling across the linear pair ``up``/``down``: ``up`` row ``j`` times ``s_j`` and
  ``down`` column ``j`` divided by ``s_j`` leaves the network's function unchanged; ``s_j``
  is estimated by least squares on the ``up`` rows.

The result is, per tensor, a :class:`TensorAlignment` that maps the candidate into the
reference's basis elementwise, so residuals, quantization cells and keys line up again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from provenance.formats.base import Checkpoint

MAX_HUNGARIAN = 4096
IDENTITY_CORR = 0.5
"""Median matched-row correlation above which a layer's units are taken as unpermuted."""
SCALE_TOLERANCE = 1e-3
SCALE_SIGMAS = 8.0
MIN_RESCALED_FRACTION = 0.05
"""A layer counts as rescaled when this share of its units has a significant scale."""


@dataclass
class TensorAlignment:
    """``aligned = x[row_perm][:, col_perm] * row_scale[:, None] * col_scale[None, :]``."""

    row_perm: np.ndarray | None = None
    col_perm: np.ndarray | None = None
    row_scale: np.ndarray | None = None
    col_scale: np.ndarray | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.row_perm is not None:
            x = x[self.row_perm]
        if self.col_perm is not None:
            x = x[:, self.col_perm]
        if self.row_scale is not None:
            x = x * self.row_scale[:, None]
        if self.col_scale is not None:
            x = x * self.col_scale[None, :]
        return x

    def unapply(self, y: np.ndarray) -> np.ndarray:
        """The inverse map: a reference-basis matrix expressed in the candidate's basis."""
        if self.col_scale is not None:
            y = y / self.col_scale[None, :]
        if self.row_scale is not None:
            y = y / self.row_scale[:, None]
        if self.col_perm is not None:
            out = np.empty_like(y)
            out[:, self.col_perm] = y
            y = out
        if self.row_perm is not None:
            out = np.empty_like(y)
            out[self.row_perm] = y
            y = out
        return y

    def apply_signs(self, s: np.ndarray) -> np.ndarray:
        """Move per-weight signs (e.g. flip directions) into the reference basis: permute,
        and reverse them where a scale is negative."""
        if self.row_perm is not None:
            s = s[self.row_perm]
        if self.col_perm is not None:
            s = s[:, self.col_perm]
        if self.row_scale is not None:
            s = s * np.sign(self.row_scale)[:, None]
        if self.col_scale is not None:
            s = s * np.sign(self.col_scale)[None, :]
        return s

    def describe(self) -> dict[str, object]:
        def moved(perm: np.ndarray | None) -> int:
            return 0 if perm is None else int((perm != np.arange(perm.size)).sum())

        scales = [s for s in (self.row_scale, self.col_scale) if s is not None]
        spread = float(max(np.abs(np.log(np.abs(s))).max() for s in scales)) if scales else 0.0
        return {"rows_moved": moved(self.row_perm), "cols_moved": moved(self.col_perm), "max_abs_log_scale": spread}


@dataclass
class Realignment:
    tensors: dict[str, TensorAlignment] = field(default_factory=dict)
    layers: dict[int, dict[str, object]] = field(default_factory=dict)

    def get(self, name: str) -> TensorAlignment | None:
        return self.tensors.get(name)


def _row_normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def match_units(ref_rows: np.ndarray, cand_rows: np.ndarray) -> tuple[np.ndarray, float]:
    """``perm`` with ``cand_rows[perm]`` best matching ``ref_rows``, and the median matched
    correlation."""
    corr = _row_normalise(ref_rows.astype(np.float64)) @ _row_normalise(cand_rows.astype(np.float64)).T
    n = corr.shape[0]
    if n <= MAX_HUNGARIAN:
        _, perm = linear_sum_assignment(-corr)
    else:  # greedy: best remaining pair first
        perm = np.full(n, -1)
        taken = np.zeros(n, dtype=bool)
        for i in np.argsort(-corr.max(axis=1)):
            order = np.argsort(-corr[i])
            j = next(j for j in order if not taken[j])
            perm[i], taken[j] = j, True
    return perm, float(np.median(corr[np.arange(n), perm]))


def realign_ffn(candidate: Checkpoint, reference: Checkpoint, layer: int, force: bool = False) -> dict[str, TensorAlignment]:
    """Alignment of one layer's MLP (empty when nothing needs undoing)."""
    names = {role: f"blk.{layer}.{role}.weight" for role in ("ffn_gate", "ffn_up", "ffn_down")}
    if not all(n in candidate.tensors and n in reference.tensors for n in names.values()):
        return {}
    if any(candidate.info(n).shape != reference.info(n).shape for n in names.values()):
        return {}
    ref_gate, cand_gate = reference.read_rows(names["ffn_gate"]), candidate.read_rows(names["ffn_gate"])
    identity_corr = float(
        np.median(
            np.sum(_row_normalise(ref_gate.astype(np.float64)) * _row_normalise(cand_gate.astype(np.float64)), axis=1)
        )
    )
    perm = None
    if force or identity_corr < IDENTITY_CORR:
        perm, _ = match_units(ref_gate, cand_gate)
        if np.array_equal(perm, np.arange(perm.size)):
            perm = None
    ref_up = reference.read_rows(names["ffn_up"]).astype(np.float64)
    cand_up = candidate.read_rows(names["ffn_up"]).astype(np.float64)
    if perm is not None:
        cand_up = cand_up[perm]
    # s_j with cand_up[j] ~ s_j * ref_up[j]; applied as 1/s_j to up rows and s_j to down columns.
    ref_sq = np.maximum(np.sum(ref_up * ref_up, axis=1), 1e-30)
    s = np.sum(cand_up * ref_up, axis=1) / ref_sq
    # Least-squares standard error of s_j: quantization or a mark moves s_j a little
    # (~ noise / sqrt(row length)); only scales far outside that count as a rescale.
    resid = cand_up - s[:, None] * ref_up
    se = np.sqrt(np.sum(resid * resid, axis=1) / max(1, ref_up.shape[1] - 1) / ref_sq)
    significant = (np.abs(s - 1.0) > SCALE_SIGMAS * se) & (
        np.abs(np.log(np.maximum(np.abs(s), 1e-12))) > SCALE_TOLERANCE
    ) | (s < 0)
    rescaled = bool(significant.mean() >= MIN_RESCALED_FRACTION)
    s = np.where(significant & (np.abs(s) > 1e-12), s, 1.0)
    if perm is None and not rescaled:
        return {}
    inv = (1.0 / s) if rescaled else None
    return {
        names["ffn_gate"]: TensorAlignment(row_perm=perm),
        names["ffn_up"]: TensorAlignment(row_perm=perm, row_scale=inv),
        names["ffn_down"]: TensorAlignment(col_perm=perm, col_scale=s if rescaled else None),
    }


def realign(candidate: Checkpoint, reference: Checkpoint, force: bool = False) -> Realignment:
    """Alignments for every layer whose MLP was permuted or rescaled."""
    result = Realignment()
    layers = sorted({info.layer for info in candidate.tensors.values() if info.layer is not None})
    for layer in layers:
        found = realign_ffn(candidate, reference, layer, force=force)
        if found:
            result.tensors.update(found)
            result.layers[layer] = {name: a.describe() for name, a in found.items()}
    return result
