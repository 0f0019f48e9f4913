"""Keyless analysis: what kind of change separates a candidate from its reference?

Per tensor (after undoing MLP permutations/rescaling, :mod:`.realign`) the difference is
put in one of these classes, with the evidence that decided it:

* ``identical``: no difference at all;
* ``precision``: the candidate is the reference rounded to f16/bf16, nothing else;
* ``exact-quantization``: a quantized candidate whose every code is what llama.cpp would
  have stored for the reference (no unexplained grid flips);
* ``rescale-permutation``: the difference vanishes once units are re-matched and rescaled;
* ``iid-perturbation`` (watermark-like): small, proportional to each row's spread,
  full-rank (its singular values fill the Marchenko-Pastur bulk of an i.i.d. matrix),
  uncorrelated with the weights, Gaussian-shaped;
* ``structured`` (fine-tune-like): low effective rank, or correlated with the weights;
* ``unrelated``: the difference is as large as the weights.

For a quantized candidate the residual analysed is the grid-flip matrix (+-1 where the
stored code differs from the reference's, :mod:`.gridsign`): quantization noise of the
reference itself cancels there, so a sub-step perturbation is still visible.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.compare.shape import (  # the keyless classifier, shared with compare's verdict
    UNCHANGED,
    ChangeClass,
    classify_difference,
    classify_flips,
)
from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.pairing import pair_tensors
from provenance.watermark.gridsign import flip_signs
from provenance.watermark.options import AnalyzeOptions
from provenance.watermark.realign import realign
from provenance.watermark.select import default_selector


@dataclass(frozen=True)
class TensorEvidence:
    name: str
    verdict: ChangeClass
    evidence: dict[str, Any] = field(default_factory=dict)
    """The measurements that decided the class (they differ by class; docs/watermark.md)."""
    residual_verdict: ChangeClass | None = None
    """Class of what is left once a recovered permutation/rescaling is undone."""

    def to_dict(self) -> dict[str, Any]:
        out = {"tensor": self.name, "verdict": self.verdict, **self.evidence}
        if self.residual_verdict is not None:
            out["residual_verdict"] = self.residual_verdict
        return out


@dataclass(frozen=True)
class AnalysisResult:
    candidate: str
    reference: str
    tensors: tuple[TensorEvidence, ...]
    realignment: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(t.verdict for t in self.tensors))

    @property
    def residual_counts(self) -> dict[str, int]:
        """Classes of what is left after realignment (realigned tensors included)."""
        return dict(Counter(t.residual_verdict or t.verdict for t in self.tensors))

    @property
    def changed(self) -> bool:
        """A change beyond rounding or exact quantization was found (the command exits 1)."""
        return self.verdict not in (*UNCHANGED, "nothing-compared")

    @property
    def verdict(self) -> str:
        counts = self.counts
        if not counts:
            return "nothing-compared"
        if "rescale-permutation" in counts:
            return "rescale-permutation"
        changed = {k: v for k, v in counts.items() if k not in UNCHANGED}
        if not changed:
            return max(counts, key=counts.__getitem__)
        top = max(changed, key=changed.__getitem__)
        return top if changed[top] >= 0.8 * sum(changed.values()) else "mixed"

    @property
    def residual_verdict(self) -> str:
        """The verdict on what remains once symmetries are undone (e.g. a mark under a permutation)."""
        counts = {k: v for k, v in self.residual_counts.items() if k not in UNCHANGED}
        if not counts:
            return "none"
        top = max(counts, key=counts.__getitem__)
        return top if counts[top] >= 0.8 * sum(counts.values()) else "mixed"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "provenance.watermark-analyze/1", "candidate": self.candidate, "reference": self.reference,
                "verdict": self.verdict, "residual_verdict": self.residual_verdict, "counts": self.counts,
                "residual_counts": self.residual_counts, "realignment": self.realignment,
                "tensors": [t.to_dict() for t in self.tensors]}


@input_boundary
def analyze_checkpoint(
    candidate: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    options: AnalyzeOptions | None = None,
) -> AnalysisResult:
    """Per-tensor keyless classification of ``candidate - reference``."""
    opts = options or AnalyzeOptions()
    selector, precision = opts.selector or default_selector, opts.precision
    with open_checkpoint(candidate) as cand, open_checkpoint(reference) as ref:
        alignment = realign(cand, ref)
        paired = {p.name for p in pair_tensors(cand, ref).pairs}
        names = [n for n, i in cand.tensors.items() if selector(i) and n in paired]
        quantized = [n for n in names if cand.info(n).quantized]
        if quantized and precision == "auto":
            from provenance.quant.api import detect_precision

            precision, _ = detect_precision(cand, ref, quantized)
        results = []
        for name in names:
            info = cand.info(name)
            w = ref.read_rows(name)
            align = alignment.get(name)
            if info.quantized:
                from provenance.codecs.recipes import supported

                if info.ggml_type is None or not supported(info.ggml_type):
                    results.append(TensorEvidence(name, "unsupported", {"dtype": info.dtype}))
                    continue
                w_c = w if align is None else align.unapply_numpy(w.astype(np.float64)).astype(np.float32)
                signs = flip_signs(w_c, cand.raw_rows(name), info.ggml_type, precision if precision != "auto" else "f32")
                if align is not None:
                    signs = align.apply_signs(signs)
                verdict, evidence = classify_flips(signs, w)
            else:
                x = cand.read_rows(name)
                if align is not None:
                    x = align.apply_numpy(x.astype(np.float64))
                verdict, evidence = classify_difference(x, w)
            residual = None
            if align is not None:  # the free symmetry is the finding; the residual's class rides along
                evidence["realigned"] = align.summary().to_dict()
                residual, verdict = verdict, "rescale-permutation"
            results.append(TensorEvidence(name, verdict, evidence, residual))
        return AnalysisResult(str(candidate), str(reference), tuple(results),
                              {str(k): v for k, v in alignment.layers.items()})
