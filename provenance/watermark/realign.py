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

Only the layers whose MLP tensors are scored are looked at (``--tensors`` is honoured), and
a layer is first *screened* on :data:`SCREEN_RUNS` runs of :data:`SCREEN_RUN_ROWS` up-rows
read whole (about 1% of the layer): when at least :data:`IDENTITY_HITS` of those units keep
their own row (``|cos| >=`` :data:`SCREEN_COS` with the reference's row at the same index,
far above any chance cosine of two rows of that length) and too few carry a significant
scale, lineage's matching would keep the identity too (its sample of units finds each one's
best match at its own index), so the layer needs nothing and its sketches are never built.
Anything else, and layers of at most :data:`~provenance.compare.align.IDENTITY_SAMPLE` units
(where lineage always runs the assignment), take the full path above.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.compare.align import IDENTITY_HITS, IDENTITY_SAMPLE, match_mlp_units, mlp_unit_specs
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
SCREEN_RUNS = 8
SCREEN_RUN_ROWS = 64
SCREEN_COS = 0.5
"""A unit keeps its row when its up rows' |cosine| reaches this (two unrelated rows of n
values: ~N(0, 1/n), below 0.1 for the widths screened here)."""


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


def _screen_rows(n_units: int) -> np.ndarray:
    """The screened units: :data:`SCREEN_RUNS` runs at fixed, evenly spread positions."""
    return np.unique(np.concatenate([np.arange(a, a + SCREEN_RUN_ROWS) for a in _screen_starts(n_units)]))


def _screen_starts(n_units: int) -> np.ndarray:
    """The first unit of each screened run."""
    return np.linspace(0, n_units - SCREEN_RUN_ROWS, SCREEN_RUNS).astype(np.int64)


def identity_screen(candidate: Checkpoint, reference: Checkpoint, name: str) -> bool:
    """Whether the screen shows layer ``name``'s (its ``ffn_up``) units unmoved and unscaled."""
    info = reference.info(name)
    if info.n_rows <= max(IDENTITY_SAMPLE, SCREEN_RUNS * SCREEN_RUN_ROWS) or candidate.info(name).shape != info.shape:
        return False
    rows = _screen_rows(info.n_rows)
    with reference.row_reader(name, SCREEN_RUN_ROWS) as rr, candidate.row_reader(name, SCREEN_RUN_ROWS) as cr:
        ref_up = rr.gather(rows).numpy().astype(np.float64)
        cand_up = cr.gather(rows).numpy().astype(np.float64)
    dots = np.einsum("ij,ij->i", ref_up, cand_up)
    norms = np.linalg.norm(ref_up, axis=1) * np.linalg.norm(cand_up, axis=1)
    cos = np.abs(dots) / np.where(norms > 0, norms, 1.0)
    if float(np.mean(cos >= SCREEN_COS)) < IDENTITY_HITS:
        return False
    scale = np.sign(dots) * np.linalg.norm(cand_up, axis=1) / np.maximum(np.linalg.norm(ref_up, axis=1), 1e-30)
    return significant_scale(ref_up, cand_up, np.where(dots == 0, 1.0, scale)) is None


def _prefetch_screens(checkpoints: tuple[Checkpoint, ...], names: list[str]) -> None:
    """Ask the disk for every screened run of rows of ``names`` at once: read one after the
    other, cold, the 8 runs of 32 layers of two files were ~500 reads each waited for."""
    for ckpt in checkpoints:
        for name in names:
            info = ckpt.info(name)
            if info.n_rows <= SCREEN_RUN_ROWS:
                continue
            for start in _screen_starts(info.n_rows).tolist():
                ckpt.prefetch(info.file, info.offset + start * info.row_bytes, SCREEN_RUN_ROWS * info.row_bytes,
                              scattered=True)


def realign(candidate: Checkpoint, reference: Checkpoint, force: bool = False,
            names: set[str] | None = None) -> Realignment:
    """Transforms for every layer whose MLP was permuted or rescaled, among the layers with
    a tensor in ``names`` (all when None). ``force``: match units even where the identity
    already matches, and keep any better match (no screen)."""
    result = Realignment()
    paired = {p.name for p in pair_tensors(candidate, reference).pairs}
    layers = sorted({info.layer for info in candidate.tensors.values() if info.layer is not None
                     and info.role in MLP_ROLES and (names is None or info.name in names)})
    if not force:
        _prefetch_screens((candidate, reference), [f"blk.{layer}.ffn_up.weight" for layer in layers
                                                   if f"blk.{layer}.ffn_up.weight" in paired])
    for layer in layers:
        up = f"blk.{layer}.ffn_up.weight"
        if not force and up in paired and identity_screen(candidate, reference, up):
            continue
        found = _realign_layer(candidate, reference, layer, paired, force)
        if found:
            result.tensors.update(found)
            result.layers[layer] = {name: t.summary().to_dict() for name, t in found.items()}
    return result
