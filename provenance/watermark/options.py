"""Options of the watermark analyses, each user-facing field declared once with its default
and help (:mod:`provenance.options`); ``provenance watermark`` generates its options from them.
Light on purpose (no torch, no scipy): the CLI imports it to build its options."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from provenance.options import Precision, option, precision_option, seed_option, threads_option
from provenance.watermark.select import Selector, names_selector

DEFAULT_AMPLITUDE = 1e-3
"""Mark amplitude relative to each row's standard deviation (docs/watermark.md: z ~ a sqrt(N))."""
DEFAULT_THRESHOLD_Z = 7.0
"""Accusation threshold fixed in advance: one-sided p = 1.28e-12 per test."""
DECOY_HELP = "Innocent decoy keys scored beside the real ones to check the N(0,1) null (0: none)."


def tensor_list(text: str) -> Selector:
    """``--tensors a,b,c``: exactly these canonical tensor names."""
    return names_selector(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class ScoreOptions:
    decoys: int = option(1000, DECOY_HELP, range=(0, 1_000_000))
    decoy_seed: int = seed_option()
    independent_decoys: bool = option(False, "Draw every decoy key separately (slower) instead of FFT shifts of one stream.")
    realign: Literal["auto", "never", "force"] = option(
        "auto", "Undo MLP permutations/rescaling against the reference before scoring.")
    """``auto`` (undo MLP permutations/rescales found), ``never``, or ``force``."""
    precision: Precision = precision_option()
    """Source precision the quantizer saw, for the grid statistic (auto/f32/f16/bf16)."""
    selector: Selector | None = option(None, "Comma-separated canonical tensor names to score (default: every block matrix).",
                                       flag="--tensors", convert=tensor_list, metavar="NAMES")
    threads: int = threads_option(2)
    weighting: str = "inverse-variance"
    """Reference statistic: ``inverse-variance`` row weights, or ``sigma`` (y = r / sigma_row)."""


@dataclass(frozen=True)
class TraceOptions(ScoreOptions):
    threshold_z: float = option(DEFAULT_THRESHOLD_Z,
                                "Accusation threshold, fixed in advance (z >= 7: p = 1.3e-12 per test).")
    sequential: bool = option(True, "Stop reading once every client is decided (an always-valid test over a seeded "
                              "random order of blocks, same false-accusation bound); --no-sequential reads everything.")
    colluder_fraction: float = option(1 / 16, "Sequential: a client is cleared once its mark is shown weaker than this "
                                      "fraction of an accused client's (colluders of up to 1/this copies stay in).",
                                      range=(0.0, 1.0))


@dataclass(frozen=True)
class EmbedOptions:
    amplitude: float = option(DEFAULT_AMPLITUDE, "Mark amplitude relative to each row's std.", range=(0.0, None))
    selector: Selector | None = option(None, "Comma-separated canonical tensor names to mark (default: every block matrix).",
                                       flag="--tensors", convert=tensor_list, metavar="NAMES")
    threads: int = threads_option(2)


@dataclass(frozen=True)
class AnalyzeOptions:
    precision: Precision = precision_option()
    selector: Selector | None = None
