"""The grid residual's noise amplitude: the fast bisection (distinct widths, scipy's normal
formulas called directly) gives scipy.stats' answer bit for bit, and recovers the noise."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from provenance.compare.shape import GRID_TOLERANCE_STEPS, flip_amplitude


def _scipy_rate(a: float, s: np.ndarray) -> float:
    """The expected outside share through the scipy.stats distribution object (the formula
    of ``_outside_rate``, written the slow way it was first written)."""
    c = GRID_TOLERANCE_STEPS * s / a
    return float(np.mean(np.minimum(1.0, 2 * a / s * (norm.pdf(c) - c * norm.sf(c)))))


def _scipy_amplitude(outside: float, width: np.ndarray) -> float:
    s = width[np.isfinite(width) & (width > 0)]
    sample = s if s.size <= 1 << 16 else np.random.default_rng(0).choice(s, 1 << 16, replace=False)
    lo, hi = 1e-7, 10.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _scipy_rate(mid, sample) < outside else (lo, mid)
    return math.sqrt(lo * hi)


def _widths(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "k-quant":  # one width per sub-block of 32, as a K-quant row stores them
        w = np.repeat(rng.lognormal(-2, 0.5, n // 32 + 1), 32)[:n]
    else:  # every width distinct
        w = rng.lognormal(-2, 0.5, n)
    w[rng.random(n) < 0.01] = 0  # widths of 0 (rows of zeros) and non-finite ones are skipped
    w[:3] = (np.nan, np.inf, -1.0)
    return w


@pytest.mark.parametrize(("kind", "n", "outside"), [
    ("k-quant", 40, 0.4), ("k-quant", 5000, 1e-4), ("distinct", 5000, 0.02), ("distinct", 300, 1e-3),
    ("k-quant", 70_000, 0.02),  # over 2^16 widths: the sampled branch
])
def test_amplitude_is_the_scipy_stats_bisection_bit_for_bit(kind: str, n: int, outside: float) -> None:
    width = _widths(kind, n, np.random.default_rng(n))
    assert flip_amplitude(outside, width) == _scipy_amplitude(outside, width)


def test_amplitude_recovers_gaussian_noise_over_uniform_cells() -> None:
    """Noise of amplitude a added to weights spread uniformly over cells: the share pushed
    beyond the tolerance, inverted, gives a back (docs/lineage.md: 0.98e-2 for 1e-2)."""
    rng = np.random.default_rng(0)
    n, a = 400_000, 1e-2
    step = np.repeat(rng.uniform(0.02, 0.06, n // 32), 32)
    pos = rng.uniform(0, step)  # each weight's place in its cell
    moved = pos + a * rng.standard_normal(n)
    tol = GRID_TOLERANCE_STEPS * step
    outside = float(np.mean((moved < -tol) | (moved > step + tol)))
    assert flip_amplitude(outside, step) == pytest.approx(a, rel=0.05)


def test_edge_cases() -> None:
    assert flip_amplitude(0.1, np.array([0.0, np.nan])) is None
    assert flip_amplitude(0.0, np.array([0.1, 0.2])) == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_filtered_bisection_is_the_full_mean_bisection_bit_for_bit(seed: int) -> None:
    """The counts-weighted estimate decides a bisection step only out of rounding reach of
    the target; every other step takes the exact mean: the amplitude is the plain bisection's
    (every step on the mean over every weight) bit for bit, over K-quant and all-distinct
    widths and shares from 1e-6 to 0.9, with far fewer exact means than steps."""
    rng = np.random.default_rng(1000 + seed)
    kind = ("k-quant", "distinct")[seed % 2]
    width = _widths(kind, int(rng.integers(50, 80_000)), rng)
    outside = float(10 ** rng.uniform(-6, math.log10(0.9)))
    assert flip_amplitude(outside, width) == _scipy_amplitude(outside, width)


def test_outside_rate_answers_as_the_exact_mean_and_mostly_without_it() -> None:
    from provenance.compare.shape import _OutsideRate

    rng = np.random.default_rng(7)
    sample = np.repeat(rng.lognormal(-2, 0.5, 2048), 32)[rng.permutation(2048 * 32)]
    distinct, expand = np.unique(sample, return_inverse=True)
    rate = _OutsideRate(distinct, expand, GRID_TOLERANCE_STEPS)
    target = rate.exact(0.01)
    # points far from and within rounding reach of the root (a = 0.01): same side as the exact mean
    for a in (1e-5, 3e-3, 0.0099, 0.0101, 0.5, *np.nextafter(0.01, [0.0, 1.0]), 0.01):
        assert rate.below(a, target) == (rate.exact(a) < target)
    assert rate.exact_evaluations == 3  # only the three within rounding reach of the root took it


@pytest.mark.parametrize("seed", range(8))
def test_certain_bracket_holds_the_exact_mean_on_each_side(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bracket the bisection skips its outer steps with: the exact mean is below the target at
    every amplitude up to its lower end and not below from its upper end on (the rate never
    decreases with the amplitude), it holds the root within ~1e-8, and with it the bisection
    evaluates the rate ~40 times instead of ~58 (the amplitude itself is held to the plain
    bisection bit for bit above)."""
    from provenance.compare import shape
    from provenance.compare.shape import _certain_bracket, _OutsideRate

    rng = np.random.default_rng(2000 + seed)
    width = _widths(("k-quant", "distinct")[seed % 2], int(rng.integers(5_000, 80_000)), rng)
    outside = float(10 ** rng.uniform(-5, math.log10(0.5)))
    s = width[np.isfinite(width) & (width > 0)]
    sample = s if s.size <= 1 << 16 else np.random.default_rng(0).choice(s, 1 << 16, replace=False)
    rate = _OutsideRate(*np.unique(sample, return_inverse=True), GRID_TOLERANCE_STEPS)
    below, above = _certain_bracket(rate, outside, 1e-7, 10.0)
    assert 1e-7 <= below < above <= 10.0 and above / below < 1 + 1e-5
    for a in (*np.geomspace(1e-7, below, 12), *np.nextafter(below, [0.0])):
        assert rate.exact(float(a)) < outside
    for a in (*np.geomspace(above, 10.0, 12), *np.nextafter(above, [np.inf])):
        assert not rate.exact(float(a)) < outside
    calls = []
    terms = shape._rate_terms
    monkeypatch.setattr(shape, "_rate_terms", lambda *args: calls.append(1) or terms(*args))
    assert flip_amplitude(outside, width) == _scipy_amplitude(outside, width)
    assert len(calls) <= 48


@pytest.mark.parametrize("case", ["k-quant", "distinct", "under-size", "rare-widths"])
def test_sampled_distinct_widths_are_numpys_unique_of_the_sample(case: str) -> None:
    """The distinct widths of the sampled weights and each weight's index into them, from the
    runs of equal widths: ``np.unique(sample, return_inverse=True)`` exactly, including widths
    that no sampled weight has (dropped, as ``np.unique`` of the sample never sees them)."""
    from provenance.compare.shape import _sampled_distinct

    rng = np.random.default_rng(11)
    if case == "rare-widths":  # 200 widths held by one weight each among 100k: ~1/3 not drawn
        s = np.repeat(rng.lognormal(-2, 0.5, 100), 998)
        s[rng.choice(s.size, 200, replace=False)] = rng.lognormal(-2, 0.5, 200)
    else:
        w = _widths("distinct" if case == "distinct" else "k-quant", 2_000 if case == "under-size" else 80_000, rng)
        s = w[np.isfinite(w) & (w > 0)]
    sample = s if s.size <= 1 << 16 else np.random.default_rng(0).choice(s, 1 << 16, replace=False)
    distinct, expand = np.unique(sample, return_inverse=True)
    got_distinct, got_expand = _sampled_distinct(s, 1 << 16)
    assert got_distinct.dtype == distinct.dtype and np.array_equal(got_distinct, distinct)
    assert np.array_equal(got_expand, expand)
    if case == "rare-widths":
        assert distinct.size < np.unique(s).size  # the branch that drops undrawn widths ran
