"""The typed result of ``quantcheck``: the overall verdict, one record per tensor, and the
JSON document (schema ``provenance.quantcheck/1``, docs/quantization.md) built from them.

Frozen dataclasses of plain values: picklable, no open handles (a worker can return one).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from provenance.quant.error import ErrorStats
from provenance.quant.gridcheck import CheckCounts

if TYPE_CHECKING:  # pandas only for the table views (its import: 0.1-0.25 s of CPU in every command otherwise)
    import pandas as pd

SCHEMA = "provenance.quantcheck/1"

QuantVerdict = Literal["exact", "perturbed", "unrelated", "nothing-checked"]
TensorStatus = Literal["exact", "perturbed", "unrelated", "missing-in-reference", "shape-mismatch", "unchecked-type",
                       "identical", "differs"]
VERDICT_TEXT: dict[str, str] = {
    "exact": "exact quantization",
    "perturbed": "quantized from a perturbed reference",
    "unrelated": "unrelated",
}
"""Per grid-checked tensor and overall; ``nothing-checked`` has no text of its own."""


@dataclass(frozen=True)
class ErrorSummary:
    """Dequantization error against the reference, beside that of a clean quantization."""

    rel_l2: float
    max_abs: float
    mean_abs_steps: float
    expected_rel_l2: float
    """Relative L2 error a clean quantization of the reference would have on this grid."""
    error_ratio: float
    ref_rms: float

    @classmethod
    def of(cls, stats: ErrorStats) -> ErrorSummary:
        return cls(**stats.summary())

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class GridCounts:
    """Grid consistency of one tensor (:class:`provenance.quant.gridcheck.CheckCounts`)."""

    n_weights: int
    n_checked: int
    n_mismatch: int
    n_explained: int
    n_unexplained: int
    n_up: int
    n_down: int
    n_blocks_scale_mismatch: int
    inv_step_sum: float
    near_sum: float
    frac_unexplained: float
    dist_median_steps: float
    dist_max_steps: float
    amplitude: float

    @classmethod
    def of(cls, counts: CheckCounts) -> GridCounts:
        return cls(**counts.summary())

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class TensorCheck:
    name: str
    layer: int | None
    role: str | None
    qtype: str
    shape: str
    status: TensorStatus
    grid: GridCounts | None = None
    """Grid-checked tensors only."""
    error: ErrorSummary | None = None
    amplitude_rel: float | None = None
    """Estimated source perturbation relative to the reference's RMS (grid-checked only)."""
    tolerance_explained: bool | None = None
    """The type's recipe accepts a tolerance zone (IQ4): small flips may hide there."""
    realigned: bool = False
    """Checked against the reference carried into the candidate's frame (``--realign``)."""

    @property
    def checked(self) -> bool:
        return self.status in VERDICT_TEXT

    def record(self) -> dict[str, Any]:
        """The tensor's row of :attr:`QuantCheckResult.table`."""
        out: dict[str, Any] = {"name": self.name, "layer": self.layer, "role": self.role, "qtype": self.qtype,
                               "shape": self.shape}
        if self.grid is not None:
            out.update(self.grid.to_dict())
            if self.error is not None:
                out.update(self.error.to_dict())
            out["amplitude_rel"] = self.amplitude_rel
            out["status"] = self.status
            out["tolerance_explained"] = self.tolerance_explained
            if self.realigned:
                out["realigned"] = True
            return out
        out["status"] = self.status
        if self.error is not None:
            out.update(self.error.to_dict())
        return out


@dataclass(frozen=True)
class QuantCheckResult:
    candidate: str
    reference: str
    verdict: QuantVerdict
    source_precision: str
    """f32, f16 or bf16: what the quantizer saw (given, or the one the grid explains best)."""
    precision_evidence: dict[str, int]
    """Unexplained mismatches on a sample under each precision hypothesis (auto only)."""
    tensors: tuple[TensorCheck, ...]
    layers: dict[str, ErrorSummary] = field(default_factory=dict)
    candidate_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def verdict_text(self) -> str:
        return VERDICT_TEXT.get(self.verdict, self.verdict)

    @property
    def flagged(self) -> bool:
        """Anything but an exact quantization of the reference."""
        return self.verdict != "exact"

    @property
    def checked(self) -> list[TensorCheck]:
        return [t for t in self.tensors if t.checked]

    @property
    def verdicts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.checked:
            counts[t.status] = counts.get(t.status, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    @property
    def n_unexplained(self) -> int:
        return sum(t.grid.n_unexplained for t in self.checked if t.grid)

    @property
    def n_weights_checked(self) -> int:
        return sum(t.grid.n_checked for t in self.checked if t.grid)

    @property
    def unchecked(self) -> list[str]:
        """Quantized tensors of a type without a code recipe."""
        return [t.name for t in self.tensors if t.status == "unchecked-type"]

    @property
    def amplitude_rel(self) -> float:
        """Perturbation std relative to the weights' RMS, pooled over tensors (flips over
        boundary density), from exact-recipe types when there are any: the IQ4 tolerance
        zone hides the smallest flips and would bias the estimate low. NaN: nothing to pool."""
        checked = [t for t in self.checked if t.grid and t.error]
        use = [t for t in checked if not t.tolerance_explained] or checked
        flips = float(sum(t.grid.n_unexplained for t in use if t.grid))
        density = sum(p for t in use if t.grid and t.error and math.isfinite(p := t.grid.near_sum * t.error.ref_rms))
        return flips / density * math.sqrt(math.pi / 2) if density > 0 else float("nan")

    @property
    def table(self) -> pd.DataFrame:
        """One row per tensor of the candidate (columns depend on what was checked)."""
        import pandas as pd

        return pd.DataFrame([t.record() for t in self.tensors])

    def summary(self) -> dict[str, Any]:
        """The ``summary`` object of the JSON document."""
        return {
            "candidate": self.candidate, "reference": self.reference, "verdict": self.verdict,
            "verdict_text": self.verdict_text, "flagged": self.flagged, "source_precision": self.source_precision,
            "precision_evidence": dict(self.precision_evidence), "n_tensors": len(self.tensors),
            "n_checked": len(self.checked), "verdicts": self.verdicts, "n_unexplained": self.n_unexplained,
            "n_weights_checked": self.n_weights_checked, "amplitude_rel": self.amplitude_rel,
            "layers": {k: v.to_dict() for k, v in self.layers.items()},
            "candidate_metadata": dict(self.candidate_metadata), "unchecked": self.unchecked,
        }

    def to_dict(self) -> dict[str, Any]:
        # records through the table: a tensor without a column gets NaN there (null in JSON), as in the CSV
        return {"schema": SCHEMA, "summary": self.summary(), "tensors": self.table.to_dict(orient="records")}
