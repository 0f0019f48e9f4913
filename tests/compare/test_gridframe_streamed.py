"""The grid check in the candidate's frame streams in chunks of rows: its counts, refined flag
and difference shape equal the whole-tensor computation's, and no whole tensor is read (a
70B MLP matrix holds 235 M weights; docs/lineage.md, "Grid consistency after alignment")."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from provenance.compare.gridframe import FrameCheck, check_in_candidate_frame, intermediate, stored_cells
from provenance.compare.shape import GRID_TOLERANCE_STEPS, cell_residual, grid_shape, rounding_cells
from provenance.compare.transform import Transform
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.formats.rows import RowReader
from provenance.quant.rescale import reference_in_frame
from provenance.watermark.realign import realign
from tests.compare.test_transformations import TINY, permuted_q4km  # noqa: F401  (the fixture)


def _whole_tensor_check(cand: Checkpoint, ref: Checkpoint, name: str, transform: Transform, source: Any,
                        sample_rows: np.ndarray) -> FrameCheck:
    """The check on whole float64 tensors, as it was before streaming (the oracle)."""
    lo, hi, stored = stored_cells(cand, cand.info(name))
    x = ref.read_rows(name).astype(np.float64)
    if source is not None:
        x = source(x.astype(np.float32), np.arange(x.shape[0])).astype(np.float64)
    x = reference_in_frame(x, transform, lo, hi, stored)
    width = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    tol = GRID_TOLERANCE_STEPS * width
    x16 = x.astype(np.float16).astype(np.float64)
    inside = ((x >= lo - tol) & (x <= hi + tol)) | ((x16 >= lo - tol) & (x16 <= hi + tol))
    rows = np.unique(sample_rows[(sample_rows >= 0) & (sample_rows < x.shape[0])])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a[rows]))  # noqa: E731
    moved, zeroed = cell_residual(t(x), t(lo), t(hi), t(tol), t(x16))
    shape = grid_shape(moved.numpy(), zeroed.numpy(), x[rows].astype(np.float32), width[rows])
    return FrameCheck(cand.info(name).dtype, int(inside.size), int((~inside).sum()), shape,
                      transform.row_scale is not None or transform.col_scale is not None)


def _sample(n_rows: int) -> np.ndarray:
    return np.random.default_rng(0).choice(n_rows, size=min(n_rows, 40), replace=False)


@pytest.mark.parametrize("chain", [None, "Q8_0"])
@pytest.mark.parametrize("realigned", [True, False])
def test_streamed_check_equals_the_whole_tensor_check(permuted_q4km: Path, realigned: bool,  # noqa: F811
                                                      chain: str | None) -> None:
    """In the recovered frame (permuted, rescaled: the fit streams too) and left unaligned
    (most weights outside: a real difference shape), with and without a quantization chain."""
    with open_checkpoint(permuted_q4km) as cand, open_checkpoint(TINY) as ref:
        frames = realign(cand, ref).tensors
        assert any(f.row_scale is not None for f in frames.values()) and any(f.col_scale is not None for f in frames.values())
        sources = intermediate(ref, chain) if chain else {}
        outside = 0
        for name, frame in frames.items():
            transform = frame if realigned else Transform()
            sample = _sample(cand.info(name).n_rows)
            expected = _whole_tensor_check(cand, ref, name, transform, sources.get(name), sample)
            for chunk_rows in (7, None):
                got = check_in_candidate_frame(cand, ref, name, transform, sources.get(name), sample, chunk_rows=chunk_rows)
                assert (got.qtype, got.checked, got.outside, got.refined) == \
                    (expected.qtype, expected.checked, expected.outside, expected.refined), (name, chunk_rows)
                assert repr(got.shape) == repr(expected.shape), (name, chunk_rows)
            outside += expected.outside
        # unaligned, the permuted units leave most weights outside; aligned without a chain, none
        assert (outside == 0) == (realigned and chain is None)


def test_the_check_reads_no_whole_tensor(permuted_q4km: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    requests: list[int] = []

    def counting(method: Any, rows_of: Any) -> Any:
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            requests.append(rows_of(self, *args))
            return method(self, *args, **kwargs)
        return wrapped

    def span(info: Any, start: int = 0, stop: int | None = None, *_: Any) -> int:
        return (info.n_rows if stop is None else stop) - start

    monkeypatch.setattr(Checkpoint, "raw_rows", counting(Checkpoint.raw_rows, lambda s, n, *a: span(s.info(n), *a)))
    monkeypatch.setattr(Checkpoint, "read_rows", counting(Checkpoint.read_rows, lambda s, n, *a: span(s.info(n), *a)))
    monkeypatch.setattr(RowReader, "read", counting(RowReader.read, lambda s, *a: span(s.info, *a)))
    with open_checkpoint(permuted_q4km) as cand, open_checkpoint(TINY) as ref:
        frames = realign(cand, ref).tensors
        requests.clear()
        refined = []
        for name, frame in frames.items():
            assert cand.info(name).n_rows > 16
            check = check_in_candidate_frame(cand, ref, name, frame, sample_rows=_sample(cand.info(name).n_rows),
                                             chunk_rows=16)
            assert check.outside == 0 and check.shape is not None
            refined.append(check.refined)
    assert any(refined)  # the scale fit's passes were chunked too
    assert requests and max(requests) <= 16


@pytest.mark.parametrize("every", [0, 3, 1])
def test_a_16_bit_candidate_streams_the_whole_tensor_check(every: int) -> None:
    """An F16 candidate (the converter's rounding of the F32 reference): with every weight inside
    its cell the residual is known to be 0 without building the cells of the sampled rows, and
    the shape is still the oracle's, field for field; with a change moving every ``every``-th
    column out, the residual is built for the weights not rounding to their stored value (a
    third of them) or for all (every one moved), and equals the oracle's too."""
    from tests.conftest import QUANT_DIR

    def shift(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
        out = rows.astype(np.float32).copy()
        out[:, ::every] *= np.float32(1.01)  # per weight: the same whether given a chunk or the whole tensor
        return out

    moved = every > 0
    source = shift if moved else None
    with open_checkpoint(QUANT_DIR / "tiny-llama-f16.gguf") as cand, open_checkpoint(TINY) as ref:
        checked = 0
        for name, info in cand.tensors.items():
            if len(info.shape) < 2 or info.dtype != "F16":
                continue
            sample = _sample(info.n_rows)
            expected = _whole_tensor_check(cand, ref, name, Transform(), source, sample)
            got = check_in_candidate_frame(cand, ref, name, None, source, sample, chunk_rows=5)
            assert (got.checked, got.outside) == (expected.checked, expected.outside), name
            assert (got.outside == 0) != moved, name
            assert repr(got.shape) == repr(expected.shape), name
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("every", [0, 3, 1])
def test_float32_weights_against_16_bit_cells_give_the_oracle_shape(every: int) -> None:
    """What the known-change pass feeds (:class:`provenance.compare.known.ChangedCells`): float32
    weights against a 16-bit candidate's cells, chunk by chunk. Weights that round to their
    stored value skip the residual's float64 formulas; the count and shape are the oracle's,
    with none, a third or all of the weights moved out of their cells."""
    from provenance.compare.gridframe import CellCount
    from provenance.compare.narrowcells import cell_test

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((96, 160)) * 0.02).astype(np.float32)
    stored = torch.from_numpy(w).half().float().numpy()
    x = w.copy()
    if every:
        x[:, ::every] *= np.float32(1.01)
    sampled = np.sort(rng.choice(96, 40, replace=False))
    count = CellCount("F16", sampled, torch.float16)
    for start in range(0, 96, 7):
        count.add_narrow(start, stored[start:start + 7], x[start:start + 7])
    got = count.result()

    lo, hi = (t.double().numpy() for t in rounding_cells(torch.from_numpy(stored), torch.float16))
    inside, tol, x16, width = cell_test(x.astype(np.float64), lo, hi)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a[sampled]))  # noqa: E731
    moved, zeroed = cell_residual(t(x.astype(np.float64)), t(lo), t(hi), t(tol), t(x16))
    expected = grid_shape(moved.numpy(), zeroed.numpy(), x[sampled], width[sampled])
    assert (got.checked, got.outside) == (x.size, int((~inside).sum()))
    assert (got.outside > 0) == (every > 0)
    assert repr(got.shape) == repr(expected)


@pytest.mark.parametrize("case", ["constant rows", "largest finite", "one small value", "bfloat16 large"])
def test_every_weight_inside_gives_the_oracle_shape_at_the_edges(case: str) -> None:
    """With every weight inside its cell the shape is known without the cells
    (:meth:`CellCount._all_inside_shape`) only where a stored value of a row that varies has a
    finite positive cell width: rows that are constant, or hold only the largest finite values
    (an infinite neighbour), give the oracle's noise amplitude None, not 0.0."""
    from provenance.compare.gridframe import CellCount

    narrow = torch.bfloat16 if case.startswith("bfloat16") else torch.float16
    rng = np.random.default_rng(11)
    if case == "constant rows":
        w = np.repeat(rng.standard_normal((24, 1)), 32, axis=1).astype(np.float32)
    elif case == "bfloat16 large":
        w = np.where(rng.random((24, 32)) < 0.5, 2.0**127, -(2.0**127)).astype(np.float32)  # an infinite neighbour sum
    else:
        w = np.where(rng.random((24, 32)) < 0.5, 65504.0, -65504.0).astype(np.float32)
        if case == "one small value":
            w[4, 7] = 0.25  # a sampled row
    stored = torch.from_numpy(w).to(narrow).float().numpy()
    x = stored.copy()  # every weight exactly its stored value: inside
    sampled = np.arange(0, 24, 2)
    count = CellCount("BF16" if narrow == torch.bfloat16 else "F16", sampled, narrow)
    for start in range(0, 24, 5):
        count.add_narrow(start, stored[start:start + 5], x[start:start + 5])
    got = count.result()

    lo, hi = (t.double().numpy() for t in rounding_cells(torch.from_numpy(stored), narrow))
    width = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    zeros = np.zeros((len(sampled), 32))
    expected = grid_shape(zeros, zeros.astype(bool), x[sampled], width[sampled])
    assert got.outside == 0
    assert repr(got.shape) == repr(expected)
    assert (expected.noise_rel is None) == (case != "one small value")
