"""The compiled cell residual of sampled rows (``GridCheck.residual`` on the CPU,
:mod:`provenance.codecs.native.cellresidual`) gives the torch path's values: the move into
each cell, the zeroed mask and the cell width, weight for weight, on every type with a grid
(quantized awkward data, random stored bytes with NaN / infinite / negative scales) and on
the sampled rows of every tensor of the real llama.cpp files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from provenance.codecs.grid import quant_grid
from provenance.codecs.native.cellresidual import grid_cell_residual
from provenance.codecs.quantize_ref import quantize_rows
from provenance.codecs.registry import QUANT_TYPES, quant_type
from provenance.compare.engine import GridCheck
from provenance.compare.shape import GRID_TOLERANCE_STEPS
from provenance.formats import open_checkpoint
from tests.codecs.test_quantize_ref import TRUE_SOURCE
from tests.conftest import QUANT_DIR
from tests.quant.test_gridcheck_compiled import _awkward, _info


def _has_grid(name: str) -> bool:
    qt = quant_type(name)
    try:
        quant_grid(np.zeros((1, qt.type_size), np.uint8), qt.ggml_type)
    except NotImplementedError:
        return False
    return True


GRIDDED = [qt.name for qt in QUANT_TYPES.values() if _has_grid(qt.name)]


def assert_same_residual(got, want) -> None:  # type: ignore[no-untyped-def]
    """Every value equal (NaN where the other has NaN), masks identical."""
    assert got is not None and want is not None
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            assert torch.equal(torch.isnan(a), torch.isnan(b))
            assert torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


def _both(name: str, raw: np.ndarray, x: np.ndarray, other_f16: bool = False):  # type: ignore[no-untyped-def]
    check = GridCheck("candidate", _info(name, *x.shape), other_f16=other_f16)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return check.residual(raw, xt), check.residual_torch(raw, xt)


def _stored_case(name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stored rows (quantized awkward data where the type has a quantizer, else random
    bytes) and the rows to test against them: the source, a noisy copy, one with weights
    pushed across cells and to zero, one with NaN / inf."""
    qt = quant_type(name)
    x = _awkward(qt.block_size)
    finite = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    try:
        raw = quantize_rows(finite, name)
    except (NotImplementedError, ValueError):
        raw = np.random.default_rng(3).integers(0, 256, (x.shape[0], x.shape[1] // qt.block_size * qt.type_size),
                                                dtype=np.uint8)
    rng = np.random.default_rng(11)
    noisy = finite + (rng.standard_normal(x.shape) * 2e-3).astype(np.float32)
    moved = finite.copy()
    moved[:, ::7] *= 3.0
    moved[:, 1::11] = 0.0
    return raw, [x, finite, noisy, moved]


@pytest.mark.parametrize("name", GRIDDED)
def test_compiled_residual_equals_torch(name: str) -> None:
    raw, sources = _stored_case(name)
    outside = 0
    for x in sources:
        got, want = _both(name, raw, x)
        assert_same_residual(got, want)
        outside += int((got[0] != 0).sum())
    grid = quant_grid(raw, quant_type(name).ggml_type)
    if grid.qmax - grid.qmin > 1:  # a two-level grid's cells are all open-ended: nothing is outside
        assert outside > 0  # the moved rows leave their cells: the test compares real moves


@pytest.mark.parametrize("name", GRIDDED)
def test_compiled_residual_equals_torch_on_random_stored_bytes(name: str) -> None:
    """Any stored bits (NaN, infinite, negative and zero scales) against f16-valued rows,
    where the compiled pass skips the f16 rounding."""
    qt = quant_type(name)
    rng = np.random.default_rng(qt.ggml_type)
    rows, width = 16, 2 * max(256, qt.block_size)
    raw = rng.integers(0, 256, (rows, width // qt.block_size * qt.type_size), dtype=np.uint8)
    x = (rng.standard_normal((rows, width)) * 0.05).astype(np.float16).astype(np.float32)
    assert_same_residual(*_both(name, raw, x, other_f16=True))
    assert_same_residual(*_both(name, raw, x, other_f16=False))


def test_a_level_index_past_the_table_is_refused() -> None:
    raw, sources = _stored_case("IQ4_NL")
    grid = quant_grid(raw, quant_type("IQ4_NL").ggml_type)
    grid.codes[0, 0] = 16
    with pytest.raises(ValueError, match="outside its table"):
        grid_cell_residual(grid, torch.from_numpy(sources[1]), GRID_TOLERANCE_STEPS)


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_compiled_residual_equals_torch_on_real_sampled_rows(quant_file: str) -> None:
    """``compare``'s sampled rows of every quantized tensor of llama.cpp's own output,
    against the f16 source it was quantized from."""
    checked = 0
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(QUANT_DIR / TRUE_SOURCE[quant_file]) as ref:
        for name, info in cand.tensors.items():
            if info.block_size == 1 or not _has_grid(info.dtype) or len(info.shape) != 2:
                continue
            rows = np.sort(np.random.default_rng(0).choice(info.n_rows, min(64, info.n_rows), replace=False))
            raw = np.ascontiguousarray(cand.raw_rows(name)[rows])
            x = np.ascontiguousarray(ref.read_rows(name)[rows])
            got, want = _both(info.dtype, raw, x, other_f16=ref.info(name).dtype == "F16")
            assert_same_residual(got, want)
            checked += 1
    assert checked >= 5
