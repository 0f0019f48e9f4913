"""Pair the tensors of two checkpoints by canonical name, and say why the others are unpaired.

Readers map every format to llama.cpp's canonical names and row order (see
:mod:`provenance.formats.base`), so a GGUF (quantized or not), a safetensors folder and a
llama2.c file of the same model pair tensor for tensor by name. Every analysis that sets
two checkpoints side by side (lineage, quantization forensics, watermark detection and
realignment) pairs them here, so they agree on what was compared and can report every
tensor that was not, with the reason.

A pair's ``layout`` says how the candidate's data maps onto the reference's shape:
``same``, or ``transposed`` (a 2-D candidate stored with its shape reversed, e.g. GPT-2
style ``(in, out)`` storage; unambiguous from the shapes alone), which only an analysis
that reads it through :func:`provenance.compare.pairing.apply_layout` asks for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from provenance.formats.base import Checkpoint, TensorInfo

#: Tensors that are not learned (precomputed RoPE tables): no evidence of lineage or marks.
NOT_LEARNED_ROLES = ("rope_freqs", "rope_freqs_real", "rope_freqs_imag")

UnpairedReason = Literal["missing-in-candidate", "missing-in-reference", "shape-mismatch", "not-learned"]


@dataclass(frozen=True)
class TensorPair:
    name: str
    role: str
    layer: int | None
    shape: tuple[int, ...]
    """The reference's shape: the frame every statistic is computed in."""
    candidate_dtype: str
    reference_dtype: str
    layout: str = "same"

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2 and min(self.shape) > 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "layer": self.layer, "shape": list(self.shape),
                "candidate_dtype": self.candidate_dtype, "reference_dtype": self.reference_dtype,
                "layout": self.layout}


@dataclass(frozen=True)
class Unpaired:
    """A tensor left out of the comparison, and why."""

    name: str
    reason: UnpairedReason
    candidate_shape: tuple[int, ...] | None
    """None when the candidate has no tensor of this name."""
    reference_shape: tuple[int, ...] | None

    def describe(self) -> str:
        """One line for a report (the name is the caller's to escape)."""
        def dims(shape: tuple[int, ...] | None) -> str:
            return "x".join(map(str, shape or ()))

        if self.reason == "missing-in-candidate":
            return "only in the reference"
        if self.reason == "missing-in-reference":
            return "only in the candidate"
        if self.reason == "shape-mismatch":
            return f"shape {dims(self.candidate_shape)} in the candidate, {dims(self.reference_shape)} in the reference"
        return "not a learned tensor (precomputed table)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason,
                "candidate_shape": None if self.candidate_shape is None else list(self.candidate_shape),
                "reference_shape": None if self.reference_shape is None else list(self.reference_shape)}


@dataclass
class Pairing:
    pairs: list[TensorPair] = field(default_factory=list)
    """In the reference's tensor order."""
    unpaired: list[Unpaired] = field(default_factory=list)
    """The reference's unpaired tensors in its order, then the candidate's own."""

    def by_name(self) -> dict[str, TensorPair | Unpaired]:
        """What became of each tensor of either checkpoint, by name."""
        index: dict[str, TensorPair | Unpaired] = {p.name: p for p in self.pairs}
        index.update((u.name, u) for u in self.unpaired)
        return index

    def names(self, reason: UnpairedReason) -> list[str]:
        return [u.name for u in self.unpaired if u.reason == reason]

    def to_dict(self) -> dict[str, Any]:
        return {"paired": len(self.pairs), "only_candidate": self.names("missing-in-reference"),
                "only_reference": self.names("missing-in-candidate"),
                "shape_mismatch": [{"name": u.name, "candidate": list(u.candidate_shape or ()),
                                    "reference": list(u.reference_shape or ())}
                                   for u in self.unpaired if u.reason == "shape-mismatch"],
                "skipped_non_learned": self.names("not-learned")}


def _layout_of(cand: TensorInfo, ref: TensorInfo, transposed: bool) -> str | None:
    if cand.shape == ref.shape:
        return "same"
    if transposed and len(cand.shape) == 2 and cand.shape == ref.shape[::-1]:
        return "transposed"
    return None  # another shape (same size or not): a layout nobody guesses at


def pair_tensors(candidate: Checkpoint, reference: Checkpoint, *, transposed: bool = False,
                 skip_not_learned: bool = False) -> Pairing:
    """Pair by canonical name; a name on both sides pairs when the shapes agree (or are
    reversed, with ``transposed``). ``skip_not_learned`` leaves out :data:`NOT_LEARNED_ROLES`."""
    result = Pairing()

    def not_learned(info: TensorInfo) -> bool:
        return skip_not_learned and info.role in NOT_LEARNED_ROLES

    for name, ref in reference.tensors.items():
        cand = candidate.tensors.get(name)
        cand_shape = None if cand is None else cand.shape
        if not_learned(ref):
            result.unpaired.append(Unpaired(name, "not-learned", cand_shape, ref.shape))
        elif cand is None:
            result.unpaired.append(Unpaired(name, "missing-in-candidate", None, ref.shape))
        elif (layout := _layout_of(cand, ref, transposed)) is None:
            result.unpaired.append(Unpaired(name, "shape-mismatch", cand.shape, ref.shape))
        else:
            result.pairs.append(TensorPair(name, ref.role or "", ref.layer, ref.shape, cand.dtype, ref.dtype, layout))
    for name, cand in candidate.tensors.items():
        if name not in reference.tensors:
            reason: UnpairedReason = "not-learned" if not_learned(cand) else "missing-in-reference"
            result.unpaired.append(Unpaired(name, reason, cand.shape, None))
    return result
