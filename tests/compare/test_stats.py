"""Streamed statistics: precision of 1 - cos, centring of norm vectors, chunking, ranks."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.compare.stats import PairAccumulator, effective_rank


def _exact_one_minus_cos(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    ua, ub = a64 / np.linalg.norm(a64), b64 / np.linalg.norm(b64)
    return float(((ua - ub) ** 2).sum() / 2)


def _acc(a: np.ndarray, b: np.ndarray, rows: int = 64) -> PairAccumulator:
    acc = PairAccumulator()
    for s in range(0, a.shape[0], rows):
        acc.add(torch.from_numpy(a[s:s + rows]), torch.from_numpy(b[s:s + rows]))
    return acc


def test_one_minus_cos_is_precise_where_naive_float32_fails() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 4096)).astype(np.float32)
    b = (a + 0.01 * rng.standard_normal(a.shape)).astype(np.float32)  # cos ~ 0.99995
    exact = _exact_one_minus_cos(a, b)
    assert 3e-5 < exact < 7e-5
    ours = _acc(a, b).result().one_minus_cos
    assert abs(ours - exact) / exact < 1e-6
    ta, tb = torch.from_numpy(a).view(-1), torch.from_numpy(b).view(-1)
    naive = 1 - float(torch.dot(ta, tb) / (ta.norm() * tb.norm()))
    assert abs(naive - exact) / exact > 1e-3  # the reason for the d/s formulation


def test_pearson_centres_norm_vectors_raw_cosine_does_not() -> None:
    rng = np.random.default_rng(1)
    g1 = (1 + 0.05 * rng.standard_normal((1, 4096))).astype(np.float32)
    g2 = (1 + 0.05 * rng.standard_normal((1, 4096))).astype(np.float32)
    res = _acc(g1, g2).result()
    assert res.cosine is not None and res.cosine > 0.99  # what the Solar/GLM claim rested on
    assert abs(res.pearson) < 0.06
    assert _acc(g1, g2).result(centred_only=True).cosine is None


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(3, 50), chunk=st.integers(1, 17), seed=st.integers(0, 2**16))
def test_chunking_does_not_change_results(rows: int, cols: int, chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    b = (a + rng.standard_normal((rows, cols))).astype(np.float32)
    one, many = _acc(a, b, rows).result(), _acc(a, b, chunk).result()
    for field in ("pearson", "cosine", "rel_delta_norm"):
        x, y = getattr(one, field), getattr(many, field)
        assert x is not None and y is not None and abs(x - y) <= 1e-9 + 1e-6 * abs(x)
    ref = np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1] if rows * cols > 1 else None
    if ref is not None and np.isfinite(ref):
        assert abs(many.pearson - ref) < 1e-6
    assert many.max_abs_delta == float(np.abs(a - b).max())


def test_effective_rank_sees_a_merged_lora() -> None:
    rng = np.random.default_rng(2)
    low = rng.standard_normal((172, 4)) @ rng.standard_normal((4, 64))
    noisy = low + 1e-4 * rng.standard_normal(low.shape)
    assert effective_rank(noisy)["rank_energy"] <= 4
    assert effective_rank(rng.standard_normal((172, 64)))["rank_energy"] > 40


def test_every_chunk_size_sums_in_float64() -> None:
    rng = np.random.default_rng(5)
    # norm-like vectors: a large mean, so the centred sums cancel (float32 sums left ~5e-6)
    g1 = (1 + 0.05 * rng.standard_normal((1, 4096))).astype(np.float32)
    g2 = (g1 + 0.01 * rng.standard_normal((1, 4096))).astype(np.float32)
    ref = np.corrcoef(g1.astype(np.float64).ravel(), g2.astype(np.float64).ravel())[0, 1]
    assert abs(_acc(g1, g2).result().pearson - ref) < 1e-12
    # odd sizes (a lane tail in every chunk) and big chunks agree with float64 to 1e-9
    a = rng.standard_normal((256, 4093)).astype(np.float32)
    b = (a + 0.01 * rng.standard_normal(a.shape)).astype(np.float32)
    exact = _exact_one_minus_cos(a, b)
    small, big = _acc(a, b, 3).result(), _acc(a, b, 256).result()
    assert abs(small.one_minus_cos - exact) / exact < 1e-9
    assert abs(big.one_minus_cos - exact) / exact < 1e-9
    assert small.max_abs_delta == big.max_abs_delta == float(np.abs(a - b).max())


def test_nan_and_merge() -> None:
    rng = np.random.default_rng(8)
    a = rng.standard_normal((8, 100)).astype(np.float32)
    b = (a + 0.1).astype(np.float32)
    whole, first, second = _acc(a, b), _acc(a[:3], b[:3]), _acc(a[3:], b[3:])
    first.merge(second)
    assert first.n == whole.n == a.size
    assert abs(first.result().one_minus_cos - whole.result().one_minus_cos) < 1e-15
    assert first.max_abs_d == whole.max_abs_d
    a[5, 7] = np.nan
    assert np.isnan(_acc(a, b).max_abs_d) and np.isnan(_acc(a, b).result().max_abs_delta)


def test_effective_rank_torch_input_and_blocked_gram_match_numpy_svd() -> None:
    from provenance.compare.stats import _gram

    rng = np.random.default_rng(6)
    x = rng.standard_normal((37, 300))
    g = _gram(torch.from_numpy(x))
    np.testing.assert_allclose(g.numpy(), x @ x.T, rtol=1e-12, atol=1e-12)
    delta = (rng.standard_normal((256, 6)) @ rng.standard_normal((6, 512)) + 1e-3 * rng.standard_normal((256, 512)))
    delta = delta.astype(np.float32)
    r_np, r_t = effective_rank(delta), effective_rank(torch.from_numpy(delta))
    assert r_np == r_t and r_np["rank_energy"] <= 6
    sv = np.linalg.svd(delta.astype(np.float64), compute_uv=False)
    assert r_np["stable_rank"] == round(float((sv**2).sum() / sv[0] ** 2), 3)
    p = sv / sv.sum()
    assert abs(r_np["entropy_rank"] - float(np.exp(-(p * np.log(p)).sum()))) <= 1.5e-3
    bad = delta.copy()
    bad[3, 7] = np.nan
    assert effective_rank(bad)["rank_energy"] == 0


def _lane_oracle(a: np.ndarray, b: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``pair_sums`` promises, written plainly: per chunk, element ``k`` to lane
    ``k % LANES``, each lane one sequential float64 sum (``np.cumsum`` adds in order)."""
    from provenance.compare.pairsums import LANES

    lanes, peak = np.zeros((5, LANES)), np.zeros(LANES, np.float32)
    for s in range(0, a.size, chunk):
        x, y = a.ravel()[s:s + chunk].astype(np.float64), b.ravel()[s:s + chunk].astype(np.float64)
        d, t = x - y, x + y
        gap = np.abs(a.ravel()[s:s + chunk] - b.ravel()[s:s + chunk])
        for lane in range(min(LANES, x.size)):
            for row, terms in enumerate((d, t, d * d, d * t, t * t)):
                lanes[row, lane] = np.cumsum(np.concatenate([[lanes[row, lane]], terms[lane::LANES]]))[-1]
            kept = gap[lane::LANES]
            kept = kept[~np.isnan(kept)]
            if kept.size:
                peak[lane] = max(peak[lane], kept.max())
    return lanes, peak


def test_pair_sums_are_sequential_lane_sums_bit_for_bit() -> None:
    """The vectorized kernel adds exactly what each lane's sequential sum adds (a reassociated
    or mis-laned kernel changes the bits), NaNs in the sums but not the peak."""
    from provenance.compare.pairsums import LANES, pair_sums

    rng = np.random.default_rng(11)
    a = rng.standard_normal(3 * 4096 + 45).astype(np.float32)
    b = (a + 1e-3 * rng.standard_normal(a.size)).astype(np.float32)
    a[1000] = np.nan
    for chunk in (4096, 4096 + 13, 7):
        lanes, peak = np.zeros((5, LANES)), np.zeros(LANES, np.float32)
        for s in range(0, a.size, chunk):
            pair_sums(a[s:s + chunk], b[s:s + chunk], lanes, peak)
        want_lanes, want_peak = _lane_oracle(a, b, chunk)
        assert np.array_equal(lanes.view(np.uint64), want_lanes.view(np.uint64))
        assert np.array_equal(peak, want_peak)
