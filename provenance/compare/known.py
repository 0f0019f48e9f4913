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
from provenance.compare.gridframe import CellCount, FrameCheck, SourceMap, candidate_is_coarser, check_in_candidate_frame
from provenance.compare.gridframe import _compiled_narrow as compiled_narrow
from provenance.compare.gridframe import _with_check as with_check
from provenance.compare.options import CompareOptions
from provenance.compare.pairing import TensorPair
from provenance.compare.result import CompareResult, TensorComparison
from provenance.compare.shape import dense_shape, grid_shape
from provenance.compare.verdict import decide
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.quant.frame_rows import rows_per_chunk
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


class _QuantizedCells:
    """The changed reference against a quantized candidate's stored cells, chunk by chunk of
    rows in order: counted by the type's compiled cells kernel (as the streamed comparison
    does), the residual's shape from the sampled rows' cells. Holds one chunk and the sampled
    rows, never a whole changed matrix (a 70B MLP matrix is ~1 GB of float32)."""

    def __init__(self, info: TensorInfo, sample: np.ndarray) -> None:
        self.info, self.sample = info, sample
        self.grid = GridCheck("candidate", info)
        n, width = len(sample), info.row_length
        self.moved = np.zeros((n, width), np.float32)
        self.zeroed = np.zeros((n, width), bool)
        self.width = np.zeros((n, width), np.float32)
        self.x = np.zeros((n, width), np.float32)
        self.rows = 0
        self.kept = 0
        self.done: FrameCheck | None = None

    def add(self, start: int, raw: np.ndarray, x: np.ndarray) -> None:
        """Stored rows ``raw`` and changed reference rows ``x`` (float32) from row ``start``."""
        at, to = (int(v) for v in np.searchsorted(self.sample, [start, start + x.shape[0]]))
        local = self.sample[at:to] - start
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        parts = self.grid.add(raw, t, t, torch.from_numpy(local) if len(local) else None)
        if parts is not None:
            for out, part in zip((self.moved, self.zeroed, self.width), parts, strict=True):
                out[at:to] = part.numpy()
            self.kept += to - at
        self.x[at:to] = x[local]
        self.rows += x.shape[0]
        if self.rows == self.info.n_rows:
            self.done = self._result()
            del self.moved, self.zeroed, self.width, self.x  # not held until the pass ends

    def _result(self) -> FrameCheck | None:
        grid, result = self.grid, self.grid.result()
        if grid.error or self.kept != len(self.sample):
            return None
        shape = grid_shape(self.moved, self.zeroed, self.x, self.width) if len(self.sample) else None
        return FrameCheck(self.info.dtype, int(result["checked"]), int(result["outside"]), shape, False)

    def result(self) -> FrameCheck | None:
        """None when the type has no grid (the caller falls back) or rows are missing."""
        return self.done


def _quantized_check(cand: Checkpoint, ref: Checkpoint, name: str, source: SourceMap, sample: np.ndarray,
                     stop: Callable[[], bool] | None = None) -> FrameCheck | None:
    """The changed reference against a quantized candidate's stored cells (:class:`_QuantizedCells`),
    read in row chunks; None when the type has no grid (the caller falls back)."""
    info = cand.info(name)
    cells = _QuantizedCells(info, sample)
    step = rows_per_chunk(info.row_length)
    for start in range(0, info.n_rows, step):
        if stop is not None and stop():
            return None
        end = min(info.n_rows, start + step)
        rows = ref.read_rows(name, start, end).astype(np.float32)
        cells.add(start, cand.raw_rows(name, start, end), source(rows, np.arange(start, end)))
    return cells.result()


class _NarrowCells:
    """The changed reference against a 16-bit float candidate's rounding cells, from chunks in order."""

    def __init__(self, info: TensorInfo, sample: np.ndarray, narrow: torch.dtype,
                 finishing: threading.Lock | None = None) -> None:
        self.info, self.rows = info, 0
        self.count: CellCount | None = CellCount(info.dtype, sample, narrow)
        self.done: FrameCheck | None = None
        self.finishing = finishing or threading.Lock()

    def add(self, start: int, values: np.ndarray, x: np.ndarray) -> None:
        assert self.count is not None
        self.count.add_narrow(start, values, x)  # float32: counted as float64 without a copy
        self.rows += values.shape[0]
        if self.rows == self.info.n_rows:
            # finished now: the sampled rows are dropped, not held until the pass ends. Their
            # cells and residuals are built in float64 (~0.3 GB at a 70B MLP matrix), one matrix
            # at a time (``finishing``): the pass's other threads stream on meanwhile
            with self.finishing:
                self.done, self.count = self.count.result(), None

    def result(self) -> FrameCheck | None:
        return self.done


class _ChangedTap:
    """One matrix's changed-reference check fed by the comparison's own chunks (:class:`ChangedCells`)."""

    def __init__(self, cells: _QuantizedCells | _NarrowCells, source: SourceMap) -> None:
        self.cells, self.source, self.failed = cells, source, False

    def add(self, a: int, b: int, c_rows: torch.Tensor, ref_rows: torch.Tensor, raw: np.ndarray | None) -> None:
        if self.failed:
            return
        x = self.source(ref_rows.numpy(), np.arange(a, b))
        if isinstance(self.cells, _NarrowCells):
            self.cells.add(a, np.ascontiguousarray(c_rows.numpy()), x)
        elif raw is None:
            self.failed = True  # no stored bytes in this pass (grid check off): checked on its own later
        else:
            self.cells.add(a, raw, x)

    def result(self) -> FrameCheck | None:
        return None if self.failed else self.cells.result()


class ChangedCells:
    """A known change judged inside the comparison's one pass: for each pair it feeds
    (:class:`provenance.compare.engine.ChunkTap`) that ``change`` touches and whose candidate
    is the coarser side, the changed reference against the candidate's stored cells, from the
    chunks the pass has already read, exactly as :func:`judge_with_known_change` checks them
    on its own (the same counts and sampled rows). Pass it as ``compare(..., taps=...)``, then
    ``judge_with_known_change(..., streamed=cells.checks())``: the re-judgement then reads
    nothing again (docs/lineage.md, "A known change: the traced client's watermark")."""

    def __init__(self, cand: Checkpoint, ref: Checkpoint, change: KnownChange, options: CompareOptions) -> None:
        self.cand, self.ref, self.change, self.options = cand, ref, change, options
        self._taps: dict[str, _ChangedTap] = {}
        self._lock = threading.Lock()
        self._finishing = threading.Lock()

    def __call__(self, pair: TensorPair) -> _ChangedTap | None:
        source = self.change.sources.get(pair.name)
        if source is None or not pair.is_matrix or pair.layout != "same":
            return None
        c_info, r_info = self.cand.info(pair.name), self.ref.info(pair.name)
        if c_info.packed or not candidate_is_coarser(c_info, r_info):
            return None  # a finer candidate's check reads its sampled rows only
        sample = sample_rows(r_info, self.options)
        narrow = compiled_narrow(c_info)
        if c_info.block_size > 1:
            cells: _QuantizedCells | _NarrowCells = _QuantizedCells(c_info, sample)
        elif narrow is not None:
            cells = _NarrowCells(c_info, sample, narrow, self._finishing)
        else:
            return None
        tap = _ChangedTap(cells, source)
        with self._lock:  # pairs stream on several threads
            self._taps[pair.name] = tap
        return tap

    def checks(self) -> dict[str, FrameCheck]:
        """Per tensor checked completely in the pass, its check."""
        with self._lock:
            taps = dict(self._taps)
        return {name: check for name, tap in taps.items() if (check := tap.result()) is not None}


def _row_with_change(cand: Checkpoint, ref: Checkpoint, row: TensorComparison, source: SourceMap,
                     result: CompareResult, stop: Callable[[], bool] | None = None,
                     streamed: FrameCheck | None = None) -> TensorComparison:
    """``row`` judged against the changed reference: the cells of a quantized (or narrow float)
    candidate, else the plain difference on the sampled rows. ``stop``: the streamed check
    gives up at its next chunk once it returns True (the result is then not used).
    ``streamed``: that check, already made inside the comparison's pass (:class:`ChangedCells`)."""
    c_info, r_info = cand.info(row.name), ref.info(row.name)
    was_changed = not unchanged(row)
    # a tensor inside its grid but for a few codes is only counted again (no shape to judge)
    sample = sample_rows(r_info, result.options) if was_changed else np.zeros(0, dtype=np.int64)

    if candidate_is_coarser(c_info, r_info):
        check = streamed
        if check is None and c_info.block_size > 1:  # the narrow-float path streams its own
            check = _quantized_check(cand, ref, row.name, source, sample, stop)
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
                            progress: Callable[[str, int], None] | None = None,
                            streamed: Mapping[str, FrameCheck] | None = None) -> CompareResult:
    """``result`` with its verdict decided again after adding ``change`` to the reference (module
    docstring); ``result`` itself when nothing it judged could be explained by a change.
    ``progress(name, n_bytes)`` is told each tensor checked again (a whole pass over the
    changed matrices: minutes at 7B, unless made in the comparison's pass). ``streamed``: the
    checks :class:`ChangedCells` made inside the comparison's pass with this ``change``; only
    the tensors it lacks are read again."""
    streamed = streamed or {}
    if not rejudgeable(result):
        return result
    rows = list(result.tensors)
    todo = [i for i, row in enumerate(rows) if _to_recheck(cand, row, change)]
    stop = threading.Event()

    def one(i: int) -> TensorComparison:
        return _row_with_change(cand, ref, rows[i], change.sources[rows[i].name], result, stop.is_set,
                                streamed.get(rows[i].name))

    # tensors on result.options.threads threads (the compiled cell test, reads and the mark
    # release the GIL), every one streamed in chunks of rows.
    # One torch thread each, as compare's pass: spinning OpenMP threads on a shared machine
    # made each chunk's conversions many times slower (docs/benchmarks.md)
    with torch_threads(1), ThreadPoolExecutor(max_workers=max(1, result.options.threads)) as pool:
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


__all__ = ["REJUDGED", "ChangedCells", "KnownChange", "judge_with_known_change", "rejudgeable", "tensors_to_recheck"]
