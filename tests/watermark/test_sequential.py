"""Sequential tracing: the always-valid rule's error bound, its decisions, and its agreement
with the fixed-sample test on the robustness table's kinds of candidates (real files)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from provenance.watermark import DerivedKey, TraceOptions, embed_checkpoint, trace
from provenance.watermark.attacks import average, midpoint, quantize_mix, read_tensors, write_gguf_variant
from provenance.watermark.sequential import ACCUSED, CLEARED, OPEN, SequentialRule, Tracker
from tests.conftest import QUANT_DIR

SOURCE = QUANT_DIR / "tiny-llama-f16.gguf"
SECRET = b"provenance-sequential-secret-01"
INNOCENT = [DerivedKey(SECRET, f"innocent-{i:02d}") for i in range(20)]


def _walks(rng: np.random.Generator, n_keys: int, n_blocks: int, drift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block: each key's sum ``theta q + N(0, q)`` and the blocks' ``q`` (uneven, as real
    blocks' energies are)."""
    q = rng.gamma(2.0, 1.0, size=n_blocks)
    s = drift[:, None] * q[None, :] + rng.standard_normal((n_keys, n_blocks)) * np.sqrt(q)[None, :]
    return s, q


def _run(rule: SequentialRule | None, s: np.ndarray, q: np.ndarray) -> Tracker:
    tracker = Tracker(rule, s.shape[0], 1)
    for b in range(s.shape[1]):
        live = tracker.live()
        tracker.add(live, s[:, b:b + 1], q[b:b + 1])
        if tracker.decide(b + 1, complete=b + 1 == s.shape[1]):
            break
    return tracker


def test_innocent_keys_are_accused_at_most_alpha_of_the_time() -> None:
    """Ville's bound, simulated: 40,000 innocent walks over 100 uneven blocks, at a level
    large enough to count (threshold z = 2, alpha = 0.023). The sequential part alone may
    err with probability share * alpha, the whole rule with alpha."""
    rng = np.random.default_rng(1)
    rule = SequentialRule.for_threshold(2.0)
    s, q = _walks(rng, 40_000, 100, np.zeros(40_000))
    tracker = _run(rule, s, q)
    accused = float(np.mean(tracker.state == ACCUSED))
    se = math.sqrt(rule.alpha / s.shape[0])
    assert accused <= rule.alpha + 3 * se
    # the running boundary alone: walks that ever crossed it
    crossed = float(np.mean((tracker.best >= -math.log(rule.share * rule.alpha)).any(axis=1)))
    assert 0 < crossed <= rule.share * rule.alpha + 3 * math.sqrt(rule.share * rule.alpha / s.shape[0])
    # the full-pass z of innocent walks is N(0, 1): the rule's other share is spent there
    z = s.sum(axis=1) / math.sqrt(q.sum())
    assert abs(float(np.mean(z >= rule.full_pass_z)) - (1 - rule.share) * rule.alpha) < 4 * se


def test_p_values_match_the_decisions() -> None:
    rng = np.random.default_rng(2)
    rule = SequentialRule.for_threshold(3.0)
    drift = np.concatenate([np.zeros(300), np.full(300, 0.3)])
    s, q = _walks(rng, 600, 60, drift)
    tracker = _run(SequentialRule(rule.alpha, rule.share, colluder_fraction=0.0), s, q)  # no clearing: a full pass
    for k in range(600):
        full_z = tracker.s[k, 0] / math.sqrt(tracker.q[k, 0])
        p = rule.p_value(tracker.best[k, 0], full_z)
        assert (p <= rule.alpha) == (tracker.state[k] == ACCUSED), k
        assert math.isclose(math.log10(max(p, 1e-300)), rule.log10_p_value(tracker.best[k, 0], full_z), abs_tol=1e-9)


def test_strong_marks_decide_early_and_colluders_stay_in() -> None:
    """One strong mark among innocents: accused within a few blocks, innocents cleared
    soon after. Colluders at 1/4 of the strongest mark are never cleared (the fraction is
    1/16); with nothing marked, nothing is decided before the end."""
    rng = np.random.default_rng(3)
    rule = SequentialRule.for_threshold(7.0)
    drift = np.zeros(50)
    drift[0], drift[1], drift[2] = 4.0, 1.0, 1.0
    s, q = _walks(rng, 50, 2000, drift)
    tracker = _run(rule, s, q)
    assert tracker.state[0] == ACCUSED and tracker.decided_after[0] <= 20
    assert list(tracker.state[1:3]) == [ACCUSED, ACCUSED]
    assert (tracker.state[3:] == CLEARED).all() and tracker.decided_after.max() < 2000
    s, q = _walks(rng, 50, 300, np.zeros(50))
    tracker = _run(rule, s, q)
    assert (tracker.state == OPEN).all() and (tracker.decided_after == -1).all()
    assert not Tracker(None, 3, 1).decide(1, complete=True)  # no rule: nothing decided, never stops early


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path | None, list[str]]]:
    """Kinds of rows of the robustness table (scripts/watermark_robustness.py), on the tiny
    real llama.cpp-layout file: (candidate, reference, guilty clients)."""
    work = tmp_path_factory.mktemp("seq")
    marked = {}
    for client, a in (("acme", 1e-2), ("globex", 1e-2), ("weak", 1e-3)):
        marked[client] = work / f"{client}.gguf"
        embed_checkpoint(SOURCE, marked[client], DerivedKey(SECRET, client), a)
    q4 = work / "weak-q4km.gguf"
    quantize_mix(marked["weak"], q4, "Q4_K_M")
    copies = [{n: v for n, v in read_tensors(marked[c]).items() if n.startswith("blk.") and "norm" not in n}
              for c in ("acme", "globex")]
    mid, avg = work / "mid.gguf", work / "avg.gguf"
    write_gguf_variant(SOURCE, mid, midpoint(copies))
    write_gguf_variant(SOURCE, avg, average(copies))
    return {
        "F16 copy": (marked["acme"], SOURCE, ["acme"]),
        "F16 copy, a = 1e-3": (marked["weak"], SOURCE, ["weak"]),
        "Q4_K_M, a = 1e-3": (q4, SOURCE, ["weak"]),
        "midpoint of 2": (mid, SOURCE, ["acme", "globex"]),
        "average of 2": (avg, SOURCE, ["acme", "globex"]),
        "blind, F16 copy": (marked["acme"], None, ["acme"]),
        "unmarked": (SOURCE, SOURCE, []),
    }


EARLY = {"F16 copy", "F16 copy, a = 1e-3", "midpoint of 2", "average of 2"}
"""z >= ~300 on these 1.7M weights. Innocents are cleared once an accused mark's drift is
shown 16 times theirs, i.e. from z ~ 100 of the accused: the Q4_K_M copy at a = 1e-3 (grid
z ~ 85 over the whole file) and blind detection (z ~ 13) are weak at this size and take the
full pass (at 7B they reach z ~ 5,000 and ~80: docs/watermark.md)."""


@pytest.mark.parametrize("case", ["F16 copy", "F16 copy, a = 1e-3", "Q4_K_M, a = 1e-3", "midpoint of 2", "average of 2",
                                  "blind, F16 copy", "unmarked"])
def test_sequential_agrees_with_the_fixed_sample_test(candidates, case: str) -> None:
    candidate, reference, guilty = candidates[case]
    keys = [DerivedKey(SECRET, c) for c in ("acme", "globex", "weak")] + INNOCENT
    fixed = trace(candidate, keys, reference, TraceOptions(sequential=False, decoys=0))
    seq = trace(candidate, keys, reference, TraceOptions(decoys=0))
    assert sorted(fixed.accused) == sorted(seq.accused) == sorted(guilty), case
    assert fixed.score.complete and fixed.rule.family_wise_false_accusation_bound == seq.rule.family_wise_false_accusation_bound
    if case in EARLY:  # a strong mark: named after part of the model, the innocents cleared
        assert seq.score.weights_read < seq.score.n_weights, case
        assert {c.key for c in seq.clients() if c.decision == "cleared"} >= {k.label for k in INNOCENT}
    else:  # weak or absent here: a full pass
        assert seq.score.complete, case
    for client in seq.clients():  # the reported p-values are the rule's: accused exactly where p <= alpha
        p_min = min(v.p_value for v in client.statistics.values())
        assert (p_min <= sps.norm.sf(7.0)) == client.accused, (case, client.key)
