"""The executive summary's first clause for every combination of lineage kind x grid check x
watermark finding (investigate/summary.py ``what_it_is``; rules in docs/reading-reports.md).

Each expected phrase is written out here, not recomputed: a change of wording or of a rule
shows up as a failing combination."""
from __future__ import annotations

import itertools

import pytest

from provenance.compare.result import (
    ChangeDetails,
    CopyDetails,
    LayerChange,
    LineageVerdict,
    RequantizationDetails,
)
from provenance.investigate.summary import what_it_is

CHANGE = ChangeDetails(overall_rel_delta=0.0512, strength="moderate",
                       layers_changed_most=(LayerChange(7, 0.09), LayerChange(3, 0.08), LayerChange(12, 0.07)),
                       median_rel_delta_by_role={}, unchanged_tensors=0, changed_tensors=200)
NOISE = CopyDetails(quantized_types=(), changed_matrices=200, iid_matrices=200, noise_rel=1e-3)
PRUNED = CopyDetails(quantized_types=(), changed_matrices=200, iid_matrices=0, zeroed_fraction=0.3,
                     zeroed_magnitude_ratio=0.2)
DETAILS = {"identical": None, "requantized": RequantizationDetails(("Q4_K",), 0.0), "perturbed-copy": NOISE,
           "pruned-copy": PRUNED, "fine-tune": CHANGE, "lora-merge": CHANGE, "continued-pretraining": CHANGE}
QUANT = (None, "exact", "perturbed", "unrelated")
MARKED = (False, True)

RETRAINED = {"fine-tune": ("a fine-tune (", "a fine-tuned and quantized copy ("),
             "lora-merge": ("a LoRA merge (", "a LoRA-merged and quantized copy ("),
             "continued-pretraining": ("a continued pretraining (", "a continued-pretrained and quantized copy (")}


def expected(kind: str, quant: str | None, marked: bool) -> str:
    """The phrase the stated rules give, spelled out per case."""
    quantized = quant is not None
    if quant == "exact" and kind in ("identical", "requantized", "perturbed-copy"):
        return "an exact quantization"
    if kind in RETRAINED:
        return RETRAINED[kind][quantized] + "relative delta 0.0512, layers changed most 7, 3, 12)"
    if kind == "pruned-copy":
        return ("a quantized magnitude-pruned copy" if quantized else "a magnitude-pruned copy") + " (30% of weights zeroed)"
    perturbed = kind == "perturbed-copy" or quant == "perturbed"
    noun = "quantized copy" if quantized or kind == "requantized" else "copy"
    if perturbed and not marked:
        noise = "0.001" if kind == "perturbed-copy" else "0.002"
        return f"a {noun} (perturbed: i.i.d. noise ~{noise} of the weights' spread)"
    if kind == "identical":
        return "an identical copy"
    return f"a {noun}"


@pytest.mark.parametrize(("kind", "quant", "marked"), list(itertools.product(DETAILS, QUANT, MARKED)))
def test_every_combination_has_its_stated_phrase(kind: str, quant: str | None, marked: bool) -> None:
    verdict = LineageVerdict(kind, True, "d", "s", details=DETAILS[kind])  # type: ignore[arg-type]
    phrase = what_it_is(verdict, quant, 2e-3 if quant == "perturbed" else None, marked)  # type: ignore[arg-type]
    assert phrase == expected(kind, quant, marked)


def test_retrained_and_quantized_is_never_called_a_plain_copy() -> None:
    """The miqu case: a fine-tune leaked as Q4_K_M whose grid check saw a perturbation."""
    verdict = LineageVerdict("fine-tune", True, "d", "s", details=CHANGE)
    phrase = what_it_is(verdict, "perturbed", 0.0023, True)
    assert phrase.startswith("a fine-tuned and quantized copy") and "relative delta 0.0512" in phrase


def test_transformations_are_named_only_when_the_verdict_carries_them() -> None:
    plain = LineageVerdict("requantized", True, "d", "s", details=DETAILS["requantized"])
    moved = LineageVerdict("requantized", True, "d", "s", details=DETAILS["requantized"],
                           transformations=("permuted units", "rescaled units"))
    assert what_it_is(plain, "exact", None, False) == "an exact quantization"
    assert what_it_is(moved, "exact", None, False) == "an exact quantization (permuted units, rescaled units)"


def test_a_requantized_copy_stored_in_plain_floats_is_a_copy() -> None:
    """Every changed tensor inside F16/BF16 cells only (a converted copy, or a client's marked
    copy once lineage adds the mark to the reference): "a copy", not a quantization."""
    plain = LineageVerdict("requantized", True, "d", "s", details=RequantizationDetails(("BF16", "F16"), 0.0))
    mixed = LineageVerdict("requantized", True, "d", "s", details=RequantizationDetails(("F16", "Q8_0"), 0.0))
    assert what_it_is(plain, None, None, True) == what_it_is(plain, None, None, False) == "a copy"
    assert what_it_is(mixed, None, None, True) == "a quantized copy"
