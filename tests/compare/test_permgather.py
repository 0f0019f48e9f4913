"""The compiled gather of the permutation test: numpy's take, value for value, and the same
permuted statistics bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.compare.permgather import gather_permuted


def _take(b: np.ndarray, perms: np.ndarray) -> np.ndarray:
    m = b.shape[0]
    flat = (perms[:, :, None] * m + perms[:, None, :]).reshape(len(perms), m * m)
    return np.take(b.ravel(), flat)


@pytest.mark.parametrize(("m", "k"), [(128, 61), (24, 5), (1, 3), (7, 1)])
def test_gather_is_numpys_take(m: int, k: int) -> None:
    rng = np.random.default_rng(m)
    b = rng.standard_normal((m, m)).astype(np.float32)
    b[rng.random((m, m)) < 0.05] = np.nan  # NaNs are moved like any value
    perms = np.argsort(rng.random((k, m)), axis=1)
    out = np.full((k, m * m), -1.0, dtype=np.float32)
    gather_permuted(b, perms, out)
    assert np.array_equal(out, _take(b, perms), equal_nan=True)


def test_permuted_statistics_are_bit_for_bit_the_take_ones() -> None:
    rng = np.random.default_rng(3)
    m, k = 128, 61
    a, b = rng.standard_normal(m * m).astype(np.float32), rng.standard_normal((m, m)).astype(np.float32)
    perms = np.argsort(rng.random((k, m)), axis=1)
    out = np.empty((k, m * m), dtype=np.float32)
    gather_permuted(b, perms, out)
    got, want = np.einsum("kn,n->k", out, a), np.einsum("kn,n->k", _take(b, perms), a)
    assert got.tobytes() == want.tobytes()


def test_mismatched_shapes_are_refused() -> None:
    perms = np.argsort(np.random.default_rng(0).random((3, 8)), axis=1)
    with pytest.raises(ValueError, match="gather_permuted"):
        gather_permuted(np.zeros((8, 7), dtype=np.float32), perms, np.empty((3, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="gather_permuted"):
        gather_permuted(np.zeros((8, 8), dtype=np.float32), perms, np.empty((2, 64), dtype=np.float32))
