"""Recover the free symmetries an adversary (or a converter) may have applied.

From the sketches (residual-indexed slices, :mod:`.sketch`), per layer:

* MLP hidden units: a permutation by linear assignment (Hungarian,
  ``scipy.optimize.linear_sum_assignment``) on cosine similarities of gate rows, up rows
  and down columns (cosines are blind to the rescaling), then per-unit scales ``s`` (up
  row x s, down column / s; negative for a sign flip) from norm ratios of up and down,
  in which a fine-tune's decorrelation cancels;
* attention: a permutation of KV groups (k and v heads), then of q heads inside each
  matched group (q rows with the attention-output columns), then per-channel v scales;
* residual channels at each norm (gain x a, following columns / a), from gain ratios,
  accepted only when the columns moved the opposite way.

A recovered map is kept only when it beats the identity clearly, so an ordinary
fine-tune is never "aligned" into something else. Everything recovered is reported:
it is evidence too (a permuted copy is not an accident).

Speed without changing a result (the layers are aligned on the main thread while the
stream runs): the solver is skipped when every row's best match is distinct and clearly
ahead (then it is the unique optimum); head-block similarities are screened by batched
products and only the entries a result reads are computed exactly; an unpermuted MLP is
certified by one feature's cosines and bounds on the others; float64 reductions run in
numpy's own summation orders through small scratch buffers. Each is argued where it is
made and tested against the full computation (tests/compare/test_align_exact.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.compare.invariants import HeadLayout
from provenance.compare.sketch import Sketch
from provenance.compare.transform import Transform

#: a permutation replaces the identity only when its total similarity is this much higher
GAIN_OVER_IDENTITY = 1.05
#: scales are applied only when they spread this much (std of log|scale|) or flip signs
SCALE_SPREAD = 0.05
#: ... and, when they spread, only when both sides of the pair say the same (a rescale is up x s
#: with down / s, v x t with o / t): the spread of the two sides' log ratios' difference at most
#: this fraction of their sum's. Measured (docs/lineage.md): rescaled copies and fine-tunes <= 0.40
#: (synth-s00-ft-heavy rescaled, then 2bit-emu), merges with an unrelated model >= 1.0 (they change
#: each unit's up and down norms independently, which no rescale does)
SCALE_AGREEMENT = 0.65
#: residual gain rescaling needs this correlation between gain ratios and column shrinkage,
GAIN_COLUMN_CORR = 0.8
#: and the columns must have shrunk by the gains' own factor: :func:`_column_fit` at most this
#: (a fold or rescale: ~0-0.05 even after Q4_K_M; real fine-tunes whose gains moved: docs/lineage.md)
GAIN_COLUMN_FIT = 0.25
#: a gain whose sign changed is a deliberate flip only when it moved this many times further
#: than the other gains of its vector did (their median move): training carries gains that sit
#: near zero across it (SmolLM2's 30-step fine-tune: 3 gains of ~1e-4, moved by ~3e-4, while
#: the median gain moved 1.2e-4 to 2.4e-4; docs/lineage.md), a sign flip of a fold or rescale
#: moves the gain by twice its size
GAIN_FLIP_MOVES = 10.0


#: float64 elements per scratch chunk of the row reductions below (256 KB, cache-resident
#: and reused: a fresh whole-matrix float64 temporary costs a page fault per 4 KB, which on
#: this machine kind costs more than the arithmetic it holds)
_SCRATCH_ELEMS = 1 << 15


def _row_reduce(op: Any, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    """``np.add.reduce(op(*(a.astype(np.float64) for a in arrays)), axis=1)`` for
    C-ordered float64 copies, bit for bit: float64 ``op`` of the same values, and numpy
    reduces each row of a C-ordered array alone (pairwise along it), so doing it a few
    rows at a time through one small scratch buffer changes nothing."""
    n, k = arrays[0].shape
    out = np.empty(n)
    step = max(1, _SCRATCH_ELEMS // max(1, k))
    buf = np.empty((min(step, n), k))
    for start in range(0, n, step):
        chunk = buf[:min(step, n - start)]
        op(*(a[start:start + step] for a in arrays), out=chunk, dtype=np.float64)
        np.add.reduce(chunk, axis=1, out=out[start:start + len(chunk)])
    return out


def _row_norms(x: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(np.ascontiguousarray(x, dtype=np.float64), axis=1)`` bit for bit
    (for a transposed ``x``: the norms of the columns of an F-ordered float64 copy)."""
    return np.sqrt(_row_reduce(np.square, (x,)))


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)`` for C-ordered rows, bit for bit."""
    return _row_reduce(np.multiply, (a, b))


def _col_norms(x: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(x.astype(np.float64), axis=0)`` for C-ordered ``x``, bit for bit:
    numpy sums the columns of a C-ordered array sequentially down its rows, as here, one
    row at a time."""
    if not len(x):
        return np.zeros(x.shape[1])
    acc = np.square(x[0], dtype=np.float64)
    tmp = np.empty_like(acc)
    for row in x[1:]:
        acc += np.square(row, out=tmp, dtype=np.float64)
    return np.sqrt(acc, out=acc)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    # astype keeps the input's memory order, and numpy sums the rows of a C-ordered array
    # pairwise but those of a transposed one sequentially: only the first is chunked
    n = (_row_norms(x) if x.flags.c_contiguous else np.linalg.norm(x, axis=1))[:, None]
    return np.divide(x, np.where(n > 0, n, 1.0), out=x)  # in place: x is a fresh copy


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``a`` with every row of ``b``."""
    return _unit_rows(a) @ _unit_rows(b).T


#: a row maximum must beat the rest of its row by this much to settle an assignment without
#: the solver: far above the rounding of the similarities compared (~1e-13 for float64 sums
#: of cosines) and of the solver itself, far below any similarity gap that means something
DOMINANCE_MARGIN = 1e-9


def _dominant_perm(sim: np.ndarray, margin: float = DOMINANCE_MARGIN) -> np.ndarray | None:
    """The row-wise argmax of square ``sim`` when it is a permutation and each of its entries
    beats the rest of its row by more than ``margin``; else None.

    Such a permutation is the unique optimal assignment: no assignment scores more than the
    sum of the row maxima, and any other one loses more than ``margin`` on every row it
    moves. It stays the unique optimum for any matrix within ``margin / 2`` of ``sim``
    entry-wise, so it is what ``linear_sum_assignment`` returns, in O(n^2) instead of
    O(n^3) (an unpermuted or a permuted copy of a related model)."""
    n = sim.shape[0]
    if n == 0 or sim.shape != (n, n):
        return None
    best = sim.argmax(axis=1)
    if np.bincount(best, minlength=n).max() != 1:
        return None
    idx = np.arange(n)
    top = sim[idx, best]
    # each row's runner-up, masking the maxima in place (the MLP matrix is n_ff^2 float64)
    sim[idx, best] = -np.inf
    try:
        second = sim.max(axis=1)
    finally:
        sim[idx, best] = top
    # NaN anywhere in a row makes its argmax NaN and this False: the solver decides
    return best if bool(np.all(top - second > margin)) else None


def _assign(sim: np.ndarray, perm: np.ndarray | None = None,
            gain: float = GAIN_OVER_IDENTITY) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Best assignment of reference rows (i) to candidate rows, or None for the identity
    (kept unless the assignment scores ``gain`` times as much).

    ``perm``: the optimal assignment when the caller has already proved it (see
    :func:`_dominant_perm`); only the diagonal of ``sim`` and its entries at ``perm`` are
    read then."""
    n = sim.shape[0]
    ident = float(np.trace(sim))
    if perm is None:
        perm = _dominant_perm(sim)
    if perm is None:
        # imported here: scipy.optimize costs ~0.3 s per process, and most comparisons
        # never get here (the identity or a dominant permutation decides)
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(sim, maximize=True)
        perm = cols[np.argsort(rows)]
    best = float(sim[np.arange(n), perm].sum())
    moved = int((perm != np.arange(n)).sum())
    keep = moved > 0 and best > gain * max(ident, 0.0) + 1e-9
    info = {"identity_score": round(ident / n, 6), "matched_score": round(best / n, 6),
            "moved": moved if keep else 0, "units": n}
    return (perm if keep else None), info


def _spread_scale(scale: np.ndarray, disagreement: float = 0.0) -> np.ndarray | None:
    """The scales to apply, or None: those that spread (and agree, :data:`SCALE_AGREEMENT`) or
    flip signs."""
    if float(np.std(np.log(np.abs(scale) + 1e-30))) > SCALE_SPREAD:
        return scale if disagreement <= SCALE_AGREEMENT else None
    return scale if (scale < 0).any() else None


def _disagreement(forward: np.ndarray, backward: np.ndarray) -> float:
    """How much the two matrices of a rescaled pair disagree about the scales (up rows x s with
    down columns / s; v rows x t with o columns / t): ``forward`` = candidate / reference norms of
    the first, ``backward`` = reference / candidate of the second; the std of the difference of
    their logs over the std of their sum (0 when they agree exactly)."""
    lf, lb = np.log(np.maximum(forward, 1e-30)), np.log(np.maximum(backward, 1e-30))
    total = float(np.std(lf + lb))
    return float(np.std(lf - lb)) / total if total > 0 else 0.0


@dataclass
class Alignment:
    transforms: dict[str, Transform] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return all(t.is_identity for t in self.transforms.values())


#: rows sampled to check whether the identity already matches (skips the O(n^3) assignment)
IDENTITY_SAMPLE = 512
IDENTITY_HITS = 0.95


def _feature_roles(part: dict[str, np.ndarray]) -> list[tuple[str, bool]]:
    """The MLP unit features present, as (role, compared by |cos|)."""
    roles = [("ffn_gate", False)] if "ffn_gate" in part else []  # gate cannot flip sign (SiLU)
    roles.append(("ffn_up", True))
    if "ffn_down" in part:
        roles.append(("ffn_down", True))
    return roles


def _feature_units(part: dict[str, np.ndarray], role: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors (float64) of MLP units ``rows`` (all when None): gate and up rows, down columns."""
    x = part[role].T if role == "ffn_down" else part[role]
    return _unit_rows(x if rows is None else x[rows])


def _mlp_features(part: dict[str, np.ndarray]) -> list[tuple[np.ndarray, bool]]:
    return [(_feature_units(part, role).astype(np.float32), absolute) for role, absolute in _feature_roles(part)]


def _sample_rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).choice(n, size=min(n, IDENTITY_SAMPLE), replace=False)


def _unit_rows_f32(x: np.ndarray) -> np.ndarray | None:
    """Unit rows in float32 (norms accumulated in float64), or None where a norm is out of
    float32's comfortable range; for bounds, not for results."""
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if not (((n >= 1e-30) & (n <= 1e30)) | (n == 0)).all():
        return None
    return np.divide(x, np.where(n > 0, n, 1.0).astype(np.float32)[:, None], dtype=np.float32)


def _identity_certain(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], rows: np.ndarray) -> bool:
    """True when :func:`_identity_hits_exact` provably finds every sampled unit's best
    match at its own index (hits 1.0), at a third of its cost.

    Its similarity is a float32 sum of one cosine per feature, each within about
    ``k * 2^-24`` (``k`` = sketch width) of the exact cosine of its unit vectors. Off the
    diagonal it is bounded here by the first feature's cosines (float32, within the same
    order of rounding) plus 1 per further feature; on the diagonal it is computed in
    float64 from the exact computation's float32 unit vectors. Both bounds carry a slack
    of several times that rounding, so a unit certified here is a hit of the exact
    computation; any doubt (NaN, a close rival unit, extreme norms) answers False."""
    pairs = [(rr, rc, absolute) for (rr, absolute), (rc, _) in zip(_feature_roles(ref), _feature_roles(cand), strict=False)]
    if not len(rows) or any(ref[rr].shape != cand[rc].shape for rr, rc, _ in pairs):
        return False
    k = ref[pairs[0][0]].shape[1]
    slack = 1e-5 + 4 * len(pairs) * k * float(np.finfo(np.float32).eps)
    diag = np.zeros(len(rows))
    for rr, rc, absolute in pairs:
        a = _feature_units(ref, rr, rows).astype(np.float32).astype(np.float64)
        b = _feature_units(cand, rc, rows).astype(np.float32).astype(np.float64)
        cos = (a * b).sum(axis=1)
        diag += np.abs(cos) if absolute else cos
    rr, rc, absolute = pairs[0]  # gate or up: rows, never down's columns
    units = _unit_rows_f32(cand[rc])
    if units is None:
        return False
    block = _feature_units(ref, rr, rows).astype(np.float32) @ units.T
    if absolute:
        np.abs(block, out=block)
    block[np.arange(len(rows)), rows] = -np.inf
    rival = block.max(axis=1) + (len(pairs) - 1) + slack
    return bool(np.all(rival < diag - slack))


def _identity_hits_exact(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], rows: np.ndarray) -> float:
    fr, fc = _mlp_features(ref), _mlp_features(cand)
    sim = np.zeros((len(rows), fr[0][0].shape[0]), dtype=np.float32)
    for (a, absolute), (b, _) in zip(fr, fc, strict=False):
        block = a[rows] @ b.T
        sim += np.abs(block) if absolute else block
    return float((sim.argmax(axis=1) == rows).mean())


def _identity_hits(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> float:
    """Fraction of sampled reference units whose best candidate unit has the same index.

    A sample keeps this O(sample x n_ff x |S|), so an unpermuted 7B layer (n_ff 11008) never
    pays for a dense 11008^2 assignment; a certificate on one feature (1.0 for a related,
    unpermuted model) saves two thirds of that."""
    rows = _sample_rows(ref[_feature_roles(ref)[0][0]].shape[0])
    if _identity_certain(ref, cand, rows):
        return 1.0
    return _identity_hits_exact(ref, cand, rows)


def _accumulate(total: np.ndarray | None, term: np.ndarray, absolute: bool, n: int) -> np.ndarray:
    """``total + term`` (``|term|`` if ``absolute``) for (n, n) similarities, in place: the
    n_ff^2 float64 matrices are summed without a zero matrix or temporaries, and with the
    same results (0 + x == x, up to the sign of a zero that no later sum keeps)."""
    if term.shape != (n, n):
        raise ValueError(f"unit similarity of shape {term.shape}, expected {(n, n)}")
    if absolute:
        np.abs(term, out=term)
    if total is None:
        return term
    total += term
    return total


@dataclass(frozen=True)
class UnitMatch:
    """The MLP hidden units of a candidate matched to a reference's."""

    perm: np.ndarray | None
    """Candidate unit of each reference unit (rows of gate and up, columns of down); None
    when the identity stands."""
    scale: np.ndarray
    """Per reference unit, candidate / reference (up row x s, down column / s; negative for
    a sign flip), after ``perm``: an estimate for every unit, whether or not it means a
    rescale (that judgement is the caller's: lineage and watermarks need different ones)."""
    info: dict[str, Any]
    disagreement: float = 0.0
    """How much up and down disagree about the scales (:func:`_disagreement`; 0 without down)."""


def match_mlp_units(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], *, force: bool = False) -> UnitMatch:
    """Recover the permutation and per-unit scales of one layer's MLP hidden units.

    ``ref`` / ``cand``: ``ffn_up`` and ``ffn_down`` (``ffn_gate`` where the model has one)
    of a layer, residual-indexed as in a :class:`Sketch` (up and gate: every unit's row on
    the sketch's residual columns; down: the sketch's residual rows). ``force``: run the
    assignment even when the identity already matches, and keep any better assignment."""
    ref, cand = _c_ordered(ref), _c_ordered(cand)
    n = ref["ffn_up"].shape[0]
    hits = _identity_hits(ref, cand)
    if not force and hits >= IDENTITY_HITS and n > IDENTITY_SAMPLE:
        info: dict[str, Any] = {"identity_hits": round(hits, 4), "moved": 0, "units": n, "assignment": "skipped"}
        scale, disagreement = _mlp_unit_scale(ref, cand, None)
        return UnitMatch(None, scale, info, disagreement)
    sim = None
    if "ffn_gate" in ref and "ffn_gate" in cand:
        sim = _accumulate(sim, _cos(ref["ffn_gate"], cand["ffn_gate"]), False, n)  # gate cannot flip sign (SiLU)
    sim = _accumulate(sim, _cos(ref["ffn_up"], cand["ffn_up"]), True, n)
    if "ffn_down" in ref and "ffn_down" in cand:
        sim = _accumulate(sim, _cos(ref["ffn_down"].T, cand["ffn_down"].T), True, n)
    perm, info = _assign(sim, gain=1.0 if force else GAIN_OVER_IDENTITY)
    info["identity_hits"] = round(hits, 4)
    scale, disagreement = _mlp_unit_scale(ref, cand, perm)
    return UnitMatch(perm, scale, info, disagreement)


def _mlp(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Lineage's MLP map: scales are applied only when they spread or flip signs."""
    units = match_mlp_units(ref, cand)
    scale = _spread_scale(units.scale, units.disagreement)
    if scale is not None:
        units.info["scales"] = _scale_summary(scale)
    return units.perm, scale, units.info


def mlp_unit_specs(perm: np.ndarray | None, scale: np.ndarray | None) -> dict[str, dict[str, np.ndarray]]:
    """What a unit permutation and unit scales ``s`` do to each MLP tensor, as
    :class:`Transform` fields: rows of gate and up, columns of down; up rows / s, down
    columns x s."""
    specs: dict[str, dict[str, np.ndarray]] = {}
    if perm is not None:
        specs["ffn_gate"] = {"row_index": perm}
        specs["ffn_up"] = {"row_index": perm}
        specs["ffn_down"] = {"col_index": perm}
    if scale is not None:
        specs.setdefault("ffn_up", {})["row_scale"] = 1.0 / scale
        specs.setdefault("ffn_down", {})["col_scale"] = scale
    return specs


def _sign_and_norm_ratio(ref_rows: np.ndarray, cand_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sign of the reference/candidate dot product (0 counts as +1) and the
    candidate/reference norm ratio, from float64 row reductions."""
    sign = np.sign(_row_dots(ref_rows, cand_rows))
    sign[sign == 0] = 1
    return sign, _row_norms(cand_rows) / np.maximum(_row_norms(ref_rows), 1e-30)


def _scale_summary(scale: np.ndarray) -> dict[str, Any]:
    return {"min_abs": float(np.abs(scale).min()), "max_abs": float(np.abs(scale).max()),
            "negative": int((scale < 0).sum())}


def _mlp_unit_scale(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                    perm: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Per unit: the sign of the up rows' dot product times the geometric mean of the up
    norm ratio and the inverse down norm ratio (in which a fine-tune's drift cancels); and
    the two sides' disagreement (:func:`_disagreement`)."""
    # float64 products of the weights, summed in the orders of the float64 copies this used
    # to take (rows: pairwise per row; down's columns: sequential down the reference's
    # C-ordered copy, pairwise within the candidate's gathered F-ordered one), without them
    up_c = cand["ffn_up"] if perm is None else cand["ffn_up"][perm]
    sign, ratio = _sign_and_norm_ratio(ref["ffn_up"], up_c)
    if "ffn_down" in ref and "ffn_down" in cand:
        dr = _col_norms(ref["ffn_down"])
        down_c = cand["ffn_down"].T  # rows: the columns of the F-ordered gathered copy
        dc = _row_norms(down_c if perm is None else down_c[perm])
        backward = dr / np.maximum(dc, 1e-30)
        return sign * np.sqrt(ratio * dr / np.maximum(dc, 1e-30)), _disagreement(ratio, backward)
    return sign * ratio, 0.0


def _row_mean_abs_cos(ua: np.ndarray, ub: np.ndarray) -> float:
    """Mean |cos| of corresponding rows of two equal-shape blocks of unit rows."""
    return float(np.abs((ua * ub).sum(axis=1)).mean())


@dataclass(frozen=True)
class _BlockTerm:
    """One term of a head-block similarity: unit rows (float64) of the reference and the
    candidate, each also as (n_blocks, head_dim, |S|) blocks for the batched products.
    Rows are normalised once per layer, not once per block pair: a row's unit vector is
    the same either way (a row-wise reduction in the same order)."""

    ref: np.ndarray
    cand: np.ndarray
    ref_blocks: np.ndarray
    cand_blocks: np.ndarray

    @classmethod
    def of(cls, ref: np.ndarray, cand: np.ndarray, hd: int) -> _BlockTerm:
        ur, uc = _unit_rows(ref), _unit_rows(cand)
        return cls(ur, uc, ur.reshape(-1, hd, ur.shape[1]), uc.reshape(-1, hd, uc.shape[1]))


def _block_entry(terms: list[_BlockTerm], i: int, j: int, hd: int) -> float:
    """sim[i, j] of :func:`_block_assign`, exactly as the per-pair loop computes it."""
    values = [_row_mean_abs_cos(t.ref[i * hd:(i + 1) * hd], t.cand[j * hd:(j + 1) * hd]) for t in terms]
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _take_blocks(blocks: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``blocks[idx]``, as a view when ``idx`` is a run of consecutive blocks (it always is)."""
    if len(idx) and (np.diff(idx) == 1).all():
        return blocks[idx[0]:idx[0] + len(idx)]
    return blocks[idx]


def _block_sim_batched(terms: list[_BlockTerm], ref_idx: np.ndarray, cand_idx: np.ndarray) -> np.ndarray:
    """All of sim by one batched matmul per term: within ~1e-13 of the exact loop (float64
    dot products of unit vectors), not bit-identical to it."""
    sim = np.zeros((len(ref_idx), len(cand_idx)))
    for t in terms:
        a, b = _take_blocks(t.ref_blocks, ref_idx), _take_blocks(t.cand_blocks, cand_idx)  # (n, hd, |S|)
        dots = np.matmul(a.transpose(1, 0, 2), b.transpose(1, 2, 0))  # (hd, n_ref, n_cand)
        sim += np.abs(dots).mean(axis=0)
    return sim


def _block_assign(terms: list[_BlockTerm], ref_idx: np.ndarray, cand_idx: np.ndarray,
                  hd: int) -> tuple[np.ndarray | None, dict[str, Any]]:
    """:func:`_assign` on sim[i, j] = sum over terms of the mean |cos| of the rows of
    reference block ``ref_idx[i]`` with those of candidate block ``cand_idx[j]``.

    The batched matrix settles the assignment when its row maxima dominate (the margin
    dwarfs its ~1e-13 error, so the exact matrix has the same unique optimum); then only
    the entries the result reads (the diagonal and the chosen pairs) are computed exactly.
    Otherwise the exact matrix is built pair by pair and solved, as always."""
    n = len(ref_idx)
    sim = _block_sim_batched(terms, ref_idx, cand_idx)
    perm = _dominant_perm(sim)
    pairs = ([(i, j) for i in range(n) for j in range(n)] if perm is None else
             [(i, i) for i in range(n)] + [(i, int(perm[i])) for i in range(n)])
    for i, j in pairs:
        sim[i, j] = _block_entry(terms, int(ref_idx[i]), int(cand_idx[j]), hd)
    return _assign(sim, perm)


def _attention(
    ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], heads: HeadLayout
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    hd, nkv, nh = heads.head_dim, heads.n_head_kv, heads.n_head
    group = nh // nkv
    kv_terms = [_BlockTerm.of(ref["attn_k"], cand["attn_k"], hd), _BlockTerm.of(ref["attn_v"], cand["attn_v"], hd)]
    kv_perm, kv_info = _block_assign(kv_terms, np.arange(nkv), np.arange(nkv), hd)
    kvp = np.arange(nkv) if kv_perm is None else kv_perm
    q_map = np.arange(nh)
    moved_q = 0
    o_r, o_c = ref["attn_output"], cand["attn_output"]
    # q heads are matched inside each matched KV group (nothing to match with one per group)
    q_terms = [_BlockTerm.of(ref["attn_q"], cand["attn_q"], hd), _BlockTerm.of(o_r.T, o_c.T, hd)] if group > 1 else []
    for g in range(nkv):
        ref_heads = np.arange(g * group, (g + 1) * group)
        cand_heads = np.arange(kvp[g] * group, (kvp[g] + 1) * group)
        perm, _ = _block_assign(q_terms, ref_heads, cand_heads, hd) if group > 1 else (None, {})
        local = np.arange(group) if perm is None else perm
        q_map[ref_heads] = cand_heads[local]
        moved_q += int((cand_heads[local] != ref_heads).sum())
    q_perm = None if (q_map == np.arange(nh)).all() else q_map
    kv_rows = _expand_heads(kvp, hd)
    # as in _mlp_unit_scale: exact float64 products summed in the orders of the float64 copies
    # this used to take (v rows pairwise; o's reference columns sequential, its gathered
    # F-ordered candidate columns pairwise)
    v_r, v_c = ref["attn_v"], cand["attn_v"] if kv_perm is None else cand["attn_v"][kv_rows]
    sign, ratio = _sign_and_norm_ratio(v_r, v_c)
    # o columns meeting v row r: every q head of r's group, channel r % hd
    q_cols = _expand_heads(q_map, hd)
    oc = _row_norms(o_c.T if q_perm is None else o_c.T[q_cols])
    orr = _col_norms(o_r)
    kv_of_q = heads.kv_of_q_rows()
    o_ratio = np.zeros(nkv * hd)
    np.add.at(o_ratio, kv_of_q, orr / np.maximum(oc, 1e-30))
    o_ratio /= group
    v_scale = _spread_scale(sign * np.sqrt(ratio * o_ratio), _disagreement(ratio, o_ratio))
    info = {"kv_groups": kv_info, "q_heads_moved": moved_q}
    if v_scale is not None:
        info["v_scales"] = _scale_summary(v_scale)
    return kv_perm, q_perm, v_scale, info


def _column_shrink(cols_ref: list[np.ndarray], cols_cand: list[np.ndarray]) -> np.ndarray:
    """log(reference / candidate) norm of each residual column over the blocks that read it."""
    col_r = np.sqrt(sum((c.astype(np.float64) ** 2).sum(axis=0) for c in cols_ref))
    col_c = np.sqrt(sum((c.astype(np.float64) ** 2).sum(axis=0) for c in cols_cand))
    return np.log(np.maximum(col_r, 1e-30) / np.maximum(col_c, 1e-30))


def _column_fit(log_gain: np.ndarray, shrink: np.ndarray) -> float:
    """RMS of (column shrinkage - log gain ratio), both centred, over the spread of the log gain
    ratio: ~0 when the columns shrank by exactly the factor the gains grew (a fold or a
    rescale, the same function; a common factor, e.g. from rescaled MLP units sharing the
    columns, cancels in the centring), ~1 or more when training moved gains and columns each
    its own way."""
    diff = (shrink - shrink.mean()) - (log_gain - log_gain.mean())
    return float(np.sqrt(np.mean(diff ** 2)) / log_gain.std())


def _deliberate_flips(g_ref: np.ndarray, g_cand: np.ndarray, a: np.ndarray) -> int:
    """How many gains changed sign by far more than training moves the others (GAIN_FLIP_MOVES)."""
    flips = a < 0
    if not flips.any():
        return 0
    move = np.abs(g_cand.astype(np.float64) - g_ref.astype(np.float64))
    training = float(np.median(move[~flips])) if (~flips).any() else 0.0
    return int((move[flips] > GAIN_FLIP_MOVES * training).sum())


def _gain_scale(
    g_ref: np.ndarray | None,
    g_cand: np.ndarray | None,
    cols_ref: list[np.ndarray],
    cols_cand: list[np.ndarray],
    residual: np.ndarray,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Residual-channel rescaling at a norm: gain x a, following columns / a."""
    if g_ref is None or g_cand is None or not cols_ref:
        return None, {}
    with np.errstate(divide="ignore", invalid="ignore"):
        a = g_cand.astype(np.float64) / g_ref.astype(np.float64)
    if not np.isfinite(a).all() or (a == 0).any():
        return None, {}
    spread = float(np.std(np.log(np.abs(a))))
    la = np.log(np.abs(a[residual]))
    corr = 0.0
    shrink = np.zeros_like(la)
    if la.std() > 0:  # equal gains (a copy, a quantized copy) need no column norms
        shrink = _column_shrink(cols_ref, cols_cand)
        corr = float(np.corrcoef(la, shrink)[0, 1]) if shrink.std() > 0 else 0.0
    fit = _column_fit(la, shrink) if la.std() > 0 else None
    info = {"gain_ratio_log_sd": round(spread, 6), "corr_with_column_shrink": round(corr, 4)}
    if fit is not None:
        info["column_fit"] = round(fit, 4)
    flipped = _deliberate_flips(g_ref, g_cand, a)
    if (spread > SCALE_SPREAD and corr > GAIN_COLUMN_CORR and fit is not None and fit <= GAIN_COLUMN_FIT) or flipped:
        info["applied"] = True
        return a, info
    return None, info


def _expand_heads(perm: np.ndarray, hd: int) -> np.ndarray:
    return (perm[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)


def _c_ordered(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in parts.items()}  # no copy when already C-ordered


def align_layer(
    layer: int,
    r: dict[str, np.ndarray],
    c: dict[str, np.ndarray],
    heads: HeadLayout | None,
    res: np.ndarray,
    norms_ref: dict[str, np.ndarray],
    norms_cand: dict[str, np.ndarray],
) -> tuple[dict[str, Any], dict[str, Transform]]:
    """Recover one layer's permutations and scales from its sketches ``r`` / ``c``
    (residual-indexed slices, :class:`Sketch` ``.layers[layer]``); returns the layer's
    record and its per-tensor transforms. Layers are independent of each other, so the
    streamed pipeline aligns each layer while its sketches exist and then drops them.

    Sketches are C-ordered (other layouts are copied so: the float64 reductions here
    follow the summation orders of C-ordered data)."""
    r, c = _c_ordered(r), _c_ordered(c)
    record: dict[str, Any] = {"layer": layer}
    t: dict[str, dict[str, Any]] = {}

    def name(role: str) -> str:
        return f"blk.{layer}.{role}.weight"

    # residual gains first: they act on the columns every other feature is read in
    a, info_a = _gain_scale(
        norms_ref.get(name("attn_norm")),
        norms_cand.get(name("attn_norm")),
        [r[k] for k in ("attn_q", "attn_k", "attn_v") if k in r and k in c],
        [c[k] for k in ("attn_q", "attn_k", "attn_v") if k in r and k in c],
        res,
    )
    b, info_b = _gain_scale(
        norms_ref.get(name("ffn_norm")),
        norms_cand.get(name("ffn_norm")),
        [r[k] for k in ("ffn_gate", "ffn_up") if k in r and k in c],
        [c[k] for k in ("ffn_gate", "ffn_up") if k in r and k in c],
        res,
    )
    record["attn_norm_rescale"], record["ffn_norm_rescale"] = info_a, info_b
    if a is not None:
        t["attn_norm"] = {"col_scale": 1.0 / a}
        for role in ("attn_q", "attn_k", "attn_v"):
            t.setdefault(role, {})["col_scale"] = a
    if b is not None:
        t["ffn_norm"] = {"col_scale": 1.0 / b}
        for role in ("ffn_gate", "ffn_up"):
            t.setdefault(role, {})["col_scale"] = b
    # features in the reference's residual frame: undo the gain scaling on the sketch
    cs = {
        k: (
            v * a[res][None, :]
            if a is not None and k in ("attn_q", "attn_k", "attn_v")
            else v * b[res][None, :]
            if b is not None and k in ("ffn_gate", "ffn_up")
            else v
        )
        for k, v in c.items()
    }
    if all(k in r and k in cs for k in ("ffn_up",)):
        perm, scale, info = _mlp(r, cs)
        record["mlp"] = info
        for role, spec in mlp_unit_specs(perm, scale).items():
            t.setdefault(role, {}).update(spec)
    if heads is not None and all(k in r and k in cs for k in ("attn_q", "attn_k", "attn_v", "attn_output")):
        kv_perm, q_perm, v_scale, info = _attention(r, cs, heads)
        record["attention"] = info
        hd = heads.head_dim
        if q_perm is not None:
            t.setdefault("attn_q", {})["row_index"] = _expand_heads(q_perm, hd)
            t.setdefault("attn_output", {})["col_index"] = _expand_heads(q_perm, hd)
        if kv_perm is not None:
            t.setdefault("attn_k", {})["row_index"] = _expand_heads(kv_perm, hd)
            t.setdefault("attn_v", {})["row_index"] = _expand_heads(kv_perm, hd)
        if v_scale is not None:
            t.setdefault("attn_v", {})["row_scale"] = 1.0 / v_scale
            t.setdefault("attn_output", {})["col_scale"] = v_scale[heads.kv_of_q_rows()]
    return record, {name(role): Transform(**spec) for role, spec in t.items()}


def align(
    ref: Sketch,
    cand: Sketch,
    heads: HeadLayout | None,
    norms_ref: dict[str, np.ndarray],
    norms_cand: dict[str, np.ndarray],
) -> Alignment:
    """Recover permutations and scales layer by layer; returns per-tensor transforms."""
    result = Alignment()
    for layer in sorted(ref.layers):
        record, transforms = align_layer(
            layer, ref.layers[layer], cand.layers.get(layer, {}), heads, ref.residual, norms_ref, norms_cand
        )
        result.transforms.update(transforms)
        result.layers.append(record)
    return result
