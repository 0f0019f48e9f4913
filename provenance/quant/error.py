"""Dequantization error of a candidate against reference weights, streamed and summable."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ErrorStats:
    """Sums over row chunks (float64), so per-tensor and per-layer figures combine exactly."""

    n: int = 0
    sse: float = 0.0
    """Sum of squared errors ``(candidate - reference)^2``."""
    ref_ss: float = 0.0
    """Sum of squared reference values."""
    clean_sse: float = 0.0
    """Sum of squared errors of a clean quantization of the reference (same grid)."""
    max_abs: float = 0.0
    abs_steps: float = 0.0
    """Sum of ``|candidate - reference| / local step``."""
    n_steps: int = 0

    def add(self, other: ErrorStats) -> None:
        self.n += other.n
        self.sse += other.sse
        self.ref_ss += other.ref_ss
        self.clean_sse += other.clean_sse
        self.max_abs = max(self.max_abs, other.max_abs)
        self.abs_steps += other.abs_steps
        self.n_steps += other.n_steps

    @property
    def rel_l2(self) -> float:
        return math.sqrt(self.sse / self.ref_ss) if self.ref_ss > 0 else float("nan")

    @property
    def expected_rel_l2(self) -> float:
        return math.sqrt(self.clean_sse / self.ref_ss) if self.ref_ss > 0 else float("nan")

    @property
    def mean_abs_steps(self) -> float:
        return self.abs_steps / self.n_steps if self.n_steps else float("nan")

    def summary(self) -> dict[str, float]:
        ratio = self.rel_l2 / self.expected_rel_l2 if self.expected_rel_l2 > 0 else float("nan")
        return {
            "rel_l2": self.rel_l2,
            "max_abs": self.max_abs,
            "mean_abs_steps": self.mean_abs_steps,
            "expected_rel_l2": self.expected_rel_l2,
            "error_ratio": ratio,
            "ref_rms": math.sqrt(self.ref_ss / self.n) if self.n else float("nan"),
        }


def error_stats(
    values: torch.Tensor,
    reference: torch.Tensor,
    clean: torch.Tensor | None = None,
    step: torch.Tensor | None = None,
) -> ErrorStats:
    """Error of ``values`` against ``reference`` (same shape); ``clean`` is what a clean
    quantization of the reference stores, ``step`` the local grid step (value units)."""
    v = values.to(torch.float64)
    r = reference.to(torch.float64)
    diff = v - r
    out = ErrorStats(
        n=r.numel(),
        sse=float((diff * diff).sum()),
        ref_ss=float((r * r).sum()),
        max_abs=float(diff.abs().max()) if diff.numel() else 0.0,
    )
    if clean is not None:
        cd = clean.to(torch.float64) - r
        out.clean_sse = float((cd * cd).sum())
    if step is not None:
        ok = (step > 0) & torch.isfinite(step)
        safe = torch.where(ok, step, torch.ones_like(step)).to(torch.float64)
        out.abs_steps = float(torch.where(ok, diff.abs() / safe, torch.zeros_like(diff)).sum())
        out.n_steps = int(ok.sum())
    return out
