"""The candidate's sorted token hashes: numpy's default (unstable) sort, runs of equal hashes then put in id order."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.refdb.tokfp import SortedHashes, bottom_k, token_hashes


@pytest.mark.parametrize(("n", "pool"), [(0, 5), (1, 5), (5000, 3), (1000, 50), (100_000, 90_000), (262_144, 1 << 62)])
def test_sorted_hashes_keep_each_run_of_equal_hashes_in_id_order(n: int, pool: int) -> None:
    """Few distinct values (long runs), many short runs, nearly none: the same order as a stable sort,
    so a repeated token's first id is the one the sketch and the lookups keep."""
    hashes = np.random.default_rng(n).integers(0, pool, n, dtype=np.uint64)
    stable = np.argsort(hashes, kind="stable")
    at = SortedHashes.of(hashes)
    assert np.array_equal(at.ids, stable) and np.array_equal(at.sorted, hashes[stable])
    assert int(at.distinct.sum()) == len(np.unique(hashes))


def test_a_repeated_token_is_sketched_with_its_first_id() -> None:
    tokens = [b"a", b"b", b"a", b"c", b"b", b"a"]
    hashes, ids = bottom_k(token_hashes(tokens))
    assert sorted(zip(ids.tolist(), hashes.tolist(), strict=True))[:3] == sorted(
        (tokens.index(t), int(token_hashes([t])[0])) for t in (b"a", b"b", b"c"))
    assert len(hashes) == 3
