"""The cell test of an F16/BF16 side, compiled: which weights of ``x`` lie outside the
rounding cells of stored 16-bit floats.

A weight stored in a narrow float ``v`` stands for the reals halfway to each neighbour,
``[(v + down) / 2, (v + up) / 2]`` (:func:`provenance.compare.shape.rounding_cells`), widened
by :data:`~provenance.compare.shape.GRID_TOLERANCE_STEPS` of the cell's width on each side.
Over a whole matrix that test in numpy/torch costs a dozen float64 passes and a
``torch.nextafter`` per weight (most of the re-judgement pass of ``investigate`` at 7B:
docs/benchmarks.md); here one compiled pass over the weights finds the neighbours from the
16-bit pattern and a 65,536-entry table, computes the same bounds in the same float32 and
float64 operations, and lists the weights it finds outside. Those few (every weight of a
copy is inside) are then judged again by the torch/numpy reference formulas, the f16
reading of ``x`` included, so the count is theirs exactly (tests/compare/test_narrowcells.py).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from provenance.codecs.native.floats import round_bf16, round_f16
from provenance.compare.shape import GRID_TOLERANCE_STEPS, rounding_cells
from provenance.jit import kernel

#: the 16-bit float types the compiled test knows: their infinity's bit pattern
INF_BITS = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


@lru_cache(maxsize=2)
def _values_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of every 16-bit pattern of ``dtype``."""
    patterns = np.arange(1 << 16, dtype=np.uint32)
    if dtype == torch.float16:
        return patterns.astype(np.uint16).view(np.float16).astype(np.float32)
    return (patterns << 16).view(np.float32)


def _rounded_bits(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The 16-bit patterns of contiguous float32 ``x`` rounded to ``dtype`` (to nearest, ties to even)."""
    return torch.from_numpy(x).to(dtype).view(torch.int16).numpy().view(np.uint16)


def _bits(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The 16-bit patterns of float32 ``values`` that are ``dtype`` values (as read back)."""
    if dtype == torch.float16:
        # torch's conversion (vectorised) gives the same patterns as numpy's for every float16
        # value, 2.5x faster (numpy's was a tenth of investigate's CPU at 7B); a NaN's pattern may
        # differ, which the test never reads (a NaN weight is flagged either way)
        return _rounded_bits(np.ascontiguousarray(values), torch.float16)
    return (values.view(np.uint32) >> 16).astype(np.uint16)


@kernel
def _flag_outside(at: np.ndarray, bits: np.ndarray, values: np.ndarray, x: np.ndarray, table: np.ndarray,
                  inf_bits: int, tol_steps: float, flagged: np.ndarray) -> int:  # pragma: no cover - compiled
    """Positions ``at`` of ``x`` outside the widened cells of ``values`` (16-bit ``bits``),
    written to ``flagged``; returns how many. The bounds are :func:`rounding_cells`'s: the
    neighbours of ``nextafter`` (signed zeros and infinities as IEEE has them), summed and
    halved in float32. ``at``: the weights to test, every one or those that do not round to
    their stored pattern (:func:`_not_rounding_to_stored`): a vectorized comparison finds them,
    where a per-weight branch in this loop cost ~1.1 ns per weight of a marked chunk."""
    k = 0
    half = np.float32(0.5)
    for i in at:
        b = np.int64(bits[i])
        # next pattern up and down, without a branch on the sign (random in weights: a
        # mispredicted branch per weight cost 2.7 ns of the 4.4 per weight this loop took)
        sign = b >> 15
        up = b + 1 - 2 * sign
        down = b - 1 + 2 * sign
        magnitude = b & 0x7FFF
        if magnitude == 0:  # either zero: the smallest subnormals either side
            up, down = 1, 0x8001
        elif magnitude == inf_bits:  # an infinity stays where it points
            if sign == 0:
                up = b
            else:
                down = b
        v = values[i]
        lo = np.float64((v + table[down & 0xFFFF]) * half)
        hi = np.float64((v + table[up & 0xFFFF]) * half)
        width = hi - lo
        if not np.isfinite(width):
            width = 0.0
        tol = tol_steps * width
        xi = x[i]
        if not (xi >= lo - tol and xi <= hi + tol):
            flagged[k] = i
            k += 1
    return k


def cell_width(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Each cell's width (float64), 0 where it is not finite (an infinite cell gets no tolerance)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(np.isfinite(hi - lo), hi - lo, 0.0)


def cell_test(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference cell test (float64): whether each weight of ``x`` or its f16 rounding
    (llama.cpp quantizes f16-rounded values too) lies in ``[lo, hi]`` widened by the
    tolerance; also the tolerance, the f16 reading and the cell width (the shape of the
    change needs them)."""
    width = cell_width(lo, hi)
    with np.errstate(invalid="ignore", over="ignore"):  # infinite cells and f16 overflow are expected
        tol = GRID_TOLERANCE_STEPS * width
        low, high = lo - tol, hi + tol
        x16 = x.astype(np.float16).astype(np.float64)
    inside = ((x >= low) & (x <= high)) | ((x16 >= low) & (x16 <= high))
    return inside, tol, x16, width


#: per 16-bit type, the magnitudes (bit patterns) below which a stored value's cell edges are exact
#: in float32: float16's every finite value; bfloat16's below 2**127 (two neighbours at or above
#: it add past float32's largest value, and the edge becomes infinite)
_EXACT_EDGES_BELOW = {torch.float16: 0x7C00, torch.bfloat16: 0x7F00}


def maybe_outside(x: np.ndarray, values: np.ndarray, dtype: torch.dtype) -> np.ndarray | None:
    """Positions in the flattened ``x`` (float32 or float64) that may lie outside the cells of
    ``values`` (float32, stored as the 16-bit ``dtype``), the others being inside
    (:func:`_not_rounding_to_stored`); None when every weight may be."""
    flat_v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return _not_rounding_to_stored(np.ascontiguousarray(x).reshape(-1), flat_v, dtype)


@kernel
def _rounds_elsewhere(x: np.ndarray, values: np.ndarray, limit: np.float32, f16: bool,
                      mask: np.ndarray) -> None:  # pragma: no cover - compiled
    """``mask[i]``: whether float32 ``x[i]`` does not round (torch's conversion to float16,
    or bfloat16) to the stored value ``values[i]``, of a magnitude below ``limit`` (values
    compared as floats: a weight rounding to -0 where +0 is stored lies in +0's cell too).
    One branch-free pass (~0.3 ns per weight) where numpy's conversion, comparisons and
    temporaries cost ~0.9."""
    for i in range(x.shape[0]):
        v = values[i]
        r = round_f16(x[i]) if f16 else round_bf16(x[i])
        mask[i] = not (r == v and abs(v) < limit)


def _not_rounding_to_stored(x: np.ndarray, values: np.ndarray, dtype: torch.dtype) -> np.ndarray | None:
    """Positions of float32 ``x`` that need the cell test against finite stored 16-bit ``values``;
    None when that is most of them (or ``x`` is float64), so that every weight is tested.

    A float32 weight that rounds (to nearest, ties to even: torch's conversion) to the finite
    value stored lies in its rounding cell, edges included: the cell's ends are the exact
    halfway points to the neighbours (two adjacent 16-bit floats add exactly in float32, and
    halving is exact), which is also what the compiled test and :func:`rounding_cells` compute,
    and the tolerance only widens the cell. So such a weight is never counted, and skipping it
    leaves the count as it was. That is every weight of an exact copy, and of a marked copy
    once its mark is added to the reference (the re-judgement of ``investigate``): one
    vectorised conversion and a comparison instead of the bounds of every weight (in the
    compiled loop, 0.43 against 1.52 ns of CPU per weight on a marked 32 x 4096 chunk).
    Infinities and NaN are always tested
    (an infinity's cell is empty for finite weights), and so are the largest bfloat16 values,
    whose sum with a neighbour overflows float32 (:data:`_EXACT_EDGES_BELOW`)."""
    if x.dtype != np.float32:
        return None  # a float64 weight is rounded to float32 first by torch: not one rounding
    differ = np.empty(x.shape[0], dtype=np.bool_)
    limit = _values_table(dtype)[_EXACT_EDGES_BELOW[dtype]]
    _rounds_elsewhere(x, values, limit, dtype == torch.float16, differ)
    kept = np.flatnonzero(differ)
    return kept if 2 * kept.size < x.size else None


def count_outside(values: np.ndarray, x: np.ndarray, dtype: torch.dtype) -> int:
    """Weights of ``x`` (float64, or float32: compared as the same float64 values, with no
    float64 copy) outside the cells of ``values`` (float32, stored as the 16-bit ``dtype``) by
    :func:`cell_test`: the compiled pass flags candidates, the reference test decides them."""
    flat_v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    flat_x = np.ascontiguousarray(x, dtype=x.dtype if x.dtype == np.float32 else np.float64).reshape(-1)
    # float32 weights that round to their stored value are not tested (:func:`_not_rounding_to_stored`):
    # every weight of a marked copy once its mark is added, but for a few ties
    at = _not_rounding_to_stored(flat_x, flat_v, dtype)
    if at is None:
        at = np.arange(flat_v.size)
    if not at.size:
        return 0
    bits = _bits(flat_v, dtype)  # the stored patterns, for the neighbours of the weights tested
    flagged = np.empty(at.size, dtype=np.int64)
    k = _flag_outside(at, bits, flat_v, flat_x, _values_table(dtype), INF_BITS[dtype], float(GRID_TOLERANCE_STEPS),
                      flagged)
    if not k:
        return 0
    at = flagged[:k]
    lo, hi = (t.double().numpy() for t in rounding_cells(torch.from_numpy(flat_v[at]), dtype))
    inside, *_ = cell_test(flat_x[at].astype(np.float64), lo, hi)
    return int((~inside).sum())


__all__ = ["INF_BITS", "cell_test", "cell_width", "count_outside", "maybe_outside"]
