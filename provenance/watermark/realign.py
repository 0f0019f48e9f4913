"""Undo the free MLP symmetries an adversary can apply to a marked copy, given the reference.

Permuting MLP hidden units (rows of ``ffn_gate``/``ffn_up``, columns of ``ffn_down``) and
rescaling them across the linear pair (``up`` row ``j`` times ``s_j``, ``down`` column
``j`` divided by ``s_j``) leave the network's function unchanged and scramble the key
positions. The units are matched and their scales estimated by lineage's alignment
(:func:`provenance.compare.align.match_mlp_units`, on sketches of the layer's MLP:
every unit's rows on up to :data:`MAX_RESIDUAL` residual coordinates).

What is the watermark's own is which scales count. Lineage applies scales only when they
spread widely (a fine-tune's drift must not be "aligned" away); a mark is ~1e-3 of a
weight, so a small rescale left in place would drown it. Here a unit's scale counts when
it lies more than :data:`SCALE_SIGMAS` standard errors of the fit of its up row from 1, so
quantization noise or the mark itself is not mistaken for a rescale.

The result is, per tensor, a :class:`~provenance.compare.transform.Transform` that maps
the candidate into the reference's basis elementwise, so residuals, quantization cells and
keys line up again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.compare.align import match_mlp_units, mlp_unit_specs
from provenance.compare.sketch import SketchBuilder, residual_subset, sketch_tensor
from provenance.compare.transform import Transform
from provenance.formats.base import Checkpoint
from provenance.formats.pairing import pair_tensors

#: residual coordinates the units are matched and scaled on: the scale's standard error
#: grows as 1/sqrt(coordinates), and 1024 keep it far below quantization noise at any width
MAX_RESIDUAL = 1024
MLP_ROLES = ("ffn_gate", "ffn_up", "ffn_down")
SCALE_TOLERANCE = 1e-3
"""Scales within this of 1 (in log) are never a rescale."""
SCALE_SIGMAS = 8.0
MIN_RESCALED_FRACTION = 0.05
"""A layer counts as rescaled when this share of its units has a significant scale."""


@dataclass
class Realignment:
    tensors: dict[str, Transform] = field(default_factory=dict)
    layers: dict[int, dict[str, Any]] = field(default_factory=dict)

    def get(self, name: str) -> Transform | None:
        return self.tensors.get(name)


def significant_scale(ref_up: np.ndarray, cand_up: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """``scale`` where a unit is significantly rescaled (1 elsewhere), or None when too few
    units are: ``cand_up ~ scale * ref_up`` row by row (candidate rows already matched),
    judged against the standard error of that fit."""
    r, c = ref_up.astype(np.float64), cand_up.astype(np.float64)
    ref_sq = np.maximum(np.sum(r * r, axis=1), 1e-30)
    resid = c - scale[:, None] * r
    se = np.sqrt(np.sum(resid * resid, axis=1) / max(1, r.shape[1] - 1) / ref_sq)
    log_abs = np.abs(np.log(np.maximum(np.abs(scale), 1e-12)))
    significant = ((np.abs(scale - 1.0) > SCALE_SIGMAS * se) & (log_abs > SCALE_TOLERANCE)) | (scale < 0)
    if significant.mean() < MIN_RESCALED_FRACTION:
        return None
    return np.where(significant & (np.abs(scale) > 1e-12), scale, 1.0)


def _mlp_sketches(candidate: Checkpoint, reference: Checkpoint, layer: int, names: dict[str, str],
                  residual: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    tokens = np.zeros(0, dtype=np.int64)
    sketches = []
    for ckpt in (reference, candidate):
        builder = SketchBuilder(residual, tokens)
        for role, name in names.items():
            builder.add(role, layer, sketch_tensor(ckpt, name, residual, tokens))
        sketches.append(builder.finish().layers[layer])
    return sketches[0], sketches[1]


def _realign_layer(candidate: Checkpoint, reference: Checkpoint, layer: int, paired: set[str],
                   force: bool) -> dict[str, Transform]:
    """Transforms of one layer's MLP tensors (empty when nothing needs undoing); its up and
    down (and gate, where the model has one) must be ``paired`` by name and shape."""
    names = {role: f"blk.{layer}.{role}.weight" for role in MLP_ROLES}
    names = {role: name for role, name in names.items() if name in paired}
    if "ffn_up" not in names or "ffn_down" not in names:
        return {}
    residual = residual_subset(reference.info(names["ffn_up"]).row_length, MAX_RESIDUAL)
    ref, cand = _mlp_sketches(candidate, reference, layer, names, residual)
    units = match_mlp_units(ref, cand, force=force)
    cand_up = cand["ffn_up"] if units.perm is None else cand["ffn_up"][units.perm]
    scale = significant_scale(ref["ffn_up"], cand_up, units.scale)
    specs = mlp_unit_specs(units.perm, scale)
    return {names[role]: Transform(**spec) for role, spec in specs.items() if role in names}


def realign(candidate: Checkpoint, reference: Checkpoint, force: bool = False) -> Realignment:
    """Transforms for every layer whose MLP was permuted or rescaled. ``force``: match units
    even where the identity already matches, and keep any better match."""
    result = Realignment()
    paired = {p.name for p in pair_tensors(candidate, reference).pairs}
    layers = sorted({info.layer for info in candidate.tensors.values() if info.layer is not None})
    for layer in layers:
        found = _realign_layer(candidate, reference, layer, paired, force)
        if found:
            result.tensors.update(found)
            result.layers[layer] = {name: t.summary().to_dict() for name, t in found.items()}
    return result
