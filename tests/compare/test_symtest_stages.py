"""The two-stage permutation test: it stops after its first permutations only when every
statistic is decided far from the thresholds, and is otherwise the one-stage test bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.compare.invariants import Circuit
from provenance.compare.symtest import FAR_Z, PermutationTest
from provenance.compare.verdict import ALPHA_RELATED, EXACT_RELATED

M = 128  # the sampled residual width: 61 permutations per gather batch, so 99 ends mid-batch


def _circuits(seed: int, related_layers: set[int], noise: float = 0.05,
              layers: int = 4) -> tuple[list[Circuit], list[Circuit]]:
    """Square circuits per layer (the candidate the reference plus ``noise`` on related layers,
    independent elsewhere) and one column-permuted embedding block."""
    rng = np.random.default_rng(seed)
    ref, cand = [], []
    for layer in range(layers):
        for label in ("qk", "mlp"):
            a = rng.standard_normal((M, M))
            b = a + noise * rng.standard_normal((M, M)) if layer in related_layers else rng.standard_normal((M, M))
            ref.append(Circuit(label, layer, a, True))
            cand.append(Circuit(label, layer, b, True))
    e = rng.standard_normal((40, M))
    ref.append(Circuit("token_embd", None, e, False))
    cand.append(Circuit("token_embd", None, e + noise * rng.standard_normal((40, M)), False))
    return ref, cand


def _run(ref: list[Circuit], cand: list[Circuit], first: int, permutations: int = 999) -> PermutationTest:
    test = PermutationTest(M, permutations, seed=3, first=first)
    for layer in (None, 0, 1, 2, 3):  # stream order: the embedding blocks first
        test.add([c for c in ref if c.layer == layer], [c for c in cand if c.layer == layer])
    return test


@pytest.mark.parametrize("related", [set(), {0, 1}, {0, 1, 2, 3}], ids=["unrelated", "partial", "weakly related"])
def test_undecided_first_stage_completes_to_the_one_stage_test(related: set[int]) -> None:
    """Not every statistic beyond FAR_Z after 99 draws: the other 900 are drawn, and the
    result is the 999-permutation test's, every number equal."""
    ref, cand = _circuits(0, related, noise=15.0 if related == {0, 1, 2, 3} else 0.05)
    staged, whole = _run(ref, cand, first=99).result(), _run(ref, cand, first=0).result()
    assert staged.permutations == 999 and staged.permutations_planned is None
    assert min([staged.z] + [layer.z for layer in staged.layers]) < FAR_Z
    assert staged.to_dict() == whole.to_dict() and staged.null_sample == whole.null_sample


def test_decided_first_stage_stops_with_its_own_exact_p() -> None:
    ref, cand = _circuits(1, {0, 1, 2, 3})
    staged, whole = _run(ref, cand, first=99).result(), _run(ref, cand, first=0).result()
    assert staged.permutations == 99 and staged.permutations_planned == 999
    assert staged.to_dict()["permutations_planned"] == 999 and whole.to_dict()["permutations_planned"] is None
    # its permuted statistics are the one-stage test's first 99, so its exact p is exact for them
    assert staged.null_sample == whole.null_sample[:99]
    assert staged.p_exact == staged.p_exact_floor == 0.01 and whole.p_exact == 0.001
    assert staged.statistic == whole.statistic
    # the decision each would support is the same, for the model and for every layer
    for test in (staged, whole):
        assert test.z >= FAR_Z and test.p_asymptotic < ALPHA_RELATED
        assert all(layer.z >= FAR_Z and layer.p_asymptotic < ALPHA_RELATED and layer.p_exact <= EXACT_RELATED
                   for layer in test.layers)


def test_first_stage_of_all_permutations_is_one_stage() -> None:
    ref, cand = _circuits(2, {0, 1, 2, 3})
    for first in (0, 999, 5000):
        test = _run(ref, cand, first=first)
        assert test.kept is None and test.result().permutations == 999
