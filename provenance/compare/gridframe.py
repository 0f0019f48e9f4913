"""Grid consistency in the candidate's frame: undo an obfuscation on the reference, not the candidate.

A quantized candidate's stored codes are cells in *its* frame. When alignment recovered
permutations and scales (:mod:`.align`), the reference is carried into that frame
(:meth:`Transform.unapply_numpy`) and each candidate weight's cell is asked whether it holds
the reference weight (docs/lineage.md, "Grid consistency after alignment"). Recovered scales
are estimates (norm ratios); a quantized copy pins the true ones down far more tightly, so
where the transform rescales rows or columns, per-row and per-column factors are fitted to
the cells themselves: alternately, each row (column) takes the factor closest to its least-
squares fit to the stored values that puts all its weights inside their cells, when one exists. "Exact" then means a
witness was found: one scaling of the reference under which every stored code is the
nearest grid point.

Quantization chains: the same check with the reference first rounded through an
intermediate llama.cpp type (:func:`intermediate`), e.g. a Q8_0 file requantized to
Q4_K_M, whose codes the reference itself does not explain.

Memory: streamed in chunks of rows (:class:`provenance.quant.frame_rows.FrameRows`, shared
with ``quantcheck --realign``): one chunk of each side plus per-row and per-column vectors,
never a whole tensor (a 70B MLP matrix holds 235 M weights); the scale fit takes one pass
over the chunks per round. Only the tensors a related candidate's alignment touched, or
those a chain is tried on, are checked.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from provenance.codecs.types import plain_type
from provenance.compare.copies import GRID_OUTSIDE_MAX, unchanged
from provenance.compare.narrowcells import INF_BITS, _bits, cell_test, cell_width, count_outside, maybe_outside
from provenance.compare.result import DifferenceShape, TensorComparison
from provenance.compare.shape import GRID_TOLERANCE_STEPS, cell_residual, grid_shape, rounding_cells
from provenance.compare.transform import Transform
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.quant.frame_rows import FrameRows, SourceMap, rows_per_chunk


@dataclass(frozen=True)
class FrameCheck:
    """Grid consistency of one tensor in the candidate's frame."""

    qtype: str
    checked: int
    outside: int
    shape: DifferenceShape | None
    refined: bool
    """Row/column factors were fitted to the cells."""

    @property
    def outside_fraction(self) -> float:
        return self.outside / self.checked if self.checked else 1.0


def candidate_is_coarser(cand: TensorInfo, ref: TensorInfo) -> bool:
    """The candidate stored this tensor in a quantized or narrow float type no wider than the reference's."""
    bits_c, bits_r = 8.0 * cand.block_bytes / cand.block_size, 8.0 * ref.block_bytes / ref.block_size
    narrow = cand.block_size > 1 or (plain_type(cand.dtype) is not None and plain_type(cand.dtype).narrow_float)  # type: ignore[union-attr]
    return narrow and bits_c <= bits_r


def stored_cells(cand: Checkpoint, info: TensorInfo, start: int = 0,
                 stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper cell bounds of every stored weight of rows ``[start, stop)`` (candidate
    frame), and the stored values (float64, ``(rows, row_length)``)."""
    if info.block_size > 1:
        from provenance.codecs.grid import quant_grid

        grid = quant_grid(cand.raw_rows(info.name, start, stop), int(info.ggml_type))  # type: ignore[arg-type]
        lo, hi = grid.cell_bounds(clip=True)
        return lo.double().numpy(), hi.double().numpy(), grid.values().double().numpy()
    values = torch.from_numpy(np.ascontiguousarray(cand.read_rows(info.name, start, stop), dtype=np.float32))
    plain = plain_type(info.dtype)
    assert plain is not None
    lo, hi = rounding_cells(values, plain.torch_dtype())
    return lo.double().numpy(), hi.double().numpy(), values.double().numpy()


def _compiled_narrow(info: TensorInfo) -> torch.dtype | None:
    """The 16-bit float type of a tensor the compiled cell test counts (:mod:`.narrowcells`)."""
    plain = plain_type(info.dtype)
    if info.block_size > 1 or plain is None or not plain.narrow_float:
        return None
    dtype = plain.torch_dtype()
    return dtype if dtype in INF_BITS else None


class CellCount:
    """A reference in the candidate's frame counted against the candidate's stored cells, chunk
    by chunk of rows in any order, with the sampled rows kept for the shape of the change: what
    :func:`check_in_candidate_frame` streams, and what ``compare``'s pass feeds from the chunks
    it has already read (a known change judged in the same pass: :mod:`.known`)."""

    def __init__(self, qtype: str, sampled: np.ndarray, narrow: torch.dtype | None) -> None:
        self.qtype, self.sampled, self.narrow = qtype, sampled, narrow
        self.checked = self.outside = 0
        # the sampled rows, allocated once: small pieces kept between chunks would fragment the
        # heap (glibc kept ~0.5 GB more RSS at a 7B MLP matrix). Explicit cells keep x, lo, hi,
        # tol, x16 and width; a 16-bit float candidate only x and its stored values, the rest
        # built in :meth:`result` (6 float64 arrays of 128 rows of a 70B MLP matrix are 176 MB,
        # held per matrix in flight while the comparison's pass feeds it)
        self.picked: np.ndarray | None = None
        self.x: np.ndarray | None = None
        self.stored: np.ndarray | None = None

    def _local(self, start: int, end: int) -> tuple[int, int, np.ndarray]:
        at, to = (int(v) for v in np.searchsorted(self.sampled, [start, end]))
        return at, to, self.sampled[at:to] - start

    def add_narrow(self, start: int, values: np.ndarray, x: np.ndarray) -> None:
        """Rows ``[start, start + len(values))`` of a 16-bit float candidate (``values``, float32)
        against ``x`` (float64, or float32 values taken as float64): every weight counted in one
        compiled pass; the sampled rows' float64 cells are built once in :meth:`result` (the same
        counts and rows)."""
        assert self.narrow is not None
        at, to, local = self._local(start, start + values.shape[0])
        self.checked, self.outside = self.checked + int(x.size), self.outside + count_outside(values, x, self.narrow)
        if self.x is None:
            self.x = np.empty((len(self.sampled), x.shape[1]), x.dtype if x.dtype == np.float32 else np.float64)
            self.stored = np.empty((len(self.sampled), x.shape[1]), np.float32)
        assert self.stored is not None
        np.take(x, local, axis=0, out=self.x[at:to])
        np.take(values, local, axis=0, out=self.stored[at:to])

    def add_cells(self, start: int, lo: np.ndarray, hi: np.ndarray, x: np.ndarray) -> None:
        """Rows ``[start, start + len(lo))`` against explicit float64 cells ``[lo, hi]``."""
        at, to, local = self._local(start, start + lo.shape[0])
        inside, tol, x16, width = cell_test(x, lo, hi)  # x16: llama.cpp quantizes f16-rounded values too
        self.checked, self.outside = self.checked + int(inside.size), self.outside + int((~inside).sum())
        if self.picked is None:
            self.picked = np.empty((6, len(self.sampled), *lo.shape[1:]))
        for k, a in enumerate((x, lo, hi, tol, x16, width)):
            np.take(a, local, axis=0, out=self.picked[k, at:to])

    def _residual(self, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cell residual of the sampled rows ``rows`` (float64): what :func:`cell_residual`
        moves and zeroes, and each cell's width. Only weights that may lie outside their cells
        go through it: inside, a weight moves by 0 and is not zeroed, bit for bit what it
        gives. Every weight is inside when none was counted outside (a marked copy judged with
        its exact mark added), and so is a 16-bit candidate's float32 weight that rounds to the
        value stored (:func:`provenance.compare.narrowcells.maybe_outside`): the cells and
        residual of every sampled weight in float64 were a sixth of ``investigate``'s CPU at 7B."""
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        if self.picked is not None:
            x, lo, hi, tol, x16, width = self.picked[:, rows]
            if self.outside == 0:
                return np.zeros(width.shape), np.zeros(width.shape, dtype=bool), width
            moved, zeroed = cell_residual(t(x), t(lo), t(hi), t(tol), t(x16))
            return moved.numpy(), zeroed.numpy(), width
        assert self.x is not None and self.stored is not None and self.narrow is not None
        stored, x = self.stored[rows], self.x[rows]
        lo, hi = (v.double().numpy() for v in rounding_cells(torch.from_numpy(stored), self.narrow))
        width = cell_width(lo, hi)
        moved, zeroed = np.zeros(width.shape), np.zeros(width.shape, dtype=bool)
        at = np.empty(0, np.int64) if self.outside == 0 else maybe_outside(x, stored, self.narrow)
        pick: slice | np.ndarray = slice(None) if at is None else at
        if at is None or at.size:
            x_at, lo_at, hi_at = x.reshape(-1)[pick].astype(np.float64), lo.reshape(-1)[pick], hi.reshape(-1)[pick]
            _, tol, x16, _ = cell_test(x_at, lo_at, hi_at)  # x16: llama.cpp quantizes f16-rounded values too
            moved_at, zeroed_at = cell_residual(t(x_at), t(lo_at), t(hi_at), t(tol), t(x16))
            moved.reshape(-1)[pick], zeroed.reshape(-1)[pick] = moved_at.numpy(), zeroed_at.numpy()
        return moved, zeroed, width

    def _all_inside_shape(self) -> DifferenceShape | None:
        """:func:`grid_shape` of the sampled rows of a 16-bit candidate when no weight was counted
        outside its cell (a marked copy judged with its mark added: every matrix of ``investigate``'s
        re-judgement), without building their cells; None where that is not this case or not
        certain, and the cells are then built (:meth:`result`).

        Every weight inside, the residual is 0 and nothing is zeroed, so :func:`grid_shape` finds
        no flip (an exact quantization, shares 0) and its noise amplitude is
        :func:`flip_amplitude` of 0: 0.0 when some weight has a finite positive cell width over
        its row's deviation, else None. A stored value below :data:`_WIDE_BELOW`'s magnitude has
        finite neighbours whose sum stays inside float32, so its cell width (half their distance)
        is finite and positive, and over a row deviation that is positive it stays so (float32
        values: neither underflow nor overflow in float64). A row of such a value with a
        positive deviation therefore decides 0.0; without one the cells are built."""
        if self.outside or self.narrow is None or self.x is None or self.stored is None or not len(self.sampled):
            return None
        sigma = self.x.astype(np.float32).astype(np.float64).std(axis=1)  # grid_shape's row deviations
        live = sigma > 0
        magnitude = _bits(np.ascontiguousarray(self.stored[live]).reshape(-1), self.narrow) & 0x7FFF
        if not (magnitude < _WIDE_BELOW[self.narrow]).any():
            return None
        return DifferenceShape(source="grid-residual", change_class="exact-quantization", noise_rel=0.0,
                               zeroed_fraction=0.0, zeroed_magnitude_ratio=None, rest_rel=None,
                               rest_outside_fraction=0.0)

    def result(self, refined: bool = False) -> FrameCheck:
        kept = self.picked[0] if self.picked is not None else self.x
        shape = None
        if (quick := self._all_inside_shape()) is not None:
            return FrameCheck(self.qtype, self.checked, self.outside, quick, refined)
        if kept is not None and len(self.sampled):
            # the residual in blocks of sampled rows (every step is per weight): a dozen float64
            # temporaries of all 128 rows of a 70B MLP matrix were ~0.3 GB at once
            moved, width = np.empty(kept.shape), np.empty(kept.shape)
            zeroed = np.empty(kept.shape, dtype=bool)
            for start in range(0, len(self.sampled), _RESIDUAL_ROWS):
                rows = slice(start, start + _RESIDUAL_ROWS)
                moved[rows], zeroed[rows], width[rows] = self._residual(rows)
            shape = grid_shape(moved, zeroed, kept.astype(np.float32), width)
        return FrameCheck(self.qtype, self.checked, self.outside, shape, refined)


#: sampled rows whose cell residual is built at once (:meth:`CellCount.result`)
_RESIDUAL_ROWS = 16
#: per 16-bit type, the magnitudes (bit patterns) below which a stored value's rounding cell has
#: a finite positive width in float32: float16's below its largest finite value (whose upper
#: neighbour is infinite), bfloat16's below 2**127 (neighbours there add past float32's largest)
_WIDE_BELOW = {torch.float16: 0x7BFF, torch.bfloat16: 0x7F00}


def check_in_candidate_frame(cand: Checkpoint, ref: Checkpoint, name: str, transform: Transform | None,
                             source: SourceMap | None = None, sample_rows: np.ndarray | None = None,
                             stop: int | None = None, chunk_rows: int | None = None,
                             interrupted: Callable[[], bool] | None = None) -> FrameCheck:
    """Grid consistency of tensor ``name``: the reference (through ``source``, then carried into
    the candidate's frame by ``transform``) against the candidate's stored cells; ``stop``:
    only the first rows (a probe; no row-permuting ``transform`` then). Streamed in chunks of
    ``chunk_rows`` rows (by default about :data:`provenance.quant.frame_rows.CHUNK_ELEMS`
    weights): the scale fit takes passes over the chunks, the check one more, and the
    ``sample_rows`` of the difference's shape are gathered as their chunks pass.
    ``interrupted``: checked before each chunk; once it returns True the check stops there
    (Ctrl-C in another thread: what it returns is then not used)."""
    c_info = cand.info(name)
    n_rows = c_info.n_rows if stop is None else min(stop, c_info.n_rows)  # a probe may be the whole tensor
    step = chunk_rows or rows_per_chunk(c_info.row_length)
    transform = transform or Transform()
    refined = transform.row_scale is not None or transform.col_scale is not None
    sampled = np.empty(0, np.int64) if sample_rows is None else np.unique(sample_rows[(sample_rows >= 0) & (sample_rows < n_rows)])
    count = CellCount(c_info.dtype, sampled, _compiled_narrow(c_info))

    def cells(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return stored_cells(cand, c_info, start, stop)

    with FrameRows(ref, name, transform, cells, n_rows, step, GRID_TOLERANCE_STEPS, source) as in_frame:
        for start in range(0, n_rows, step):
            if interrupted is not None and interrupted():
                break
            end = min(n_rows, start + step)
            if count.narrow is not None:
                values = np.ascontiguousarray(cand.read_rows(name, start, end), dtype=np.float32)
                count.add_narrow(start, values, in_frame.rows(start, end).reshape(values.shape))
                continue
            lo, hi, _ = cells(start, end)
            count.add_cells(start, lo, hi, in_frame.rows(start, end).reshape(lo.shape))
    return count.result(refined)


def check_plain(cand: Checkpoint, ref: Checkpoint, name: str, source: SourceMap, stop: int | None = None) -> FrameCheck:
    """An unquantized candidate tensor against the reference rounded through an intermediate
    type (``source``), as stored (equal) or rounded once more to f16/bf16: a dequantized
    requantization, whose values are the intermediate's levels; ``stop``: only the first rows
    (a probe)."""
    if stop is not None:
        stop = min(stop, cand.info(name).n_rows)  # a tensor shorter than the probe is the whole tensor
    c = np.ascontiguousarray(cand.read_rows(name, 0, stop), dtype=np.float32)
    rows = ref.read_rows(name, 0, stop).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(source(rows, np.arange(rows.shape[0])), dtype=np.float32))
    c_t = torch.from_numpy(c).reshape(x.shape)
    same = (x == c_t) | (x.to(torch.float16).float() == c_t) | (x.to(torch.bfloat16).float() == c_t)
    return FrameCheck(cand.info(name).dtype, int(same.numel()), int((~same).sum()), None, False)


def intermediate(ref: Checkpoint, ftype: str) -> dict[str, SourceMap]:
    """Per tensor, the reference rows as a llama.cpp ``ftype`` file stores them, read back
    (llama.cpp's type choice and fallbacks: :func:`provenance.compare.variants.llama_cpp_types`;
    the project's exact quantizers)."""
    from provenance.codecs.dequant import dequantize_rows
    from provenance.codecs.quantize_ref import quantize_rows
    from provenance.compare.variants import llama_cpp_types

    def through(qtype: str) -> SourceMap:
        def apply(rows: np.ndarray, index: np.ndarray) -> np.ndarray:  # row by row: any rows, the index unused
            plain = plain_type(qtype)
            if plain is not None:
                if not plain.narrow_float:
                    return rows
                return torch.from_numpy(np.ascontiguousarray(rows)).to(plain.torch_dtype()).float().numpy()
            from provenance.codecs.types import type_info

            code = int(type_info(qtype).ggml_type)
            return dequantize_rows(quantize_rows(rows, qtype), code).reshape(rows.shape)
        return apply

    return {name: through(qtype) for name, qtype in llama_cpp_types(ref, ftype).items()}


#: intermediate llama.cpp file types tried, most common first, when a related quantized
#: candidate's codes are not explained by the reference itself
CHAIN_TYPES = ("Q8_0", "BF16", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M")
#: chains are tried only while the worst tensor has at most this share of weights outside
#: (an intermediate rounding moves weights by a fraction of the final step; a fine-tune moves
#: more), or an unquantized one at most this relative change (a Q8_0 rounding: ~0.005)
CHAIN_MAX_OUTSIDE = 0.2
CHAIN_MAX_REL = 0.05
#: rows of the probe that rejects a chain early, and the share outside that rejects it
CHAIN_PROBE_ROWS = 64
CHAIN_PROBE_MAX_OUTSIDE = 0.01


def _with_check(row: TensorComparison, check: FrameCheck, frame: str, chain: str | None = None) -> TensorComparison:
    return replace(row, grid_type=check.qtype, grid_lossy_side="candidate", grid_outside_fraction=check.outside_fraction,
                   grid_checked=check.checked, grid_outside=check.outside, grid_frame=frame, grid_chain=chain,
                   grid_error=None, shape_of_change=check.shape if row.max_abs_delta > 0 else None)


def explain_codes(cand: Checkpoint, ref: Checkpoint, rows: list[TensorComparison], transforms: Mapping[str, Transform],
                  sample: Callable[[TensorInfo], np.ndarray]) -> list[TensorComparison]:
    """The grid evidence of a related pair, completed: tensors the alignment moved are checked
    in the candidate's frame; if quantized tensors stay outside their cells, each intermediate
    type of ``CHAIN_TYPES`` is tried in turn and the first that explains all of them is kept."""
    out = []
    for row in rows:
        transform = transforms.get(row.name)
        c_info, r_info = cand.info(row.name), ref.info(row.name)
        if transform is not None and not transform.is_identity and row.layout == "same" \
                and candidate_is_coarser(c_info, r_info):
            row = _with_check(row, check_in_candidate_frame(cand, ref, row.name, transform, sample_rows=sample(r_info)),
                              "candidate")
        out.append(row)
    outside = [r for r in out if not unchanged(r)]
    if outside and all(_chain_candidate(r, transforms) for r in outside):
        return _chain(cand, ref, out, outside, transforms, sample)
    return out


def _chain_candidate(row: TensorComparison, transforms: Mapping[str, Transform]) -> bool:
    """A tensor a requantization chain could explain: quantized and moderately outside its
    cells, or unquantized, unmoved and moderately changed."""
    if row.grid_lossy_side == "candidate" and row.grid_outside_fraction is not None:
        return row.grid_outside_fraction <= CHAIN_MAX_OUTSIDE
    moved = row.name in transforms and not transforms[row.name].is_identity
    return not moved and row.layout == "same" and (row.rel_delta_norm or 0.0) <= CHAIN_MAX_REL


def _chain(cand: Checkpoint, ref: Checkpoint, rows: list[TensorComparison], outside: list[TensorComparison],
           transforms: Mapping[str, Transform], sample: Callable[[TensorInfo], np.ndarray]) -> list[TensorComparison]:
    """The first intermediate type of ``CHAIN_TYPES`` that explains every tensor of ``outside``."""
    outside = sorted(outside, key=lambda r: -(r.grid_outside_fraction or 0.0))  # the hardest first: a failing chain stops early
    for ftype in CHAIN_TYPES:
        maps = intermediate(ref, ftype)
        checked: dict[str, TensorComparison] = {}
        for row in outside:
            source = maps.get(row.name)
            if source is None:
                break
            if row.grid_lossy_side == "candidate":
                transform = transforms.get(row.name) if row.grid_frame == "candidate" else None
                if transform is None or transform.is_identity:
                    # a probe on the first rows rejects a chain that explains nothing at the cost of a few rows
                    probe = check_in_candidate_frame(cand, ref, row.name, None, source, stop=CHAIN_PROBE_ROWS)
                    if probe.outside_fraction > CHAIN_PROBE_MAX_OUTSIDE:
                        break
                check = check_in_candidate_frame(cand, ref, row.name, transform, source, sample(ref.info(row.name)))
            else:
                # the probe's mismatches alone exceeding what the whole tensor may hold decide it
                # exactly as the full check would, without reading and requantizing the tensor
                probe = check_plain(cand, ref, row.name, source, stop=CHAIN_PROBE_ROWS)
                if probe.outside > GRID_OUTSIDE_MAX * cand.info(row.name).n_elements:
                    break
                check = check_plain(cand, ref, row.name, source)
            if check.outside_fraction > GRID_OUTSIDE_MAX:
                break
            checked[row.name] = _with_check(row, check, row.grid_frame or "reference", ftype)
        else:
            return [checked.get(r.name, r) for r in rows]
    return rows
