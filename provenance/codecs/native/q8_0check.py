"""Q8_0's grid check, fused: the recipe, the tests and the error sums of
:func:`provenance.codecs.native.gridcheck.check` in one pass over the stored bytes, several
groups at a time, adding exactly what it adds in the same order (every count, kept distance
and float64 sum bit for bit: ``tests/codecs/test_q8_0check.py`` holds both kernels here to
the shared passes, ``tests/quant/test_gridcheck_split.py`` the production check to the
one-pass loop).

Why a kernel of its own: ``quantcheck`` of a Q8_0 candidate is Q8_0's check and little else
(docs/benchmarks.md), and the shared pass spent most of its time outside the arithmetic:
every weight's code widened to an int64 array, its prediction (level, position, validity)
stored and read back, the source copied, the block maximum a compare-and-select chain, and
the float64 error sums of a group one dependent chain each (an add every 3-4 cycles, which
no reassociation may shorten without changing the bits). Here:

* the codes are read as the stored int8 bytes, the prediction is recomputed where it is
  tested, nothing per weight is stored but the error terms below;
* ``max |x|`` of a block is the integer maximum of the float bits (the same value for
  non-NaN floats, NaN detected above the bits of inf), which vectorizes;
* a run of :data:`FUSED_GROUPS` groups is done in two stages: block by block, vectorized,
  the recipe, the tests and each weight's float64 error terms (squared error, squared
  reference, absolute error) into a small buffer (24 KiB); then the sums alone, the run's
  groups side by side. Each group's float64 sums are still one chain in index order (as
  the shared pass adds them), but four groups' independent chains keep the core busy where
  one chain left it waiting.

Measured (``benchmarks/bench_gridcheck_threads.py``, one thread, CPU time): 3.8-4.0 ns per
weight in the shared pass, 1.5 here (docs/benchmarks.md).

Under the f16 / bf16 source hypotheses the recipe sees the run rounded to that format
(computed per run); a run holding an f32 value on a midpoint of the format (both roundings
are then tried) is left to the shared pass.

Only groups with a mismatch (none in a clean quantization) go back to the stored
prediction for their explanation, distances and a clean quantization's squared error.
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.native.fields import f16
from provenance.codecs.native.floats import bits_float, float_bits, round_f16, roundf, safe_inverse
from provenance.codecs.native.gridcheck import (
    _F0,
    _HALF,
    _NINF,
    _ONE,
    _PINF,
    CELL_NOISE,
    CELL_OUTSIDE,
    CELL_TOTAL,
    GROUP_WEIGHTS,
    MAX_ABS,
    N_SCALE_BAD,
    NO_TABLE,
    _add_block,
    _block_views,
    _clean_sse,
    _margin,
    _step_terms,
    add_square_lanes,
    cell_test,
    check,
    check_workspace,
    count_uniform_mismatches,
    source_block,
)
from provenance.jit import inline

BLOCK = 32
"""Weights per Q8_0 block."""
GROUP_BLOCKS = GROUP_WEIGHTS // BLOCK
"""Blocks per group of the shared check: its float64 sums restart at every group."""
FUSED_GROUPS = 4
"""Groups whose sums run side by side (four chains of float64 adds in flight)."""
RUN_BLOCKS = GROUP_BLOCKS * FUSED_GROUPS
"""Blocks per fused run: :func:`check_runs` covers whole runs, the shared check the rest."""
_QMIN, _QMAX = -128, 127
_D127 = np.float32(127.0)


@inline
def _absmax(xs):  # type: ignore[no-untyped-def]
    """``max |x|`` of a block, NaN if any is NaN (``legacy._absmax_nan``): the integer maximum
    of the bits of ``|x|``, which orders as the floats do and puts NaN above inf."""
    m = np.uint32(0)
    for j in range(xs.shape[0]):
        b = float_bits(xs[j]) & np.uint32(0x7FFFFFFF)
        m = b if b > m else m
    return np.float32(np.nan) if m > np.uint32(0x7F800000) else bits_float(np.uint32(m))


@inline
def _block_tests(xs, codes, idn, near_margin):  # type: ignore[no-untyped-def]
    """One block's weights near a cell boundary and mismatched codes, as the shared pass's
    first stage counts them (every Q8_0 prediction is valid)."""
    n_near = np.int32(0)
    n_bad = np.int32(0)
    for j in range(xs.shape[0]):  # a run-time bound (32): vectorized, where range(BLOCK) is unrolled (jit.py)
        u = np.float32(xs[j] * idn)
        pl = roundf(u)
        margin, _ = _margin(u, pl, 0, True, NO_TABLE, _QMIN, _QMAX)
        n_near += np.int32((margin >= _F0) & (margin < near_margin))
        n_bad += np.int32(pl != np.float32(codes[2 + j]))
    return n_near, n_bad


@inline
def _terms(sc, code, xv):  # type: ignore[no-untyped-def]
    """A weight's squared error, squared reference and absolute error (float64), its stored
    value ``fl(sc * code)`` as the shared pass computes it."""
    r = np.float64(xv)
    diff = np.float64(np.float32(sc * np.float32(code))) - r
    return diff * diff, r * r, abs(diff)


@inline
def _sub_block_end(sc, n_near, absd, inv, near, steps, n_steps):  # type: ignore[no-untyped-def]
    """A block's (sub-block's) step terms, added as the shared pass adds them."""
    step_k, finite_k, inv_k, _ = _step_terms(sc, _ONE, True, False)
    if finite_k:
        inv += inv_k * np.int32(BLOCK)
        near += inv_k * n_near
        steps += absd / np.float64(step_k)
        n_steps += BLOCK
    return inv, near, steps, n_steps


@inline
def _mismatched_group(blocks, src, s0, x, g0, counts, dist, f16_table, grid, predict, ws):  # type: ignore[no-untyped-def]
    """A group with a mismatch (blocks ``g0...`` of ``x``, ``s0...`` of the source ``src`` the
    recipe sees): its stored grid and prediction, each mismatch explained or counted in index
    order, and a clean quantization's squared error (the shared pass's third stage)."""
    g, p = ws[0], ws[1]
    for b in range(GROUP_BLOCKS):
        gb, pb = _block_views(g, p, b, BLOCK, 1)
        grid(blocks[g0 + b], f16_table, gb)
        predict(src[s0 + b], blocks[g0 + b], gb, f16_table, NO_TABLE, pb)
    count_uniform_mismatches(g, p, p, False, False, GROUP_BLOCKS, BLOCK, counts, dist)
    return _clean_sse(x[g0:g0 + GROUP_BLOCKS].reshape(GROUP_WEIGHTS), g, p, False, True, NO_TABLE)


@inline
def _recipe_and_tests(blocks, signed, src, s0, x, r0, counts, near_margin, f16_table, scales, n_near,  # type: ignore[no-untyped-def]
                      n_bad, terms):
    """The first stage over a run's blocks (``r0...`` of ``x``, ``s0...`` of the source
    ``src`` the recipe sees), vectorized within a block: the stored scale, the recipe's scale
    and its test, the weights near a boundary per block, the mismatches
    per group, and each weight's error terms into ``terms`` (one row per term, in the run's
    index order)."""
    for q in range(FUSED_GROUPS):
        n_bad[q] = 0
    for b in range(RUN_BLOCKS):
        blk = r0 + b
        sc = f16(blocks[blk], 0, f16_table)
        scales[b] = sc
        d = _absmax(src[s0 + b]) / _D127
        if round_f16(d) != sc:
            counts[N_SCALE_BAD] += 1
        near_b, bad_b = _block_tests(src[s0 + b], signed[blk], safe_inverse(d), near_margin)
        n_near[b] = near_b
        n_bad[b // GROUP_BLOCKS] += bad_b
        xs = x[blk]
        cs = signed[blk]
        at = b * BLOCK
        for j in range(xs.shape[0]):  # a run-time bound, as in _block_tests
            e, r, a = _terms(sc, cs[2 + j], xs[j])
            terms[0, at + j] = e
            terms[1, at + j] = r
            terms[2, at + j] = a


@inline
def _group_sums(terms, scales, n_near, totals):  # type: ignore[no-untyped-def]
    """The float64 sums of a run's :data:`FUSED_GROUPS` groups, four chains side by side,
    each in index order as the shared pass adds it, into ``totals[group]`` (``SSE``,
    ``REF_SS``, ``INV_STEP``, ``NEAR_INV``, ``ABS_STEPS``, steps counted) from the error
    terms of :func:`_recipe_and_tests`; returns the largest absolute error and whether one
    was NaN."""
    sse0 = sse1 = sse2 = sse3 = 0.0
    ref0 = ref1 = ref2 = ref3 = 0.0
    inv0 = inv1 = inv2 = inv3 = 0.0
    near0 = near1 = near2 = near3 = 0.0
    st0 = st1 = st2 = st3 = 0.0
    ns0 = ns1 = ns2 = ns3 = 0
    m0 = m1 = m2 = m3 = 0.0
    nan = False
    es, rs, ab = terms[0], terms[1], terms[2]
    span = GROUP_BLOCKS * BLOCK
    for k in range(GROUP_BLOCKS):
        sc0 = scales[k]
        sc1 = scales[k + GROUP_BLOCKS]
        sc2 = scales[k + 2 * GROUP_BLOCKS]
        sc3 = scales[k + 3 * GROUP_BLOCKS]
        a0 = a1 = a2 = a3 = 0.0
        for i in range(k * BLOCK, (k + 1) * BLOCK):
            sse0 += es[i]
            ref0 += rs[i]
            a = ab[i]
            a0 += a
            m0 = a if a > m0 else m0
            sse1 += es[i + span]
            ref1 += rs[i + span]
            a = ab[i + span]
            a1 += a
            m1 = a if a > m1 else m1
            sse2 += es[i + 2 * span]
            ref2 += rs[i + 2 * span]
            a = ab[i + 2 * span]
            a2 += a
            m2 = a if a > m2 else m2
            sse3 += es[i + 3 * span]
            ref3 += rs[i + 3 * span]
            a = ab[i + 3 * span]
            a3 += a
            m3 = a if a > m3 else m3
        # a sum of |diff| is NaN exactly when one of them is (the rest are >= 0, inf at most)
        nan |= (a0 != a0) | (a1 != a1) | (a2 != a2) | (a3 != a3)
        inv0, near0, st0, ns0 = _sub_block_end(sc0, n_near[k], a0, inv0, near0, st0, ns0)
        inv1, near1, st1, ns1 = _sub_block_end(sc1, n_near[k + GROUP_BLOCKS], a1, inv1, near1, st1, ns1)
        inv2, near2, st2, ns2 = _sub_block_end(sc2, n_near[k + 2 * GROUP_BLOCKS], a2, inv2, near2, st2, ns2)
        inv3, near3, st3, ns3 = _sub_block_end(sc3, n_near[k + 3 * GROUP_BLOCKS], a3, inv3, near3, st3, ns3)
    _put_totals(totals, 0, sse0, ref0, inv0, near0, st0, ns0)
    _put_totals(totals, 1, sse1, ref1, inv1, near1, st1, ns1)
    _put_totals(totals, 2, sse2, ref2, inv2, near2, st2, ns2)
    _put_totals(totals, 3, sse3, ref3, inv3, near3, st3, ns3)
    m01 = m0 if m0 > m1 else m1
    m23 = m2 if m2 > m3 else m3
    return (m01 if m01 > m23 else m23), nan


_SSE, _REF, _INV, _NEAR, _STEPS, _N_STEPS = range(6)


@inline
def _put_totals(totals, q, sse, ref, inv, near, steps, n_steps):  # type: ignore[no-untyped-def]
    totals[q, _SSE] = sse
    totals[q, _REF] = ref
    totals[q, _INV] = inv
    totals[q, _NEAR] = near
    totals[q, _STEPS] = steps
    totals[q, _N_STEPS] = n_steps


@inline
def _fused_run(blocks, signed, src, s0, x, r0, counts, sums, dist, near_margin, f16_table, grid,  # type: ignore[no-untyped-def]
               predict, work, mx, nan):
    """One run of :data:`RUN_BLOCKS` blocks from block ``r0`` (the recipe on ``src`` from block
    ``s0``); ``mx`` / ``nan``: the largest absolute error so far and whether one was NaN,
    returned updated."""
    ws, scales, n_near, n_bad, totals, terms = work
    _recipe_and_tests(blocks, signed, src, s0, x, r0, counts, near_margin, f16_table, scales, n_near, n_bad, terms)
    m, run_nan = _group_sums(terms, scales, n_near, totals)
    mx = m if m > mx else mx  # max is exact in any order
    nan |= run_nan
    peak = np.float64(np.nan) if nan else mx
    # the groups' totals in group order, as the shared pass adds them
    for q in range(FUSED_GROUPS):
        t = totals[q]
        clean = t[_SSE]
        if n_bad[q]:
            clean = _mismatched_group(blocks, src, s0 + q * GROUP_BLOCKS, x, r0 + q * GROUP_BLOCKS, counts, dist, f16_table,
                                      grid, predict, ws)
        _add_block(counts, sums, GROUP_WEIGHTS, GROUP_WEIGHTS, n_bad[q], np.int64(t[_N_STEPS]), t[_INV], t[_NEAR],
                   t[_SSE], t[_REF], clean, peak, t[_STEPS])
    return mx, nan


@inline
def check_runs(blocks, x, counts, sums, dist, precision, near_margin, f16_table, grid, predict):  # type: ignore[no-untyped-def]
    """The check of ``blocks`` / ``x``, run by run of :data:`RUN_BLOCKS` blocks: fused, or with
    the shared pass for a tile's last blocks and for a run where an f32 value sits on a
    midpoint of the f16 / bf16 hypothesis's format (both roundings are then tried,
    :func:`gridcheck.source_block`; an F16 or BF16 reference has none). The shared pass's
    groups start where they would without the runs. ``grid`` and ``predict``: Q8_0's block
    decoder and recipe. One call site each of the fused run and the shared pass: numba
    inlines both, and every copy costs compile time."""
    n = blocks.shape[0]
    signed = blocks.view(np.int8)
    work = (check_workspace(GROUP_WEIGHTS, GROUP_BLOCKS), np.zeros(RUN_BLOCKS, np.float32),
            np.zeros(RUN_BLOCKS, np.int32), np.zeros(FUSED_GROUPS, np.int64), np.zeros((FUSED_GROUPS, 6), np.float64),
            np.zeros((3, RUN_BLOCKS * BLOCK), np.float64))
    source = np.zeros((RUN_BLOCKS, BLOCK), np.float32)  # the run as the recipe sees it
    alt = np.zeros(RUN_BLOCKS * BLOCK, np.float32)
    mx = sums[MAX_ABS]  # NaN (torch.max's rule) is carried by the flag, applied at each group's end
    nan = mx != mx
    at = 0
    while at < n:
        end = min(n, at + RUN_BLOCKS)
        fused = end - at == RUN_BLOCKS
        src, s0 = x, at  # an f32 source is the reference itself
        if fused and precision != 0:
            fused = not source_block(x[at:end].reshape(RUN_BLOCKS * BLOCK), precision, source.reshape(RUN_BLOCKS * BLOCK),
                                     alt)
            src, s0 = source, 0
        if fused:
            mx, nan = _fused_run(blocks, signed, src, s0, x, at, counts, sums, dist, near_margin, f16_table, grid,
                                 predict, work, mx, nan)
        else:  # the run alone, or the rest of the tile
            check(blocks[at:end], x[at:end], counts, sums, dist, precision, near_margin, f16_table, grid, predict,
                  1, True, False, False, NO_TABLE, _QMIN, _QMAX)
            mx = sums[MAX_ABS]
            nan = mx != mx
        at = end


@inline
def cells_fused(blocks, other, counts, sums, tol_steps, exact16, f16_table):  # type: ignore[no-untyped-def]
    """Q8_0's cells kernel (:func:`provenance.codecs.native.gridcheck.cells` with Q8_0's grid),
    block by block from the stored bytes: the codes read as int8 where they are tested (no
    code array), each block's steps squared into the four interleaved float64 lanes of
    ``gridcheck.add_square_lanes`` as the block ends (a block is 32 weights, so element ``i``
    still goes to lane ``i % 4`` in index order: the same sum, bit for bit).

    A block of finite scale ``d`` takes :func:`_finite_block`: its cell bounds ``d * (q -+ 1/2)``
    are exact in float32 (an f16 times a 9-bit half-integer has at most 20 significant bits,
    far from float32's range limits), so every weight's step ``|hi - lo|`` is ``|d|`` exactly
    and each lane adds ``d^2`` eight times, as the per-weight steps added it; the weights'
    loop then holds no store and vectorizes (2.1 -> 0.8 ns per weight at the 7B shape,
    issue #12). An infinite or NaN scale (steps that differ by code) takes the general test."""
    signed = blocks.view(np.int8)
    steps = np.zeros(BLOCK, np.float32)
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    outside = 0
    for i in range(blocks.shape[0]):
        sc = f16(blocks[i], 0, f16_table)
        c = signed[i]
        o = other[i]
        if abs(sc) < _PINF:  # False for NaN
            if exact16:
                outside += _finite_block(c, o, sc, tol_steps, True)
            else:
                outside += _finite_block(c, o, sc, tol_steps, False)
            v = np.float64(abs(sc)) * np.float64(abs(sc))
            for _ in range(BLOCK // 4):
                a0 += v
                a1 += v
                a2 += v
                a3 += v
            continue
        if exact16:
            outside += cell_counts(c, o, sc, tol_steps, True, steps)
        else:
            outside += cell_counts(c, o, sc, tol_steps, False, steps)
        a0, a1, a2, a3 = add_square_lanes(steps, BLOCK, a0, a1, a2, a3)
    counts[CELL_OUTSIDE] += outside
    counts[CELL_TOTAL] += other.size
    sums[CELL_NOISE] += (a0 + a1) + (a2 + a3)


@inline
def _finite_block(c, o, sc, tol_steps, exact16):  # type: ignore[no-untyped-def]
    """:func:`cell_counts` of a block of finite scale ``sc``: the same float32 operations per
    weight (``gridcheck.cell_test``), its step ``|sc|`` known (see :func:`cells_fused`), no NaN
    bound possible; a loop of selects over a run-time bound, which LLVM vectorizes."""
    positive = sc >= _F0
    tol = np.float32(tol_steps * abs(sc))
    outside = np.int32(0)
    for j in range(o.shape[0]):
        code = c[2 + j]
        level = np.float32(code)
        a = np.float32(sc * np.float32(level - _HALF))
        b = np.float32(sc * np.float32(level + _HALF))
        lo = a if a < b else b
        hi = b if a < b else a
        first = code == _QMIN
        last = code == _QMAX
        lo = _NINF if (first & positive) | (last & ~positive) else lo
        hi = _PINF if (last & positive) | (first & ~positive) else hi
        low = np.float32(lo - tol)
        high = np.float32(hi + tol)
        x = o[j]
        out = (x < low) | (x > high)
        if not exact16:
            x16 = round_f16(x)
            out &= (x16 < low) | (x16 > high)
        outside += np.int32(out)
    return outside


@inline
def cell_counts(c, o, sc, tol_steps, exact16, steps):  # type: ignore[no-untyped-def]
    """``gridcheck.cell_block``'s test on one Q8_0 block (codes ``c[2:]``, scale ``sc``):
    how many of ``o`` (or their f16 roundings) lie outside their stored cells; each weight's
    step into ``steps``."""
    positive = sc >= _F0
    outside = 0
    for j in range(BLOCK):
        code = c[2 + j]
        level = np.float32(code)
        out, step = cell_test(np.float32(level - _HALF), np.float32(level + _HALF), code == _QMIN, code == _QMAX, sc, _F0,
                              False, positive, tol_steps, o[j], exact16)
        steps[j] = step
        outside += out
    return outside


__all__ = ["FUSED_GROUPS", "RUN_BLOCKS", "cell_counts", "cells_fused", "check_runs"]
