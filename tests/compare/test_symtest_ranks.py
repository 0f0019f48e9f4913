"""The lineage test's ranks are scipy's, bit for bit, from a cheaper sort."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from provenance.compare.symtest import _average_ranks


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((64, 100))
    gram = g @ g.T  # a symmetric circuit: every off-diagonal entry is tied with its mirror
    return [
        rng.standard_normal(16256),
        gram[~np.eye(64, dtype=bool)],
        rng.integers(0, 20, 5000).astype(np.float64),
        np.round(rng.standard_normal(3000), 1),
        np.array([0.0, -0.0, 1.0, -0.0]),
        np.array([np.inf, -np.inf, 1.0, np.inf]),
        np.array([2.0, np.nan, 1.0]),
        np.array([3.0]),
        np.array([]),
    ]


@pytest.mark.parametrize("values", _cases())
def test_average_ranks_are_rankdatas(values: np.ndarray) -> None:
    want = rankdata(values).astype(np.float64)
    got = _average_ranks(values)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
