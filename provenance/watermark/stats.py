"""Scores, p-values and multiple-testing corrections for keyed correlation tests.

Every statistic here has the form ``z = sum(k * y) / sqrt(sum(y**2))`` where ``y`` is
computed from the candidate (and reference) alone. A key ``k`` of i.i.d. N(0, 1) entries
that was never embedded is independent of ``y``, so ``sum(k * y)`` is exactly
N(0, sum(y**2)) *given* ``y``: z is exactly N(0, 1) under the null, whatever the weights,
the quantization or the attack. No calibration on "typical" models is needed, and the
decoy keys (:mod:`.decoys`) check the claim on every candidate.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from provenance.watermark.options import DEFAULT_THRESHOLD_Z


@dataclass
class Accumulator:
    """Running ``sum(k*y)``, ``sum(y**2)`` and element count for one statistic."""

    s: float = 0.0
    q: float = 0.0
    n: int = 0

    def add(self, s: float, q: float, n: int) -> None:
        self.s += s
        self.q += q
        self.n += n

    @property
    def z(self) -> float:
        return self.s / math.sqrt(self.q) if self.q > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"z": self.z, "n": self.n, "log10_p": log10_p(self.z)}


def log10_p(z: float) -> float:
    """log10 of the one-sided upper-tail p-value of ``z`` (finite even for z = 60)."""
    return float(sps.norm.logsf(z) / math.log(10))


def p_value(z: float) -> float:
    return float(sps.norm.sf(z))


def family_bound(n_tests: int, threshold_z: float = DEFAULT_THRESHOLD_Z) -> float:
    """Bonferroni bound on the probability that *any* innocent key reaches ``threshold_z``
    among ``n_tests`` (keys x statistics) tests: ``n_tests * P(N(0,1) >= threshold_z)``."""
    return n_tests * p_value(threshold_z)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control, any dependence)."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[int(index)] = running
    return adjusted


def null_summary(decoy_z: np.ndarray) -> dict[str, float | int]:
    """How decoy-key scores compare with N(0, 1): moments, extremes, KS test."""
    decoy_z = np.asarray(decoy_z, dtype=np.float64)
    if decoy_z.size == 0:
        return {"n": 0}
    ks = sps.kstest(decoy_z, "norm")
    n = decoy_z.size
    return {
        "n": int(n),
        "mean": float(decoy_z.mean()),
        "std": float(decoy_z.std(ddof=1)) if n > 1 else 0.0,
        "max": float(decoy_z.max()),
        "min": float(decoy_z.min()),
        "ks_statistic": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "expected_max": float(sps.norm.isf(1.0 / (n + 1))),
    }
