"""The typed result of ``compare``: verdict, calibrated test, claims, pairing, layout,
alignment and one row per paired tensor.

Every part is a frozen dataclass of plain values (numbers, strings, tuples, small dicts of
numbers), picklable and free of open handles, so a result can be shipped from a worker
unchanged. ``to_dict()`` gives the JSON document of schema ``provenance.compare/1``
(docs/lineage.md); consumers read the typed fields, never that document or a sentence.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from provenance.compare.options import CompareOptions, LayoutMode
from provenance.names.arch import ArchRecord

if TYPE_CHECKING:  # pandas only for the table views (its import: 0.1-0.25 s of CPU in every command otherwise);
    # structure.py reads PermutationTestResult from here
    import pandas as pd

    from provenance.compare.structure import RotatedDetails, StructureEvidence
    from provenance.hashing import CheckpointHashes

SCHEMA = "provenance.compare/1"

VerdictKind = Literal["identical", "requantized", "pruned-copy", "perturbed-copy", "restructured", "rotated", "partial-copy",
                      "fine-tune", "lora-merge",
                      "continued-pretraining", "unrelated", "inconclusive"]
KINDS: tuple[str, ...] = get_args(VerdictKind)
COPY_KINDS: tuple[str, ...] = ("identical", "requantized", "pruned-copy", "perturbed-copy")
"""Kinds that say the candidate is the reference's weights, stored or obfuscated, not retrained."""
Strength = Literal["light", "moderate", "heavy", "unknown"]


def _drop_none(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


# ----- the calibrated test -------------------------------------------------------------------

@dataclass(frozen=True)
class CircuitScore:
    layer: int | None
    circuit: str
    spearman: float
    null_sd: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "circuit": self.circuit, "spearman": self.spearman, "null_sd": self.null_sd}


@dataclass(frozen=True)
class LayerTest:
    """The test restricted to one layer's circuits (``layer`` None: the embedding blocks)."""

    layer: int | None
    circuits: tuple[str, ...]
    statistic: float
    z: float
    p_exact: float
    p_asymptotic: float
    mean_spearman: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "circuits": list(self.circuits), "statistic": self.statistic, "z": self.z,
                "p_exact": self.p_exact, "p_asymptotic": self.p_asymptotic, "mean_spearman": self.mean_spearman}


@dataclass(frozen=True)
class PermutationTestResult:
    """The residual-permutation test (:mod:`provenance.compare.symtest`)."""

    NULL_HYPOTHESIS: ClassVar[str] = "candidate trained independently of the reference"
    STATISTIC: ClassVar[str] = "sum over circuits of atanh(Spearman rho) of symmetry-invariant circuit matrices"
    ASSUMPTION: ClassVar[str] = ("permutation distribution of the statistic well described by a Pearson "
                                 "type III law with its mean, sd and skewness (+1 s.e.) estimated from the permutations")

    statistic: float
    p_exact: float
    p_asymptotic: float
    z: float
    permutations: int
    perm_mean: float
    perm_sd: float
    circuits: tuple[CircuitScore, ...] = ()
    layers: tuple[LayerTest, ...] = ()
    null_sample: tuple[float, ...] = field(default=(), repr=False)
    """The first permuted statistics (for the null histogram)."""
    permutations_planned: int | None = None
    """The permutations asked for when the test stopped after its first ``permutations``
    (decided far from every threshold: :data:`provenance.compare.symtest.FAR_Z`); else None."""

    @property
    def p_exact_floor(self) -> float:
        return 1.0 / (self.permutations + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "null_hypothesis": self.NULL_HYPOTHESIS, "statistic": self.STATISTIC,
            "value": self.statistic, "z": self.z,
            "p_exact": self.p_exact, "p_exact_floor": self.p_exact_floor,
            "p_asymptotic": self.p_asymptotic, "asymptotic_assumption": self.ASSUMPTION,
            "permutations": self.permutations, "permutations_planned": self.permutations_planned,
            "perm_mean": self.perm_mean, "perm_sd": self.perm_sd,
            "layers": [layer.to_dict() for layer in self.layers], "circuits": [c.to_dict() for c in self.circuits],
        }


# ----- the verdict ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerChange:
    layer: int
    mean_rel_delta: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "mean_rel_delta": self.mean_rel_delta}


@dataclass(frozen=True)
class LowRankEvidence:
    """Why a fine-tune is called a merged LoRA: low-rank deltas, other matrices untouched."""

    roles: tuple[str, ...]
    ranks_90pct_energy: tuple[int, ...]
    untouched_matrices: int

    def to_dict(self) -> dict[str, Any]:
        return {"roles": list(self.roles), "ranks_90pct_energy": list(self.ranks_90pct_energy),
                "untouched_matrices": self.untouched_matrices}


@dataclass(frozen=True)
class RequantizationDetails:
    types: tuple[str, ...]
    """Quantization types of the lower-precision sides."""
    worst_outside_fraction: float
    codes_checked: int | None = None
    """Weights checked against the stored cells, all tensors together."""
    codes_outside: int | None = None
    aligned_tensors: int = 0
    """Tensors checked in the candidate's frame after undoing recovered permutations/scales."""
    chain: str | None = None
    """The intermediate type whose rounding of the reference explains the codes (``Q8_0``...), if one was needed."""
    dequantization_rel_delta: float | None = None
    """||C - R|| / ||R|| over the changed tensors (the dequantization error)."""
    noise_ratio_max: float | None = None
    """The largest per-tensor ratio of that error to the grid's rounding noise."""
    packed: bool = False
    """A quantized safetensors layout (GPTQ, AWQ, NF4, MLX ...): named "quantized copy"."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"types": list(self.types), "worst_outside_fraction": self.worst_outside_fraction}
        out.update(_drop_none({"codes_checked": self.codes_checked, "codes_outside": self.codes_outside,
                               "chain": self.chain}))
        if self.aligned_tensors:
            out["aligned_tensors"] = self.aligned_tensors
        if self.noise_ratio_max is not None:
            out["dequantization_error"] = {"rel_delta": self.dequantization_rel_delta, "noise_ratio_max": self.noise_ratio_max}
        return out


@dataclass(frozen=True)
class CopyDetails:
    """Why a related candidate is a copy with i.i.d. noise or zeroed small weights, not a retrained model."""

    quantized_types: tuple[str, ...]
    """Storage types of a quantized candidate (empty: unquantized)."""
    changed_matrices: int
    iid_matrices: int
    """Changed matrices whose residual the keyless classifier calls i.i.d."""
    noise_rel: float | None = None
    """Median over changed matrices of the noise RMS over each row's standard deviation."""
    zeroed_fraction: float | None = None
    """Median over matrices of the share of weights zeroed (a lower bound when quantized)."""
    zeroed_magnitude_ratio: float | None = None
    vectors_unchanged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"quantized_types": list(self.quantized_types), "changed_matrices": self.changed_matrices,
                "iid_matrices": self.iid_matrices, "noise_rel": self.noise_rel, "zeroed_fraction": self.zeroed_fraction,
                "zeroed_magnitude_ratio": self.zeroed_magnitude_ratio, "vectors_unchanged": self.vectors_unchanged}


@dataclass(frozen=True)
class PartialCopyDetails:
    """Some layers are the reference's, the others unrelated to it (a slice merge seen from one
    parent), read from the per-layer tests (docs/lineage.md, "What kind of relation")."""

    related_layers: tuple[int, ...]
    """Candidate layers the per-layer test relates to the reference (asymptotic p < 1e-6)."""
    unrelated_layers: tuple[int, ...]
    """Candidate layers neither per-layer test relates (both asymptotic p >= 1e-3)."""
    undecided_layers: tuple[int, ...]
    copied: Literal["identical", "quantized", "changed"]
    """The related layers' tensors: equal, inside the lossy side's grid, or changed."""
    related_rel_delta: float | None
    """``||C - R|| / ||R||`` over the related layers' matrices."""
    unrelated_p_min: float
    """The smallest per-layer p-value (either test) among the unrelated layers."""

    def to_dict(self) -> dict[str, Any]:
        return {"related_layers": list(self.related_layers), "unrelated_layers": list(self.unrelated_layers),
                "undecided_layers": list(self.undecided_layers), "copied": self.copied,
                "related_rel_delta": self.related_rel_delta, "unrelated_p_min": self.unrelated_p_min}


@dataclass(frozen=True)
class ChangeDetails:
    """How much a related candidate changed, and where (fine-tune, LoRA, continued pretraining)."""

    overall_rel_delta: float | None
    """||C - R|| / ||R|| over all paired matrices."""
    strength: Strength
    layers_changed_most: tuple[LayerChange, ...]
    median_rel_delta_by_role: dict[str, float]
    unchanged_tensors: int
    changed_tensors: int
    low_rank: LowRankEvidence | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "overall_rel_delta": self.overall_rel_delta, "strength": self.strength,
            "layers_changed_most": [c.to_dict() for c in self.layers_changed_most],
            "median_rel_delta_by_role": dict(self.median_rel_delta_by_role),
            "unchanged_tensors": self.unchanged_tensors, "changed_tensors": self.changed_tensors,
        }
        if self.low_rank is not None:
            out["low_rank"] = self.low_rank.to_dict()
        return out


@dataclass(frozen=True)
class LineageVerdict:
    """Whether and how the candidate derives from the reference (docs/lineage.md)."""

    kind: VerdictKind
    related: bool | None
    """True derived, False independent, None undecided."""
    description: str
    """The verdict in words, without its p-value (reports print the p-value beside it)."""
    summary: str
    """``description`` with the p-value(s) in it: the one line a terminal shows."""
    p_exact: float | None = None
    p_asymptotic: float | None = None
    z: float | None = None
    evidence: tuple[str, ...] = ()
    """Plain sentences, in the order the decision used them."""
    details: RequantizationDetails | ChangeDetails | CopyDetails | PartialCopyDetails | RotatedDetails | None = None
    transformations: tuple[str, ...] = ()
    """What the alignment and layout detection undid (``permuted units``, ``transposed layout``...): only moves made."""
    structure: StructureEvidence | None = None
    """What was done besides changing weights: layer map, vocabulary, widths, rotation, the
    unit-space test, every unpaired tensor and why (:mod:`provenance.compare.structure`)."""
    known_change: str | None = None
    """A change known from other evidence (the traced client's watermark) that was added to the
    reference before the kind was decided (:mod:`provenance.compare.known`); None: not judged so."""

    @property
    def is_copy(self) -> bool:
        """The reference's weights, stored or obfuscated, not retrained (:data:`COPY_KINDS`)."""
        return self.kind in COPY_KINDS

    @property
    def overall_rel_delta(self) -> float | None:
        return self.details.overall_rel_delta if isinstance(self.details, ChangeDetails) else None

    @property
    def unpaired(self) -> tuple[Any, ...]:
        """Every tensor left out of the element-by-element comparison, with its reason."""
        return self.structure.unpaired if self.structure is not None else ()

    def to_dict(self) -> dict[str, Any]:
        return {"p_exact": self.p_exact, "p_asymptotic": self.p_asymptotic, "z": self.z,
                "evidence": list(self.evidence), "details": self.details.to_dict() if self.details else {},
                "kind": self.kind, "related": self.related, "summary": self.summary,
                "transformations": list(self.transformations),
                "structure_kinds": list(self.structure.kinds) if self.structure else [],
                "unpaired": [u.to_dict() for u in self.unpaired], "known_change": self.known_change}


# ----- what the files claim ------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimsComparison:
    """Metadata claims of both sides beside the weight evidence (:mod:`.claims`)."""

    candidate: dict[str, str]
    reference: dict[str, str]
    candidate_claimed_bases: tuple[str, ...]
    reference_names: tuple[str, ...]
    status: str
    disagreements: tuple[str, ...] = ()
    """Claims contradicted by each other or by the weights (``compare`` exits 1 on any)."""
    notes: tuple[str, ...] = ()
    declared_relation: str | None = None
    """The candidate's model card ``base_model_relation`` (adapter, merge, quantized, finetune)."""
    relation_agrees: bool | None = None
    """Whether the weights show that relation to the reference (None: not checked, the card
    declares none or names another base, or the test was inconclusive)."""

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": dict(self.candidate), "reference": dict(self.reference),
                "candidate_claimed_bases": list(self.candidate_claimed_bases),
                "reference_names": list(self.reference_names), "status": self.status,
                "disagreements": list(self.disagreements), "notes": list(self.notes),
                "declared_relation": self.declared_relation, "relation_agrees": self.relation_agrees}


# ----- a PEFT adapter on either side ----------------------------------------------------------

@dataclass(frozen=True)
class AdapterModuleFit:
    """One weight a LoRA adapter updates (:mod:`.adapter`): the update's size and, when the
    reference is the adapter, how the candidate's change from the base relates to it."""

    name: str
    module: str
    rank: int
    scale: float
    delta_norm: float
    """``||D||``, the update ``D = scale * B @ A`` (Frobenius)."""
    coefficient: float | None = None
    """``<M - W, D> / ||D||^2``: 1 when the candidate holds the update, 0 when it does not."""
    residual: float | None = None
    """``||M - W - D|| / ||D||``."""
    rounding: float | None = None
    """The residual the candidate's storage rounding explains, same units (None: not a float type)."""
    change_norm: float | None = None
    """``||M - W||``."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "rank": self.rank, "scale": self.scale,
                "delta_norm": self.delta_norm, "coefficient": self.coefficient, "residual": self.residual,
                "rounding": self.rounding, "change_norm": self.change_norm}


@dataclass(frozen=True)
class AdapterEvidence:
    """A PEFT adapter given as the candidate (lineage of base + adapter) or as the reference
    (is the candidate this adapter merged into its base?)."""

    side: Literal["candidate", "reference"]
    adapter: str
    base: str
    config: dict[str, Any]
    """The validated ``adapter_config.json`` fields (:class:`provenance.formats.peft_adapter.AdapterConfig`)."""
    modules: tuple[AdapterModuleFit, ...]
    merged: bool | None
    """Reference side: whether the candidate is this adapter merged into the base (None on the candidate side)."""
    finding: str

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "adapter": self.adapter, "base": self.base, "config": dict(self.config),
                "modules": [m.to_dict() for m in self.modules], "merged": self.merged, "finding": self.finding}


# ----- pairing and layout --------------------------------------------------------------------

@dataclass(frozen=True)
class ShapeMismatch:
    name: str
    candidate: tuple[int, ...]
    reference: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "candidate": list(self.candidate), "reference": list(self.reference)}


@dataclass(frozen=True)
class PairingSummary:
    paired: int
    only_candidate: tuple[str, ...] = ()
    only_reference: tuple[str, ...] = ()
    shape_mismatch: tuple[ShapeMismatch, ...] = ()
    skipped_non_learned: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not (self.only_candidate or self.only_reference or self.shape_mismatch)

    def to_dict(self) -> dict[str, Any]:
        return {"paired": self.paired, "only_candidate": list(self.only_candidate),
                "only_reference": list(self.only_reference), "shape_mismatch": [m.to_dict() for m in self.shape_mismatch],
                "skipped_non_learned": list(self.skipped_non_learned)}


@dataclass(frozen=True)
class LayoutDetection:
    """Evidence for transposed data in equal-shape matrices (``layout`` auto)."""

    tensors_checked: tuple[str, ...]
    median_abs_pearson_plain: float
    median_abs_pearson_transposed: float
    transposed_bytes: bool
    rule: str


@dataclass(frozen=True)
class LayoutDecision:
    mode: LayoutMode
    transposed_bytes: bool
    """The candidate's equal-shape matrices hold transposed data."""
    transposed_shape: tuple[str, ...] = ()
    """Tensors stored with the transposed shape."""
    detection: LayoutDetection | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.detection is not None:
            d = self.detection
            out.update(tensors_checked=list(d.tensors_checked), median_abs_pearson_plain=d.median_abs_pearson_plain,
                       median_abs_pearson_transposed=d.median_abs_pearson_transposed,
                       transposed_bytes=d.transposed_bytes, rule=d.rule)
        elif self.transposed_bytes:
            out["transposed_bytes"] = True
        out["transposed_shape"] = list(self.transposed_shape)
        return out


# ----- alignment -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ScaleRange:
    """Spread of recovered per-unit scales."""

    min_abs: float
    max_abs: float
    negative: int

    @classmethod
    def of(cls, record: Mapping[str, Any] | None) -> ScaleRange | None:
        return None if record is None else cls(float(record["min_abs"]), float(record["max_abs"]), int(record["negative"]))

    def to_dict(self) -> dict[str, Any]:
        return {"min_abs": self.min_abs, "max_abs": self.max_abs, "negative": self.negative}


@dataclass(frozen=True)
class UnitAssignment:
    """A recovered permutation of units (MLP units, KV groups) and how it was decided."""

    moved: int
    units: int
    identity_score: float | None = None
    matched_score: float | None = None
    identity_hits: float | None = None
    """Share of sampled units already matched by the identity."""
    assignment: str | None = None
    """``skipped`` when the identity was proven optimal without the solver."""
    scales: ScaleRange | None = None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> UnitAssignment:
        return cls(int(record["moved"]), int(record["units"]), record.get("identity_score"), record.get("matched_score"),
                   record.get("identity_hits"), record.get("assignment"), ScaleRange.of(record.get("scales")))

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"identity_score": self.identity_score, "matched_score": self.matched_score,
                           "moved": self.moved, "units": self.units, "identity_hits": self.identity_hits,
                           "assignment": self.assignment, "scales": self.scales.to_dict() if self.scales else None})


@dataclass(frozen=True)
class AttentionAlignment:
    kv_groups: UnitAssignment
    q_heads_moved: int
    v_scales: ScaleRange | None = None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> AttentionAlignment:
        return cls(UnitAssignment.of(record["kv_groups"]), int(record["q_heads_moved"]), ScaleRange.of(record.get("v_scales")))

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"kv_groups": self.kv_groups.to_dict(), "q_heads_moved": self.q_heads_moved,
                           "v_scales": self.v_scales.to_dict() if self.v_scales else None})


@dataclass(frozen=True)
class NormRescale:
    """A residual gain moved between a norm vector and the matrices that read it."""

    gain_ratio_log_sd: float | None = None
    corr_with_column_shrink: float | None = None
    applied: bool = False
    column_fit: float | None = None
    """RMS of (column shrinkage - log gain ratio) over the gain ratios' spread (~0 for a real rescale)."""

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> NormRescale:
        return cls(record.get("gain_ratio_log_sd"), record.get("corr_with_column_shrink"), bool(record.get("applied")),
                   record.get("column_fit"))

    def to_dict(self) -> dict[str, Any]:
        out = _drop_none({"gain_ratio_log_sd": self.gain_ratio_log_sd, "corr_with_column_shrink": self.corr_with_column_shrink,
                          "column_fit": self.column_fit})
        if self.applied:
            out["applied"] = True
        return out


@dataclass(frozen=True)
class LayerAlignment:
    layer: int
    attn_norm_rescale: NormRescale
    ffn_norm_rescale: NormRescale
    mlp: UnitAssignment | None = None
    attention: AttentionAlignment | None = None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> LayerAlignment:
        """From the per-layer record :func:`provenance.compare.align.align_layer` returns."""
        return cls(int(record["layer"]), NormRescale.of(record.get("attn_norm_rescale", {})),
                   NormRescale.of(record.get("ffn_norm_rescale", {})),
                   UnitAssignment.of(record["mlp"]) if "mlp" in record else None,
                   AttentionAlignment.of(record["attention"]) if "attention" in record else None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer, "attn_norm_rescale": self.attn_norm_rescale.to_dict(),
                               "ffn_norm_rescale": self.ffn_norm_rescale.to_dict()}
        if self.mlp is not None:
            out["mlp"] = self.mlp.to_dict()
        if self.attention is not None:
            out["attention"] = self.attention.to_dict()
        return out


@dataclass(frozen=True)
class IndexMove:
    moved: int
    of: int


@dataclass(frozen=True)
class TransformSummary:
    """What a per-tensor transform (:class:`provenance.compare.transform.Transform`) does."""

    rows: IndexMove | None = None
    row_scale: ScaleRange | None = None
    cols: IndexMove | None = None
    col_scale: ScaleRange | None = None

    def to_dict(self) -> dict[str, Any]:
        def move(m: IndexMove | None) -> Any:
            return None if m is None else {"moved": m.moved, "of": m.of}

        def scale(s: ScaleRange | None) -> Any:
            return None if s is None else {"min": s.min_abs, "max": s.max_abs, "negative": s.negative}

        return {"rows": move(self.rows), "row_scale": scale(self.row_scale), "cols": move(self.cols),
                "col_scale": scale(self.col_scale)}


@dataclass(frozen=True)
class AlignmentSummary:
    """Recovered permutations and scales, layer by layer (reported as evidence)."""

    identity: bool
    """No unit moved and nothing rescaled."""
    layers: tuple[LayerAlignment, ...] = ()
    transforms: dict[str, TransformSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "layers": [layer.to_dict() for layer in self.layers],
                "transforms": {name: t.to_dict() for name, t in self.transforms.items()}}


@dataclass(frozen=True)
class DifferenceShape:
    """The shape of one matrix's change on its sampled rows (:mod:`provenance.compare.shape`):
    i.i.d. noise, zeroed small weights, or a structured change (docs/lineage.md)."""

    source: Literal["delta", "grid-residual"]
    """``delta``: candidate - reference; ``grid-residual``: what lies outside a quantized
    candidate's cells (its own rounding noise cancels there)."""
    change_class: str
    """A :data:`provenance.compare.shape.ChangeClass` of the residual left once zeroed weights are set aside."""
    noise_rel: float | None
    """RMS of that residual over each row's standard deviation (for a grid residual: estimated
    from the share of weights outside their cells)."""
    zeroed_fraction: float
    """Share of sampled weights the candidate holds as 0 where the reference did not."""
    zeroed_magnitude_ratio: float | None
    """Mean |w| of the zeroed weights over the mean |w| of all (small: the smallest were zeroed)."""
    rest_rel: float | None
    """``||residual|| / ||R||`` outside the zeroed weights (unquantized pairs)."""
    rest_outside_fraction: float | None
    """Share of weights outside their cells once zeroed ones are set aside (quantized pairs)."""
    rank_ratio: float | None = None
    corr_sigmas: float | None = None
    row_cv: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----- per tensor ----------------------------------------------------------------------------

TABLE_COLUMNS = [
    "name", "layer", "role", "kind", "shape", "candidate_dtype", "reference_dtype", "layout", "aligned",
    "pearson", "one_minus_pearson", "cosine", "one_minus_cos", "rel_delta_norm", "max_abs_delta",
    "norm_candidate", "norm_reference", "rank_energy", "stable_rank", "entropy_rank", "full_rank",
    "grid_type", "grid_lossy_side", "grid_outside_fraction", "grid_noise_ratio", "grid_rounds_to_nearest",
]


@dataclass(frozen=True)
class TensorComparison:
    """One paired tensor after alignment: one row of :attr:`CompareResult.table`."""

    name: str
    layer: int | None
    role: str
    kind: Literal["matrix", "vector"]
    shape: str
    candidate_dtype: str
    reference_dtype: str
    layout: str
    aligned: bool
    pearson: float | None
    one_minus_pearson: float | None
    cosine: float | None
    one_minus_cos: float | None
    rel_delta_norm: float | None
    max_abs_delta: float
    norm_candidate: float
    norm_reference: float
    rank_energy: int | None = None
    """Rank holding 90% of the delta's energy (sampled rows)."""
    stable_rank: float | None = None
    entropy_rank: float | None = None
    full_rank: int | None = None
    grid_type: str | None = None
    grid_lossy_side: str | None = None
    grid_outside_fraction: float | None = None
    grid_error: str | None = None
    grid_checked: int | None = None
    grid_outside: int | None = None
    grid_frame: Literal["reference", "candidate"] | None = None
    """``candidate``: checked in the candidate's frame, the reference permuted/rescaled into it."""
    grid_chain: str | None = None
    """The intermediate type the reference was rounded through to explain the codes."""
    transform: TransformSummary | None = None
    shape_of_change: DifferenceShape | None = None
    """How the change looks on sampled rows (changed matrices only)."""
    grid_noise_ratio: float | None = None
    """The delta's energy over the grid's own rounding noise (step^2/12 per weight): ~1 for a
    quantized copy of the other side, far above for a changed source."""
    grid_rounds_to_nearest: bool | None = None
    """For a packed layout (GPTQ, AWQ, NF4, MLX ...): does its writer round to nearest?
    (GPTQ/AWQ move codes on purpose, so their grid check is reported, not decisive.)"""

    @property
    def is_matrix(self) -> bool:
        return self.kind == "matrix"

    def to_dict(self) -> dict[str, Any]:
        out = {column: getattr(self, column) for column in TABLE_COLUMNS}
        if self.grid_error is not None:
            out["grid_error"] = self.grid_error
        for extra in ("grid_checked", "grid_outside", "grid_frame", "grid_chain"):
            if getattr(self, extra) is not None:
                out[extra] = getattr(self, extra)
        if self.transform is not None:
            out["transform"] = self.transform.to_dict()
        if self.shape_of_change is not None:
            out["shape_of_change"] = self.shape_of_change.to_dict()
        return out


# ----- the whole result ----------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointSummary:
    path: str
    format: str
    architecture: ArchRecord
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "architecture": self.architecture.to_dict(),
                "tensors": self.tensors}


@dataclass(frozen=True)
class CompareTiming:
    total_s: float
    stream_s: float
    test_s: float
    test_during_stream_s: float
    align_during_stream_s: float
    align_restream_s: float
    tensor_bytes: int
    stream_gb_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CompareResult:
    candidate: CheckpointSummary
    reference: CheckpointSummary
    verdict: LineageVerdict
    test: PermutationTestResult | None
    claims: ClaimsComparison
    pairing: PairingSummary
    layout: LayoutDecision
    alignment: AlignmentSummary | None
    tensors: tuple[TensorComparison, ...]
    options: CompareOptions
    timing: CompareTiming
    structure: StructureEvidence | None = None
    """Layer map, shape changes, rotation, the unit-space test, unpaired tensors (also on the verdict)."""
    adapter: AdapterEvidence | None = None
    """Set when either side is a PEFT adapter (applied to its base)."""
    candidate_hashes: CheckpointHashes | None = None
    """The candidate's file and tensor SHA-256s, from the bytes the comparison read (``compare(hashes=True)``;
    None where it did not read the stored candidate itself)."""

    @property
    def null_sample(self) -> tuple[float, ...]:
        return self.test.null_sample if self.test else ()

    @property
    def table(self) -> pd.DataFrame:
        """One row per paired tensor (the per-layer table)."""
        import pandas as pd

        return pd.DataFrame([t.to_dict() for t in self.tensors], columns=TABLE_COLUMNS)

    @property
    def layer_table(self) -> pd.DataFrame:
        """One row per layer: test statistic and p-values, mean similarities."""
        import pandas as pd

        df = pd.DataFrame([layer.to_dict() for layer in self.test.layers] if self.test else [])
        if df.empty:
            return df
        t = self.table
        mats = t[t["kind"] == "matrix"]
        agg = mats.groupby("layer").agg(mean_pearson=("pearson", "mean"), mean_rel_delta=("rel_delta_norm", "mean"))
        return df.merge(agg, how="left", left_on="layer", right_index=True)

    def table_records(self) -> list[dict[str, Any]]:
        """:attr:`table` as records, the values ``table.to_dict("records")`` gives, without
        importing pandas (:mod:`.records`: what the reports hold)."""
        from provenance.compare.records import records

        return records([t.to_dict() for t in self.tensors], TABLE_COLUMNS)

    def layer_records(self) -> list[dict[str, Any]]:
        """:attr:`layer_table` as records, the values ``layer_table.to_dict("records")`` gives,
        without importing pandas (:mod:`.records`)."""
        from provenance.compare.records import group_means, records

        rows = [layer.to_dict() for layer in self.test.layers] if self.test else []
        if not rows:
            return []
        out = records(rows, list(rows[0]))
        mats = [t for t in self.table_records() if t["kind"] == "matrix"]
        keys = [t["layer"] for t in mats]
        for column, source in (("mean_pearson", "pearson"), ("mean_rel_delta", "rel_delta_norm")):
            values = [t[source] for t in mats]
            if not all(isinstance(v, float) for v in values):  # not a float column: pandas' own rules
                return self.layer_table.to_dict("records")  # type: ignore[no-any-return]
            means = group_means(keys, values)
            for row in out:
                row[column] = means.get(row["layer"], math.nan)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "candidate": self.candidate.to_dict(), "reference": self.reference.to_dict(),
            "verdict": self.verdict.to_dict(), "test": self.test.to_dict() if self.test else None,
            "claims": self.claims.to_dict(), "pairing": self.pairing.to_dict(), "layout": self.layout.to_dict(),
            "alignment": self.alignment.to_dict() if self.alignment else None,
            "tensors": [t.to_dict() for t in self.tensors], "options": self.options.to_dict(),
            "timing": self.timing.to_dict(),
            "structure": self.structure.to_dict() if self.structure else None,
            "adapter": self.adapter.to_dict() if self.adapter else None,
        }
