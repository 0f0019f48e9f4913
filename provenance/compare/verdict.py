"""Turn the calibrated tests, the per-tensor evidence and the structure into one verdict.

Relatedness comes only from the calibrated tests: the residual-permutation test
(:mod:`.symtest`) and, when it sees nothing, the rotation-blind unit-space test
(:mod:`.unitspace`, kind ``rotated``). The kind of relation (identical, restructured,
requantized, fine-tune, LoRA merge, continued pretraining) comes from the aligned
per-tensor statistics and the structure evidence (:mod:`.structure`), each kind with the
evidence that decided it. :func:`decide` is the decision list; each step is a function of
typed fields, so further rules can be added as steps.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from provenance.compare.result import (
    AlignmentSummary,
    ChangeDetails,
    LayerChange,
    LayoutDecision,
    LineageVerdict,
    LowRankEvidence,
    PermutationTestResult,
    RequantizationDetails,
    Strength,
    TensorComparison,
    VerdictKind,
)
from provenance.compare.structure import RotatedDetails, StructureEvidence
from provenance.names.arch import ArchRecord

#: related: the asymptotic p-value below this and the exact one at most ``EXACT_RELATED``
ALPHA_RELATED = 1e-6
EXACT_RELATED = 0.01
#: unrelated: the asymptotic p-value at least this (the calibrated false-positive level)
ALPHA_UNRELATED = 1e-3
#: a tensor is "inside the grid" (requantized) when at most this fraction left its cells
GRID_OUTSIDE_MAX = 1e-3
#: relative delta below which a rescaled copy counts as the same weights (float rounding)
ROUNDING_REL = 1e-6
#: a packed layout whose writer does not round to nearest (GPTQ, AWQ) counts as a quantized
#: copy when its dequantization error is at most this many times the grid's rounding noise
#: (measured ~1.0 on auto-round RTN exports; GPTQ's error feedback raises weight error
#: modestly; a fine-tuned source adds its whole delta on top)
QUANT_NOISE_MAX = 3.0
LOW_RANK_MAX = 8
LOW_RANK_FRACTION = 0.25
#: a rotated candidate whose unit circuits moved less than this is the reference's weights
#: rotated and stored in f16 (measured 2e-4 on stories260k/synth-s00). Quantization noise
#: after a rotation (Q4_K_M: 0.044) is as large as a medium fine-tune's change (0.032), and
#: the rotation hides the grid check, so above it the candidate is a "rotated derivative"
ROTATED_COPY_DELTA = 0.005



def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p > 0 else "< 1e-300"


def _inside_grid(row: TensorComparison) -> bool:
    """Inside the lossy side's grid: at most ``GRID_OUTSIDE_MAX`` outside their cells, or, for
    a packed layout whose writer does not round to nearest (GPTQ, AWQ), a dequantization
    error within ``QUANT_NOISE_MAX`` times the grid's rounding noise."""
    frac = row.grid_outside_fraction
    if frac is not None and frac <= GRID_OUTSIDE_MAX:
        return True
    ratio = row.grid_noise_ratio
    return row.grid_rounds_to_nearest is False and ratio is not None and ratio <= QUANT_NOISE_MAX


def _overall_rel_delta(rows: list[TensorComparison]) -> float | None:
    num = sum((r.rel_delta_norm * r.norm_reference) ** 2 for r in rows if r.rel_delta_norm is not None)
    den = sum(r.norm_reference ** 2 for r in rows)
    return math.sqrt(num / den) if den > 0 else None


def _strength(rel: float | None) -> Strength:
    if rel is None:
        return "unknown"
    return "light" if rel < 0.01 else "moderate" if rel < 0.1 else "heavy"


def _change_details(rows: list[TensorComparison], mats: list[TensorComparison], rel: float | None,
                    unchanged: int, changed: int) -> ChangeDetails:
    per_layer: dict[int, list[float]] = {}
    by_role: dict[str, list[float]] = {}
    for r in mats:
        if r.rel_delta_norm is None:
            continue
        if r.layer is not None:
            per_layer.setdefault(r.layer, []).append(r.rel_delta_norm)
        by_role.setdefault(r.role, []).append(r.rel_delta_norm)
    layer_means = sorted(((float(np.mean(v)), k) for k, v in per_layer.items()), reverse=True)
    return ChangeDetails(
        overall_rel_delta=rel, strength=_strength(rel),
        layers_changed_most=tuple(LayerChange(k, round(v, 6)) for v, k in layer_means[:3]),
        median_rel_delta_by_role={k: round(float(np.median(v)), 6) for k, v in sorted(by_role.items())},
        unchanged_tensors=unchanged, changed_tensors=changed)


def _low_rank(mats: list[TensorComparison]) -> LowRankEvidence | None:
    """Low-rank deltas in most changed matrices, the others untouched up to storage
    precision (equal, or inside the lossy side's grid): a merged LoRA."""
    untouched = [r for r in mats if r.max_abs_delta == 0 or _inside_grid(r)]
    changed = [r for r in mats if r not in untouched and r.rank_energy is not None and r.full_rank is not None]
    low = [r for r in changed if r.rank_energy <= LOW_RANK_MAX and r.rank_energy <= LOW_RANK_FRACTION * r.full_rank]
    if not (changed and len(low) >= 0.6 * len(changed) and untouched):
        return None
    return LowRankEvidence(roles=tuple(sorted({r.role for r in low})),
                           ranks_90pct_energy=tuple(sorted({int(r.rank_energy) for r in low})),
                           untouched_matrices=len(untouched))


def _requantized(changed: list[TensorComparison], evidence: list[str]) -> tuple[str, RequantizationDetails]:
    """How a candidate inside the lossy side's grid is named ("quantized copy" for a packed
    layout), with its dequantization error against the grid's rounding noise."""
    types = tuple(sorted({str(r.grid_type) for r in changed}))
    worst = max(r.grid_outside_fraction or 0.0 for r in changed)
    evidence.append(f"every changed tensor ({len(changed)}) is inside the quantization grid of its lower-precision "
                    f"side ({', '.join(types)}); worst fraction outside {worst:.2g}")
    ratios = [r.grid_noise_ratio for r in changed if r.grid_noise_ratio is not None]
    rel = _overall_rel_delta(changed) if ratios else None
    if ratios:
        evidence.append(f"dequantization error {rel:.3g} (relative), at most {max(ratios):.2g}x the grid's rounding noise")
    packed = any(r.grid_rounds_to_nearest is not None for r in changed)
    what = "quantized copy" if packed else "same weights requantized/converted"
    return what, RequantizationDetails(types, worst, rel, max(ratios) if ratios else None)


_NAMES = {"fine-tune": "fine-tune", "lora-merge": "fine-tune merged from a low-rank adapter (LoRA)",
          "continued-pretraining": "continued pretraining / context extension"}


def _unit_related(unit: PermutationTestResult | None) -> bool:
    if unit is None:
        return False
    return unit.p_asymptotic < ALPHA_RELATED and unit.p_exact <= max(EXACT_RELATED, unit.p_exact_floor)


def _structure_lines(structure: StructureEvidence) -> list[str]:
    lines = [f"structure: {p}" for p in structure.phrases()]
    lines += [f"unpaired: {u.name}: {u.detail}" for u in structure.left_out]
    return lines


def _how(rows: list[TensorComparison], layout: LayoutDecision, alignment: AlignmentSummary | None,
         structure: StructureEvidence, evidence: list[str]) -> str:
    """The parenthesis after a related verdict's kind: recovered layout/alignment and the
    structure (layer map, shapes, unpaired tensors); their evidence lines are appended."""
    transforms = []
    if layout.transposed_bytes or any(r.layout != "same" for r in rows):
        transforms.append("transposed layout")
    if alignment and not alignment.identity:
        transforms.append("permuted/rescaled units")
    how = f" ({', '.join(transforms)})" if transforms else ""
    if transforms:
        evidence.append("layout/alignment recovered: " + ", ".join(transforms))
    evidence += _structure_lines(structure)
    shape = "; ".join(structure.phrases())
    if structure.changed:
        # never "identical" while any tensor differs in shape or is unpaired: say what changed
        how = f"{how[:-1]}; {shape})" if how and shape else how or (f" ({shape})" if shape else "")
        if structure.left_out:
            n = len(structure.left_out)
            how += f"; {n} tensor{'s' if n > 1 else ''} not paired whole"
    return how


def decide(
    test: PermutationTestResult | None, rows: list[TensorComparison], arch_c: ArchRecord, arch_r: ArchRecord,
    layout: LayoutDecision, alignment: AlignmentSummary | None, reason: str | None = None,
    structure: StructureEvidence | None = None,
) -> LineageVerdict:
    """The verdict: kind, related, its sentence (with and without p-values), evidence,
    details and the structure evidence. A candidate with any structural change or unpaired
    learned tensor is never ``identical``."""
    structure = structure or StructureEvidence()
    return replace(_decide(test, rows, arch_c, arch_r, layout, alignment, reason, structure), structure=structure)


def _rotated(test: PermutationTestResult, structure: StructureEvidence, evidence: list[str]) -> LineageVerdict:
    """Related through the unit-space test alone: the residual basis was changed."""
    unit = structure.unit_test
    assert unit is not None
    delta = structure.unit_delta()
    copy = delta is not None and delta <= ROTATED_COPY_DELTA
    if copy:
        what = "rotated copy of the reference"
    elif delta is not None:
        what = (f"rotated derivative of the reference (unit circuits moved {delta:.2g}: fine-tuning or quantization, "
                "which a rotation does not let the grid check tell apart)")
    else:
        what = "rotated derivative of the reference"
    rot = structure.rotation
    how = rot.describe() if rot is not None else "residual basis changed (no shared embedding rows to recover it)"
    evidence += [f"residual-permutation test sees nothing (p = {_fmt_p(test.p_asymptotic)}) while the "
                 f"rotation-blind unit test does: the residual stream was rotated or re-based ({how})",
                 f"unit circuits changed by {delta:.3g} (median relative change over layers)" if delta is not None
                 else "unit circuit change unavailable"]
    evidence += _structure_lines(structure)
    others = [p for p in structure.phrases() if rot is None or p != rot.describe()]
    description = f"{what} ({how}{'; ' + '; '.join(others) if others else ''})"
    p = _fmt_p(unit.p_asymptotic)
    return LineageVerdict("rotated", True, description, f"{description}; unit-test p = {p}",
                          p_exact=unit.p_exact, p_asymptotic=unit.p_asymptotic, z=unit.z, evidence=tuple(evidence),
                          details=RotatedDetails(delta, _strength(delta), copy, rot))


def _decide(
    test: PermutationTestResult | None, rows: list[TensorComparison], arch_c: ArchRecord, arch_r: ArchRecord,
    layout: LayoutDecision, alignment: AlignmentSummary | None, reason: str | None, structure: StructureEvidence,
) -> LineageVerdict:
    if test is None:
        text = f"no calibrated test possible: {reason or 'no comparable circuits'}"
        return LineageVerdict("inconclusive", None, text, text)
    p = _fmt_p(test.p_asymptotic)
    stats = {"p_exact": test.p_exact, "p_asymptotic": test.p_asymptotic, "z": test.z}
    evidence = [f"residual-permutation test: z = {test.z:.1f}, asymptotic p = {p}, exact p = {test.p_exact:.3g} "
                f"({test.permutations} permutations, floor {test.p_exact_floor:.3g})"]

    def verdict(kind: VerdictKind, related: bool | None, description: str, summary: str | None = None,
                details: RequantizationDetails | ChangeDetails | None = None) -> LineageVerdict:
        return LineageVerdict(kind, related, description, summary or f"{description}; p = {p}", evidence=tuple(evidence),
                              details=details, **stats)

    unit = structure.unit_test
    if unit is not None:
        evidence.append(f"unit-permutation test (rotation-blind): z = {unit.z:.1f}, asymptotic p = "
                        f"{_fmt_p(unit.p_asymptotic)}, exact p = {unit.p_exact:.3g}")
    exact_needed = max(EXACT_RELATED, test.p_exact_floor)  # few permutations: their floor
    residual_related = test.p_asymptotic < ALPHA_RELATED and test.p_exact <= exact_needed
    if not residual_related and _unit_related(unit):
        return _rotated(test, structure, evidence)
    if test.p_asymptotic >= ALPHA_UNRELATED and (unit is None or unit.p_asymptotic >= ALPHA_UNRELATED):
        text = "no evidence the candidate derives from the reference"
        return verdict("unrelated", False, text, f"{text} (asymptotic p = {p})")
    if not residual_related:
        return verdict("inconclusive", None, "weak similarity: neither independent nor clearly derived",
                       f"weak similarity: asymptotic p = {p}, exact p = {test.p_exact:.3g}; "
                       "neither independent nor clearly derived")
    how = _how(rows, layout, alignment, structure, evidence)
    transformed = bool(layout.transposed_bytes or any(r.layout != "same" for r in rows)
                       or (alignment and not alignment.identity))
    mats = [r for r in rows if r.is_matrix]
    exact = [r for r in rows if r.max_abs_delta == 0.0]
    same: VerdictKind = "restructured" if structure.changed else "identical"
    same_words = "restructured copy: every paired tensor equal to its reference tensor" if structure.changed else "same weights"
    if len(exact) == len(rows):
        evidence.append(f"all {len(rows)} paired tensors equal element for element after alignment")
        return verdict(same, True, f"{same_words}{how}")
    if transformed and all((r.rel_delta_norm or 0.0) <= ROUNDING_REL for r in rows):
        evidence.append(f"all tensors equal up to float rounding (max relative delta "
                        f"{max(r.rel_delta_norm or 0 for r in rows):.2g})")
        return verdict(same, True, f"{same_words}{how}, up to float rounding")
    changed = [r for r in rows if r.max_abs_delta > 0]
    gridded = [r for r in changed if r.grid_outside_fraction is not None]
    if changed and len(gridded) == len(changed) and all(_inside_grid(r) for r in gridded):
        what, requantized = _requantized(changed, evidence)
        return verdict("requantized", True, f"{what} ({', '.join(requantized.types)}){how}", details=requantized)
    rel = _overall_rel_delta(mats)
    details = _change_details(rows, mats, rel, len(exact), len(changed))
    evidence.append(f"overall relative delta ||C-R||/||R|| over matrices = {rel:.4g} ({_strength(rel)})"
                    if rel is not None else "relative delta unavailable")
    if details.layers_changed_most:
        evidence.append("layers changed most: " + ", ".join(f"{t.layer} ({t.mean_rel_delta:.3g})"
                                                            for t in details.layers_changed_most))
    kind: VerdictKind = "fine-tune"
    if arch_c.rope_freq_base and arch_r.rope_freq_base and arch_c.rope_freq_base != arch_r.rope_freq_base:
        kind = "continued-pretraining"
        evidence.append(f"RoPE base changed {arch_r.rope_freq_base:g} -> {arch_c.rope_freq_base:g} "
                        f"(context {arch_r.context_length} -> {arch_c.context_length}): context extension")
    elif (low := _low_rank(mats)) is not None:
        kind = "lora-merge"
        details = replace(details, low_rank=low)
        evidence.append(f"low-rank deltas (90% energy in rank {list(low.ranks_90pct_energy)}) in {', '.join(low.roles)}; "
                        f"{low.untouched_matrices} matrices untouched: a merged LoRA")
    if rel is None:
        return verdict(kind, True, f"{_NAMES[kind]}{how}", f"{_NAMES[kind]}{how}", details)
    return verdict(kind, True, f"{_NAMES[kind]} of the reference{how}, {_strength(rel)} (relative delta {rel:.3g})",
                   details=details)
