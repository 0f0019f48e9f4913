"""The shape of a difference: i.i.d. noise, zeroed small weights, or a structured change.

Two uses, one classifier:

* keyless analysis (``watermark analyze``, :mod:`provenance.watermark.analyze`): the class
  of ``candidate - reference`` for a whole tensor (:func:`classify_difference`) or of a
  quantized candidate's grid-flip matrix (:func:`classify_flips`);
* ``compare``'s verdict (:mod:`.verdict`, docs/lineage.md "The shape of the difference"):
  the same classes on each changed matrix's sampled rows (:func:`sample_shape`), plus the
  zeroed weights a magnitude pruning leaves. For a quantized candidate the residual is
  what remains outside the stored grid cells (the smallest move of each reference weight
  into its cell), so the quantizer's own rounding noise, i.i.d. by construction, cancels.

Thresholds are documented in docs/watermark.md (classes) and docs/lineage.md (pruning).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from scipy.special import ndtr

from provenance.compare.result import DifferenceShape
from provenance.quant.rescale import CELL_TOLERANCE_STEPS as GRID_TOLERANCE_STEPS  # one tolerance for every cell check

# Decision thresholds (documented in docs/watermark.md).
FULL_RANK_RATIO = 0.6
"""Stable rank / its i.i.d. expectation above which a residual counts as full-rank."""
LOW_RANK_RATIO = 0.3
MAX_ROW_CV = 0.25
"""Coefficient of variation of (row RMS of delta / row sigma) for 'proportional to sigma'."""
MAX_WEIGHT_CORR_SIGMAS = 6.0
"""|corr(delta, w)| allowed, in units of its null standard error 1/sqrt(N)."""
UNRELATED_REL = 0.5
MIN_FLIPS = 20
MIN_FLIP_FRACTION = 1e-4
"""Fewer grid flips than this (count and fraction) count as a clean quantization."""
MIN_FLIPS_PER_ROW = 4.0
"""Below this a sparse flip matrix is too thin for a spectral verdict."""


ChangeClass = Literal["identical", "precision", "exact-quantization", "rescale-permutation", "iid-perturbation",
                      "structured", "unrelated", "unsupported"]
UNCHANGED = ("identical", "precision", "exact-quantization")
"""Classes that are no change at all beyond storage rounding or an exact quantization."""



def spectral_norm(x: np.ndarray, iterations: int = 30, seed: int = 0) -> float:
    """Largest singular value by power iteration (cheap on large matrices, exact enough here)."""
    a = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    v = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    value = 0.0
    for _ in range(iterations):
        u = a @ v
        norm_u = float(torch.linalg.vector_norm(u))
        if norm_u == 0:
            return 0.0
        v = a.T @ (u / norm_u)
        value = float(torch.linalg.vector_norm(v))
        v = v / value
    return value


def rank_ratio(r: np.ndarray) -> float:
    """Stable rank ``||R||_F^2 / ||R||_2^2`` over its expectation ``nm / (sqrt n + sqrt m)^2``
    for an i.i.d. matrix of the same shape (~1 i.i.d., -> 0 for low rank)."""
    n, m = r.shape
    top = spectral_norm(r)
    if top == 0:
        return float("nan")
    stable = float(np.sum(r * r)) / top**2
    return stable / (n * m / (math.sqrt(n) + math.sqrt(m)) ** 2)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den else 0.0


def classify_difference(x: np.ndarray, w: np.ndarray) -> tuple[ChangeClass, dict[str, Any]]:
    """Class and evidence for a plain (unquantized) candidate ``x`` against reference ``w``."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    return _classify(x, w, x64, w64, x64 - w64, None)


def _classify(x: np.ndarray, w: np.ndarray, x64: np.ndarray, w64: np.ndarray, delta: np.ndarray,
              sigma: np.ndarray | None) -> tuple[ChangeClass, dict[str, Any]]:
    """:func:`classify_difference` given ``x`` and ``w`` in float64, their difference and, when the
    caller has it, ``w64``'s row standard deviations (keepdims): :func:`dense_shape` needs them too."""
    if not delta.any():
        return "identical", {}
    for label, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        if np.array_equal(x, torch.from_numpy(w.astype(np.float32)).to(dtype).float().numpy()):
            return "precision", {"rounded_to": label}
    sigma = w64.std(axis=1, keepdims=True) if sigma is None else sigma
    sigma = np.where(sigma > 0, sigma, 1.0)
    r = delta / sigma
    rel = float(np.linalg.norm(delta) / max(np.linalg.norm(w64), 1e-30))
    row_rms = np.sqrt(np.mean(r * r, axis=1))
    live = row_rms[row_rms > 0]
    row_cv = float(live.std() / live.mean()) if live.size > 1 else 0.0
    # z**4 as two squarings in place (pow() per weight was 17x slower: 14 CPU s of investigate
    # at 7B), one array alive instead of three: the sampled rows of a 70B MLP matrix are
    # 3.7 M float64 values, 29 MB per array
    z4 = r / np.where(row_rms > 0, row_rms, 1.0)[:, None]
    np.multiply(z4, z4, out=z4)
    np.multiply(z4, z4, out=z4)
    kurt = float(np.mean(z4) - 3.0)
    del z4
    corr = _corr(delta, w64)
    corr_sigmas = abs(corr) * math.sqrt(delta.size)
    ratio = rank_ratio(r)
    evidence = {"rel_change": rel, "row_cv": row_cv, "excess_kurtosis": kurt, "corr_with_weights": corr,
                "corr_sigmas": corr_sigmas, "rank_ratio": ratio, "gaussian": abs(kurt) < 0.5}
    if rel >= UNRELATED_REL and abs(_corr(x64, w64)) < 0.5:
        return "unrelated", evidence
    if ratio >= FULL_RANK_RATIO and corr_sigmas <= MAX_WEIGHT_CORR_SIGMAS and row_cv <= MAX_ROW_CV:
        return "iid-perturbation", evidence
    return "structured", evidence


def classify_flips(signs: np.ndarray, w: np.ndarray) -> tuple[ChangeClass, dict[str, Any]]:
    """Class and evidence from a quantized candidate's grid-flip matrix."""
    n_flips = int(np.count_nonzero(signs))
    frac = n_flips / signs.size
    evidence: dict[str, Any] = {"flip_fraction": frac, "n_flips": n_flips}
    if n_flips < max(MIN_FLIPS, MIN_FLIP_FRACTION * signs.size):
        # llama.cpp's float arithmetic leaves a handful of unexplained codes even on a clean
        # quantization (9 in 2.2M on the shared Q8_0 file); that many flips is not a change.
        if n_flips:
            evidence["note"] = "unexplained flips at the arithmetic-noise level"
        return "exact-quantization", evidence
    if frac > 0.25:
        return "unrelated", evidence
    corr = _corr(signs, np.sign(w))  # weight decay / shrinkage flips toward zero
    evidence["corr_with_weight_signs"] = corr
    evidence["corr_sigmas"] = abs(corr) * math.sqrt(signs.size)
    rows_hit = np.count_nonzero(signs, axis=1)
    evidence["row_cv"] = float(rows_hit.std() / rows_hit.mean()) if rows_hit.mean() > 0 else 0.0
    if n_flips / signs.shape[0] < MIN_FLIPS_PER_ROW:
        evidence["note"] = "too few flips per row for a rank test"
        return ("structured" if evidence["corr_sigmas"] > MAX_WEIGHT_CORR_SIGMAS else "iid-perturbation"), evidence
    # Flips are sparse: compare with the spectrum of a Bernoulli(frac) +-1 matrix, not a dense one.
    ratio = rank_ratio(signs)
    evidence["rank_ratio"] = ratio
    if ratio >= FULL_RANK_RATIO and evidence["corr_sigmas"] <= MAX_WEIGHT_CORR_SIGMAS:
        return "iid-perturbation", evidence
    return "structured", evidence



#: flips beyond this share of weights make a sign matrix too dense for :func:`classify_flips`
#: (it would call them unrelated): the residual itself is classified then
DENSE_FLIPS = 0.25


def _zeroed_stats(zeroed: np.ndarray, ref: np.ndarray) -> tuple[float, float | None]:
    """Fraction of weights zeroed, and the mean |w| of the zeroed ones over the mean |w| of all
    (small for a magnitude pruning, ~1 for weights zeroed at random)."""
    frac = float(zeroed.mean()) if zeroed.size else 0.0
    if not zeroed.any():
        return frac, None
    mean_all = float(np.abs(ref).mean())
    return frac, float(np.abs(ref[zeroed]).mean()) / mean_all if mean_all > 0 else None


def dense_shape(cand: np.ndarray, ref: np.ndarray) -> DifferenceShape:
    """The shape of ``cand - ref`` on sampled rows of an unquantized pair (after alignment)."""
    c64, r64 = cand.astype(np.float64), ref.astype(np.float64)
    zeroed = (c64 == 0) & (r64 != 0)
    frac, ratio = _zeroed_stats(zeroed, r64)
    rest = np.where(zeroed, r64, c64)  # the difference outside the zeroed weights
    del c64  # (memory: see _classify)
    delta = rest - r64
    norm = float(np.linalg.norm(r64))
    rest_rel = float(np.linalg.norm(delta)) / norm if norm > 0 else 0.0
    rest32 = rest.astype(np.float32)
    # the classifier's float64 copies, difference and row deviations are these very arrays when
    # both sides hold float32 values (every sampled row pair does): not made again
    exact = all(a.dtype in (np.float32, np.float16) for a in (cand, ref))
    sigma = r64.std(axis=1, keepdims=True)
    change, evidence = _classify(rest32, ref, rest, r64, delta, sigma) if exact else classify_difference(rest32, ref)
    sigma = sigma[:, 0]
    rms = np.sqrt(np.mean(delta ** 2, axis=1))
    live = sigma > 0
    noise = float(np.sqrt(np.mean((rms[live] / sigma[live]) ** 2))) if live.any() else None
    return DifferenceShape(source="delta", change_class=change, noise_rel=noise, zeroed_fraction=frac,
                           zeroed_magnitude_ratio=ratio, rest_rel=rest_rel, rest_outside_fraction=None,
                           rank_ratio=_finite(evidence.get("rank_ratio")), corr_sigmas=_finite(evidence.get("corr_sigmas")),
                           row_cv=_finite(evidence.get("row_cv")))


def grid_shape(residual: np.ndarray, zeroed: np.ndarray, ref: np.ndarray, step: np.ndarray) -> DifferenceShape:
    """The shape of a quantized candidate's grid residual on sampled rows: ``residual`` is the
    smallest move of each reference weight into its stored cell (0 inside; zeroed weights
    excluded), ``step`` each weight's cell width."""
    if not residual.any() and not zeroed.any():
        # nothing moved (every weight of an exact copy): no flip to classify and a noise
        # amplitude of flip_amplitude(0, step / sigma), found without the per-weight quotients
        return DifferenceShape(source="grid-residual", change_class="exact-quantization",
                               noise_rel=_unmoved_noise(step, ref), zeroed_fraction=0.0,
                               zeroed_magnitude_ratio=None, rest_rel=None, rest_outside_fraction=0.0)
    return _moved_grid_shape(residual, zeroed, ref, step)


def _moved_grid_shape(residual: np.ndarray, zeroed: np.ndarray, ref: np.ndarray, step: np.ndarray) -> DifferenceShape:
    """:func:`grid_shape` from the per-weight arrays (any sample; the tests hold the shortcut for
    an unmoved one to this)."""
    r64 = ref.astype(np.float64)
    frac, ratio = _zeroed_stats(zeroed, r64)
    outside = residual != 0
    rest_outside = float(outside.mean()) if outside.size else 0.0
    if rest_outside > DENSE_FLIPS:  # the change reaches past whole cells: classify the moves themselves
        change, evidence = classify_difference((r64 + residual).astype(np.float32), ref)
    else:
        change, evidence = classify_flips(np.sign(residual), ref)
    sigma = r64.std(axis=1, keepdims=True)
    noise = flip_amplitude(rest_outside, np.divide(step, sigma, out=np.zeros_like(step, dtype=np.float64), where=sigma > 0))
    return DifferenceShape(source="grid-residual", change_class=change, noise_rel=noise, zeroed_fraction=frac,
                           zeroed_magnitude_ratio=ratio, rest_rel=None, rest_outside_fraction=rest_outside,
                           rank_ratio=_finite(evidence.get("rank_ratio")), corr_sigmas=_finite(evidence.get("corr_sigmas")),
                           row_cv=_finite(evidence.get("row_cv")))


def _unmoved_noise(step: np.ndarray, ref: np.ndarray) -> float | None:
    """:func:`flip_amplitude` of no weight outside, over the widths ``step / sigma`` that
    :func:`grid_shape` gives it (0 where a row's deviation ``sigma`` is 0): 0.0 when some width
    is finite and positive, else None. Such a quotient is finite and positive exactly when the
    step is and its row's deviation is positive (a positive float32 step over a float64
    deviation of float32 values neither underflows nor overflows), so only the deviations of
    rows with such a step are computed, each as ``grid_shape`` computes it for its row, and
    only until one is positive (the first, unless the row is constant)."""
    with np.errstate(invalid="ignore"):
        rows = np.flatnonzero((np.isfinite(step) & (step > 0)).any(axis=1))
    for row in rows.tolist():
        if float(ref[row].astype(np.float64).std()) > 0:
            return 0.0
    return None


_SQRT_2PI = math.sqrt(2 * math.pi)  # the normal density's constant, as scipy.stats.norm has it


def _rate_terms(a: float, width: np.ndarray, tol_steps: float) -> np.ndarray:
    """Per width (in units of the row's standard deviation), the expected share of weights
    pushed beyond ``tol_steps`` of their cell by Gaussian noise of standard deviation ``a``
    (weights spread uniformly over cells of that width): ``2 a / s * (phi(c) - c Q(c))`` with
    ``c = tol s / a``. phi and Q are scipy's ``norm.pdf``/``norm.sf`` formulas called directly:
    the distribution object's argument checks cost 5x the arithmetic."""
    c = tol_steps * width / a
    return np.minimum(1.0, 2 * a / width * (np.exp(-c**2 / 2.0) / _SQRT_2PI - c * ndtr(-c)))


_FILTER_REL = 1e-12
"""How far (relative to the mean of the terms' magnitudes) a counts-weighted mean must be from
the target for :class:`_OutsideRate` to trust its side without the exact mean. The two means add
the same terms in different orders and groupings, both with numpy's pairwise summation (which
``sum`` and ``mean`` always use when no axis is given: numpy's documentation of ``sum``): each
is within ``(16 + log2(n / 128) + 1)`` units in the last place of the sum of magnitudes of the
exact sum (blocks of 128 added along 8 lanes, then halves), under 3e-15 relative for the
``n = 2^16`` terms at most, plus one rounding of each counts-weighted term. A 1e-12 margin is
over 100 times that bound, so it never decides a side the exact mean would not; it leaves the
exact mean to the last ~10 of the bisection's ~58 steps (a 1e-9 margin left it ~23: most of
the cost of ``compare``'s grid residual shape, ~0.9 CPU s of a 135M-parameter investigate)."""


class _OutsideRate:
    """Expected share of weights outside their cells, the mean of :func:`_rate_terms` over
    every sampled weight, for a bisection that only asks on which side of a target it lies.

    ``distinct``: the distinct widths; ``expand``: each weight's index into them (a K-quant row
    has one width per sub-block of 32). The terms are computed once per distinct width. The
    exact rate spreads them back before the mean, so the mean adds the same numbers in the same
    order as over the weights themselves; that gather and sum of every weight is most of the
    cost, so :meth:`below` first weighs the distinct terms by their counts and takes the exact
    mean only when that estimate is within rounding reach of the target (:data:`_FILTER_REL`):
    the answer is the exact mean's, bit for bit, at a fraction of the cost while the bisection
    is still far from the root (all but the last ~10 of its ~58 steps). :meth:`certain_side`
    tells more: a side that holds at every amplitude beyond ``a`` too (:func:`_certain_bracket`)."""

    def __init__(self, distinct: np.ndarray, expand: np.ndarray, tol_steps: float) -> None:
        self.distinct, self.expand, self.tol_steps = distinct, expand, tol_steps
        self.counts = np.bincount(expand, minlength=distinct.size).astype(np.float64)
        self.exact_evaluations = 0
        """How many times :meth:`below` needed the exact mean (for the tests)."""

    def exact(self, a: float) -> float:
        """The mean over every weight, as numpy's ``mean`` of the spread-back terms adds it."""
        return float(np.mean(_rate_terms(a, self.distinct, self.tol_steps)[self.expand]))

    def estimate(self, a: float) -> tuple[float, float, np.ndarray]:
        """The counts-weighted mean at ``a``, the mean of the weighted terms' magnitudes (the
        scale of its rounding), and the terms."""
        terms = _rate_terms(a, self.distinct, self.tol_steps)
        weighted = terms * self.counts
        n = self.expand.size
        return float(weighted.sum()) / n, float(np.abs(weighted).sum()) / n, terms

    def _side(self, a: float, target: float, rel: float) -> tuple[bool | None, float, np.ndarray]:
        """``(side, estimate, terms)`` at ``a``: whether the estimate is below ``target`` (True)
        or above it (False) by more than ``rel`` of the mean term magnitude; None (and a NaN
        estimate where it or its margin is not finite) when that is not clear."""
        estimate, scale, terms = self.estimate(a)
        margin = rel * scale
        if not (math.isfinite(estimate) and math.isfinite(margin)):
            return None, math.nan, terms
        if estimate < target - margin:
            return True, estimate, terms
        if estimate > target + margin:
            return False, estimate, terms
        return None, estimate, terms

    def below(self, a: float, target: float) -> bool:
        """Whether :meth:`exact` at ``a`` is below ``target``."""
        side, _, terms = self._side(a, target, _FILTER_REL)
        if side is not None:
            return side
        self.exact_evaluations += 1
        return float(np.mean(terms[self.expand])) < target

    def certain_side(self, a: float, target: float) -> tuple[bool | None, float]:
        """``(side, estimate)``: whether the rate is below ``target`` at ``a``, at every
        smaller amplitude too (True), or above it at ``a`` and every larger one (False), when
        the estimate is over :data:`_CERTAIN_REL` away; None (and NaN) otherwise.

        The rate never decreases with the amplitude: each term is ``2 tol h(c)`` with
        ``h(c) = (phi(c) - c Q(c)) / c`` and ``h'(c) = -phi(c) / c^2 < 0``, while ``c = tol s / a``
        falls as ``a`` grows. A side certain at ``a`` with a margin over the rounding of the
        terms and of both means is then the exact mean's side at every amplitude beyond it."""
        side, estimate, _ = self._side(a, target, _CERTAIN_REL)
        return side, estimate


_CERTAIN_REL = 1e-9
"""The margin of :meth:`_OutsideRate.certain_side` (relative to the mean term magnitude). Beyond
the rounding of the two sums (:data:`_FILTER_REL`) it covers the rounding of the terms
themselves, which compares two amplitudes: ``phi(c) - c Q(c)`` cancels to ``phi(c) / c^2``, so
a term's relative error grows like ``c^4`` ulps, under 1e-10 for every ``c`` (< 38) at which
``phi(c)`` is not 0 in float64 and under 1e-13 where the rate is over 1e-7."""


def _certain_bracket(rate: _OutsideRate, target: float, lo: float, hi: float) -> tuple[float, float]:
    """Amplitudes ``(below, above)`` in ``[lo, hi]``: the exact rate is below ``target`` at every
    amplitude up to ``below`` and above it from ``above`` on (:meth:`_OutsideRate.certain_side`),
    ``above / below`` within ~1e-8 of 1 when the root can be bracketed that closely; ``(0, inf)``
    when not even ``lo`` and ``hi`` are certain. Found by the secant method on the log of the
    estimate against log amplitude (smooth near the root, where the rate itself is steep),
    bisecting where the secant leaves the bracket, in ~10 evaluations of the rate: the bisection
    then evaluates only its steps inside the bracket (~25 of ~58)."""
    if rate.certain_side(lo, target)[0] is not True:
        return 0.0, math.inf
    side_hi, est_hi = rate.certain_side(hi, target)
    if side_hi is not False:
        return 0.0, math.inf
    below, above = lo, hi
    log_target = math.log(target)
    x_lo, x_hi = math.log(lo), math.log(hi)
    recent = [(x_hi, math.log(est_hi) - log_target)]  # the last two finite points, for the secant
    for _ in range(_BRACKET_STEPS):
        x = math.nan
        if len(recent) == 2 and recent[0][1] != recent[1][1]:
            (x0, f0), (x1, f1) = recent
            x = x1 - f1 * (x1 - x0) / (f1 - f0)
        if not x_lo < x < x_hi:  # no secant yet, or it leaves the bracket: bisect
            x = (x_lo + x_hi) / 2
        a = math.exp(x)
        side, estimate = rate.certain_side(a, target)
        if side is None:  # within rounding reach of the root: close in on it from both sides
            below = next((a * (1 - step) for step in _PROBES if a * (1 - step) > below
                          and rate.certain_side(a * (1 - step), target)[0] is True), below)
            above = next((a * (1 + step) for step in _PROBES if a * (1 + step) < above
                          and rate.certain_side(a * (1 + step), target)[0] is False), above)
            break
        if side:
            below, x_lo = a, x
        else:
            above, x_hi = a, x
        if estimate > 0:
            recent = [*recent[-1:], (x, math.log(estimate) - log_target)]
        if above <= below * (1 + 1e-8):
            break
    return below, above


_PROBES = (1e-8, 1e-6)
"""Relative offsets from a point within rounding reach of the root at which :func:`_certain_bracket`
tries to certify each side, closest first."""
_BRACKET_STEPS = 30
"""At most this many secant or bisection steps (~10 on the real cases)."""


def _sampled_distinct(s: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(sample, return_inverse=True)`` of the widths ``s`` (finite, positive) or, past
    ``size`` of them, of ``default_rng(0).choice(s, size, replace=False)`` (the same draws: the
    indices are drawn as that call draws them), without sorting every sampled width: equal widths
    come in runs (one per K-quant sub-block), so only the runs' first values are sorted and each
    width takes its run's index (sorting the 65,536 sampled widths was a quarter of the
    amplitude's cost)."""
    starts = np.empty(s.size, dtype=bool)
    starts[0] = True
    np.not_equal(s[1:], s[:-1], out=starts[1:])
    distinct, run_index = np.unique(s[starts], return_inverse=True)
    run = np.cumsum(starts)  # each width's run, counted from 1 (in place: 29 MB at 70B rows)
    run -= 1
    index = run_index[run]
    del run
    if s.size > size:
        index = index[np.random.default_rng(0).choice(s.size, size, replace=False)]
        present = np.bincount(index, minlength=distinct.size) > 0
        if not present.all():  # widths no sampled weight has: dropped, as np.unique would never see them
            distinct, index = distinct[present], (np.cumsum(present) - 1)[index]
    return distinct, index


def flip_amplitude(outside: float, width: np.ndarray, tol_steps: float = GRID_TOLERANCE_STEPS) -> float | None:
    """The noise amplitude (relative to each row's standard deviation) whose expected share of
    weights outside their cells is ``outside``, by bisection on :class:`_OutsideRate`; None
    when no cell has a width (nothing to invert). An estimate: quantizers that pull weights
    towards cell centres (K-quant scale searches) bias it low."""
    s = width[np.isfinite(width) & (width > 0)]
    if not s.size:
        return None
    if outside <= 0:
        return 0.0
    # the 60 bisection steps evaluate the rate on the distinct widths only (see _OutsideRate)
    rate = _OutsideRate(*_sampled_distinct(s, 1 << 16), tol_steps)
    lo, hi = 1e-7, 10.0
    # the steps outside a bracket of the root known for certain cost nothing (_certain_bracket)
    certain_below, certain_above = _certain_bracket(rate, outside, lo, hi)
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        below = mid <= certain_below or (mid < certain_above and rate.below(mid, outside))
        if mid == (lo if below else hi):
            break  # (lo, hi) is all the loop carries: unchanged now, unchanged for every step left
        if below:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def rounding_cells(values: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells of values stored in a narrow float ``dtype``: halfway to each neighbour."""
    narrow = values.to(dtype)
    up = torch.nextafter(narrow, torch.full_like(narrow, float("inf"))).to(torch.float32)
    down = torch.nextafter(narrow, torch.full_like(narrow, float("-inf"))).to(torch.float32)
    return (values + down) / 2, (values + up) / 2


def cell_residual(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tol: torch.Tensor | float,
                  alt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight of ``x``: the smallest move into ``[lo - tol, hi + tol]`` (0 inside, or
    when ``alt``, another reading of the source such as its f16 rounding, is inside), and
    whether it was zeroed instead (outside, and 0 lies in the cell)."""
    low, high = lo - tol, hi + tol
    inside = (x >= low) & (x <= high)
    if alt is not None:
        inside |= (alt >= low) & (alt <= high)
    moved = torch.where(inside, torch.zeros_like(x), torch.clamp(x, low, high) - x)
    zeroed = ~inside & (low <= 0) & (high >= 0) & (x != 0)
    return torch.where(zeroed, torch.zeros_like(moved), moved), zeroed


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


__all__ = ["UNCHANGED", "ChangeClass", "cell_residual", "classify_difference", "classify_flips",
           "dense_shape", "grid_shape", "rank_ratio", "spectral_norm"]
