"""Is the candidate a merge of several references, and with what weights?

A linear merge (mergekit ``linear``), SLERP between close models, and the task-arithmetic
family on a common base (``task_arithmetic``, TIES, DARE: ``C - B ~ sum_k w_k (R_k - B)``,
with TIES/DARE's trimming shrinking the effective weights) all leave the candidate close
to a linear combination of its parents. Per layer, the mixing weights are the least-squares
solution ``w = argmin ||C - sum_k w_k R_k||`` (deltas from the base when one is given),
from one streamed pass that accumulates the float64 Gram matrix of ``[C, R_1 .. R_k]``
over every matrix present in all checkpoints with one shape (bounded row chunks, memory
flat in model size; norm vectors are left out: gains near 1 would dominate the raw
products). The least-squares weights of unrelated weights are ~0 (their inner products
are), so a fine-tune of one parent gets ``(~1, ~0)``: it is not called a merge.

A merge is called when at least two references get a weight of at least
:data:`MERGE_MIN` and each of them is needed: leaving it out of the least squares raises the
residual by more than 5% (the residual with all is at most :data:`CONTRIBUTION` times the
residual without it). Two fine-tunes of one base explain each other's parent about equally
well, so a fine-tune compared with its parent and a sibling is not a merge (measured in
tests/compare/test_merge.py).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.textsafe import safe_text

#: a reference takes part in a merge with at least this weight
MERGE_MIN = 0.1
#: ... and leaving any of those out raises the residual: with all <= CONTRIBUTION x without it
CONTRIBUTION = 0.95
_CHUNK = 1 << 22


@dataclass(frozen=True)
class LayerMix:
    layer: int | None
    """None: the global tensors (embeddings, output head)."""
    weights: tuple[float, ...]
    residual: float
    """``||C - sum w_k R_k|| / ||C||`` (deltas from the base when given) on this layer's matrices."""

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "weights": [round(w, 6) for w in self.weights], "residual": round(self.residual, 6)}


@dataclass(frozen=True)
class MergeEstimate:
    """Least-squares mixing weights of the candidate on several references."""

    references: tuple[str, ...]
    base: str | None
    weights: tuple[float, ...]
    """Over all shared matrices, one weight per reference (in ``references`` order)."""
    residual: float
    single_residuals: tuple[float, ...]
    """The residual with each reference alone (its own least-squares weight)."""
    without: tuple[float, ...]
    """The residual with each reference left out (the others' least-squares weights)."""
    layers: tuple[LayerMix, ...]
    tensors: int
    """Matrices used (present in every checkpoint with one shape)."""

    @property
    def is_merge(self) -> bool:
        parts = [k for k, w in enumerate(self.weights) if w >= MERGE_MIN]
        return len(parts) >= 2 and all(self.residual <= CONTRIBUTION * self.without[k] for k in parts)

    def names(self) -> list[str]:
        return [os.path.basename(os.path.normpath(r)) or r for r in self.references]

    def describe(self) -> str:
        parts = ", ".join(f"{n} ({w:.2f})" for n, w in zip(self.names(), self.weights, strict=True))
        on = f" on base {os.path.basename(os.path.normpath(self.base))}" if self.base else ""
        if self.is_merge:
            return f"merge of {parts}{on} (residual {self.residual:.3g}; best single parent {min(self.single_residuals):.3g})"
        return (f"not a merge: least-squares weights {parts}{on}; the best single parent leaves "
                f"{min(self.single_residuals):.3g}, all together {self.residual:.3g}")

    def to_dict(self) -> dict[str, Any]:
        return {"references": [safe_text(r) for r in self.references],
                "base": safe_text(self.base) if self.base else None,
                "weights": [round(w, 6) for w in self.weights], "residual": self.residual,
                "single_residuals": list(self.single_residuals), "residuals_without": list(self.without),
                "is_merge": self.is_merge, "tensors": self.tensors,
                "description": self.describe(), "layers": [m.to_dict() for m in self.layers]}


def _solve(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights and relative residual from the Gram of ``[C, R_1..R_k]``."""
    g_rr, g_rc, g_cc = gram[1:, 1:], gram[1:, 0], gram[0, 0]
    w = np.linalg.lstsq(g_rr, g_rc, rcond=None)[0]
    res2 = max(0.0, float(g_cc - 2 * w @ g_rc + w @ g_rr @ w))
    return w, float(np.sqrt(res2 / g_cc)) if g_cc > 0 else float("nan")


def _shared_matrices(ckpts: Sequence[Checkpoint]) -> list[str]:
    first = ckpts[0]
    out = []
    for name, info in first.tensors.items():
        if len(info.shape) != 2 or min(info.shape) < 2:
            continue
        if all(name in c.tensors and c.tensors[name].shape == info.shape for c in ckpts[1:]):
            out.append(name)
    return out


def _tensor_gram(ckpts: Sequence[Checkpoint], name: str, base: Checkpoint | None) -> np.ndarray:
    k = len(ckpts)
    gram = np.zeros((k, k))
    # 4 MB of float32 rows per chunk and checkpoint: the float64 stack stays ~8 MB per input
    streams = [c.iter_rows(name, chunk_bytes=_CHUNK) for c in ckpts]
    base_stream = base.iter_rows(name, chunk_bytes=_CHUNK) if base is not None else None
    for chunks in zip(*streams, strict=True):
        rows = np.stack([np.asarray(x[1], dtype=np.float64).reshape(-1) for x in chunks])
        if base_stream is not None:
            rows -= np.asarray(next(base_stream)[1], dtype=np.float64).reshape(-1)[None, :]
        gram += rows @ rows.T
    return gram


@input_boundary
def estimate_merge(candidate: str | os.PathLike[str], references: Sequence[str | os.PathLike[str]],
                   base: str | os.PathLike[str] | None = None) -> MergeEstimate:
    """Mixing weights of ``candidate`` on ``references`` (deltas from ``base`` when given),
    per layer and overall, from one streamed pass over the matrices they all share."""
    if len(references) < 1:
        raise ValueError("estimate_merge needs at least one reference")
    with ExitStack() as stack:
        ckpts = [stack.enter_context(open_checkpoint(p)) for p in (candidate, *references)]
        base_ckpt = stack.enter_context(open_checkpoint(base)) if base is not None else None
        names = _shared_matrices(ckpts + ([base_ckpt] if base_ckpt is not None else []))
        per_layer: dict[int | None, np.ndarray] = {}
        for name in names:
            layer = ckpts[0].tensors[name].layer
            g = _tensor_gram(ckpts, name, base_ckpt)
            per_layer[layer] = per_layer.get(layer, 0) + g
    if not per_layer:
        raise ValueError("no matrix is shared by the candidate and every reference")
    total = sum(per_layer.values())
    w, res = _solve(total)
    k_all = list(range(1, len(references) + 1))
    singles = tuple(_solve(total[np.ix_([0, k], [0, k])])[1] for k in k_all)
    without = tuple(_solve(total[np.ix_([0, *[j for j in k_all if j != k]], [0, *[j for j in k_all if j != k]])])[1]
                    if len(k_all) > 1 else 1.0 for k in k_all)
    layers = tuple(LayerMix(layer, tuple(float(x) for x in _solve(g)[0]), _solve(g)[1])
                   for layer, g in sorted(per_layer.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))
    return MergeEstimate(tuple(os.fspath(r) for r in references), os.fspath(base) if base is not None else None,
                         tuple(float(x) for x in w), res, singles, without, layers, len(names))
