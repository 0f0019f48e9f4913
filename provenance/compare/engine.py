"""One streamed pass over an aligned tensor pair: statistics, delta sample, sketch, grid.

Each call is a pure function of (open checkpoints, pair, transform, options) that returns
a picklable :class:`PairOutcome`; nothing is shared between calls, so pairs run in
threads (torch releases the GIL in its kernels) or could be shipped to workers.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from provenance.codecs.grid import QuantGrid, quant_grid
from provenance.codecs.native import bind
from provenance.codecs.native.cellresidual import grid_cell_residual
from provenance.codecs.native.gridcheck import CELL_NOISE, CELL_OUTSIDE, CELL_TOTAL
from provenance.codecs.native.parallel import map_tiles
from provenance.codecs.quanttype import QuantType
from provenance.codecs.registry import find_quant_type
from provenance.codecs.types import plain_type
from provenance.compare.pairing import TensorPair, apply_layout
from provenance.compare.result import DifferenceShape, TransformSummary
from provenance.compare.shape import GRID_TOLERANCE_STEPS, cell_residual, dense_shape, grid_shape, rounding_cells
from provenance.compare.sketch import SketchBuilder, SketchSpec, TensorSketch
from provenance.compare.stats import PairAccumulator, PairStats, effective_rank
from provenance.compare.transform import Transform
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.packed_read import PackedRowReader
from provenance.formats.prefetch import SlotBuffers, chunk_ranges, prefetched_each
from provenance.formats.rows import RowReader


class ChunkTap(Protocol):
    """Another analysis fed from the chunks one pair's stream has already read (so it reads
    nothing itself): rows ``[a, b)`` of the candidate (``c_rows``) and the reference (float32,
    as stored, row ``a`` first) and, where the candidate is a ggml-quantized side whose grid is
    checked, its stored bytes (``raw``, else None). Called in the pair's thread, in row order."""

    def add(self, a: int, b: int, c_rows: torch.Tensor, ref_rows: torch.Tensor, raw: np.ndarray | None) -> None: ...


PairTaps = Callable[[TensorPair], ChunkTap | None]
"""Per pair streamed as stored (same layout, identity transform): the tap its chunks feed, if any."""


class StreamStopped(Exception):
    """A streamed pair abandoned because the pass was stopped (its result is never read)."""


@dataclass
class PairOutcome:
    pair: TensorPair
    stats: PairStats
    transform: TransformSummary | None = None
    rank: dict[str, Any] | None = None
    """Effective rank of the delta on sampled rows (computed here, so no sample is kept)."""
    sketch_reference: list[tuple[int, np.ndarray]] = field(default_factory=list, repr=False)
    sketch_candidate: list[tuple[int, np.ndarray]] = field(default_factory=list, repr=False)
    units_reference: np.ndarray | None = field(default=None, repr=False)
    """Unit-space slices (:class:`provenance.compare.sketch.SketchSpec`), when asked for."""
    units_candidate: np.ndarray | None = field(default=None, repr=False)
    grid: dict[str, Any] | None = None
    shape: DifferenceShape | None = None
    """The shape of the change on the sampled rows (changed matrices only)."""
    bytes_read: int = 0
    seconds: float = 0.0


def bits_per_weight(info: TensorInfo) -> float:
    return 8.0 * info.block_bytes / info.block_size


def rows_per_chunk(row_length: int, target_elems: int = 1 << 17) -> int:
    """Rows per streamed chunk: ~128K elements keeps the working set (two inputs, the
    d/s buffer) inside a 2 MiB L2 cache while per-op overhead stays small."""
    return max(1, target_elems // max(1, row_length))


class GridCheck:
    """Is the higher-precision side inside the cells of the lower-precision side?

    For a quantized side the cells come from its stored grid (``provenance.codecs.grid``);
    for an f16/bf16 side against f32, "inside" means "rounds to the stored value". A
    requantized or converted copy of the same weights is inside nearly everywhere; a
    fine-tune moves weights across cell boundaries.
    """

    def __init__(self, lossy: str, info: TensorInfo, threads: int = 1, other_f16: bool = False) -> None:
        self.lossy, self.info = lossy, info
        self.threads = threads  # of the compiled cells kernel's tiles (counts and sums do not depend on it)
        # the other side is stored as F16: its values are their own f16 rounding, which the
        # compiled kernel then skips (the same counts, less work per weight)
        self.other_f16 = other_f16
        self.outside = 0
        self.total = 0
        self.noise_energy = 0.0
        self.error: str | None = None

    def add(self, lossy_raw: np.ndarray | None, lossy_values: torch.Tensor, other: torch.Tensor,
            sample: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Count ``other``'s weights outside the lossy side's cells; for the local rows
        ``sample``, return their cell residual, zeroed mask and cell width
        (:func:`provenance.compare.shape.cell_residual`). The counts run in the type's
        compiled kernel where it has one; only the sampled rows' residuals are computed in
        torch (they decide noise vs pruning vs fine-tune, docs/lineage.md)."""
        if self.error:
            return None
        info = self.info
        if info.block_size == 1:
            plain = plain_type(info.dtype)
            if plain is None or not plain.narrow_float:
                self.error = f"no grid for {info.dtype}"
                return None
            rounded = other.to(plain.torch_dtype()).to(torch.float32)
            self.outside += int((rounded != lossy_values).sum())
            self.total += other.numel()
            if sample is None or not len(sample):
                return None
            lo, hi = rounding_cells(lossy_values.index_select(0, sample), plain.torch_dtype())
            return self._sample(other.index_select(0, sample), lo, hi, GRID_TOLERANCE_STEPS * (hi - lo), None)
        qt = find_quant_type(int(info.ggml_type))  # type: ignore[arg-type]
        if qt is not None and qt.cells is not None and lossy_raw is not None and other.device.type == "cpu":
            self.add_compiled(qt, lossy_raw, other)
        else:
            self.add_torch(lossy_raw, other)
        if self.error or sample is None or not len(sample) or lossy_raw is None:
            return None
        return self.residual(np.asarray(lossy_raw)[sample.numpy()], other.index_select(0, sample))

    def residual(self, lossy_raw: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Cell residual, zeroed mask and cell width of rows ``x`` in the cells of the stored
        rows ``lossy_raw`` (the same rows; None for a type without a grid)."""
        if x.device.type != "cpu":
            return self.residual_torch(lossy_raw, x)
        grid = None if self.error else self._grid(lossy_raw)
        if grid is None:
            return None
        # one compiled pass, the values of residual_torch (tests/compare/test_cell_residual.py)
        return grid_cell_residual(grid, x, GRID_TOLERANCE_STEPS, exact16=self.other_f16)

    def residual_torch(self, lossy_raw: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """:meth:`residual` in torch ops on the grid's per-weight cells (any device)."""
        grid = None if self.error else self._grid(lossy_raw)
        if grid is None:
            return None
        lo, hi = grid.cell_bounds(clip=True)
        step = grid.step().abs()
        return self._sample(x, lo, hi, GRID_TOLERANCE_STEPS * step, x.to(torch.float16).to(torch.float32))

    def _grid(self, lossy_raw: np.ndarray | None) -> QuantGrid | None:
        """The stored grid of the rows ``lossy_raw`` (None, with the error recorded, for a
        type without one)."""
        try:
            return quant_grid(lossy_raw, int(self.info.ggml_type))  # type: ignore[arg-type]
        except (NotImplementedError, KeyError, ValueError) as exc:
            self.error = f"no grid for {self.info.dtype}: {exc}"
            return None

    def _cells(self, lossy_raw: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Cell bounds and step of the stored rows ``lossy_raw`` (None, with the error
        recorded, for a type without a grid)."""
        grid = self._grid(lossy_raw)
        if grid is None:
            return None
        lo, hi = grid.cell_bounds(clip=True)
        return lo, hi, grid.step().abs()

    def add_torch(self, lossy_raw: np.ndarray | None, other: torch.Tensor) -> None:
        """The cell test in torch ops on the stored grid (any device, every type with a grid)."""
        cells = self._cells(lossy_raw)
        if cells is not None:
            self.add_cells(other, *cells)

    def add_cells(self, other: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, step: torch.Tensor) -> None:
        """The cell test on explicit per-weight cells ``[lo, hi]`` and steps: a stored grid's
        (:meth:`add_torch`) or a packed layout's (GPTQ, AWQ, NF4, MLX ...:
        :meth:`provenance.formats.packed_read.PackedRowReader.cells`), whose end cells are
        open (an infinite step: no tolerance, no rounding noise)."""
        if self.error:
            return
        tol = GRID_TOLERANCE_STEPS * torch.nan_to_num(step, posinf=0.0)
        out = (other < lo - tol) | (other > hi + tol)
        # llama.cpp quantizes f16-rounded values when converting from f16; a weight whose
        # f16 rounding lands in the cell is inside too (shared/data/README: this explains
        # all Q4_K and nearly all Q8_0 boundary cases of the real llama.cpp output)
        other16 = other.to(torch.float16).to(torch.float32)
        out &= (other16 < lo - tol) | (other16 > hi + tol)
        self.outside += int(out.sum())
        self.total += other.numel()
        finite = torch.isfinite(step)
        self.noise_energy += float((step.double()[finite] ** 2).sum() / 12.0)

    @staticmethod
    def _sample(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tol: torch.Tensor | float,
                alt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        moved, zeroed = cell_residual(x, lo, hi, tol, alt)
        width = torch.where(torch.isfinite(hi - lo), hi - lo, torch.zeros_like(x))
        return moved, zeroed, width

    def add_compiled(self, qt: QuantType, lossy_raw: np.ndarray, other: torch.Tensor) -> None:
        """The same test in the type's compiled cells kernel (``QuantType.cells``): one pass
        over the stored blocks, no per-weight grid tensors (the tests hold it to
        :meth:`add_torch`: equal counts)."""
        assert qt.cells is not None
        fn, tables = bind(qt.cells)
        blocks = np.ascontiguousarray(lossy_raw).reshape(-1, qt.type_size)
        values = np.ascontiguousarray(other.numpy(), dtype=np.float32).reshape(-1, qt.block_size)

        def accumulators(_weights: int) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros(2, dtype=np.int64), np.zeros(1, dtype=np.float64)

        # tiles fixed by the data, reduced in their order: the same sums on any thread count
        shared = (np.float32(GRID_TOLERANCE_STEPS), self.other_f16, *tables)
        tiles = map_tiles(fn, (blocks, values), accumulators, shared, self.threads, values.size)
        noise = 0.0
        for counts, sums in tiles:
            self.outside += int(counts[CELL_OUTSIDE])
            self.total += int(counts[CELL_TOTAL])
            noise += float(sums[CELL_NOISE])
        self.noise_energy += noise / 12.0

    def result(self) -> dict[str, Any]:
        if self.error:
            return {"lossy_side": self.lossy, "type": self.info.dtype, "error": self.error}
        frac = self.outside / self.total if self.total else None
        out = {"lossy_side": self.lossy, "type": self.info.dtype, "outside": self.outside,
               "checked": self.total, "outside_fraction": frac,
               "predicted_noise_energy": self.noise_energy or None}
        if self.info.packing is not None:
            out["rounds_to_nearest"] = self.info.packing.rounds_to_nearest
        return out


def _lossy_side(cand: TensorInfo, ref: TensorInfo) -> str | None:
    bc, br = bits_per_weight(cand), bits_per_weight(ref)
    if bc < br:
        return "candidate"
    if br < bc:
        return "reference"
    return None


class _RowSample:
    """The sampled rows of one pair, kept as their chunks pass: the delta (for its effective
    rank) and, for matrices, the reference rows and, where the candidate is the quantized
    side, their cell residuals (for the shape of the change, :mod:`.shape`)."""

    def __init__(self, rows: np.ndarray | None, n_rows: int, row_len: int, matrix: bool, residuals: bool) -> None:
        sample = np.unique(np.asarray(rows if rows is not None else [], dtype=np.int64))
        self.index = sample[(sample >= 0) & (sample < n_rows)]
        self.index_t = torch.from_numpy(self.index)
        n = len(self.index)
        self.delta = torch.empty((n, row_len), dtype=torch.float32) if n else None
        self.ref = torch.empty((n, row_len), dtype=torch.float32) if n and matrix else None
        self.residual = None
        self.wants_residual = self.ref is not None and residuals
        if self.wants_residual:
            self.residual = (torch.zeros_like(self.ref), torch.zeros(self.ref.shape, dtype=torch.bool), torch.zeros_like(self.ref))
        self.raw: np.ndarray | None = None
        """The stored bytes of the sampled rows of a quantized candidate, kept as they pass, for
        :meth:`stored_residual` (one grid decode for the whole sample, not one per chunk)."""
        self.span = (0, 0)

    def add(self, a: int, b: int, c_rows: torch.Tensor, ref_rows: torch.Tensor) -> torch.Tensor | None:
        """Keep the sampled rows among reference rows ``[a, b)``; returns their local indices."""
        if self.delta is None:
            return None
        lo, hi = (int(v) for v in np.searchsorted(self.index, [a, b]))
        self.span = (lo, hi)
        if hi <= lo:
            return None
        rows = self.index_t[lo:hi] - a
        torch.sub(c_rows.index_select(0, rows), ref_rows.index_select(0, rows), out=self.delta[lo:hi])
        if self.ref is not None:
            torch.index_select(ref_rows, 0, rows, out=self.ref[lo:hi])
        return rows if self.wants_residual else None

    def keep_raw(self, raw: np.ndarray, local: torch.Tensor | None) -> None:
        """Keep the stored bytes of the sampled rows ``local`` of a chunk's stored rows ``raw``."""
        if local is None or not len(local):
            return
        if self.raw is None:
            self.raw = np.zeros((len(self.index), raw.shape[1]), dtype=np.uint8)
        lo, hi = self.span
        self.raw[lo:hi] = raw[local.numpy()]

    def stored_residual(self, grid: GridCheck) -> None:
        """The sampled rows' cell residuals in the kept stored rows' cells, all at once."""
        if self.raw is not None and self.ref is not None:
            self.keep_residual_all(grid.residual(self.raw, self.ref))

    def keep_residual_all(self, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
        self.span = (0, len(self.index))
        self.keep_residual(parts)

    def keep_residual(self, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
        if parts is not None and self.residual is not None:
            lo, hi = self.span
            for buffer, part in zip(self.residual, parts, strict=True):
                buffer[lo:hi] = part

    def shape(self, grid: GridCheck | None) -> DifferenceShape | None:
        """The shape of the change: of the grid residual when the candidate is the quantized
        side (its rounding noise is no change), else of the plain difference (a coarser
        reference adds its own rounding to that difference)."""
        if self.ref is None or self.delta is None:
            return None
        if grid is not None and grid.error is None and self.residual is not None:
            moved, zeroed, width = self.residual
            return grid_shape(moved.numpy(), zeroed.numpy(), self.ref.numpy(), width.numpy())
        return dense_shape((self.ref + self.delta).numpy(), self.ref.numpy())


def _grid_check(c_info: TensorInfo, r_info: TensorInfo, threads: int = 1) -> GridCheck | None:
    """The grid check of the lossy side: a packed layout (GPTQ, NF4, MLX ...) against a
    plain one, else the side with fewer bits per weight; None when neither is lossier."""
    packed = [side for side, info in (("candidate", c_info), ("reference", r_info)) if info.packed]
    lossy = packed[0] if len(packed) == 1 else _lossy_side(c_info, r_info) if not packed else None
    if lossy is None:
        return None
    lossy_info, other_info = (c_info, r_info) if lossy == "candidate" else (r_info, c_info)
    return GridCheck(lossy, lossy_info, threads, other_f16=other_info.dtype == "F16")


def _add_grid_rows(grid: GridCheck, lossy_reader: RowReader, raw: np.ndarray | None, a: int, b: int,
                   lossy_rows: torch.Tensor, other_rows: torch.Tensor) -> None:
    """Rows ``[a, b)`` of the lossy side into the grid check: a packed layout's cells come
    from its reader, a ggml type's from its stored blocks ``raw`` (None for a narrow float)."""
    if isinstance(lossy_reader, PackedRowReader):
        grid.add_cells(other_rows, *lossy_reader.cells(a, b))
    else:
        grid.add(raw, lossy_rows, other_rows)


def _add_candidate_grid_rows(grid: GridCheck, cand_reader: RowReader, raw: np.ndarray | None, sample: _RowSample,
                             local: torch.Tensor | None, a: int, b: int, c_rows: torch.Tensor,
                             ref_rows: torch.Tensor) -> None:
    """Rows ``[a, b)`` into the grid check of a lossy candidate: a packed layout's cells from its
    reader; a ggml type's counts now (its stored blocks ``raw``) and its sampled rows' stored
    bytes kept, their residuals computed once at the end (:meth:`_RowSample.stored_residual`);
    a narrow float's residuals here."""
    if isinstance(cand_reader, PackedRowReader):
        _add_grid_rows(grid, cand_reader, None, a, b, c_rows, ref_rows)
    elif grid.info.quantized:
        assert raw is not None
        grid.add(raw, c_rows, ref_rows)
        sample.keep_raw(raw, local)
    else:
        sample.keep_residual(grid.add(None, c_rows, ref_rows, local))


class _PairReads:
    """Where one pair's chunks come from: reference rows, candidate rows (streamed, gathered
    through a row permutation, or cut from a whole reshaped tensor) and, for a ggml grid check,
    the lossy side's stored bytes. In the common case (both sides streamed as stored) a chunk
    is read into a :class:`SlotBuffers` slot, so the next one can be read and decoded on a
    worker thread while this one is analysed (:func:`provenance.formats.prefetch.prefetched`);
    a permuted or reshaped candidate and a packed layout's cells are read in turn."""

    def __init__(self, ref_reader: RowReader, cand_reader: RowReader | None, full_cand: torch.Tensor | None,
                 transform: Transform, grid: GridCheck | None, step: int) -> None:
        self.ref_reader, self.cand_reader, self.full_cand, self.transform = ref_reader, cand_reader, full_cand, transform
        lossy = grid.lossy if grid is not None else None
        self.lossy_reader = (cand_reader if lossy == "candidate" else ref_reader) if grid is not None else None
        self.needs_raw = grid is not None and grid.info.quantized and not isinstance(self.lossy_reader, PackedRowReader)
        self.ahead = (cand_reader is not None and not transform.permutes_rows
                      and not any(isinstance(r, PackedRowReader) for r in (ref_reader, cand_reader)))
        self.ref_slots = SlotBuffers(ref_reader, step)
        self.cand_slots = SlotBuffers(cand_reader, step) if cand_reader is not None else None

    def load_reference(self, a: int, b: int, slot: int) -> tuple[torch.Tensor, np.ndarray | None]:
        """Reference rows ``[a, b)`` and, where the reference is the ggml side of the grid
        check, their stored bytes (one file: :meth:`load_candidate` reads the other beside it)."""
        raw_here = self.needs_raw and self.lossy_reader is self.ref_reader
        if self.ahead:
            return self.ref_slots.rows(slot, a, b), self.ref_slots.raw(slot, a, b) if raw_here else None
        return self.ref_reader.read(a, b), self.ref_reader.raw(a, b) if raw_here else None

    def load_candidate(self, a: int, b: int, slot: int) -> tuple[torch.Tensor, np.ndarray | None]:
        """Candidate rows ``[a, b)`` (before the transform's values) and, where the candidate is
        the ggml side of the grid check, their stored bytes."""
        transform, full_cand, cand_reader = self.transform, self.full_cand, self.cand_reader
        raw_here = self.needs_raw and cand_reader is not None and self.lossy_reader is cand_reader
        if self.ahead:
            assert self.cand_slots is not None
            return self.cand_slots.rows(slot, a, b), self.cand_slots.raw(slot, a, b) if raw_here else None
        if full_cand is not None:
            c_rows = full_cand[torch.from_numpy(transform.candidate_rows(a, b))] if transform.permutes_rows else full_cand[a:b]
        elif transform.permutes_rows:
            assert cand_reader is not None
            c_rows = cand_reader.gather(transform.candidate_rows(a, b))
        else:
            assert cand_reader is not None
            c_rows = cand_reader.read(a, b)
        return c_rows, cand_reader.raw(a, b) if raw_here and cand_reader is not None else None


def _pair_sketches(pair: TensorPair, sketch: SketchSpec | tuple[np.ndarray, np.ndarray] | None, n_rows: int,
                   row_len: int) -> tuple[TensorSketch, TensorSketch] | None:
    """The reference's and the candidate's sketch of one tensor (None: not asked for / no part)."""
    if sketch is None or not SketchBuilder.wants(pair.role):
        return None
    spec = sketch if isinstance(sketch, SketchSpec) else SketchSpec(*sketch)
    return spec.tensor(pair.role, n_rows, row_len), spec.tensor(pair.role, n_rows, row_len)


def stream_pair(
    candidate: Checkpoint,
    reference: Checkpoint,
    pair: TensorPair,
    transform: Transform | None = None,
    *,
    sample_rows: np.ndarray | None = None,
    sketch: SketchSpec | tuple[np.ndarray, np.ndarray] | None = None,
    grid_check: bool = True,
    chunk_elems: int = 1 << 17,
    stop: Callable[[], bool] | None = None,
    threads: int = 1,
    tap: ChunkTap | None = None,
) -> PairOutcome:
    """Stream one pair in reference row chunks, candidate mapped through ``transform``;
    ``stop``: asked before each chunk, :class:`StreamStopped` when it says so (Ctrl-C);
    ``threads``: of the compiled grid check, which shares each chunk out in tiles (the
    pairs themselves run on their own threads, so the last, largest pair of a pass is not
    left to one core). ``tap``: fed every chunk of a pair streamed as stored (ignored otherwise)."""
    t0 = time.perf_counter()
    transform = transform or Transform()
    if not transform.is_identity or pair.layout != "same":
        tap = None
    r_info, c_info = reference.info(pair.name), candidate.info(pair.name)
    n_rows, row_len = r_info.n_rows, r_info.row_length
    step = rows_per_chunk(row_len, chunk_elems)
    acc = PairAccumulator()
    ref_reader = reference.row_reader(pair.name, step)
    full_cand: torch.Tensor | None = None
    cand_reader: RowReader | None = None
    if pair.layout != "same":
        full_cand = torch.from_numpy(apply_layout(candidate.read(pair.name), pair.layout, r_info.shape).reshape(n_rows, row_len))
    else:
        cand_reader = candidate.row_reader(pair.name, step)
    sketches = _pair_sketches(pair, sketch, n_rows, row_len)
    grid = _grid_check(c_info, r_info, threads) if grid_check and transform.is_identity and pair.layout == "same" else None
    lossy = grid.lossy if grid is not None else None
    # cell residuals of the sampled rows where the candidate is a ggml-quantized side (a packed
    # layout's cells come from its reader, checked whole: its change is judged on the plain delta)
    sample = _RowSample(sample_rows, n_rows, row_len, pair.is_matrix, lossy == "candidate" and not c_info.packed)
    reads = _PairReads(ref_reader, cand_reader, full_cand, transform, grid, step)
    ranges = chunk_ranges(n_rows, step)
    try:
        # the two files' next chunks are read side by side, on two worker threads (one with --threads 1)
        with closing(prefetched_each(ranges, (reads.load_reference, reads.load_candidate), reads.ahead,
                                     workers=threads)) as chunks:
            for (a, b), ((ref_rows, ref_raw), (c_rows, cand_raw)) in zip(ranges, chunks, strict=True):
                raw = cand_raw if ref_raw is None else ref_raw
                if stop is not None and stop():
                    raise StreamStopped(pair.name)
                c_rows = transform.apply(c_rows, a)
                acc.add(c_rows, ref_rows)
                if sketches is not None:
                    sketches[0].add(a, ref_rows)
                    sketches[1].add(a, c_rows)
                local = sample.add(a, b, c_rows, ref_rows)
                if grid is not None and lossy == "candidate":
                    assert cand_reader is not None  # the grid is checked on same-layout pairs only
                    _add_candidate_grid_rows(grid, cand_reader, raw, sample, local, a, b, c_rows, ref_rows)
                elif grid is not None:
                    _add_grid_rows(grid, ref_reader, raw, a, b, ref_rows, c_rows)
                if tap is not None:
                    tap.add(a, b, c_rows, ref_rows, raw if lossy == "candidate" else None)
    finally:
        ref_reader.close()
        if cand_reader is not None:
            cand_reader.close()
    if grid is not None and lossy == "candidate":
        sample.stored_residual(grid)
    stats = acc.result(centred_only=not pair.is_matrix)
    changed = stats.max_abs_delta > 0
    out = PairOutcome(
        pair=pair, stats=stats,
        transform=None if transform.is_identity else transform.summary(),
        rank=effective_rank(sample.delta) if sample.delta is not None and pair.is_matrix and changed else None,
        grid=grid.result() if grid is not None else None,
        shape=sample.shape(grid) if changed else None,
        bytes_read=r_info.n_bytes + c_info.n_bytes,
        seconds=time.perf_counter() - t0,
    )
    if sketches is not None:
        out.sketch_reference, out.sketch_candidate = sketches[0].parts(), sketches[1].parts()
        out.units_reference, out.units_candidate = sketches[0].unit_part(), sketches[1].unit_part()
    return out
