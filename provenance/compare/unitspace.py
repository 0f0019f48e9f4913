"""Unit-space circuits: what a rotation of the residual stream cannot change.

The residual-space circuits of :mod:`.invariants` are immune to MLP-unit and head
symmetries but a rotation ``Q`` of the residual stream (SliceGPT/QuaRot-style tooling:
RMSNorm gains folded into the matrices after them, then every matrix that reads the
residual stream multiplied by ``Q`` on the right, every one that writes it by ``Q^T`` on
the left) turns them into ``Q^T M Q``, which the residual-permutation test cannot see
through. Products *contracted over the residual dimension* are unchanged by it. Per layer,
on a fixed-seed subset ``U`` of MLP units (full rows of gate/up, full columns of down, all
``d`` residual coordinates), with the ffn_norm gains ``F`` folded in:

* ``unit_gg`` = (W_gate F)_U (W_gate F)_U^T
* ``unit_ud`` = [(W_up F)_U (W_up F)_U^T] ∘ [W_down[:, U]^T W_down[:, U]]
* ``unit_gd`` = [(W_gate F)_U (W_up F)_U^T] ∘ [(W_gate F)_U W_down[:, U]]

(∘: element-wise product). Each is unchanged by any orthogonal map of the residual stream
(rotations, permutations, sign flips), by residual rescaling at the norm (gains x a,
columns / a), by rescaling or sign-flipping a unit (up row x s, down column / s: the
factors cancel inside each ∘ product) and by head symmetries (attention is not involved).
Permuting the MLP units permutes them as ``P K P^T``: under H0 (independent training) the
candidate's units are exchangeable (i.i.d. initialisation of gate/up rows and down
columns, element-wise AdamW), which is the symmetry the *unit-permutation* test draws its
null from, exactly as the residual test draws it from residual coordinates
(:class:`provenance.compare.symtest.PermutationTest` with ``m = |U|``).

What defeats it: permuting MLP units *and* rotating the residual stream together (the
residual test survives the first, this one the second; neither both). Stated in
docs/lineage.md.
"""
from __future__ import annotations

import numpy as np
import torch

from provenance.compare.invariants import Circuit, product

UNIT_CIRCUITS = ("unit_gg", "unit_ud", "unit_gd")


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def layer_unit_circuits(parts: dict[str, np.ndarray], for_spectra: bool = False) -> dict[str, np.ndarray]:
    """The unit circuits of one layer's unit-space slices (float32 products, float64 out:
    the test only ranks entries, as in :func:`provenance.compare.invariants.layer_circuits`;
    ``for_spectra``: the products through :func:`provenance.compare.invariants.product`,
    three of the five as ``syrk``)."""
    gate, up, down, gains = (parts.get(r) for r in ("ffn_gate", "ffn_up", "ffn_down", "ffn_norm"))
    if gate is None or up is None or down is None or gate.shape != up.shape or down.shape[1] != gate.shape[0]:
        return {}
    if down.shape[0] != gate.shape[1]:
        return {}
    f = _t(gains) if gains is not None and gains.shape[0] == gate.shape[1] else None
    g, u, d = _t(gate), _t(up), _t(down)
    if f is not None:
        g, u = g * f[None, :], u * f[None, :]
    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return product(a, b, for_spectra)

    out = {"unit_gg": mm(g, g.T), "unit_ud": mm(u, u.T) * mm(d.T, d), "unit_gd": mm(g, u.T) * mm(g, d)}
    return {label: m.numpy().astype(np.float64) for label, m in out.items()}


def unit_circuits(units: dict[int | None, dict[str, np.ndarray]], for_spectra: bool = False) -> list[Circuit]:
    """All unit circuits of a sketch's unit-space slices, layers in order."""
    result: list[Circuit] = []
    for layer in sorted(k for k in units if k is not None):
        for label, matrix in layer_unit_circuits(units[layer], for_spectra).items():
            result.append(Circuit(label, layer, matrix, True))
    return result


def relative_difference(reference: list[Circuit], candidate: list[Circuit]) -> dict[int, float]:
    """Per layer, ``||K_c - K_r|| / ||K_r||`` over its unit circuits: ~0 for a rotated copy
    (float rounding of the rotation and of the storage), larger for a changed layer."""
    by_key = {(c.label, c.layer): c.matrix for c in candidate}
    num: dict[int, float] = {}
    den: dict[int, float] = {}
    for r in reference:
        c = by_key.get((r.label, r.layer))
        if c is None or c.shape != r.matrix.shape or r.layer is None:
            continue
        num[r.layer] = num.get(r.layer, 0.0) + float(((c - r.matrix) ** 2).sum())
        den[r.layer] = den.get(r.layer, 0.0) + float((r.matrix ** 2).sum())
    return {k: float(np.sqrt(num[k] / den[k])) if den[k] > 0 else float("nan") for k in sorted(num)}
