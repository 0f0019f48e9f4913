"""The candidate's sorted token hashes (numpy's default sort, runs of equal hashes then in id order) and the shares read from them."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.formats.vocabulary import Vocabulary
from provenance.refdb.tokfp import (
    SKETCH_K,
    CandidateVocabulary,
    SortedHashes,
    _sketch_shares,
    bottom_k,
    fingerprint_vocabulary,
    token_hashes,
)


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


@pytest.mark.parametrize("ref_size", [300, 5000])
def test_reverse_share_is_the_candidate_hashes_below_tau_that_the_sketch_holds(ref_size: int) -> None:
    """The candidate's share in the reference, from the sketched tokens it holds (counted once),
    equals the direct count: each candidate hash at most tau searched in the sketch, for a
    sketch that is complete (a small vocabulary) or cut at k."""
    candidate = CandidateVocabulary(Vocabulary([f"c{i}".encode() for i in range(4000)]))
    ref = fingerprint_vocabulary(Vocabulary([f"c{i}".encode() for i in range(0, 2 * ref_size, 2)]))
    tau = ref.sketch_hashes[-1] if len(ref.sketch_hashes) >= SKETCH_K else np.iinfo(np.uint64).max
    below = candidate.distinct_sorted[candidate.distinct_sorted <= tau]
    direct = np.isin(below, ref.sketch_hashes).sum() / len(below)
    assert _sketch_shares(candidate, ref)["candidate_in_ref"] == direct
    assert 0.0 < direct < 1.0
