"""The compiled per-block passes of grid consistency, inlined into every type's kernels.

Each block-quantized type with a compiled grid (``QuantType.cells`` / ``QuantType.check``,
in :mod:`provenance.codecs.ggml`) has two small kernels that decode one block's stored grid
(integer code per weight, scale and offset per sub-block) with the type's own field
readers and then run the shared pass below on it, block after block, so a tensor is read
once and no per-weight array larger than one block is written:

* :func:`cell_block` (``compare``'s grid columns): is each weight of the other side inside
  the cell of its stored code, or its f16 rounding inside (tolerance in steps);
* :func:`check_block` (``quantcheck``): the type's recipe predicts the codes from the
  reference (:class:`Predicted`, for the source as the quantizer saw it and, at f16/bf16
  midpoints, for the other rounding), and the pass counts mismatches, explains them,
  measures distances and boundary densities, and sums the dequantization error.

Both reproduce the torch implementations (:meth:`provenance.codecs.grid.QuantGrid.cell_bounds`,
:func:`provenance.quant.gridcheck.check_block_rows`, :func:`provenance.quant.error.error_stats`)
operation for operation in float32, so every count is identical; sums are accumulated
per element in float64 in index order (torch sums pairwise: the float64 sums agree to the
last few bits, the integer counts exactly). Results go to an ``int64`` counts array and a
``float64`` sums array (indices below); the caller (quant / compare) turns them into its
typed results.
"""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

import numpy as np
import torch

from provenance.codecs.native.floats import round_bf16, round_f16
from provenance.jit import inline

GridBlock = namedtuple("GridBlock", ["code", "scale", "offset"])
"""One decoded block: ``code`` int32 per weight (the signed level of a uniform type, the
index into the sorted level table otherwise), ``scale`` / ``offset`` float32 per sub-block."""

Predicted = namedtuple("Predicted", ["level", "idx", "u", "valid", "tol"])
"""A recipe's prediction for one block, per weight: level ``L(code)`` (float32), its index
in the level table (non-uniform types), the source position in level units, whether the
code is determined, and the tolerance in level units (tolerant recipes)."""

# counts of check_block
N_WEIGHTS, N_CHECKED, N_MISMATCH, N_EXPLAINED, N_UNEXPLAINED, N_UP, N_DOWN, N_SCALE_BAD, N_STEPS, N_KEPT = range(10)
N_COUNTS = 10
# sums of check_block
INV_STEP, NEAR_INV, SSE, REF_SS, CLEAN_SSE, MAX_ABS, ABS_STEPS = range(7)
N_SUMS = 7
# cell_block
CELL_OUTSIDE, CELL_TOTAL = range(2)
CELL_NOISE = 0

NO_TABLE = np.zeros(1, np.float32)
"""The level / midpoint table argument of uniform types (unused by their code paths)."""

PRECISION_CODES = {"f32": 0, "f16": 1, "bf16": 2}
"""The source precision hypotheses as the kernels take them."""

_F0 = np.float32(0.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_PINF = np.float32(np.inf)
_NINF = np.float32(-np.inf)


def check_tables(levels: Callable[[], torch.Tensor]) -> tuple[Callable[[], np.ndarray]]:
    """The table a ``LevelGrid`` type's check kernel takes: its sorted levels, float32."""
    return (lambda: levels().numpy().astype(np.float32),)


def level_cell_ends(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower and upper cell boundary (level units) of each level of a sorted float32
    table: the midpoints to its neighbours, the outermost mirrored (one definition for
    :meth:`provenance.codecs.grid.QuantGrid.cell_bounds` and the compiled kernels)."""
    mids = (table[1:] + table[:-1]) / 2
    return torch.cat([2 * table[:1] - mids[:1], mids]), torch.cat([mids, 2 * table[-1:] - mids[-1:]])


def cell_tables(levels: Callable[[], torch.Tensor]) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """The tables a ``LevelGrid`` type's cells kernel takes: the lower and upper cell
    boundary (in level units) of each level, the outermost mirrored, by exactly
    :meth:`provenance.codecs.grid.QuantGrid.cell_bounds`' float32 arithmetic."""

    def bounds() -> tuple[np.ndarray, np.ndarray]:
        lo_mid, hi_mid = level_cell_ends(levels())
        return lo_mid.numpy().astype(np.float32), hi_mid.numpy().astype(np.float32)

    return (lambda: bounds()[0], lambda: bounds()[1])


@inline
def grid_block(block_size, n_sub):  # type: ignore[no-untyped-def]
    return GridBlock(np.zeros(block_size, np.int32), np.zeros(n_sub, np.float32), np.zeros(n_sub, np.float32))


@inline
def predicted(block_size):  # type: ignore[no-untyped-def]
    return Predicted(np.zeros(block_size, np.float32), np.zeros(block_size, np.int64), np.zeros(block_size, np.float32),
                     np.zeros(block_size, np.bool_), np.zeros(block_size, np.float32))


@inline
def check_workspace(block_size, n_sub):  # type: ignore[no-untyped-def]
    """Scratch of a check kernel: the grid, two predictions, the two source roundings."""
    return (grid_block(block_size, n_sub), predicted(block_size), predicted(block_size),
            np.zeros(block_size, np.float32), np.zeros(block_size, np.float32))


@inline
def _narrow(v, precision):  # type: ignore[no-untyped-def]
    return round_f16(v) if precision == 1 else round_bf16(v)


@inline
def source_block(x, precision, near, alt):  # type: ignore[no-untyped-def]
    """The block as the quantizer saw it under ``precision`` (0 f32, 1 f16, 2 bf16) into
    ``near``, and the other rounding where ``x`` sits on a midpoint of the narrow format
    into ``alt`` (:func:`provenance.quant.gridcheck.source_variants`); True when any does."""
    if precision == 0:
        for j in range(x.shape[0]):
            near[j] = x[j]
        return False
    # branch-free (``&`` / ``|``, not ``and`` / ``or``): LLVM vectorizes the loop
    any_alt = False
    for j in range(x.shape[0]):
        v = x[j]
        r = _narrow(v, precision)
        near[j] = r
        other = np.float32(_TWO * v) - r
        ambiguous = (r != v) & (np.float32(other - v) == np.float32(v - r)) & (_narrow(other, precision) == other)
        alt[j] = other if ambiguous else r
        any_alt |= ambiguous
    return any_alt


@inline
def _nan_max(m, a):  # type: ignore[no-untyped-def]
    """``torch.max``'s rule: a NaN anywhere makes the maximum NaN."""
    if m != m:
        return m
    if a != a or a > m:
        return a
    return m


@inline
def _cell_distance(u, s, c, uniform, levels):  # type: ignore[no-untyped-def]
    """How far ``u`` lies outside the cell of stored level ``s`` (code ``c``), in local
    steps, and the local step in level units (``gridcheck._distance_steps``)."""
    if uniform:
        return np.float32(abs(np.float32(u - s)) - _HALF), _ONE
    last = levels.shape[0] - 1
    up = levels[min(c + 1, last)]
    down = levels[max(c - 1, 0)]
    gap_up = np.float32(up - s) if up > s else np.float32(s - down)
    gap_down = np.float32(s - down) if down < s else np.float32(up - s)
    gap = gap_up if u > s else gap_down
    return np.float32(np.float32(abs(np.float32(u - s)) - np.float32(gap * _HALF)) / gap), gap


@inline
def _margin(u, pl, pidx, uniform, levels, qmin, qmax):  # type: ignore[no-untyped-def]
    """Distance from ``u`` to the nearest existing boundary of its predicted cell, in
    steps, and the gap on that side (``gridcheck._margins``)."""
    if uniform:
        r = np.float32(u - pl)
        margin = np.float32(_HALF - abs(r))
        margin = np.float32(r + _HALF) if pl >= qmax else margin
        margin = np.float32(_HALF - r) if pl <= qmin else margin
        return margin, _ONE
    last = levels.shape[0] - 1
    up = levels[min(pidx + 1, last)]
    down = levels[max(pidx - 1, 0)]
    gap_up = np.float32(up - pl)
    gap_down = np.float32(pl - down)
    m_up = np.float32(np.inf)
    if pidx < last:
        m_up = np.float32(np.float32(np.float32(pl + up) * _HALF) - u) / (gap_up if gap_up > _F0 else _ONE)
    m_down = np.float32(np.inf)
    if pidx > 0:
        m_down = np.float32(u - np.float32(np.float32(pl + down) * _HALF)) / (gap_down if gap_down > _F0 else _ONE)
    if m_up < m_down:
        return m_up, gap_up
    return m_down, gap_down


@inline
def _count_mismatch(j, s, c, sc, u, pl, explained, tol, uniform, levels, counts, dist):  # type: ignore[no-untyped-def]
    """One mismatch of :func:`check_block`: explained (the other rounding, or within a
    tolerant recipe's ``tol``; -inf for exact recipes), or unexplained with its direction
    and distance."""
    d, gap = _cell_distance(u, s, c, uniform, levels)
    if not explained and np.float32(d * gap) <= tol:
        explained = True
    if explained:
        counts[N_EXPLAINED] += 1
        return
    counts[N_UNEXPLAINED] += 1
    direction = np.float32(np.float32(s - pl) * sc)
    if direction > _F0:
        counts[N_UP] += 1
    elif direction < _F0:
        counts[N_DOWN] += 1
    if counts[N_KEPT] < dist.shape[0]:
        dist[counts[N_KEPT]] = d
        counts[N_KEPT] += 1


@inline
def _values(sc, off, s, pl, valid, has_offset):  # type: ignore[no-untyped-def]
    """The stored value ``fl(fl(sc*s) + off)`` and a clean quantization's (the predicted
    level where it is determined), as :meth:`provenance.codecs.grid.QuantGrid.value_of`."""
    value = np.float32(sc * s)
    clean = np.float32(sc * pl)
    if has_offset:
        value = np.float32(value + off)
        clean = np.float32(clean + off)
    return value, clean if valid else value


@inline
def _step_terms(sc, gap, valid, near):  # type: ignore[no-untyped-def]
    """A weight's step (value units), whether it is finite and positive, and its
    ``1/step`` terms of the boundary densities (0 where they do not count), computed with
    0/1 factors: LLVM would branch around the divisions on coin-flip conditions."""
    step = abs(np.float32(sc * gap))
    finite = (step > _F0) & (step < _PINF)
    inv = np.float64(_ONE / (step if finite else _ONE))
    return step, finite, inv * np.float64(valid & finite), inv * np.float64(valid & finite & near)


@inline
def _add_block(counts, sums, n_weights, n_checked, n_mismatch, n_steps,  # type: ignore[no-untyped-def]
               inv_step, near_inv, sse, ref_ss, clean_sse, max_abs, abs_steps):
    """A block's counts and sums into the kernel's accumulators (``max_abs`` replaces)."""
    counts[N_WEIGHTS] += n_weights
    counts[N_CHECKED] += n_checked
    counts[N_MISMATCH] += n_mismatch
    counts[N_STEPS] += n_steps
    sums[INV_STEP] += inv_step
    sums[NEAR_INV] += near_inv
    sums[SSE] += sse
    sums[REF_SS] += ref_ss
    sums[CLEAN_SSE] += clean_sse
    sums[MAX_ABS] = max_abs
    sums[ABS_STEPS] += abs_steps


@inline
def _clean_sse(x, g, p, has_offset, uniform, levels):  # type: ignore[no-untyped-def]
    """``sum((clean - x)^2)`` over the block in index order (float64): the squared error of a
    clean quantization, the predicted level where it is determined (:func:`_values`)."""
    n_sub = g.scale.shape[0]
    sub = x.shape[0] // n_sub
    clean_sse = 0.0
    for k in range(n_sub):
        sc = g.scale[k]
        off = g.offset[k] if has_offset else _F0
        for j in range(k * sub, (k + 1) * sub):
            c = g.code[j]
            s = np.float32(c) if uniform else levels[c]
            _, clean = _values(sc, off, s, p.level[j], p.valid[j], has_offset)
            cd = np.float64(clean) - np.float64(x[j])
            clean_sse += cd * cd
    return clean_sse


@inline
def check_block(x, g, p, pa, has_alt, uniform, has_offset, tolerant,  # type: ignore[no-untyped-def]
                levels, qmin, qmax, near_margin, counts, sums, dist):
    """Grid consistency and dequantization error of one block: reference ``x``, stored
    grid ``g``, the recipe's prediction ``p`` (and ``pa`` for the other rounding when
    ``has_alt``). Adds to ``counts`` / ``sums``; distances of unexplained mismatches go to
    ``dist`` until it is full.

    Sub-block by sub-block. For a uniform grid every weight of a sub-block has the same
    step ``|scale|`` (and its boundary side the same), so the ``1/step`` sums are counts
    times one reciprocal and ``sum |diff|/step`` one division per sub-block; a level table
    (IQ4, Q1_0) divides per weight. The common case (no mismatch) has no data-dependent
    branch: mispredictions, not arithmetic, were what cost most here."""
    n_sub = g.scale.shape[0]
    sub = x.shape[0] // n_sub
    n_checked = n_mismatch = n_steps = 0
    inv_step = near_inv = sse = ref_ss = abs_steps = 0.0
    max_abs = sums[MAX_ABS]
    for k in range(n_sub):
        sc = g.scale[k]
        off = g.offset[k] if has_offset else _F0
        step_k, finite_k, inv_k, _ = _step_terms(sc, _ONE, True, False)
        n_usable = n_near = 0
        abs_diff = 0.0
        for j in range(k * sub, (k + 1) * sub):
            c = g.code[j]
            s = np.float32(c) if uniform else levels[c]
            pl = p.level[j]
            u = p.u[j]
            valid = p.valid[j]
            mismatch = valid & (pl != s)
            margin, side_gap = _margin(u, pl, p.idx[j], uniform, levels, qmin, qmax)
            near = (margin >= _F0) & (margin < near_margin)
            value, _ = _values(sc, off, s, pl, valid, has_offset)
            r = np.float64(x[j])
            diff = np.float64(value) - r
            sse += diff * diff
            ref_ss += r * r
            max_abs = _nan_max(max_abs, abs(diff))
            if uniform:
                n_usable += valid & finite_k
                n_near += valid & finite_k & near
                abs_diff += abs(diff)
            else:
                step, finite, inv, _ = _step_terms(sc, _cell_distance(u, s, c, uniform, levels)[1], valid, False)
                _, _, _, near_term = _step_terms(sc, side_gap, valid & finite, near)
                inv_step += inv
                near_inv += near_term
                # a select, not a 0/1 factor: an infinite or NaN error times 0 would be NaN
                # where the torch path adds 0 for a weight without a finite step
                term = abs(diff) / np.float64(step if finite else _ONE)
                abs_steps += term if finite else 0.0
                n_steps += finite
            n_checked += valid
            n_mismatch += mismatch
            if mismatch:
                _count_mismatch(j, s, c, sc, u, pl, has_alt and pa.level[j] == s, p.tol[j] if tolerant else _NINF, uniform,
                                levels, counts, dist)
        if uniform and finite_k:
            inv_step += inv_k * n_usable
            near_inv += inv_k * n_near
            abs_steps += abs_diff / np.float64(step_k)
            n_steps += sub
    # a clean quantization's values differ from the stored ones only at mismatches: without
    # one in the block its squared errors are the stored ones', added in the same order, so
    # clean_sse equals sse bit for bit and is summed again only where a mismatch occurred
    clean_sse = sse if n_mismatch == 0 else _clean_sse(x, g, p, has_offset, uniform, levels)
    _add_block(counts, sums, x.shape[0], n_checked, n_mismatch, n_steps, inv_step, near_inv, sse, ref_ss, clean_sse,
               max_abs, abs_steps)


@inline
def count_uniform_mismatches(g, p, pa, has_alt, tolerant, n_sub, sub, counts, dist):  # type: ignore[no-untyped-def]
    """The split pass's second stage on a uniform grid's block of ``n_sub`` sub-blocks of
    ``sub`` weights: each mismatch explained (by the alternative prediction ``pa`` when
    ``has_alt``) or counted, in index order."""
    for k in range(n_sub):
        sc = g.scale[k]
        for j in range(k * sub, (k + 1) * sub):
            c = g.code[j]
            s = np.float32(c)
            pl = p.level[j]
            if p.valid[j] & (pl != s):
                _count_mismatch(j, s, c, sc, p.u[j], pl, has_alt and pa.level[j] == s, p.tol[j] if tolerant else _NINF,
                                True, NO_TABLE, counts, dist)


@inline
def _check_uniform(x, g, p, pa, has_alt, has_offset, tolerant, qmin, qmax,  # type: ignore[no-untyped-def]
                   near_margin, counts, sums, dist):
    """:func:`check_block` for a uniform grid (the legacy and K-quant types), in passes that
    add exactly what it adds, in the same order, so every count, kept distance and float64
    sum is the same bit for bit (``tests/quant/test_gridcheck_compiled.py`` holds it to the
    one-pass loop): per sub-block (1) the float32 tests and integer counts only, no store and
    no float64 sum, which LLVM vectorizes; (2) the float64 error sums in index order, nothing
    else (a float64 sum is a chain that LLVM may not reorder without fast-math: in the
    one-pass loop it kept everything else scalar too); then (3) only in a group with a
    mismatch, the mismatches in index order (explanation, direction, distance) and a clean
    quantization's squared error. On a Q8_0 matrix this took the kernel from 4.6 to 3.8 CPU
    ns per weight (``benchmarks/bench_gridcheck_threads.py``; docs/benchmarks.md)."""
    n_sub = g.scale.shape[0]
    sub = x.shape[0] // n_sub
    n_checked = n_mismatch = n_steps = 0
    inv_step = near_inv = sse = ref_ss = abs_steps = 0.0
    max_abs = sums[MAX_ABS]
    nan = max_abs != max_abs
    for k in range(n_sub):
        sc = g.scale[k]
        off = g.offset[k] if has_offset else _F0
        n_usable = n_near = n_bad = np.int32(0)
        at = k * sub  # 0-based views: contiguous accesses LLVM vectorizes (see cell_block)
        codes, levels_k, valid_k, u_k, xk = g.code[at:at + sub], p.level[at:at + sub], p.valid[at:at + sub], \
            p.u[at:at + sub], x[at:at + sub]
        for j in range(sub):
            s = np.float32(codes[j])
            pl = levels_k[j]
            valid = valid_k[j]
            margin, _ = _margin(u_k[j], pl, 0, True, NO_TABLE, qmin, qmax)
            near = (margin >= _F0) & (margin < near_margin)
            n_usable += np.int32(valid)
            n_near += np.int32(valid & near)
            n_bad += np.int32(valid & (pl != s))
        n_checked += n_usable
        n_mismatch += n_bad
        step_k, finite_k, inv_k, _ = _step_terms(sc, _ONE, True, False)
        abs_diff = 0.0
        for j in range(sub):
            value, _ = _values(sc, off, np.float32(codes[j]), _F0, False, has_offset)
            r = np.float64(xk[j])
            diff = np.float64(value) - r
            sse += diff * diff
            ref_ss += r * r
            a = abs(diff)
            nan |= a != a
            max_abs = a if a > max_abs else max_abs
            abs_diff += a
        if finite_k:
            inv_step += inv_k * n_usable
            near_inv += inv_k * n_near
            abs_steps += abs_diff / np.float64(step_k)
            n_steps += sub
    clean_sse = sse
    if n_mismatch:
        count_uniform_mismatches(g, p, pa, has_alt, tolerant, n_sub, sub, counts, dist)
        clean_sse = _clean_sse(x, g, p, has_offset, True, NO_TABLE)
    _add_block(counts, sums, x.shape[0], n_checked, n_mismatch, n_steps, inv_step, near_inv, sse, ref_ss, clean_sse,
               np.float64(np.nan) if nan else max_abs, abs_steps)


GROUP_WEIGHTS = 256
"""Weights a check kernel works on at once: blocks of 32 (or 128) are grouped so that the
per-block loops are long enough to vectorize and their set-up is paid per 256 weights."""


@inline
def _block_views(g, p, b, bs, n_sub):  # type: ignore[no-untyped-def]
    """Block ``b`` of a group's grid and prediction (views, no copy)."""
    w, s = slice(b * bs, (b + 1) * bs), slice(b * n_sub, (b + 1) * n_sub)
    return (GridBlock(g.code[w], g.scale[s], g.offset[s]),
            Predicted(p.level[w], p.idx[w], p.u[w], p.valid[w], p.tol[w]))


@inline
def check(blocks, x, counts, sums, dist, precision, near_margin, f16_table,  # type: ignore[no-untyped-def]
          grid, predict, n_sub, uniform, has_offset, tolerant, levels, qmin, qmax, split_uniform=True):
    """The body of every type's check kernel: per group of blocks, ``grid`` (the type's
    block decoder) and ``predict`` (its recipe, ``predict(source, block, grid, f16_table,
    levels, out) -> scale_ok``) on each block, inlined when the kernel compiles (no
    function value reaches the loop), the source roundings, the scale test, then
    :func:`check_block` over the group (:func:`_check_uniform` for a uniform grid, unless
    ``split_uniform`` is False: the one-pass loop the tests compare it with)."""
    bs = x.shape[1]
    group = max(1, GROUP_WEIGHTS // bs)
    g, p, pa, near, alt = check_workspace(bs * group, n_sub * group)
    ok = np.zeros(group, np.bool_)
    n = blocks.shape[0]
    for first in range(0, n, group):
        m = min(group, n - first)
        w = m * bs
        xs = x[first:first + m].reshape(w)
        for b in range(m):
            gb, _ = _block_views(g, p, b, bs, n_sub)
            grid(blocks[first + b], f16_table, gb)
        two = source_block(xs, precision, near[:w], alt[:w])
        for b in range(m):
            gb, pb = _block_views(g, p, b, bs, n_sub)
            ok[b] = predict(near[b * bs:(b + 1) * bs], blocks[first + b], gb, f16_table, levels, pb)
        for b in range(m):
            alt_ok = ok[b]
            if two:
                gb, pab = _block_views(g, pa, b, bs, n_sub)
                alt_ok = predict(alt[b * bs:(b + 1) * bs], blocks[first + b], gb, f16_table, levels, pab)
            if not ok[b] and not alt_ok:
                counts[N_SCALE_BAD] += 1
        gw, pw = _block_views(g, p, 0, w, n_sub * m)
        _, paw = _block_views(g, pa, 0, w, n_sub * m)
        if uniform and split_uniform:
            _check_uniform(xs, gw, pw, paw, two, has_offset, tolerant, qmin, qmax, near_margin, counts, sums, dist)
        else:
            check_block(xs, gw, pw, paw, two, uniform, has_offset, tolerant, levels, qmin, qmax, near_margin,
                        counts, sums, dist)


@inline
def add_square_lanes(v, m, a0, a1, a2, a3):  # type: ignore[no-untyped-def]
    """``float64(v[i])**2`` for ``i < m`` (a multiple of 4) added to lane ``i % 4`` in index
    order: four independent chains instead of one add latency per element. A caller summing
    several buffers passes the lanes on, so the sum is the same as over their concatenation."""
    for i in range(0, m, 4):
        s0 = np.float64(v[i])
        s1 = np.float64(v[i + 1])
        s2 = np.float64(v[i + 2])
        s3 = np.float64(v[i + 3])
        a0 += s0 * s0
        a1 += s1 * s1
        a2 += s2 * s2
        a3 += s3 * s3
    return a0, a1, a2, a3


@inline
def code_cell(c, uniform, qmin, qmax, lo_mid, hi_mid, top):  # type: ignore[no-untyped-def]
    """The cell of stored code ``c`` in level units, ``(below, above)``, and whether it is the
    first / last code (its outer side open): ``level -+ 1/2`` of a uniform type's signed level,
    the table's ends (``lo_mid`` / ``hi_mid``, ``top`` its last index) of a level type's index."""
    if uniform:
        level = np.float32(c)
        return np.float32(level - _HALF), np.float32(level + _HALF), c == qmin, c == qmax
    return lo_mid[c], hi_mid[c], c == 0, c == top


@inline
def cell_bounds_of(below, above, first, last, sc, off, has_offset, positive):  # type: ignore[no-untyped-def]
    """One weight's stored cell in value units, as :meth:`provenance.codecs.grid.QuantGrid.cell_bounds`
    computes it: ``[below, above]`` (level units) through scale ``sc`` (and offset), ordered
    (NaN when either end is), the outer side of an end cell (``first`` / ``last`` code) open;
    and its step ``|hi - lo|`` before that opening (``QuantGrid.step``)."""
    a = np.float32(sc * below)
    b = np.float32(sc * above)
    if has_offset:
        a = np.float32(a + off)
        b = np.float32(b + off)
    nan = (a != a) | (b != b)
    lo = np.float32(np.nan) if nan else (a if a < b else b)
    hi = np.float32(np.nan) if nan else (b if a < b else a)
    step = abs(np.float32(hi - lo))
    lo = _NINF if (first & positive) | (last & ~positive) else lo
    hi = _PINF if (last & positive) | (first & ~positive) else hi
    return lo, hi, step


@inline
def cell_test(below, above, first, last, sc, off, has_offset, positive, tol_steps, o, exact16):  # type: ignore[no-untyped-def]
    """One weight of :func:`cell_block`: is ``o`` (and its f16 rounding, unless ``exact16``)
    outside the stored cell ``[below, above]`` (level units) of scale ``sc`` (and offset),
    the outer side of an end cell (``first`` / ``last`` code) open, widened by ``tol_steps``
    steps? Returns that and the cell's step (value units) as the noise sum takes it: 0 where
    it is not finite (an infinite or NaN stored scale), as the torch path sums only finite
    steps (adding 0.0 leaves every other sum's bits as they were)."""
    lo, hi, step = cell_bounds_of(below, above, first, last, sc, off, has_offset, positive)
    tol = np.float32(tol_steps * step)
    low = np.float32(lo - tol)
    high = np.float32(hi + tol)
    o16 = o if exact16 else round_f16(o)
    return ((o < low) | (o > high)) & ((o16 < low) | (o16 > high)), step if step < _PINF else _F0


@inline
def cell_block(other, g, uniform, has_offset, qmin, qmax, lo_mid, hi_mid, tol_steps, exact16, steps):  # type: ignore[no-untyped-def]
    """Is each weight of ``other`` (or its f16 rounding) inside the stored cell of its code,
    within ``tol_steps`` steps (:class:`provenance.compare.engine` grid columns, from
    :meth:`provenance.codecs.grid.QuantGrid.cell_bounds`)? Returns how many are outside and
    writes each weight's step into ``steps`` (summed as ``sum(step^2)`` by :func:`cells`).
    The per-weight loop is branch-free (selects, an int32 count, int32 codes: every lane
    32 bits wide) so LLVM vectorizes it; a float64 sum inside it would not (no
    reassociation without fast-math). ``exact16`` (a constant where :func:`cells` inlines
    this): every value of ``other`` is an f16 value already (an F16 side), so its f16
    rounding is itself and is not computed (~13% of this loop); the counts are the same
    either way."""
    n_sub = g.scale.shape[0]
    sub = other.shape[0] // n_sub
    top = lo_mid.shape[0] - 1
    outside = np.int32(0)
    for k in range(n_sub):
        sc = g.scale[k]
        off = g.offset[k] if has_offset else _F0
        positive = sc >= _F0
        # views indexed from 0: numba's negative-index fix-up then folds away and the
        # accesses are provably contiguous (indexed from k * sub, LLVM emitted gathers)
        at = k * sub
        codes, values, sub_steps = g.code[at:at + sub], other[at:at + sub], steps[at:at + sub]
        for j in range(sub):
            below, above, first, last = code_cell(codes[j], uniform, qmin, qmax, lo_mid, hi_mid, top)
            out, step = cell_test(below, above, first, last, sc, off, has_offset, positive, tol_steps, values[j], exact16)
            sub_steps[j] = step
            outside += np.int32(out)
    return outside


@inline
def cells(blocks, other, counts, sums, tol_steps, exact16, f16_table,  # type: ignore[no-untyped-def]
          grid, n_sub, uniform, has_offset, qmin, qmax, lo_mid, hi_mid):
    """The body of every type's cells kernel: ``grid`` (the type's inlined block decoder,
    resolved when the kernel compiles: no function value reaches the loop) on each block of
    a group of ``GROUP_WEIGHTS``, then :func:`cell_block` over the group, whose steps are
    squared into four interleaved float64 lanes (:func:`add_square_lanes`) as the group
    ends (a group is a multiple of 4 weights, so element ``i`` still goes to lane ``i % 4``
    in index order: the same sum as over the whole tensor's steps, bit for bit, with a
    group's scratch in place of a tensor-sized step array). The codes are int32
    (:func:`grid_block`), so the cell test's lanes are all 32 bits wide.
    ``exact16``: ``other`` holds f16 values only (:func:`cell_block`)."""
    bs = other.shape[1]
    group = max(1, GROUP_WEIGHTS // bs)
    g = grid_block(bs * group, n_sub * group)
    steps = np.zeros(bs * group, np.float32)
    a0, a1, a2, a3 = 0.0, 0.0, 0.0, 0.0
    outside = 0
    n = blocks.shape[0]
    for first in range(0, n, group):
        m = min(group, n - first)
        for b in range(m):
            grid(blocks[first + b], f16_table, GridBlock(g.code[b * bs:(b + 1) * bs], g.scale[b * n_sub:(b + 1) * n_sub],
                                                         g.offset[b * n_sub:(b + 1) * n_sub]))
        w = m * bs
        gw = GridBlock(g.code[:w], g.scale[:n_sub * m], g.offset[:n_sub * m])
        group_other = other[first:first + m].reshape(w)
        # two inlined copies, each with exact16 a constant: LLVM drops the f16 rounding from one
        if exact16:
            outside += cell_block(group_other, gw, uniform, has_offset, qmin, qmax, lo_mid, hi_mid, tol_steps, True, steps)
        else:
            outside += cell_block(group_other, gw, uniform, has_offset, qmin, qmax, lo_mid, hi_mid, tol_steps, False, steps)
        a0, a1, a2, a3 = add_square_lanes(steps, w, a0, a1, a2, a3)
    counts[CELL_OUTSIDE] += outside
    counts[CELL_TOTAL] += other.size
    sums[CELL_NOISE] += (a0 + a1) + (a2 + a3)
