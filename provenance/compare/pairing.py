"""Compare's pairing: tensors by canonical name and shape, and the layout of the candidate's data.

Pairing by name is shared (:mod:`provenance.formats.pairing`); what lineage adds:

* ``transposed``: the candidate stores a matrix with its shape reversed (accepted here,
  read through :func:`apply_layout`);
* ``transposed-bytes``: the shape is fixed by the format (llama2.c's header) but the data
  is the transpose, read with the untransposed shape. Nothing in the file says so; it is
  detected from the data (:func:`detect_byte_transposition`) and only switched on when
  the transposed reading matches decisively, a level no independent pair comes near;
* precomputed RoPE tables carry no lineage evidence and are left out.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from provenance.formats import pairing as by_name
from provenance.formats.base import Checkpoint
from provenance.formats.pairing import Pairing, TensorPair

LAYOUTS = ("same", "transposed", "transposed-bytes")


def pair_tensors(candidate: Checkpoint, reference: Checkpoint) -> Pairing:
    """Pair by canonical name; each pair gets a layout, the rest a reason (``Pairing.unpaired``)."""
    return by_name.pair_tensors(candidate, reference, transposed=True, skip_not_learned=True)


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
