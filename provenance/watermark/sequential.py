"""Sequential (always-valid) accusation: stop reading once every client is decided.

Blocks of the model are scored in a seeded random order (:mod:`.plan`). For one key and one
statistic, after any number of blocks, ``S = sum(k * y)`` and ``Q = sum(y**2)`` over the
blocks read. For an innocent key, ``y`` never depends on it, so given every ``y`` the running
``S`` is a Gaussian random walk with variance ``Q``: a martingale. Its normal mixture
(Robbins 1970; the mixing variance ``1/rho`` over the drift per unit of ``Q``)

    M = sqrt(rho / (Q + rho)) * exp(S**2 / (2 (Q + rho)))

is a nonnegative martingale with ``M = 1`` at the start, so by Ville's inequality an
innocent key's ``M`` *ever* reaches ``1 / alpha`` with probability at most ``alpha``,
however long the pass runs and whenever it stops. Accusing when ``S > 0`` and ``M`` reaches
``1 / (share * alpha)``, or, after a *full* pass only, when the fixed-sample ``z`` reaches
``Phi^-1(1 - (1 - share) * alpha)``, an innocent key is accused with probability at most
``alpha`` per statistic: the same per-test level as the fixed rule ``z >= 7`` (``alpha =
P(N(0,1) >= 7)``), so the family-wise bound ``clients x statistics x alpha`` (Bonferroni)
is unchanged. ``share`` = :data:`SEQUENTIAL_SHARE`; the full-pass threshold rises from
7.0 to 7.015 for it. ``rho`` is the ``Q`` of the statistic's first block (a function of
``y`` only, fixed before any key is looked at).

The same mixture gives a confidence sequence for a key's drift ``theta`` (its ``S`` grows
as ``theta Q``): ``|S - theta Q| <= radius(Q)`` at all times with probability ``1 - beta``.
A client is *cleared* once, on some statistic, its drift is shown (at ``beta`` =
:data:`CLEAR_BETA`) to be below ``colluder_fraction`` times an accused client's: a
colluder among ``n`` averaged copies keeps ``1/n`` of the mark, so clearing below 1/16 of
the accused keeps every colluder of up to 16 copies in play. Clearing only ever ends a
client's scoring without accusing it: it cannot raise the false-accusation bound. With
nobody accused, nobody is cleared, and a weak or absent mark costs a full pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: share of each test's false-accusation probability spent on the running boundary (the
#: rest on the fixed-sample test after a full pass)
SEQUENTIAL_SHARE = 0.1
#: probability that a client is cleared while its mark is in fact stronger than the
#: clearing fraction (a missed colluder; never a false accusation)
CLEAR_BETA = 1e-6
DEFAULT_COLLUDER_FRACTION = 1 / 16


def _mixture_radius(q: float, rho: float, level: float) -> float:
    """``|S|`` at which the normal mixture martingale reaches ``1 / level``."""
    return math.sqrt((q + rho) * (math.log((q + rho) / rho) + 2.0 * math.log(1.0 / level)))


def log_mixture(s: float, q: float, rho: float) -> float:
    """``ln M`` of the normal mixture martingale at sum ``s`` and variance ``q``."""
    return 0.5 * math.log(rho / (q + rho)) + s * s / (2.0 * (q + rho))


@dataclass(frozen=True)
class SequentialRule:
    """The per-test levels of the sequential accusation rule (see the module docstring)."""

    alpha: float
    """Per (client, statistic) false-accusation probability: ``P(N(0,1) >= threshold_z)``."""
    share: float = SEQUENTIAL_SHARE
    colluder_fraction: float = DEFAULT_COLLUDER_FRACTION

    @classmethod
    def for_threshold(cls, threshold_z: float, sequential: bool = True,
                      colluder_fraction: float = DEFAULT_COLLUDER_FRACTION) -> SequentialRule:
        return cls(float(sps.norm.sf(threshold_z)), SEQUENTIAL_SHARE if sequential else 0.0, colluder_fraction)

    @property
    def sequential(self) -> bool:
        return self.share > 0

    @property
    def full_pass_z(self) -> float:
        """The fixed-sample threshold applied after a full pass."""
        return float(sps.norm.isf((1.0 - self.share) * self.alpha))

    def crosses(self, s: float, q: float, rho: float) -> bool:
        """Whether a running sum ``s`` at variance ``q`` reaches the sequential boundary."""
        return self.sequential and s > 0 and q > 0 and s >= _mixture_radius(q, rho, self.share * self.alpha)

    def boundary_z(self, q: float, rho: float) -> float:
        """The sequential boundary in z units (``S / sqrt(Q)``) at variance ``q``."""
        return _mixture_radius(q, rho, self.share * self.alpha) / math.sqrt(q)

    def drift_bounds(self, s: float, q: float, rho: float) -> tuple[float, float]:
        """Lower and upper confidence bounds on the drift ``theta`` (``S ~ theta Q``),
        valid at all times jointly with probability ``1 - CLEAR_BETA``."""
        r = _mixture_radius(q, rho, CLEAR_BETA) / q
        return s / q - r, s / q + r

    def p_value(self, best_log_mixture: float, full_z: float | None) -> float:
        """A valid p-value of one test: ``min(p_sequential / share, p_fixed / (1 - share))``,
        where ``p_sequential = min(1, 1 / max M)`` over the times its sum was positive and
        ``p_fixed`` the one-sided p of the full-pass z (none when the pass stopped early);
        ``p <= alpha`` exactly when the rule accuses."""
        p = 1.0
        if self.sequential and best_log_mixture > 0:
            p = min(p, math.exp(-best_log_mixture) / self.share)
        if full_z is not None:
            p = min(p, float(sps.norm.sf(full_z)) / (1.0 - self.share))
        return p

    def log10_p_value(self, best_log_mixture: float, full_z: float | None) -> float:
        """``log10`` of :meth:`p_value`, finite where the p-value underflows."""
        logs = [0.0]
        if self.sequential and best_log_mixture > 0:
            logs.append(-best_log_mixture / math.log(10) - math.log10(self.share))
        if full_z is not None:
            logs.append(float(sps.norm.logsf(full_z)) / math.log(10) - math.log10(1.0 - self.share))
        return min(logs)


ACCUSED, CLEARED, OPEN = "accused", "cleared", "open"


class Tracker:
    """Running sums of every (key, statistic) over the blocks read, and the decisions of a
    :class:`SequentialRule` (``None``: a full pass, nothing decided here)."""

    def __init__(self, rule: SequentialRule | None, n_keys: int, n_statistics: int) -> None:
        self.rule = rule
        shape = (n_keys, n_statistics)
        self.s = np.zeros(shape)
        self.q = np.zeros(shape)
        self.rho = np.zeros(shape)
        self.best = np.zeros(shape)
        """Largest ``ln M`` over the blocks where the sum was positive (0: none above 1)."""
        self.state = np.array([OPEN] * n_keys, dtype=object)
        self.decided_after = np.full(n_keys, -1, dtype=np.int64)

    @property
    def sequential(self) -> bool:
        return self.rule is not None and self.rule.sequential

    def live(self) -> np.ndarray:
        """Keys to score in the next block: every key on a full pass; else the open ones and,
        while any are open, the accused (their drift bound is what clears the others)."""
        if not self.sequential:
            return np.ones(len(self.state), dtype=bool)
        return self.state != CLEARED

    def add(self, scored: np.ndarray, s: np.ndarray, q: np.ndarray) -> None:
        """One block: ``s`` (keys x statistics) sums of the ``scored`` keys, ``q`` the
        statistics' ``sum(y**2)``."""
        upd = scored[:, None] & (q[None, :] > 0)
        qb = np.broadcast_to(q[None, :], upd.shape)
        first = upd & (self.rho == 0)
        self.rho[first] = qb[first]  # a function of y only: fixed before any key is read
        self.s[upd] += s[upd]
        self.q[upd] += qb[upd]
        if self.sequential:
            pos = upd & (self.s > 0)
            idx = np.nonzero(pos)
            for k, j in zip(*idx, strict=True):
                self.best[k, j] = max(self.best[k, j], log_mixture(self.s[k, j], self.q[k, j], self.rho[k, j]))

    def decide(self, weights_read: int, complete: bool) -> bool:
        """Apply the rule after a block; True when the pass may stop (every key decided)."""
        rule = self.rule
        if rule is None:
            return False
        if rule.sequential:
            threshold = -math.log(rule.share * rule.alpha)
            for k in np.nonzero(self.state == OPEN)[0]:
                if (self.best[k] >= threshold).any():
                    self._decide(k, ACCUSED, weights_read)
            self._clear(weights_read)
        if complete:
            for k in np.nonzero(self.state == OPEN)[0]:
                z = np.where(self.q[k] > 0, self.s[k] / np.sqrt(np.where(self.q[k] > 0, self.q[k], 1.0)), 0.0)
                if (z >= rule.full_pass_z).any():
                    self._decide(k, ACCUSED, weights_read)
            return True
        return rule.sequential and not (self.state == OPEN).any()

    def _clear(self, weights_read: int) -> None:
        """Clear open keys whose drift is shown below ``colluder_fraction`` of an accused key's
        on some statistic."""
        rule = self.rule
        assert rule is not None
        accused = np.nonzero(self.state == ACCUSED)[0]
        if not len(accused):
            return
        n_stats = self.s.shape[1]
        strongest = np.zeros(n_stats)  # per statistic: the largest lower drift bound of an accused key
        for a in accused:
            for j in range(n_stats):
                if self.q[a, j] > 0:
                    strongest[j] = max(strongest[j], rule.drift_bounds(self.s[a, j], self.q[a, j], self.rho[a, j])[0])
        for k in np.nonzero(self.state == OPEN)[0]:
            for j in range(n_stats):
                if strongest[j] > 0 and self.q[k, j] > 0:
                    upper = rule.drift_bounds(self.s[k, j], self.q[k, j], self.rho[k, j])[1]
                    if upper < rule.colluder_fraction * strongest[j]:
                        self._decide(k, CLEARED, weights_read)
                        break

    def _decide(self, k: int, state: str, weights_read: int) -> None:
        self.state[k] = state
        self.decided_after[k] = weights_read
