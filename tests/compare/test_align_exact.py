"""The alignment's shortcuts give exactly what the full computations they skip would give."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from provenance.compare import align as A


def _solver(sim: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return cols[np.argsort(rows)]


def _assign_reference(sim: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """The assignment as it was computed before the shortcuts: always the solver."""
    n = sim.shape[0]
    ident = float(np.trace(sim))
    perm = _solver(sim)
    best = float(sim[np.arange(n), perm].sum())
    moved = int((perm != np.arange(n)).sum())
    keep = moved > 0 and best > A.GAIN_OVER_IDENTITY * max(ident, 0.0) + 1e-9
    return (perm if keep else None), {"identity_score": round(ident / n, 6), "matched_score": round(best / n, 6),
                                      "moved": moved if keep else 0, "units": n}


def _unit_rows_reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _same(got: tuple[np.ndarray | None, dict], want: tuple[np.ndarray | None, dict]) -> None:
    assert (got[0] is None) == (want[0] is None)
    if want[0] is not None:
        assert np.array_equal(got[0], want[0])
    assert got[1] == want[1]


def _dominated(rng: np.random.Generator, n: int, permuted: bool) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n) if permuted else np.arange(n)
    sim = rng.uniform(0.0, 1.0, (n, n))
    sim[np.arange(n), perm] += 1.0 + rng.uniform(0.0, 1.0, n)
    return sim, perm


@pytest.mark.parametrize("seed", range(12))
def test_dominant_perm_is_the_solvers_assignment(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sim, perm = _dominated(rng, int(rng.integers(1, 80)), permuted=seed % 2 == 1)
    before = sim.copy()
    got = A._dominant_perm(sim)
    assert got is not None and np.array_equal(got, perm) and np.array_equal(got, _solver(sim))
    assert np.array_equal(sim, before)  # the in-place masking is undone


def test_dominant_perm_declines_what_it_cannot_prove() -> None:
    base = np.eye(4) * 2.0
    tie = base.copy()
    tie[0, 1] = 2.0
    close = base.copy()
    close[2, 3] = 2.0 - 1e-12
    collision = base.copy()
    collision[1, 0] = 3.0
    nan = base.copy()
    nan[3, 1] = np.nan
    for sim in (tie, close, collision, nan, np.zeros((0, 0)), np.ones((2, 3))):
        before = sim.copy()
        assert A._dominant_perm(sim) is None
        assert np.array_equal(sim, before, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_dominance_just_above_the_margin_is_still_the_solvers_answer(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    n = int(rng.integers(2, 200))
    perm = rng.permutation(n)
    sim = rng.uniform(0.0, 3.0, (n, n))
    others = sim.copy()
    others[np.arange(n), perm] = -np.inf
    sim[np.arange(n), perm] = others.max(axis=1) + rng.uniform(2, 10, n) * A.DOMINANCE_MARGIN
    assert np.array_equal(A._dominant_perm(sim), perm)
    _same(A._assign(sim.copy()), _assign_reference(sim))


@pytest.mark.parametrize("seed", range(12))
def test_assign_equals_the_solver_path(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 60))
    if seed % 3 == 0:  # no dominant assignment: the solver decides
        sim = rng.uniform(0.0, 1.0, (n, n))
    else:
        sim, _ = _dominated(rng, n, permuted=seed % 3 == 2)
    _same(A._assign(sim.copy()), _assign_reference(sim))


def _blocks_reference(ref: np.ndarray, cand: np.ndarray, ref_idx: np.ndarray, cand_idx: np.ndarray,
                      hd: int) -> np.ndarray:
    """The block similarity as it was computed: each block pair normalised on its own."""
    sim = np.zeros((len(ref_idx), len(cand_idx)))
    for i, g in enumerate(ref_idx):
        for j, h in enumerate(cand_idx):
            ua, ub = _unit_rows_reference(ref[g * hd:(g + 1) * hd]), _unit_rows_reference(cand[h * hd:(h + 1) * hd])
            sim[i, j] = float(np.abs((ua * ub).sum(axis=1)).mean())
    return sim


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("transposed", [False, True])
def test_block_assign_equals_the_pairwise_loop(seed: int, transposed: bool) -> None:
    """Unpermuted, permuted and unrelated head blocks: the same assignment and the same
    scores, bit for bit, as normalising and comparing every block pair and solving."""
    rng = np.random.default_rng(200 + seed)
    n, hd, width = 8, 16, 24
    k_r, v_r = rng.standard_normal((n * hd, width)), rng.standard_normal((n * hd, width))
    perm = rng.permutation(n) if seed % 3 else np.arange(n)
    rows = (perm[:, None] * hd + np.arange(hd)).reshape(-1)
    noise = 0.1 if seed % 4 != 3 else 10.0  # the last: unrelated blocks, no dominant assignment
    k_c = (k_r[rows] + noise * rng.standard_normal(k_r.shape)).astype(np.float32)
    v_c = (v_r[rows] + noise * rng.standard_normal(v_r.shape)).astype(np.float32)
    k_r, v_r = k_r.astype(np.float32), v_r.astype(np.float32)
    if transposed:  # o's columns are the blocks: F-ordered views, as _attention passes them
        k_r, k_c, v_r, v_c = (np.ascontiguousarray(x.T).T for x in (k_r, k_c, v_r, v_c))
    idx = np.arange(n)
    terms = [A._BlockTerm.of(k_r, k_c, hd), A._BlockTerm.of(v_r, v_c, hd)]
    want = _assign_reference(_blocks_reference(k_r, k_c, idx, idx, hd) + _blocks_reference(v_r, v_c, idx, idx, hd))
    _same(A._block_assign(terms, idx, idx, hd), want)
    sub_r, sub_c = np.arange(2, 6), np.arange(4, 8)  # a sub-range, as for the q heads of one KV group
    want = _assign_reference(_blocks_reference(k_r, k_c, sub_r, sub_c, hd) + _blocks_reference(v_r, v_c, sub_r, sub_c, hd))
    _same(A._block_assign(terms, sub_r, sub_c, hd), want)


def _mlp_parts(rng: np.random.Generator, n_ff: int, width: int, perm: np.ndarray, noise: float,
               gate: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    ref = {"ffn_up": rng.standard_normal((n_ff, width)), "ffn_down": rng.standard_normal((width, n_ff))}
    if gate:
        ref["ffn_gate"] = rng.standard_normal((n_ff, width))
    cand = {k: (v[:, perm] if k == "ffn_down" else v[perm]) + noise * rng.standard_normal(v.shape) for k, v in ref.items()}
    return ({k: v.astype(np.float32) for k, v in ref.items()},
            {k: v.astype(np.float32) for k, v in cand.items()})


@pytest.mark.parametrize("case", ["related", "no-gate", "permuted", "few-swapped", "unrelated"])
def test_identity_hits_certificate_agrees_with_the_exact_count(case: str) -> None:
    rng = np.random.default_rng(7)
    n_ff, width = 700, 32
    perm = np.arange(n_ff)
    if case == "permuted":
        perm = rng.permutation(n_ff)
    elif case == "few-swapped":
        perm[[3, 5, 400, 401]] = perm[[5, 3, 401, 400]]
    noise = 3.0 if case == "unrelated" else 0.05
    ref, cand = _mlp_parts(rng, n_ff, width, perm, noise, gate=case != "no-gate")
    rows = A._sample_rows(n_ff)
    exact = A._identity_hits_exact(ref, cand, rows)
    assert A._identity_hits(ref, cand) == exact
    assert A._identity_certain(ref, cand, rows) == (case in ("related", "no-gate"))
    assert (exact == 1.0) == (case in ("related", "no-gate"))


@pytest.mark.parametrize("shape", [(1, 5), (7, 3), (300, 128), (2000, 37)])
def test_chunked_reductions_are_numpys_bit_for_bit(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    a64 = a.astype(np.float64)
    assert np.array_equal(A._row_norms(a), np.linalg.norm(a64, axis=1))
    assert np.array_equal(A._row_dots(a, b), (a64 * b.astype(np.float64)).sum(axis=1))
    assert np.array_equal(A._col_norms(a), np.linalg.norm(a64, axis=0))
    # a transposed view: the columns of the F-ordered gathered copy the code used to take
    gathered = a.astype(np.float64)[:, np.arange(shape[1])]
    assert np.array_equal(A._row_norms(a.T), np.linalg.norm(gathered, axis=0))
    assert np.array_equal(A._unit_rows(a), _unit_rows_reference(a))
    assert np.array_equal(A._unit_rows(a.T), _unit_rows_reference(a.T))
