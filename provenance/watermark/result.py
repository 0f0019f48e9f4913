"""Typed views of keyed detection and tracing results: per-client scores, the decoy null,
the accusation rule. ``TraceResult.to_dict()`` (schema ``provenance.watermark-trace/1``)
is built from them; consumers read these fields, never that document."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Statistic = Literal["reference", "grid", "blind"]


@dataclass(frozen=True)
class StatisticScore:
    """One key's z on one statistic (exactly N(0,1) for an innocent key)."""

    z: float
    n: int
    log10_p: float
    holm_p: float | None = None
    """Holm-adjusted p over every (key, statistic) test of the trace."""

    @property
    def p_value(self) -> float:
        return 10 ** self.log10_p if self.log10_p > -300 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"z": self.z, "n": self.n, "log10_p": self.log10_p, "holm_p": self.holm_p}


@dataclass(frozen=True)
class ClientScore:
    key: str
    accused: bool
    statistics: dict[str, StatisticScore]
    per_tensor: dict[str, dict[str, float]] | None = None
    """z per tensor and statistic (accused clients, on request; over the blocks read)."""
    decision: str = "open"
    """``accused``, ``cleared`` (sequential: shown weaker than an accused client's mark) or
    ``open`` (not accused)."""
    decided_after: int | None = None
    """Weights read when the client was decided (sequential tracing)."""

    @property
    def best(self) -> tuple[str, StatisticScore] | None:
        """The statistic with the highest z."""
        return max(self.statistics.items(), key=lambda item: item[1].z) if self.statistics else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "statistics": {s: v.to_dict() for s, v in self.statistics.items()}}
        if self.per_tensor is not None:
            out["per_tensor"] = self.per_tensor
        out["accused"] = self.accused
        out["decision"] = self.decision
        out["decided_after_weights"] = self.decided_after
        return out


@dataclass(frozen=True)
class DecoyNull:
    """Innocent decoy keys' z against N(0, 1): moments, extremes, Kolmogorov-Smirnov."""

    n: int
    mean: float | None = None
    std: float | None = None
    max: float | None = None
    min: float | None = None
    ks_statistic: float | None = None
    ks_p: float | None = None
    expected_max: float | None = None

    @classmethod
    def of(cls, summary: Mapping[str, float | int]) -> DecoyNull:
        """From :func:`provenance.watermark.stats.null_summary`."""
        return cls(**summary)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "mean": self.mean, "std": self.std, "max": self.max, "min": self.min,
                "ks_statistic": self.ks_statistic, "ks_p": self.ks_p, "expected_max": self.expected_max}


@dataclass(frozen=True)
class AccusationRule:
    """Fixed before looking at the data: accuse a client when any statistic reaches the
    threshold; sequentially, when its always-valid test crosses its boundary at any block
    or, after a full pass, its z reaches ``full_pass_threshold_z`` (same per-test level)."""

    threshold_z: float
    threshold_log10_p: float
    n_tests: int
    family_wise_false_accusation_bound: float
    """Bonferroni bound on P(any innocent client accused): ``n_tests * P(N(0,1) >= threshold_z)``."""
    sequential: bool = False
    sequential_share: float = 0.0
    """Share of each test's level spent on the running boundary (docs/watermark.md, "Tracing")."""
    full_pass_threshold_z: float | None = None
    colluder_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"threshold_z": self.threshold_z, "threshold_log10_p": self.threshold_log10_p, "n_tests": self.n_tests,
                "family_wise_false_accusation_bound": self.family_wise_false_accusation_bound,
                "sequential": self.sequential, "sequential_share": self.sequential_share,
                "full_pass_threshold_z": self.full_pass_threshold_z, "colluder_fraction": self.colluder_fraction}
