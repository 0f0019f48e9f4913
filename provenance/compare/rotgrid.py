"""Grid consistency after a residual rotation: is a rotated, quantized candidate a copy?

A rotation hides the ordinary grid check (the reference's cells are in another basis) and
quantization then moves the rotation-blind unit circuits as much as a fine-tune does
(stories260k-ft-medium rotated, Q4_K_M: 0.043 against 0.032). So the reference is carried
into the candidate's basis instead (:mod:`.rotbasis`: gains folded, readers ``W Q``, writers
``Q^T W``) and the candidate's stored cells are asked whether they hold it.

The rotation recovered from the embedding rows (fit residual ~0.03 after Q4_K_M) is far too
coarse for cells a few hundredths of a weight's spread wide, so ``Q`` is fitted again on
every matrix the rotation moves: weighted orthogonal Procrustes of the candidate's stored
values on the (folded) reference, each tensor weighted by ``1 / mean cell width^2`` (the
inverse of its rounding noise, so F16 tensors pin ``Q`` down and Q5_0 ones barely move it).
One streamed pass accumulates the ``d x d`` cross product tensor by tensor, a second checks.

The rule ("consistent", docs/lineage.md; measured on stories260k-ft-medium, Q4_K_M = Q5_0/
Q8_0/F16 at that shape):

* at most ``GRID_OUTSIDE_MAX`` (0.1%) of all block-quantized weights outside their cells
  (0.05-step tolerance, f16-rounded values count, as in the exact check) and at most
  ``TENSOR_OUTSIDE_MAX`` (1%) of any one tensor's: rotated copies of four models in Q8_0, Q6_K,
  Q4_K_M, Q2_K at most 5 of 237,056 (2e-5), worst tensor 0.05% (1 weight of a 2,048-weight
  tensor: the refitted ``Q`` is not exact); the 10 synth derivatives (fine-tunes light to
  heavy, LoRA, continued pretraining) rotated and quantized (Q4_K_M, Q8_0), compared with their
  parents: at least 1.3% of all weights and 28% of the worst tensor's;
* every narrow-float tensor (F16/BF16: cells ~2^-11 of a value wide, finer than a fitted
  ``Q`` can reach) has a squared error at most ``FLOAT_NOISE_MAX`` times its rounding noise
  (sum of width^2 / 12): the copies 0.97-1.01, the derivatives at least 388 (the light fine-tune);
* every matrix the rotation moves is stored lossy (an F32 matrix has no cells to judge).

Whole tensors are still read here in float64 (bounded by the largest tensor, not yet streamed
like :mod:`.gridframe`: a writer's ``Q^T W`` mixes rows, so it needs one whole tensor, a
reader's ``W Q`` could go in row chunks); it runs only for a candidate the unit-space test
relates while the residual test does not (a rotated candidate).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from provenance.compare.copies import GRID_OUTSIDE_MAX
from provenance.compare.gridframe import candidate_is_coarser, stored_cells
from provenance.compare.rotbasis import WRITERS, folded_reference, moved_by_rotation, unit_gains
from provenance.compare.shape import GRID_TOLERANCE_STEPS
from provenance.formats.base import Checkpoint

#: a narrow-float tensor's squared error against the rotated reference, over its rounding
#: noise, at most this (copies 0.97-1.01 measured; the lightest synth fine-tune 388)
FLOAT_NOISE_MAX = 1.25
#: share of any one block-quantized tensor's weights outside their cells (copies <= 0.05%, one
#: weight of a small tensor; derivatives >= 28%); all of them together: ``GRID_OUTSIDE_MAX``
TENSOR_OUTSIDE_MAX = 0.01


@dataclass(frozen=True)
class RotatedGridCheck:
    """The candidate's stored cells against the reference rotated into its basis."""

    tensors: int
    types: tuple[str, ...]
    codes_checked: int
    """Weights of block-quantized tensors checked against their cells."""
    codes_outside: int
    worst_outside_fraction: float
    """Over block-quantized tensors."""
    float_tensors: int
    """Narrow-float tensors, judged by their error against the rounding noise."""
    float_noise_ratio_max: float | None
    noise_ratio_max: float
    """Over every checked tensor: squared error / rounding noise (1: the storage's own rounding)."""
    fit_residual: float
    """``||C - R Q|| / ||C||`` over every checked weight, with the refitted ``Q``."""
    unchecked: tuple[str, ...] = ()
    """Matrices the rotation moves that the candidate stores lossless (nothing to judge)."""

    @property
    def consistent(self) -> bool:
        floats_ok = self.float_noise_ratio_max is None or self.float_noise_ratio_max <= FLOAT_NOISE_MAX
        overall = self.codes_outside / self.codes_checked if self.codes_checked else 0.0
        return (self.tensors > 0 and not self.unchecked and floats_ok and overall <= GRID_OUTSIDE_MAX
                and self.worst_outside_fraction <= TENSOR_OUTSIDE_MAX)

    @property
    def quantized(self) -> bool:
        return self.codes_checked > 0

    def describe(self) -> str:
        """``40,704 of 40,704 codes inside their cells; 5 F16 tensors at most 0.98x their rounding noise``."""
        parts = []
        if self.codes_checked:
            parts.append(f"{self.codes_checked - self.codes_outside:,} of {self.codes_checked:,} codes inside their cells")
        if self.float_tensors and self.float_noise_ratio_max is not None:
            floats = ", ".join(t for t in self.types if t in ("F16", "BF16")) or "narrow-float"
            parts.append(f"{self.float_tensors} {floats} tensor{'s' if self.float_tensors > 1 else ''} at most "
                         f"{self.float_noise_ratio_max:.2g}x their rounding noise")
        if self.unchecked:
            parts.append(f"{len(self.unchecked)} lossless matrices not judged")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "types": list(self.types), "codes_checked": self.codes_checked,
                "codes_outside": self.codes_outside, "worst_outside_fraction": self.worst_outside_fraction,
                "float_tensors": self.float_tensors, "float_noise_ratio_max": self.float_noise_ratio_max,
                "noise_ratio_max": self.noise_ratio_max, "fit_residual": self.fit_residual,
                "unchecked": list(self.unchecked), "consistent": self.consistent, "description": self.describe()}


@dataclass
class _Tensor:
    name: str
    writer: bool
    reference: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    stored: np.ndarray

    @property
    def width(self) -> np.ndarray:
        return np.where(np.isfinite(self.hi - self.lo), self.hi - self.lo, 0.0)


def _tensors(cand: Checkpoint, ref: Checkpoint, names: Iterable[str]) -> Iterator[_Tensor]:
    """One tensor at a time: the folded reference and the candidate's cells (float64)."""
    for name in names:
        info = cand.info(name)
        w = folded_reference(ref, name, info.role or "", info.layer)
        if w is None or w.shape != tuple(info.shape):
            continue
        lo, hi, stored = stored_cells(cand, info)
        yield _Tensor(name, info.role in WRITERS, w, lo.reshape(w.shape), hi.reshape(w.shape), stored.reshape(w.shape))


def _rotated(t: _Tensor, q: np.ndarray) -> np.ndarray:
    return q.T @ t.reference if t.writer else t.reference @ q


def _lossy(cand: Checkpoint, ref: Checkpoint, name: str) -> bool:
    """The candidate stores ``name`` coarser than the reference stores its source (an untied
    output head's source is a tied reference's embedding)."""
    source = "token_embd.weight" if name == "output.weight" and name not in ref.tensors else name
    return source in ref.tensors and candidate_is_coarser(cand.info(name), ref.info(source))


def fit_rotation(cand: Checkpoint, ref: Checkpoint, names: list[str], width: int) -> np.ndarray | None:
    """The orthogonal ``Q`` (``C ~ R Q`` for readers, ``C ~ Q^T R`` for writers) fitted to the
    candidate's stored values on every listed matrix, each weighted by the inverse of its
    rounding noise; None when nothing fits."""
    cross = np.zeros((width, width))
    for t in _tensors(cand, ref, names):
        noise = float(np.mean(t.width ** 2))
        weight = 1.0 / noise if noise > 0 else 0.0
        # readers: sum R^T C; writers (C^T = R^T Q): sum R C^T
        cross += weight * (t.reference @ t.stored.T if t.writer else t.reference.T @ t.stored)
    if not np.any(cross):
        return None
    u, _, vt = torch.linalg.svd(torch.from_numpy(cross))
    return (u @ vt).numpy()


def check_rotated_grid(cand: Checkpoint, ref: Checkpoint, names: list[str]) -> RotatedGridCheck | None:
    """Refit the rotation on the ``names`` matrices (the pairs both sides hold) and check every
    one of them in the candidate's basis; None when the candidate's norm gains are not folded
    (no function-preserving rotation leaves them) or no listed matrix is one a rotation moves."""
    moved = [n for n in names if moved_by_rotation(cand.info(n).role) and len(cand.info(n).shape) == 2]
    emb = cand.tensors.get("token_embd.weight")
    if not moved or emb is None or not unit_gains(cand):
        return None
    lossy = [n for n in moved if _lossy(cand, ref, n)]
    unchecked = tuple(n for n in moved if n not in lossy)
    q = fit_rotation(cand, ref, lossy, emb.shape[1])
    if q is None:
        return None
    checked = outside = n_tensors = n_float = 0
    worst, float_ratio, ratio_max, err, energy = 0.0, None, 0.0, 0.0, 0.0
    types: set[str] = set()
    for t in _tensors(cand, ref, lossy):
        info = cand.info(t.name)
        x = _rotated(t, q)
        width = t.width
        noise = float(np.sum(width ** 2) / 12)
        sq = float(np.sum((x - t.stored) ** 2))
        ratio = sq / noise if noise > 0 else float("inf")
        n_tensors += 1
        types.add(info.dtype)
        ratio_max = max(ratio_max, ratio)
        err, energy = err + sq, energy + float(np.sum(t.stored ** 2))
        if info.block_size > 1:
            tol = GRID_TOLERANCE_STEPS * width
            x16 = x.astype(np.float16).astype(np.float64)  # llama.cpp quantizes f16-rounded values
            inside = ((x >= t.lo - tol) & (x <= t.hi + tol)) | ((x16 >= t.lo - tol) & (x16 <= t.hi + tol))
            out = int((~inside).sum())
            checked, outside = checked + inside.size, outside + out
            worst = max(worst, out / inside.size)
        else:
            n_float += 1
            float_ratio = ratio if float_ratio is None else max(float_ratio, ratio)
    if not n_tensors:
        return None
    return RotatedGridCheck(n_tensors, tuple(sorted(types)), checked, outside, worst, n_float, float_ratio, ratio_max,
                            float(np.sqrt(err / energy)) if energy > 0 else float("nan"), unchecked)
