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

Streamed by rows through the readers (as :mod:`.gridframe`): float64 only per chunk of about
:data:`provenance.quant.frame_rows.CHUNK_ELEMS` weights and in ``d x d`` accumulators, never a
whole tensor. A reader's ``W Q`` and its share of the cross product are row by row; a writer's
``Q^T W`` mixes rows, so each block of the candidate's rows takes one pass over the reference's
rows (``Q[:, block]^T W`` and ``W C_block^T`` summed chunk by chunk): ``d / block`` passes per
writer and phase, 11 at a 7B ``ffn_down`` with blocks of 4 M weights, cheap beside the ``d^2 n``
multiply-adds of the rotation itself. It runs only for a candidate the unit-space test relates
while the residual test does not (a rotated candidate).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from provenance.compare.copies import GRID_OUTSIDE_MAX
from provenance.compare.gridframe import candidate_is_coarser, stored_cells
from provenance.compare.polar import SingularMatrixError, orthogonal_polar_factor, polar_dtype
from provenance.compare.rotbasis import WRITERS, fold, moved_by_rotation, reference_gains, reference_source, unit_gains
from provenance.compare.shape import GRID_TOLERANCE_STEPS
from provenance.formats.base import Checkpoint
from provenance.quant.frame_rows import CHUNK_ELEMS, rows_per_chunk

#: a narrow-float tensor's squared error against the rotated reference, over its rounding
#: noise, at most this (copies 0.97-1.01 measured; the lightest synth fine-tune 388)
FLOAT_NOISE_MAX = 1.25
#: share of any one block-quantized tensor's weights outside their cells (copies <= 0.05%, one
#: weight of a small tensor; derivatives >= 28%); all of them together: ``GRID_OUTSIDE_MAX``
TENSOR_OUTSIDE_MAX = 0.01
#: candidate rows per block of a writer (``Q^T W`` mixes rows: each block is one pass over the
#: reference's rows), in weights: 4 M (32 MB per float64 array of the block)
WRITER_BLOCK_ELEMS = 1 << 22


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


@dataclass(frozen=True)
class _Pair:
    """One matrix of the check: the candidate's tensor and the reference rows it starts from."""

    name: str
    source: str
    writer: bool
    gains: np.ndarray | None
    rows: int
    row_length: int


@dataclass
class _Block:
    """Rows ``[start, stop)`` of the candidate: cells, stored values and their widths (float64)."""

    start: int
    stop: int
    lo: np.ndarray
    hi: np.ndarray
    stored: np.ndarray

    @property
    def width(self) -> np.ndarray:
        return np.where(np.isfinite(self.hi - self.lo), self.hi - self.lo, 0.0)


def _pairs(cand: Checkpoint, ref: Checkpoint, names: Iterable[str]) -> Iterator[_Pair]:
    for name in names:
        info = cand.info(name)
        role = info.role or ""
        source = reference_source(ref, name, role)
        if source is None or len(info.shape) != 2 or tuple(ref.info(source).shape) != tuple(info.shape):
            continue
        yield _Pair(name, source, role in WRITERS, reference_gains(ref, role, info.layer), info.n_rows, info.row_length)


def _blocks(cand: Checkpoint, pair: _Pair, step: int) -> Iterator[_Block]:
    info = cand.info(pair.name)
    for start in range(0, pair.rows, step):
        stop = min(pair.rows, start + step)
        lo, hi, stored = stored_cells(cand, info, start, stop)
        yield _Block(start, stop, lo, hi, stored)


def _reference_chunks(ref: Checkpoint, pair: _Pair) -> Iterator[tuple[int, int, np.ndarray]]:
    """The reference rows (folded, float64), one chunk at a time."""
    step = rows_per_chunk(pair.row_length, CHUNK_ELEMS)
    with ref.row_reader(pair.source, step) as reader:
        for start in range(0, pair.rows, step):
            stop = min(pair.rows, start + step)
            yield start, stop, fold(reader.read(start, stop).numpy(), pair.gains)


def _block_rows(pair: _Pair) -> int:
    """Candidate rows per block: a chunk for a reader (one pass, row by row); for a writer
    about :data:`WRITER_BLOCK_ELEMS` weights (each block is one pass over the reference)."""
    return rows_per_chunk(pair.row_length, WRITER_BLOCK_ELEMS if pair.writer else CHUNK_ELEMS)


def _in_basis(ref: Checkpoint, pair: _Pair, block: _Block, q: np.ndarray,
              chunk: tuple[int, int, np.ndarray] | None) -> np.ndarray:
    """The reference rotated into the candidate's basis, rows of ``block``: ``R Q`` for a reader
    (``chunk`` holds those rows), ``Q^T R`` for a writer (summed over a pass of the reference)."""
    if chunk is not None:
        return chunk[2] @ q
    x = np.zeros(block.stored.shape)
    for start, stop, rows in _reference_chunks(ref, pair):
        x += q[start:stop, block.start:block.stop].T @ rows
    return x


def _walk(cand: Checkpoint, ref: Checkpoint, pair: _Pair) -> Iterator[tuple[_Block, tuple[int, int, np.ndarray] | None]]:
    """The candidate's blocks, each with its reference rows for a reader (None for a writer)."""
    if pair.writer:
        for block in _blocks(cand, pair, _block_rows(pair)):
            yield block, None
        return
    chunks = _reference_chunks(ref, pair)
    for block in _blocks(cand, pair, _block_rows(pair)):
        chunk = next(chunks)
        assert chunk[0] == block.start and chunk[1] == block.stop
        yield block, chunk


def _lossy(cand: Checkpoint, ref: Checkpoint, name: str) -> bool:
    """The candidate stores ``name`` coarser than the reference stores its source (an untied
    output head's source is a tied reference's embedding)."""
    source = "token_embd.weight" if name == "output.weight" and name not in ref.tensors else name
    return source in ref.tensors and candidate_is_coarser(cand.info(name), ref.info(source))


def _noise(cand: Checkpoint, pair: _Pair) -> float:
    """The mean squared cell width of the candidate's tensor (its rounding noise), read ahead of
    the fit so each chunk's share goes straight into the one ``d x d`` accumulator."""
    widths_sq, count = 0.0, 0
    for block in _blocks(cand, pair, _block_rows(pair)):
        widths_sq, count = widths_sq + float(np.sum(block.width ** 2)), count + block.stored.size
    return widths_sq / count if count else 0.0


def fit_rotation(cand: Checkpoint, ref: Checkpoint, names: list[str], width: int) -> np.ndarray | None:
    """The orthogonal ``Q`` (``C ~ R Q`` for readers, ``C ~ Q^T R`` for writers) fitted to the
    candidate's stored values on every listed matrix, each weighted by the inverse of its
    rounding noise (the mean squared cell width); None when nothing fits. Float64."""
    cross = _cross_product(cand, ref, names, width)
    if not cross.any():
        return None
    # the polar factor in place (:mod:`.polar`: no U, V or SVD workspace), float32 above a 7B
    # width; the float64 accumulator goes before the iteration's buffers come
    work = np.asfortranarray(cross, dtype=polar_dtype(width))
    del cross
    try:
        q = orthogonal_polar_factor(work)
    except SingularMatrixError:
        # a rank-deficient fit (fewer independent rows than the width): U V^T of an SVD, one of
        # the many orthogonal factors; its workspace only on this degenerate input
        u, _, vt = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(work)))
        q = (u @ vt).numpy()
    return q if q.dtype == np.float64 else q.astype(np.float64)


def _cross_product(cand: Checkpoint, ref: Checkpoint, names: list[str], width: int) -> np.ndarray:
    """The weighted ``d x d`` cross product ``sum w R^T C`` (Fortran-ordered float64), summed in
    place: a reader's chunk goes through BLAS ``gemm`` with ``beta = 1`` (``R^T C`` of a chunk is
    ``d x d``: two temporaries of 512 MB each at a 70B width otherwise)."""
    from scipy.linalg import blas  # here, as align.py imports scipy.optimize: only a rotated check needs it

    cross = np.zeros((width, width), order="F")
    for pair in _pairs(cand, ref, names):
        noise = _noise(cand, pair)
        weight = 1.0 / noise if noise > 0 else 0.0
        for block, chunk in _walk(cand, ref, pair):
            if chunk is not None:  # readers: sum R^T C; both passed transposed (Fortran views, no copies)
                cross = blas.dgemm(weight, chunk[2].T, block.stored.T, beta=1.0, c=cross, trans_b=True, overwrite_c=True)
            else:  # writers (C^T = R^T Q): sum R C^T, this block's columns of it
                for start, stop, rows in _reference_chunks(ref, pair):
                    cross[start:stop, block.start:block.stop] += weight * (rows @ block.stored.T)
    return cross


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
    for pair in _pairs(cand, ref, lossy):
        info = cand.info(pair.name)
        noise = sq = 0.0
        t_checked = t_outside = 0
        for block, chunk in _walk(cand, ref, pair):
            x = _in_basis(ref, pair, block, q, chunk)
            width = block.width
            noise += float(np.sum(width ** 2))
            sq += float(np.sum((x - block.stored) ** 2))
            energy += float(np.sum(block.stored ** 2))
            if info.block_size > 1:
                tol = GRID_TOLERANCE_STEPS * width
                x16 = x.astype(np.float16).astype(np.float64)  # llama.cpp quantizes f16-rounded values
                inside = ((x >= block.lo - tol) & (x <= block.hi + tol)) | ((x16 >= block.lo - tol) & (x16 <= block.hi + tol))
                t_checked, t_outside = t_checked + inside.size, t_outside + int((~inside).sum())
        noise /= 12
        ratio = sq / noise if noise > 0 else float("inf")
        n_tensors += 1
        types.add(info.dtype)
        ratio_max = max(ratio_max, ratio)
        err += sq
        if info.block_size > 1:
            checked, outside = checked + t_checked, outside + t_outside
            worst = max(worst, t_outside / t_checked if t_checked else 0.0)
        else:
            n_float += 1
            float_ratio = ratio if float_ratio is None else max(float_ratio, ratio)
    if not n_tensors:
        return None
    return RotatedGridCheck(n_tensors, tuple(sorted(types)), checked, outside, worst, n_float, float_ratio, ratio_max,
                            float(np.sqrt(err / energy)) if energy > 0 else float("nan"), unchecked)
