"""``quantcheck``: is a quantized checkpoint a clean quantization of a reference?

A pure function of (paths, options) -> :class:`QuantCheckResult`, streamed in row chunks,
picklable inputs and outputs: it can be shipped to a worker unchanged.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from contextlib import closing
from typing import Any

import numpy as np
import torch

from provenance.codecs.recipes import supported, tolerant
from provenance.codecs.types import plain_type
from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.packed_read import PackedRowReader
from provenance.formats.pairing import TensorPair, Unpaired, pair_tensors
from provenance.formats.prefetch import SlotBuffers, chunk_ranges, prefetched_each
from provenance.progress import Meter, ProgressCallback
from provenance.quant.error import ErrorStats, error_stats
from provenance.quant.frame_rows import CHUNK_ELEMS, FrameRows, rows_per_chunk
from provenance.quant.gridcheck import PRECISIONS, CheckCounts, check_block_rows
from provenance.quant.options import QuantCheckOptions
from provenance.quant.packedcheck import check_packed_rows, rows_per_check, writer_recipe
from provenance.quant.rescale import ReferenceFrame
from provenance.quant.result import (
    ErrorSummary,
    GridCounts,
    QuantCheckResult,
    QuantVerdict,
    TensorCheck,
    TensorStatus,
)
from provenance.threads import torch_threads

PRECISION_SAMPLE_ELEMS = 1 << 20
"""Weights per tensor used to decide the source precision (the first rows)."""
CHECK_CHUNK_ELEMS = 1 << 22
"""Weights per chunk of the grid check (two slots of float32 rows and stored bytes: ~40 MB)."""

# Verdict thresholds. A perturbed source flips a small fraction of codes and keeps the
# error at the clean-quantization level; an unrelated one flips most codes and its
# error is of the order of the weights themselves.
MAX_PERTURBED_FLIP_FRACTION = 0.25
MAX_PERTURBED_ERROR_RATIO = 2.0

def _frame_rows(cand: Checkpoint, ref: Checkpoint, name: str, frame: ReferenceFrame, step: int,
                fitted: dict[str, tuple[np.ndarray, np.ndarray]]) -> FrameRows:
    """The reference carried into the candidate's frame (``quantcheck --realign``), streamed:
    its free row/column scales are fitted to the candidate's strict cells (the exact recipe
    check that follows has no tolerance of its own); ``fitted``: the factors fitted so far, by
    tensor (the precision probe and the check of a tensor share one fit)."""
    from provenance.codecs.grid import quant_grid

    info = cand.info(name)

    def cells(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grid = quant_grid(cand.raw_rows(name, start, stop), int(info.ggml_type))  # type: ignore[arg-type]
        lo, hi = grid.cell_bounds(clip=True)
        return lo.double().numpy(), hi.double().numpy(), grid.values().double().numpy()

    rows = FrameRows(ref, name, frame, cells, info.n_rows, step, 0.0, factors=fitted.get(name))
    if rows.factors is not None:
        fitted[name] = rows.factors
    return rows


def _check_tensor(
    cand: Checkpoint, ref: Checkpoint, name: str, precision: str, threads: int = 1, max_rows: int | None = None,
    meter: Meter | None = None, frame: ReferenceFrame | None = None,
    fitted: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[CheckCounts, ErrorStats]:
    """One tensor in row chunks: the reference decoded and the candidate's stored blocks read
    into reused buffers, the next chunk on a worker thread while this one is checked (memory:
    two chunks of each, whatever the tensor)."""
    info = cand.info(name)
    counts, errors = CheckCounts(), ErrorStats()
    stop_all = info.n_rows if max_rows is None else min(info.n_rows, max_rows)
    # the compiled check splits each chunk between threads, and handing a call to them costs
    # ~0.3 ms of wake-ups on this kind of VM: 4M-weight chunks keep that near 2% (1M: ~10%);
    # a realigned reference's float64 cells stay in 1M-weight chunks
    step = rows_per_chunk(info.row_length, CHECK_CHUNK_ELEMS if frame is None else CHUNK_ELEMS)
    if info.packing is not None:  # chunks and a sample end on whole writer blocks
        step = rows_per_check(info.packing, step)
        if stop_all < info.n_rows:
            stop_all = min(info.n_rows, rows_per_check(info.packing, stop_all))
    recipe = writer_recipe(info.packing) if info.packing is not None else None
    ref_info = ref.info(name)
    # in the candidate's frame the reference's rows are gathered through the permutation
    in_frame = _frame_rows(cand, ref, name, frame, step, {} if fitted is None else fitted) if frame is not None else None
    with ref.row_reader(name, step) as reference, cand.row_reader(name, step) as stored:
        packed = isinstance(stored, PackedRowReader)
        # the common case (reference rows as stored, a ggml candidate) reads the next chunk on
        # two worker threads, one per file (one in all with --threads 1), while this one is checked; a frame's gathers and a
        # packed layout's grids are read in turn (formats.prefetch)
        ahead = in_frame is None and not packed
        ref_slots, cand_slots = SlotBuffers(reference, step), SlotBuffers(stored, step)

        def load_reference(start: int, stop: int, slot: int) -> torch.Tensor:
            if ahead:
                return ref_slots.rows(slot, start, stop)
            return (torch.from_numpy(in_frame.rows(start, stop).astype(np.float32)) if in_frame is not None
                    else reference.read(start, stop))

        def load_candidate(start: int, stop: int, slot: int) -> Any:
            if ahead:
                return cand_slots.raw(slot, start, stop)
            return stored.grid(start, stop) if packed else stored.raw(start, stop)

        ranges = chunk_ranges(stop_all, step)
        with closing(prefetched_each(ranges, (load_reference, load_candidate), ahead, workers=threads)) as chunks:
            for (start, stop), (x, raw) in zip(ranges, chunks, strict=True):
                # a packed layout's codes and grid come through its row reader, a ggml type's from its blocks
                if packed:
                    c, e = check_packed_rows(x, raw, precision, recipe)
                else:
                    c, e = check_block_rows(x, raw, info.ggml_type, precision, threads)
                counts.add(c)
                errors.add(e)
                if meter is not None:
                    meter.advance(_stored_bytes(info, start, stop) + _stored_bytes(ref_info, start, stop), name)
    if in_frame is not None:
        in_frame.close()
    return counts, errors


def _stored_bytes(info: TensorInfo, start: int, stop: int) -> int:
    """Stored bytes of rows ``[start, stop)``, for progress (a packed weight's parts are not
    laid out in rows: its bytes are shared out evenly, summing to ``n_bytes``)."""
    return info.n_bytes * stop // info.n_rows - info.n_bytes * start // info.n_rows


def grid_checkable(info: TensorInfo) -> bool:
    """Whether the stored codes of ``info`` are predictable from an exact reference: a ggml
    type with llama.cpp's rounding recipe, or a packed layout whose writer rounds to nearest
    (bitsandbytes, MLX, compressed-tensors int8/fp8; not GPTQ/AWQ, see
    :mod:`provenance.quant.packedcheck`)."""
    if info.packing is not None:
        return info.packing.rounds_to_nearest
    return info.block_size > 1 and info.ggml_type is not None and supported(info.ggml_type)


def detect_precision(cand: Checkpoint, ref: Checkpoint, names: list[str], threads: int = 1,
                     frames: Mapping[str, ReferenceFrame] | None = None,
                     fitted: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[str, dict[str, int]]:
    """The source precision (f32 / f16 / bf16) that leaves the fewest unexplained
    mismatches on a sample of the tensors; ties prefer the wider format."""
    evidence = {p: 0 for p in PRECISIONS}
    for name in names[:4]:
        info = cand.info(name)
        rows = max(1, PRECISION_SAMPLE_ELEMS // info.row_length)
        for p in PRECISIONS:
            counts, _ = _check_tensor(cand, ref, name, p, threads, max_rows=rows, frame=(frames or {}).get(name),
                                      fitted=fitted)
            evidence[p] += counts.n_unexplained + counts.n_blocks_scale_mismatch
    best = min(PRECISIONS, key=lambda p: (evidence[p], PRECISIONS.index(p)))
    return best, evidence


def _verdict(counts: CheckCounts, errors: ErrorStats) -> TensorStatus:
    if counts.n_unexplained == 0 and counts.n_blocks_scale_mismatch == 0:
        return "exact"
    frac = counts.n_unexplained / counts.n_checked if counts.n_checked else 1.0
    ratio = errors.rel_l2 / errors.expected_rel_l2 if errors.expected_rel_l2 > 0 else math.inf
    if frac < MAX_PERTURBED_FLIP_FRACTION and ratio < MAX_PERTURBED_ERROR_RATIO:
        return "perturbed"
    return "unrelated"


def _plain(cand: Checkpoint, ref: Checkpoint, name: str, info: TensorInfo,
           meter: Meter) -> tuple[TensorStatus, ErrorSummary]:
    """A plain tensor: identical to the reference (or to its rounding to the candidate's
    float type), streamed in row chunks with its error (also the error of a packed weight
    whose codes cannot be predicted: GPTQ, AWQ)."""
    plain = plain_type(info.dtype)
    narrow = plain.torch_dtype() if plain is not None and plain.narrow_float else None
    errors, same_rounded, same_exact = ErrorStats(), True, True
    step = rows_per_chunk(info.row_length)
    ref_info = ref.info(name)
    with cand.row_reader(name, step) as ours, ref.row_reader(name, step) as theirs:
        for start in range(0, info.n_rows, step):
            stop = min(info.n_rows, start + step)
            a, b = ours.read(start, stop), theirs.read(start, stop)
            same_exact = same_exact and bool(torch.equal(a, b))
            same_rounded = same_rounded and bool(torch.equal(a, b.to(narrow).to(torch.float32) if narrow else b))
            errors.add(error_stats(a, b))
            meter.advance(_stored_bytes(info, start, stop) + _stored_bytes(ref_info, start, stop), name)
    return ("identical" if same_rounded or same_exact else "differs"), ErrorSummary.of(errors)


def _overall(checked: list[TensorCheck]) -> QuantVerdict:
    if not checked:
        return "nothing-checked"
    unrelated = sum(t.status == "unrelated" for t in checked)
    if unrelated * 2 >= len(checked):
        return "unrelated"
    return "exact" if all(t.status == "exact" for t in checked) else "perturbed"


@input_boundary
def quantcheck(
    candidate_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    options: QuantCheckOptions | None = None,
    progress: ProgressCallback | None = None,
    frames: Mapping[str, ReferenceFrame] | None = None,
) -> QuantCheckResult:
    """Check every quantized tensor of ``candidate_path`` against ``reference_path``: per
    tensor, grid-consistency counts, mismatch distances in steps, estimated perturbation
    amplitude, dequantization error vs the error of a clean quantization of the reference;
    overall, a verdict and the source precision the quantizer saw. ``progress`` gets the
    bytes of both files read (task ``quantcheck``).

    ``frames``: per tensor, a map of the reference into the candidate's frame (recovered
    permutations and scales, e.g. :func:`provenance.watermark.realign.realign`'s transforms:
    ``quantcheck --realign``); rescaled rows/columns are fitted to the stored cells
    (:mod:`provenance.quant.rescale`) before the exact check."""
    opts = options or QuantCheckOptions()
    with torch_threads(1):  # the compiled check takes the threads; torch only converts rows
        return _quantcheck(candidate_path, reference_path, opts.precision, opts.threads, progress, frames or {})


def _check(cand: Checkpoint, ref: Checkpoint, name: str, info: TensorInfo, fate: TensorPair | Unpaired,
           checkable: bool, precision: str, threads: int, per_layer: dict[str, ErrorStats], meter: Meter,
           frame: ReferenceFrame | None = None, fitted: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> TensorCheck:
    """One candidate tensor: checked, or why not."""
    base = {"name": name, "layer": info.layer, "role": info.role, "qtype": info.dtype, "shape": "x".join(map(str, info.shape))}
    if isinstance(fate, Unpaired):
        return TensorCheck(**base, status=fate.reason)  # missing-in-reference or shape-mismatch
    if checkable:
        counts, errors = _check_tensor(cand, ref, name, precision, threads, meter=meter, frame=frame, fitted=fitted)
        grid, error = GridCounts.of(counts), ErrorSummary.of(errors)
        per_layer.setdefault(str(info.layer), ErrorStats()).add(errors)
        return TensorCheck(**base, status=_verdict(counts, errors), grid=grid, error=error,
                           amplitude_rel=counts.amplitude / error.ref_rms if error.ref_rms else float("nan"),
                           tolerance_explained=tolerant(info.ggml_type) if info.ggml_type is not None else False,
                           realigned=frame is not None)
    if info.block_size > 1:
        return TensorCheck(**base, status="unchecked-type")
    status, error = _plain(cand, ref, name, info, meter)
    if info.packing is not None:  # GPTQ/AWQ: no predictable codes, but their dequantization error
        return TensorCheck(**base, status="unchecked-type", error=error)
    return TensorCheck(**base, status=status, error=error)


def _quantcheck(candidate_path: str | os.PathLike[str], reference_path: str | os.PathLike[str],
                precision: str, threads: int, progress: ProgressCallback | None,
                frames: Mapping[str, ReferenceFrame]) -> QuantCheckResult:
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}")
    with open_checkpoint(candidate_path) as cand, open_checkpoint(reference_path) as ref:
        # every candidate tensor gets a row, in the candidate's order: checked, or why not
        fate = pair_tensors(cand, ref).by_name()
        checkable = {name for name, info in cand.tensors.items() if isinstance(fate[name], TensorPair) and grid_checkable(info)}
        fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # realigned tensors' scale factors, fitted once
        if precision == "auto":
            ordered = [name for name in cand.tensors if name in checkable]
            precision, evidence = detect_precision(cand, ref, ordered, threads, frames, fitted) if ordered else ("f32", {})
        else:
            evidence = {}
        per_layer: dict[str, ErrorStats] = {}
        read = [n for n, info in cand.tensors.items() if isinstance(fate[n], TensorPair)
                and (n in checkable or info.block_size == 1)]
        meter = Meter(progress, "quantcheck", sum(cand.info(n).n_bytes + ref.info(n).n_bytes for n in read))
        tensors = tuple(_check(cand, ref, name, info, fate[name], name in checkable, precision, threads, per_layer, meter,
                               frames.get(name) if name in checkable else None, fitted)
                        for name, info in cand.tensors.items())
        metadata = {k: str(v) for k, v in cand.metadata_claims.items()}
    checked = [t for t in tensors if t.checked]
    return QuantCheckResult(
        candidate=os.fspath(candidate_path), reference=os.fspath(reference_path), verdict=_overall(checked),
        source_precision=precision, precision_evidence=evidence, tensors=tensors,
        layers={k: ErrorSummary.of(v) for k, v in sorted(per_layer.items())}, candidate_metadata=metadata,
    )
