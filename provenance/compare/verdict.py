"""Turn the calibrated test and the per-tensor evidence into one verdict.

Relatedness comes only from the calibrated test (:mod:`.symtest`); the kind of
relation (identical, requantized, fine-tune, LoRA merge, continued pretraining) comes
from the aligned per-tensor statistics, each kind with the evidence that decided it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from provenance.compare.symtest import TestResult
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
LOW_RANK_MAX = 8
LOW_RANK_FRACTION = 0.25

KINDS = ("identical", "requantized", "fine-tune", "lora-merge", "continued-pretraining", "unrelated", "inconclusive")


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p > 0 else "< 1e-300"


def _inside_grid(row: dict[str, Any]) -> bool:
    frac = row.get("grid_outside_fraction")
    return frac is not None and frac <= GRID_OUTSIDE_MAX


def _overall_rel_delta(rows: list[dict[str, Any]]) -> float | None:
    num = sum((r["rel_delta_norm"] * r["norm_reference"]) ** 2 for r in rows if r["rel_delta_norm"] is not None)
    den = sum(r["norm_reference"] ** 2 for r in rows)
    return math.sqrt(num / den) if den > 0 else None


def _strength(rel: float | None) -> str:
    if rel is None:
        return "unknown"
    return "light" if rel < 0.01 else "moderate" if rel < 0.1 else "heavy"


def decide(  # noqa: C901 - the verdict's decision list, in the order docs/lineage.md states it
    test: TestResult | None, rows: list[dict[str, Any]], arch_c: ArchRecord, arch_r: ArchRecord,
           layout: dict[str, Any], alignment: dict[str, Any] | None, reason: str | None = None) -> dict[str, Any]:
    """The verdict as a JSON-ready dict: kind, related, summary, p-values, evidence."""
    base: dict[str, Any] = {"p_exact": None, "p_asymptotic": None, "z": None, "evidence": [], "details": {}}
    if test is None:
        return {**base, "kind": "inconclusive", "related": None,
                "summary": f"no calibrated test possible: {reason or 'no comparable circuits'}"}
    base.update(p_exact=test.p_exact, p_asymptotic=test.p_asymptotic, z=test.z)
    p_line = (f"residual-permutation test: z = {test.z:.1f}, asymptotic p = {_fmt_p(test.p_asymptotic)}, "
              f"exact p = {test.p_exact:.3g} ({test.permutations} permutations, floor {1 / (test.permutations + 1):.3g})")
    evidence = [p_line]
    if test.p_asymptotic >= ALPHA_UNRELATED:
        return {**base, "kind": "unrelated", "related": False, "evidence": evidence,
                "summary": f"no evidence the candidate derives from the reference (asymptotic p = {_fmt_p(test.p_asymptotic)})"}
    exact_needed = max(EXACT_RELATED, 1.0 / (test.permutations + 1))  # few permutations: their floor
    if not (test.p_asymptotic < ALPHA_RELATED and test.p_exact <= exact_needed):
        return {**base, "kind": "inconclusive", "related": None, "evidence": evidence,
                "summary": f"weak similarity: asymptotic p = {_fmt_p(test.p_asymptotic)}, exact p = {test.p_exact:.3g}; "
                           "neither independent nor clearly derived"}
    transforms = []
    if layout.get("transposed_bytes") or any(r["layout"] != "same" for r in rows):
        transforms.append("transposed layout")
    if alignment and not alignment.get("identity", True):
        transforms.append("permuted/rescaled units")
    how = f" ({', '.join(transforms)})" if transforms else ""
    if transforms:
        evidence.append("layout/alignment recovered: " + ", ".join(transforms))
    mats = [r for r in rows if r["kind"] == "matrix"]
    exact = [r for r in rows if r["max_abs_delta"] == 0.0]
    if len(exact) == len(rows):
        evidence.append(f"all {len(rows)} paired tensors equal element for element after alignment")
        return {**base, "kind": "identical", "related": True, "evidence": evidence,
                "summary": f"same weights{how}; p = {_fmt_p(test.p_asymptotic)}"}
    if transforms and all((r["rel_delta_norm"] or 0.0) <= ROUNDING_REL for r in rows):
        evidence.append(f"all tensors equal up to float rounding (max relative delta "
                        f"{max(r['rel_delta_norm'] or 0 for r in rows):.2g})")
        return {**base, "kind": "identical", "related": True, "evidence": evidence,
                "summary": f"same weights{how}, up to float rounding; p = {_fmt_p(test.p_asymptotic)}"}
    changed = [r for r in rows if r["max_abs_delta"] > 0]
    gridded = [r for r in changed if r.get("grid_outside_fraction") is not None]
    if changed and len(gridded) == len(changed) and all(r["grid_outside_fraction"] <= GRID_OUTSIDE_MAX for r in gridded):
        types = sorted({r["grid_type"] for r in gridded})
        worst = max(r["grid_outside_fraction"] for r in gridded)
        evidence.append(f"every changed tensor ({len(changed)}) is inside the quantization grid of its lower-precision "
                        f"side ({', '.join(types)}); worst fraction outside {worst:.2g}")
        return {**base, "kind": "requantized", "related": True, "evidence": evidence,
                "details": {"types": types, "worst_outside_fraction": worst},
                "summary": f"same weights requantized/converted ({', '.join(types)}){how}; p = {_fmt_p(test.p_asymptotic)}"}
    rel = _overall_rel_delta(mats)
    per_layer: dict[int, list[float]] = {}
    for r in mats:
        if r["layer"] is not None and r["rel_delta_norm"] is not None:
            per_layer.setdefault(r["layer"], []).append(r["rel_delta_norm"])
    layer_means = sorted(((float(np.mean(v)), k) for k, v in per_layer.items()), reverse=True)
    top = [{"layer": k, "mean_rel_delta": round(v, 6)} for v, k in layer_means[:3]]
    by_role: dict[str, list[float]] = {}
    for r in mats:
        if r["rel_delta_norm"] is not None:
            by_role.setdefault(r["role"], []).append(r["rel_delta_norm"])
    role_median = {k: round(float(np.median(v)), 6) for k, v in sorted(by_role.items())}
    details: dict[str, Any] = {"overall_rel_delta": rel, "strength": _strength(rel), "layers_changed_most": top,
                               "median_rel_delta_by_role": role_median,
                               "unchanged_tensors": len(exact), "changed_tensors": len(changed)}
    evidence.append(f"overall relative delta ||C-R||/||R|| over matrices = {rel:.4g} ({_strength(rel)})"
                    if rel is not None else "relative delta unavailable")
    if top:
        evidence.append("layers changed most: " + ", ".join(f"{t['layer']} ({t['mean_rel_delta']:.3g})" for t in top))
    kind = "fine-tune"
    if arch_c.rope_freq_base and arch_r.rope_freq_base and arch_c.rope_freq_base != arch_r.rope_freq_base:
        kind = "continued-pretraining"
        evidence.append(f"RoPE base changed {arch_r.rope_freq_base:g} -> {arch_c.rope_freq_base:g} "
                        f"(context {arch_r.context_length} -> {arch_c.context_length}): context extension")
    else:
        # "untouched" up to storage precision: equal, or inside the lossy side's grid
        untouched = [r for r in mats if r["max_abs_delta"] == 0 or _inside_grid(r)]
        changed_mats = [r for r in mats if r not in untouched and r.get("rank_energy") is not None]
        low = [r for r in changed_mats if r["rank_energy"] <= LOW_RANK_MAX and r["rank_energy"] <= LOW_RANK_FRACTION * r["full_rank"]]
        if changed_mats and len(low) >= 0.6 * len(changed_mats) and untouched:
            kind = "lora-merge"
            ranks = sorted({int(r["rank_energy"]) for r in low})
            roles = sorted({r["role"] for r in low})
            details["low_rank"] = {"roles": roles, "ranks_90pct_energy": ranks, "untouched_matrices": len(untouched)}
            evidence.append(f"low-rank deltas (90% energy in rank {ranks}) in {', '.join(roles)}; "
                            f"{len(untouched)} matrices untouched: a merged LoRA")
    names = {"fine-tune": "fine-tune", "lora-merge": "fine-tune merged from a low-rank adapter (LoRA)",
             "continued-pretraining": "continued pretraining / context extension"}
    summary = (f"{names[kind]} of the reference{how}, {_strength(rel)} (relative delta {rel:.3g}); "
               f"p = {_fmt_p(test.p_asymptotic)}") if rel is not None else f"{names[kind]}{how}"
    return {**base, "kind": kind, "related": True, "evidence": evidence, "details": details, "summary": summary}
