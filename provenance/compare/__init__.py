"""Lineage: is a candidate checkpoint derived from a reference, and how?

* :mod:`.pairing`     lineage's pairing (:mod:`provenance.formats.pairing`), transposed layouts
* :mod:`.stream`      canonical rows into reused buffers (fast f16/bf16/quantized paths)
* :mod:`.stats`       streamed float64 statistics, stable 1 - cos, effective rank
* :mod:`.sketch`      residual-indexed slices that alignment and the test need
* :mod:`.invariants`  circuit matrices immune to permutations and rescalings
* :mod:`.symtest`     the calibrated residual-permutation test (exact + asymptotic p)
* :mod:`.align`       recovered MLP/head permutations and scales (reported as evidence;
                      the MLP unit matching also serves watermark realignment)
* :mod:`.verdict`     identical / requantized / fine-tune / LoRA / CPT / unrelated / inconclusive
* :mod:`.claims`      metadata claims beside the weight evidence
* :mod:`.known`       the verdict judged again once a known change (a traced client's
                      watermark) is added to the reference
* :mod:`.options`     ``CompareOptions`` (defaults and help texts, also of the CLI)
* :mod:`.result`      the typed ``CompareResult`` (verdict, test, claims, per-tensor rows)
* :mod:`.api`         ``compare(candidate, reference, options) -> CompareResult``
* :mod:`.figures`     the result's figures (reports render them, :mod:`provenance.report`)
"""
from typing import TYPE_CHECKING

from provenance.lazy import lazy_package

if TYPE_CHECKING:
    from provenance.compare.api import compare
    from provenance.compare.options import CompareOptions
    from provenance.compare.result import CompareResult, LineageVerdict, PermutationTestResult, TensorComparison

lazy_package(__name__, {
    "compare": "provenance.compare.api",
    "CompareOptions": "provenance.compare.options",
    "CompareResult": "provenance.compare.result",
    "LineageVerdict": "provenance.compare.result",
    "PermutationTestResult": "provenance.compare.result",
    "TensorComparison": "provenance.compare.result",
})
__all__ = [
    "CompareOptions", "CompareResult", "LineageVerdict", "PermutationTestResult", "TensorComparison",
    "compare",
]
