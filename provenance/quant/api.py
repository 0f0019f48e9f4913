"""``quantcheck``: is a quantized checkpoint a clean quantization of a reference?

A pure function of (paths, options) -> (summary dict, per-tensor DataFrame), streamed in
row chunks, picklable inputs and outputs: it can be shipped to a worker unchanged.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
import torch

from provenance.codecs.recipes import supported, tolerant
from provenance.codecs.types import plain_type
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.pairing import TensorPair, Unpaired, pair_tensors
from provenance.quant.error import ErrorStats, error_stats
from provenance.quant.gridcheck import PRECISIONS, CheckCounts, check_block_rows
from provenance.threads import torch_threads

CHUNK_ELEMS = 1 << 20
PRECISION_SAMPLE_ELEMS = 1 << 20
"""Weights per tensor used to decide the source precision (the first rows)."""

# Verdict thresholds. A perturbed source flips a small fraction of codes and keeps the
# error at the clean-quantization level; an unrelated one flips most codes and its
# error is of the order of the weights themselves.
MAX_PERTURBED_FLIP_FRACTION = 0.25
MAX_PERTURBED_ERROR_RATIO = 2.0

VERDICT_TEXT = {
    "exact": "exact quantization",
    "perturbed": "quantized from a perturbed reference",
    "unrelated": "unrelated",
}


def _rows_per_chunk(info: TensorInfo) -> int:
    return max(1, CHUNK_ELEMS // max(1, info.row_length))


def _check_tensor(
    cand: Checkpoint, ref: Checkpoint, name: str, precision: str, max_rows: int | None = None
) -> tuple[CheckCounts, ErrorStats]:
    info = cand.info(name)
    counts, errors = CheckCounts(), ErrorStats()
    stop_all = info.n_rows if max_rows is None else min(info.n_rows, max_rows)
    step = _rows_per_chunk(info)
    for start in range(0, stop_all, step):
        stop = min(stop_all, start + step)
        x = torch.from_numpy(np.ascontiguousarray(ref.read_rows(name, start, stop)))
        c, e = check_block_rows(x, cand.raw_rows(name, start, stop), info.ggml_type, precision)
        counts.add(c)
        errors.add(e)
    return counts, errors


def detect_precision(cand: Checkpoint, ref: Checkpoint, names: list[str]) -> tuple[str, dict[str, int]]:
    """The source precision (f32 / f16 / bf16) that leaves the fewest unexplained
    mismatches on a sample of the tensors; ties prefer the wider format."""
    evidence = {p: 0 for p in PRECISIONS}
    for name in names[:4]:
        info = cand.info(name)
        rows = max(1, PRECISION_SAMPLE_ELEMS // info.row_length)
        for p in PRECISIONS:
            counts, _ = _check_tensor(cand, ref, name, p, max_rows=rows)
            evidence[p] += counts.n_unexplained + counts.n_blocks_scale_mismatch
    best = min(PRECISIONS, key=lambda p: (evidence[p], PRECISIONS.index(p)))
    return best, evidence


def _verdict(counts: CheckCounts, errors: ErrorStats) -> str:
    if counts.n_unexplained == 0 and counts.n_blocks_scale_mismatch == 0:
        return "exact"
    frac = counts.n_unexplained / counts.n_checked if counts.n_checked else 1.0
    ratio = errors.rel_l2 / errors.expected_rel_l2 if errors.expected_rel_l2 > 0 else math.inf
    if frac < MAX_PERTURBED_FLIP_FRACTION and ratio < MAX_PERTURBED_ERROR_RATIO:
        return "perturbed"
    return "unrelated"


def _plain_row(cand: Checkpoint, ref: Checkpoint, name: str, info: TensorInfo) -> dict[str, Any]:
    a = torch.from_numpy(np.ascontiguousarray(cand.read_rows(name)))
    b = torch.from_numpy(np.ascontiguousarray(ref.read_rows(name)))
    plain = plain_type(info.dtype)
    expected = b.to(plain.torch_dtype()).to(torch.float32) if plain is not None and plain.narrow_float else b
    same = bool(torch.equal(a, expected) or torch.equal(a, b))
    e = error_stats(a, b)
    return {"status": "identical" if same else "differs", **e.summary()}


def _pooled_amplitude(checked: pd.DataFrame) -> float:
    """Perturbation std relative to the weights' RMS, pooled over tensors (flips over
    boundary density), from exact-recipe types when there are any: the IQ4 tolerance
    zone hides the smallest flips and would bias the estimate low."""
    if not len(checked):
        return float("nan")
    exact = checked[~checked["tolerance_explained"].astype(bool)]
    use = exact if len(exact) else checked
    flips = float(use["n_unexplained"].sum())
    density = float((use["near_sum"] * use["ref_rms"]).sum())
    return flips / density * math.sqrt(math.pi / 2) if density > 0 else float("nan")


def quantcheck(
    candidate_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    precision: str = "auto",
    threads: int | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    with torch_threads(threads):
        return _quantcheck(candidate_path, reference_path, precision)


def _quantcheck(
    candidate_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    precision: str = "auto",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Check every quantized tensor of ``candidate_path`` against ``reference_path``.

    Returns a summary dict (overall verdict, detected source precision, counts, per-layer
    errors) and a per-tensor DataFrame (grid-consistency counts, mismatch distances in
    steps, estimated perturbation amplitude, dequantization error vs the error of a
    clean quantization of the reference).
    """
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}")
    with open_checkpoint(candidate_path) as cand, open_checkpoint(reference_path) as ref:
        # every candidate tensor gets a row, in the candidate's order: checked, or why not
        fate = pair_tensors(cand, ref).by_name()
        checkable = [
            name
            for name, info in cand.tensors.items()
            if isinstance(fate[name], TensorPair)
            and info.block_size > 1
            and info.ggml_type is not None
            and supported(info.ggml_type)
        ]
        if precision == "auto":
            precision, evidence = detect_precision(cand, ref, checkable) if checkable else ("f32", {})
        else:
            evidence = {}
        rows: list[dict[str, Any]] = []
        per_layer: dict[str, ErrorStats] = {}
        for name, info in cand.tensors.items():
            row: dict[str, Any] = {
                "name": name,
                "layer": info.layer,
                "role": info.role,
                "qtype": info.dtype,
                "shape": "x".join(map(str, info.shape)),
            }
            if isinstance(unpaired := fate[name], Unpaired):
                row["status"] = unpaired.reason  # missing-in-reference or shape-mismatch
            elif name in checkable:
                counts, errors = _check_tensor(cand, ref, name, precision)
                row.update(counts.summary())
                row.update(errors.summary())
                row["amplitude_rel"] = counts.amplitude / row["ref_rms"] if row["ref_rms"] else float("nan")
                row["status"] = _verdict(counts, errors)
                row["tolerance_explained"] = tolerant(info.ggml_type)
                per_layer.setdefault(str(info.layer), ErrorStats()).add(errors)
            elif info.block_size > 1:
                row["status"] = "unchecked-type"
            else:
                row.update(_plain_row(cand, ref, name, info))
            rows.append(row)
        metadata = {k: str(v) for k, v in cand.metadata_claims.items()}
    df = pd.DataFrame(rows)
    checked = df[df["status"].isin(list(VERDICT_TEXT))] if len(df) else df
    n_by = checked["status"].value_counts().to_dict() if len(checked) else {}
    if not len(checked):
        overall = "nothing-checked"
    elif n_by.get("unrelated", 0) * 2 >= len(checked):
        overall = "unrelated"
    elif n_by.get("exact", 0) == len(checked):
        overall = "exact"
    else:
        overall = "perturbed"
    amplitude_rel = _pooled_amplitude(checked)
    summary: dict[str, Any] = {
        "candidate": os.fspath(candidate_path),
        "reference": os.fspath(reference_path),
        "verdict": overall,
        "verdict_text": VERDICT_TEXT.get(overall, overall),
        "flagged": overall != "exact",
        "source_precision": precision,
        "precision_evidence": evidence,
        "n_tensors": len(df),
        "n_checked": len(checked),
        "verdicts": {str(k): int(v) for k, v in n_by.items()},
        "n_unexplained": int(checked["n_unexplained"].sum()) if len(checked) else 0,
        "n_weights_checked": int(checked["n_checked"].sum()) if len(checked) else 0,
        "amplitude_rel": amplitude_rel,
        "layers": {k: v.summary() for k, v in sorted(per_layer.items())},
        "candidate_metadata": metadata,
        "unchecked": df.loc[df["status"] == "unchecked-type", "name"].tolist() if len(df) else [],
    }
    return summary, df
