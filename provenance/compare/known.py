"""Judge a related pair again once a change known from other evidence is added to the reference.

The kind of relation is read from what differs (:mod:`.verdict`). When other evidence names
one change the candidate went through, and what that change does to every weight, that
change is part of the reference the candidate was made from, not of what the candidate's
maker did. The case that needs it: tracing names the client whose keyed watermark the
candidate carries (:mod:`provenance.watermark.known_mark`); the client's copy *is* the
owner's model plus that mark, so the mark must not be read as the leaker's own change. A
keyed mark is i.i.d. noise, and its grid flips on a quantized copy are sparse: on the real
SmolLM2-135M case one of 14 changed matrices' flip matrix fell just under the i.i.d. rank
threshold (0.599 < 0.6), which made the copy "fine-tuned" (docs/lineage.md, "A known
change: the traced client's watermark").

The rule: every changed matrix the change touches is checked again against the reference
*with the change applied* (:func:`provenance.compare.gridframe.check_in_candidate_frame`
with the change as the source map, as a quantization chain's intermediate type is), its
grid evidence and the shape of what still differs replacing the first ones, and the
decision list runs again on the same calibrated test, alignment and structure. A candidate
that is the marked copy, stored or quantized, is then a copy with every code explained; a
fine-tune stays a fine-tune (its change is dense and structured with the mark removed, and
its norm gains moved). Tensors the alignment moved or stored in a packed layout (GPTQ, AWQ
...), a restructured candidate and PEFT adapters are left as judged (a stated limit).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch

from provenance.compare.api import _sample_rows as sample_rows
from provenance.compare.claims import compare_claims
from provenance.compare.copies import unchanged
from provenance.compare.engine import GridCheck
from provenance.compare.gridframe import FrameCheck, SourceMap, candidate_is_coarser, check_in_candidate_frame
from provenance.compare.gridframe import _with_check as with_check
from provenance.compare.result import CompareResult, TensorComparison
from provenance.compare.shape import dense_shape, grid_shape
from provenance.compare.verdict import decide
from provenance.formats.base import Checkpoint
from provenance.threads import torch_threads

#: kinds judged again: what a known change could have made look retrained or obfuscated
REJUDGED = ("fine-tune", "lora-merge", "continued-pretraining", "pruned-copy", "perturbed-copy")


@dataclass(frozen=True)
class KnownChange:
    """A change the reference went through before the candidate was made from it."""

    label: str
    """In words, for the verdict: ``client globex's watermark (amplitude 0.001)``."""
    sources: Mapping[str, SourceMap]
    """Per tensor it touches: the reference's rows from row 0 as the change left them."""


def rejudgeable(result: CompareResult) -> bool:
    """A related verdict a known change could explain, on a pair compared without views."""
    structure = result.structure
    return (result.verdict.kind in REJUDGED and result.adapter is None
            and not (structure is not None and structure.changed))


def _quantized_check(cand: Checkpoint, name: str, changed_ref: np.ndarray, sample: np.ndarray) -> FrameCheck | None:
    """The changed reference against a quantized candidate's stored cells: counted by the type's
    compiled cells kernel (as the streamed comparison does), the residual's shape from the
    sampled rows' cells; None when the type has no grid (the caller falls back)."""
    info = cand.info(name)
    grid = GridCheck("candidate", info)
    x = torch.from_numpy(np.ascontiguousarray(changed_ref, dtype=np.float32))
    parts = grid.add(cand.raw_rows(name), x, x, torch.from_numpy(sample))
    result = grid.result()
    if grid.error or (parts is None and len(sample)):
        return None
    shape = None
    if parts is not None:
        moved, zeroed, width = parts
        shape = grid_shape(moved.numpy(), zeroed.numpy(), changed_ref[sample].astype(np.float32), width.numpy())
    return FrameCheck(info.dtype, int(result["checked"]), int(result["outside"]), shape, False)


def _row_with_change(cand: Checkpoint, ref: Checkpoint, row: TensorComparison, source: SourceMap,
                     result: CompareResult, stop: Callable[[], bool] | None = None) -> TensorComparison:
    """``row`` judged against the changed reference: the cells of a quantized (or narrow float)
    candidate, else the plain difference on the sampled rows. ``stop``: the streamed check
    gives up at its next chunk once it returns True (the result is then not used)."""
    c_info, r_info = cand.info(row.name), ref.info(row.name)
    was_changed = not unchanged(row)
    # a tensor inside its grid but for a few codes is only counted again (no shape to judge)
    sample = sample_rows(r_info, result.options) if was_changed else np.zeros(0, dtype=np.int64)

    if candidate_is_coarser(c_info, r_info):
        check = None
        if c_info.block_size > 1:  # the whole changed tensor: the narrow-float path streams its own
            whole = ref.read_rows(row.name).astype(np.float32)
            check = _quantized_check(cand, row.name, source(whole, np.arange(whole.shape[0])), sample)
        if check is None:
            check = check_in_candidate_frame(cand, ref, row.name, None, source, sample_rows=sample, interrupted=stop)
        return with_check(row, check if was_changed else replace(check, shape=row.shape_of_change), "reference")
    # the plain difference's shape needs the sampled rows only: those are read (and changed), not
    # two whole tensors (a 70B MLP matrix is 0.9 GB of float32 per side)
    rows = max(1, len(sample))
    with cand.row_reader(row.name, rows) as ours, ref.row_reader(row.name, rows) as theirs:
        c_rows, r_rows = ours.gather(sample).numpy(), theirs.gather(sample).numpy()
    return replace(row, shape_of_change=dense_shape(c_rows, source(r_rows, sample)))


def _to_recheck(cand: Checkpoint, row: TensorComparison, change: KnownChange) -> bool:
    """Changed, or inside the grid but for a few codes (which the change may explain too), on a
    matrix the change touches and the pair compared as stored."""
    return (row.name in change.sources and row.is_matrix and not row.aligned and row.layout == "same"
            and not cand.info(row.name).packed
            and (not unchanged(row) or (row.grid_lossy_side == "candidate" and (row.grid_outside or 0) > 0)))


def tensors_to_recheck(cand: Checkpoint, result: CompareResult, change: KnownChange) -> list[str]:
    """The tensors :func:`judge_with_known_change` checks again (what a progress meter counts)."""
    return [row.name for row in result.tensors if _to_recheck(cand, row, change)] if rejudgeable(result) else []


def judge_with_known_change(cand: Checkpoint, ref: Checkpoint, result: CompareResult, change: KnownChange,
                            progress: Callable[[str, int], None] | None = None) -> CompareResult:
    """``result`` with its verdict decided again after adding ``change`` to the reference (module
    docstring); ``result`` itself when nothing it judged could be explained by a change.
    ``progress(name, n_bytes)`` is told each tensor checked again (a whole pass over the
    changed matrices: minutes at 7B)."""
    if not rejudgeable(result):
        return result
    rows = list(result.tensors)
    todo = [i for i, row in enumerate(rows) if _to_recheck(cand, row, change)]
    stop = threading.Event()

    def one(i: int) -> TensorComparison:
        return _row_with_change(cand, ref, rows[i], change.sources[rows[i].name], result, stop.is_set)

    # tensors on result.options.threads threads (the compiled cell test, reads and the mark
    # release the GIL) where every one is streamed in chunks (16-bit float candidates); a
    # quantized candidate's check holds a whole changed tensor, so those go one at a time.
    # One torch thread each, as compare's pass: spinning OpenMP threads on a shared machine
    # made each chunk's conversions many times slower (docs/benchmarks.md)
    streamed = all(cand.info(rows[i].name).block_size == 1 for i in todo)
    threads = max(1, result.options.threads) if streamed else 1
    with torch_threads(1), ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for i, future in zip(todo, [pool.submit(one, i) for i in todo], strict=True):
                rows[i] = future.result()
                if progress is not None:
                    progress(rows[i].name, cand.info(rows[i].name).n_bytes)
        except BaseException:
            # Ctrl-C or a failure: running checks stop at their next chunk, queued ones never start
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    rechecked = len(todo)
    if not rechecked:
        return result
    verdict = decide(result.test, rows, cand.architecture, ref.architecture, result.layout, result.alignment,
                     None, result.structure)
    still = sum(not unchanged(r) for r in rows if r.name in change.sources and r.is_matrix)
    description = f"{verdict.description}, once {change.label} is added to the reference"
    verdict = replace(verdict, known_change=change.label, description=description,
                      summary=verdict.summary.replace(verdict.description, description, 1),
                      evidence=(f"judged with {change.label} added to the reference: {rechecked} matrices "
                                f"checked again, {still} still differ beyond storage",) + verdict.evidence)
    claims = compare_claims(dict(cand.metadata_claims), dict(ref.metadata_claims), verdict.related, verdict.kind)
    if claims.disagreements:
        verdict = replace(verdict, evidence=verdict.evidence + tuple("metadata: " + d for d in claims.disagreements))
    return replace(result, verdict=verdict, tensors=tuple(rows), claims=claims)


__all__ = ["REJUDGED", "KnownChange", "judge_with_known_change", "rejudgeable", "tensors_to_recheck"]
