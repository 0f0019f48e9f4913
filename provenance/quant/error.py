"""Dequantization error of a candidate against reference weights, streamed and summable."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from provenance.jit import kernel


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
    quantization of the reference stores, ``step`` the local grid step (value units).

    Float32 CPU tensors go through one compiled pass (each element widened to float64 and
    summed in index order, no float64 copy of anything); other dtypes and devices through
    torch. The two agree up to the order of the float64 sums (tests/quant)."""
    tensors = [t for t in (values, reference, clean, step) if t is not None]
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and values.shape == reference.shape:
        return _error_stats_compiled(values, reference, clean, step)
    return error_stats_torch(values, reference, clean, step)


def _flat(t: torch.Tensor | None) -> np.ndarray:
    return np.zeros(0, np.float32) if t is None else np.ascontiguousarray(t.detach().numpy()).reshape(-1)


def _error_stats_compiled(values: torch.Tensor, reference: torch.Tensor, clean: torch.Tensor | None,
                          step: torch.Tensor | None) -> ErrorStats:
    sums = np.zeros(5, np.float64)
    n_steps = _error_sums(_flat(values), _flat(reference), _flat(clean), _flat(step), sums)
    return ErrorStats(n=reference.numel(), sse=float(sums[0]), ref_ss=float(sums[1]), clean_sse=float(sums[2]),
                      max_abs=float(sums[3]), abs_steps=float(sums[4]), n_steps=int(n_steps))


@kernel
def _error_sums(v, r, clean, step, sums):  # type: ignore[no-untyped-def]
    """sse, ref_ss, clean_sse, max |diff| (NaN if any), sum |diff|/step over finite positive
    steps, into ``sums``; returns the count of such steps. ``clean`` / ``step`` may be empty."""
    sse = 0.0
    ref_ss = 0.0
    clean_sse = 0.0
    max_abs = 0.0
    abs_steps = 0.0
    n_steps = 0
    has_clean = clean.shape[0] > 0
    has_step = step.shape[0] > 0
    for i in range(r.shape[0]):
        ri = np.float64(r[i])
        d = np.float64(v[i]) - ri
        sse += d * d
        ref_ss += ri * ri
        a = abs(d)
        if max_abs == max_abs and (a != a or a > max_abs):
            max_abs = a
        if has_clean:
            cd = np.float64(clean[i]) - ri
            clean_sse += cd * cd
        if has_step:
            s = step[i]
            if s > np.float32(0.0) and s < np.float32(np.inf):
                abs_steps += a / np.float64(s)
                n_steps += 1
    sums[0] = sse
    sums[1] = ref_ss
    sums[2] = clean_sse
    sums[3] = max_abs
    sums[4] = abs_steps
    return n_steps


def error_stats_torch(
    values: torch.Tensor,
    reference: torch.Tensor,
    clean: torch.Tensor | None = None,
    step: torch.Tensor | None = None,
) -> ErrorStats:
    """:func:`error_stats` in torch ops (any dtype, any device)."""
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
