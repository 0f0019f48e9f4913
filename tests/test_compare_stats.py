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
