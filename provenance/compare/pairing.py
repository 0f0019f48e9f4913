"""Pair the tensors of two checkpoints by canonical name and shape, and find the layout.

Readers already map every format to llama.cpp's canonical names and row order, so GGUF
(quantized or not), safetensors and llama2.c pair by name. What can still differ:

* ``transposed``: the candidate stores a matrix with its shape reversed (e.g. GPT-2 style
  ``(in, out)`` storage); unambiguous from the shapes alone.
* ``transposed-bytes``: the shape is fixed by the format (llama2.c's header) but the data
  is the transpose, read with the untransposed shape. Nothing in the file says so; it is
  detected from the data (:func:`detect_byte_transposition`) and only switched on when
  the transposed reading matches decisively, a level no independent pair comes near.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.formats.base import Checkpoint, TensorInfo

#: Tensors that are not learned (precomputed RoPE tables) carry no lineage evidence.
NON_LEARNED_ROLES = ("rope_freqs", "rope_freqs_real", "rope_freqs_imag")
LAYOUTS = ("same", "transposed", "transposed-bytes")


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


@dataclass
class Pairing:
    pairs: list[TensorPair] = field(default_factory=list)
    only_candidate: list[str] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"paired": len(self.pairs), "only_candidate": self.only_candidate,
                "only_reference": self.only_reference, "shape_mismatch": self.shape_mismatch,
                "skipped_non_learned": self.skipped}


def _layout_of(cand: TensorInfo, ref: TensorInfo) -> str | None:
    if cand.shape == ref.shape:
        return "same"
    if len(cand.shape) == 2 and cand.shape == ref.shape[::-1]:
        return "transposed"
    if cand.n_elements == ref.n_elements and len(cand.shape) == len(ref.shape) == 2:
        return None  # same size, other shape: a layout we do not guess at
    return None


def pair_tensors(candidate: Checkpoint, reference: Checkpoint) -> Pairing:
    """Pair by canonical name; each pair gets a layout or lands in ``shape_mismatch``."""
    result = Pairing()
    for name, ref in reference.tensors.items():
        if ref.role in NON_LEARNED_ROLES:
            result.skipped.append(name)
            continue
        cand = candidate.tensors.get(name)
        if cand is None:
            result.only_reference.append(name)
            continue
        layout = _layout_of(cand, ref)
        if layout is None:
            result.shape_mismatch.append({"name": name, "candidate": list(cand.shape), "reference": list(ref.shape)})
            continue
        result.pairs.append(TensorPair(name, ref.role or "", ref.layer, ref.shape, cand.dtype, ref.dtype, layout))
    for name, cand in candidate.tensors.items():
        if name not in reference.tensors and cand.role not in NON_LEARNED_ROLES:
            result.only_candidate.append(name)
        elif cand.role in NON_LEARNED_ROLES and name not in reference.tensors:
            result.skipped.append(name)
    return result


def apply_layout(values: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Candidate data as read (``values``) -> the reference's frame of ``shape``."""
    if layout == "same":
        return values.reshape(shape)
    if layout == "transposed":
        return np.ascontiguousarray(values.reshape(shape[::-1]).T)
    if layout == "transposed-bytes":
        return np.ascontiguousarray(values.reshape(-1).reshape(shape[::-1]).T)
    raise ValueError(f"unknown layout {layout!r}")


#: The transposed reading must correlate at least this much (median |Pearson| over
#: the non-square matrices checked) and beat the plain reading by ``DECISIVE_RATIO``.
DECISIVE_MIN = 0.5
DECISIVE_RATIO = 5.0
LAYOUT_SAMPLE_MAX_ELEMS = 1 << 24


def _abs_pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64).ravel()
    y = y.astype(np.float64).ravel()
    x -= x.mean()
    y -= y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return abs(float((x * y).sum()) / den) if den > 0 else 0.0


def detect_byte_transposition(candidate: Checkpoint, reference: Checkpoint, pairs: list[TensorPair]) -> dict[str, Any]:
    """Decide whether equal-shape matrices hold transposed data (one decision per model).

    Uses non-square matrices (for a square one both readings are legitimate matrices,
    for a non-square one the plain reading of transposed data scrambles rows, so the
    evidence is sharp) up to a size cap. Returns the evidence and the decision.
    """
    plain, transposed, used = [], [], []
    for pair in pairs:
        if pair.layout != "same" or not pair.is_matrix or pair.shape[0] == pair.shape[1]:
            continue
        if int(np.prod(pair.shape)) > LAYOUT_SAMPLE_MAX_ELEMS:
            continue
        c = candidate.read(pair.name)
        r = reference.read(pair.name)
        plain.append(_abs_pearson(c, r))
        transposed.append(_abs_pearson(apply_layout(c, "transposed-bytes", pair.shape), r))
        used.append(pair.name)
        if len(used) >= 8:
            break
    med_plain = float(np.median(plain)) if plain else 0.0
    med_t = float(np.median(transposed)) if transposed else 0.0
    decided = bool(used) and med_t >= DECISIVE_MIN and med_t >= DECISIVE_RATIO * max(med_plain, 1e-12)
    return {"tensors_checked": used, "median_abs_pearson_plain": round(med_plain, 6),
            "median_abs_pearson_transposed": round(med_t, 6), "transposed_bytes": decided,
            "rule": f"transposed only if median |r| >= {DECISIVE_MIN} and >= {DECISIVE_RATIO}x the plain reading"}
