"""Grid consistency: are a candidate's stored codes what llama.cpp would have stored for
the reference weights?

For each quantized tensor the reference rows (canonical layout, same shape) are run
through llama.cpp's own code arithmetic (:mod:`provenance.codecs.recipes`) on the
candidate's stored grid. A clean quantization of the reference gives zero unexplained
mismatches; a source that differed by small noise gives rare flips next to cell
boundaries (P(flip) ~ E|delta| / step, so the count estimates the noise amplitude); an
unrelated source gives mismatches everywhere.

Source precision: llama.cpp quantizes whatever floats it is handed, and converters often
hand it f16 or bf16 values. The check is run with the reference as is (``f32``), rounded
to f16, or to bf16, and the hypothesis that explains the grid best is reported: a
forensic signal of what the quantizer saw. When the reference is f32 but the quantizer's
input was an f16/bf16 rounding of a *higher-precision* original (e.g. float64 draws cast
straight to f16), the two roundings differ exactly where the f32 value sits on a
midpoint of the narrow format; both neighbours are then accepted (double rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from provenance.codecs.dequant import as_torch
from provenance.codecs.grid import QuantGrid, quant_grid
from provenance.codecs.native import bind
from provenance.codecs.native import gridcheck as native
from provenance.codecs.native.parallel import map_tiles
from provenance.codecs.quanttype import QuantType
from provenance.codecs.recipes import Prediction, predict, supported
from provenance.codecs.registry import find_quant_type
from provenance.formats.dtypes import torch_dtype
from provenance.quant.error import ErrorStats, error_stats_torch

PRECISIONS = ("f32", "f16", "bf16")


def source_variants(x: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference as the quantizer would have seen it under ``precision``, and, for
    narrow formats, the alternative where f32 values on a midpoint round the other way
    (None when no value is ambiguous)."""
    if precision == "f32":
        return x, None
    dtype = torch_dtype(precision.upper())
    assert dtype is not None, precision
    near = x.to(dtype).to(torch.float32)
    other = 2 * x - near  # the neighbour on the other side, when x is a midpoint
    ambiguous = (near != x) & (other - x == x - near) & (other.to(dtype).to(torch.float32) == other)
    if not bool(ambiguous.any()):
        return near, None
    return near, torch.where(ambiguous, other, near)


@dataclass
class CheckCounts:
    """Accumulated grid-consistency counts of one tensor (summable over row chunks)."""

    n_weights: int = 0
    n_checked: int = 0
    n_mismatch: int = 0
    n_explained: int = 0
    n_unexplained: int = 0
    n_up: int = 0
    """Unexplained flips whose stored value lies above the reference's (source larger)."""
    n_down: int = 0
    n_blocks_scale_mismatch: int = 0
    inv_step_sum: float = 0.0
    """Sum over checked weights of 1/step (value units)."""
    near_sum: float = 0.0
    """Sum over weights within ``NEAR`` steps of a cell boundary of ``1/(2*NEAR*step)``:
    the density of weights at the boundaries, which is what flip counts measure."""
    distances: list[float] = field(default_factory=list)
    """Distance of each unexplained mismatch outside its stored cell, in steps (capped list)."""

    MAX_KEPT = 100_000

    def add(self, other: CheckCounts) -> None:
        for name in ("n_weights", "n_checked", "n_mismatch", "n_explained", "n_unexplained", "n_up", "n_down", "n_blocks_scale_mismatch"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.inv_step_sum += other.inv_step_sum
        self.near_sum += other.near_sum
        room = self.MAX_KEPT - len(self.distances)
        if room > 0:
            self.distances.extend(other.distances[:room])

    @property
    def amplitude(self) -> float:
        """Estimated std of the source difference (value units).

        A weight at margin ``m`` steps from its cell boundary flips when the difference
        pushes it across: ``E[flips] = E|delta| * sum_i rho_i / step_i`` with ``rho_i`` the
        density of margins at 0 (1 for weights spread uniformly over their cells, but
        K-quant scale searches pull weights towards cell centres, to ~0.7). ``rho`` is
        measured on the reference itself (``near_sum``), and ``std = E|delta|*sqrt(pi/2)``
        for Gaussian differences."""
        if self.near_sum <= 0:
            return float("nan")
        return self.n_unexplained / self.near_sum * math.sqrt(math.pi / 2)

    def summary(self) -> dict[str, float | int]:
        d = np.asarray(self.distances, dtype=np.float64)
        # the counters only: asdict would deep-copy the kept distances element by element
        # (up to MAX_KEPT floats per tensor: 7.7 of the 12.5 s profiled in a 135M model's quantcheck)
        out: dict[str, float | int] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "distances"}
        out["frac_unexplained"] = self.n_unexplained / self.n_checked if self.n_checked else float("nan")
        out["dist_median_steps"] = float(np.median(d)) if d.size else float("nan")
        out["dist_max_steps"] = float(d.max()) if d.size else float("nan")
        out["amplitude"] = self.amplitude
        return out


def _distance_steps(grid: QuantGrid, pred: Prediction, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the source position lies outside the stored level's cell (in local steps),
    and the local step in level units."""
    u = pred.u
    if grid.levels is None:
        return (u - stored).abs() - 0.5, torch.ones_like(u)
    table = grid.levels.to(u.device)
    idx = torch.searchsorted(table, stored.contiguous())
    up = table[(idx + 1).clamp(max=len(table) - 1)]
    down = table[(idx - 1).clamp(min=0)]
    gap_up = torch.where(up > stored, up - stored, stored - down)
    gap_down = torch.where(down < stored, stored - down, up - stored)
    above = u > stored
    gap = torch.where(above, gap_up, gap_down)
    return ((u - stored).abs() - gap / 2) / gap, gap


NEAR = 0.05
"""Margin (in steps) within which a weight counts as sitting on a cell boundary."""


def _margins(grid: QuantGrid, pred: Prediction) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (in local steps) from each source position to the nearest boundary of
    its predicted cell that exists (the outer side of an end cell has none), and the
    gap (level units) on that side."""
    u, level = pred.u, pred.level
    if grid.levels is None:
        r = u - level
        margin = 0.5 - r.abs()
        margin = torch.where(level >= grid.qmax, r + 0.5, margin)
        margin = torch.where(level <= grid.qmin, 0.5 - r, margin)
        return margin, torch.ones_like(u)
    table = grid.levels.to(u.device)
    idx = torch.searchsorted(table, level.contiguous())
    last = len(table) - 1
    up = table[(idx + 1).clamp(max=last)]
    down = table[(idx - 1).clamp(min=0)]
    gap_up, gap_down = up - level, level - down
    m_up = torch.where(
        idx < last,
        ((level + up) / 2 - u) / torch.where(gap_up > 0, gap_up, torch.ones_like(gap_up)),
        torch.full_like(u, math.inf),
    )
    m_down = torch.where(
        idx > 0,
        (u - (level + down) / 2) / torch.where(gap_down > 0, gap_down, torch.ones_like(gap_down)),
        torch.full_like(u, math.inf),
    )
    use_up = m_up < m_down
    return torch.where(use_up, m_up, m_down), torch.where(use_up, gap_up, gap_down)


def check_block_rows(
    x: torch.Tensor, raw: np.ndarray | torch.Tensor, ggml_type: int, precision: str, threads: int = 1
) -> tuple[CheckCounts, ErrorStats]:
    """Grid consistency of stored rows ``raw`` against reference rows ``x`` (same shape),
    and the dequantization error of the stored values (with the error a clean
    quantization of the reference on the same grid would have).

    On the CPU this is the type's compiled check (``QuantType.check``: one pass over the
    blocks, split between ``threads``); elsewhere, and for a type without one, the torch
    implementation below, which the tests hold it to: every count equal, float64 sums
    equal up to summation order."""
    qt = find_quant_type(ggml_type)
    on_cpu = x.device.type == "cpu" and (not isinstance(raw, torch.Tensor) or raw.device.type == "cpu")
    if qt is not None and qt.check is not None and on_cpu:
        return _check_compiled(qt, x, raw, precision, threads)
    return check_block_rows_torch(x, raw, ggml_type, precision)


def _check_compiled(qt: QuantType, x: torch.Tensor, raw: np.ndarray | torch.Tensor, precision: str,
                    threads: int) -> tuple[CheckCounts, ErrorStats]:
    if precision not in native.PRECISION_CODES:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    assert qt.check is not None
    raw_np = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw, dtype=np.uint8)
    blocks = np.ascontiguousarray(raw_np).reshape(-1, qt.type_size)
    xb = np.ascontiguousarray(x.to(torch.float32).numpy()).reshape(-1, qt.block_size)
    if xb.shape[0] != blocks.shape[0]:
        raise ValueError(f"{qt.name}: {xb.shape[0]} reference blocks for {blocks.shape[0]} stored ones")
    fn, tables = bind(qt.check)

    def accumulators(weights: int) -> tuple[np.ndarray, ...]:
        return (np.zeros(native.N_COUNTS, np.int64), np.zeros(native.N_SUMS, np.float64),
                np.empty(min(CheckCounts.MAX_KEPT, weights), np.float32))

    shared = (native.PRECISION_CODES[precision], np.float32(NEAR), *tables)
    # tiles fixed by the data: the float64 sums are the same on 1 or 2 threads, bit for bit
    parts = map_tiles(fn, (blocks, xb), accumulators, shared, threads, xb.size)
    n = np.sum([p[0] for p in parts], axis=0)
    totals = np.zeros(native.N_SUMS, np.float64)
    for _, sums, _ in parts:  # a fixed order: the tiles' order
        totals += sums
    max_abs = [float(p[1][native.MAX_ABS]) for p in parts]
    kept = np.concatenate([dist[:c[native.N_KEPT]] for c, _, dist in parts])[: CheckCounts.MAX_KEPT]
    counts = CheckCounts(
        n_weights=int(n[native.N_WEIGHTS]), n_checked=int(n[native.N_CHECKED]), n_mismatch=int(n[native.N_MISMATCH]),
        n_explained=int(n[native.N_EXPLAINED]), n_unexplained=int(n[native.N_UNEXPLAINED]), n_up=int(n[native.N_UP]),
        n_down=int(n[native.N_DOWN]), n_blocks_scale_mismatch=int(n[native.N_SCALE_BAD]),
        inv_step_sum=float(totals[native.INV_STEP]), near_sum=float(totals[native.NEAR_INV]) / (2 * NEAR),
        distances=kept.tolist(),
    )
    errors = ErrorStats(
        n=counts.n_weights, sse=float(totals[native.SSE]), ref_ss=float(totals[native.REF_SS]),
        clean_sse=float(totals[native.CLEAN_SSE]), abs_steps=float(totals[native.ABS_STEPS]),
        n_steps=int(n[native.N_STEPS]),
        max_abs=math.nan if any(math.isnan(m) for m in max_abs) else max(max_abs, default=0.0),
    )
    return counts, errors


def check_block_rows_torch(
    x: torch.Tensor, raw: np.ndarray | torch.Tensor, ggml_type: int, precision: str
) -> tuple[CheckCounts, ErrorStats]:
    """:func:`check_block_rows` in torch ops, on any device."""
    raw_t = raw if isinstance(raw, torch.Tensor) else as_torch(np.asarray(raw, dtype=np.uint8))
    grid = quant_grid(raw_t, ggml_type)
    x = x.to(torch.float32).reshape(grid.codes.shape)
    stored = grid.level_values()
    near, alt = source_variants(x, precision)
    pred = predict(near, grid, ggml_type, raw_t)
    mismatch = pred.valid & (pred.level != stored)
    explained = torch.zeros_like(mismatch)
    scale_bad = None if pred.scale_ok is None else ~pred.scale_ok
    if alt is not None:
        pred_alt = predict(alt, grid, ggml_type, raw_t)
        explained |= mismatch & (pred_alt.level == stored)
        if scale_bad is not None and pred_alt.scale_ok is not None:
            scale_bad &= ~pred_alt.scale_ok
    dist, gap = _distance_steps(grid, pred, stored)
    if pred.tolerance is not None:
        explained |= mismatch & (dist * gap <= pred.tolerance)
    unexplained = mismatch & ~explained
    scale = grid.scale_per_weight()
    step_value = (scale * gap).abs()
    usable = pred.valid & (step_value > 0) & torch.isfinite(step_value)
    inv = torch.where(
        usable, 1.0 / torch.where(usable, step_value, torch.ones_like(step_value)), torch.zeros_like(step_value)
    )
    margin, side_gap = _margins(grid, pred)
    near = usable & (margin >= 0) & (margin < NEAR)
    near_step = (scale * side_gap).abs()
    near_inv = torch.where(
        near, 1.0 / torch.where(near, near_step, torch.ones_like(near_step)), torch.zeros_like(near_step)
    )
    direction = (stored - pred.level) * scale
    counts = CheckCounts(
        n_weights=x.numel(),
        n_checked=int(pred.valid.sum()),
        n_mismatch=int(mismatch.sum()),
        n_explained=int(explained.sum()),
        n_unexplained=int(unexplained.sum()),
        n_up=int((unexplained & (direction > 0)).sum()),
        n_down=int((unexplained & (direction < 0)).sum()),
        n_blocks_scale_mismatch=0 if scale_bad is None else int(scale_bad.sum()),
        inv_step_sum=float(inv.double().sum()),
        near_sum=float(near_inv.double().sum()) / (2 * NEAR),
    )
    if counts.n_unexplained:
        counts.distances = dist[unexplained][: CheckCounts.MAX_KEPT].tolist()
    values = grid.value_of(stored)
    clean = grid.value_of(torch.where(pred.valid, pred.level, stored))
    return counts, error_stats_torch(values, x, clean, step_value)


__all__ = ["PRECISIONS", "CheckCounts", "check_block_rows", "check_block_rows_torch", "source_variants", "supported"]
