"""The compiled grid checks give the same result, bit for bit, on one thread and on two:
the work is shared out in tiles fixed by the data (``provenance.codecs.native.parallel.map_tiles``)
and the tiles' float64 sums are reduced in tile order, on every tensor of the real
llama.cpp files (several of which span several tiles) and end to end through ``quantcheck``
and ``compare``."""
from __future__ import annotations

from dataclasses import asdict
from itertools import pairwise

import numpy as np
import pytest
import torch

from provenance.codecs.native.parallel import MIN_WEIGHTS_PER_THREAD, tile_bounds
from provenance.codecs.registry import quant_type
from provenance.compare import CompareOptions, compare
from provenance.compare.engine import GridCheck
from provenance.formats import open_checkpoint
from provenance.quant import QuantCheckOptions, quantcheck
from provenance.quant.gridcheck import check_block_rows
from tests.codecs.test_quantize_ref import TRUE_SOURCE
from tests.conftest import QUANT_DIR


def _checked_tensors(quant_file: str) -> list[tuple[str, np.ndarray, np.ndarray, int, bool]]:
    """(name, reference rows, stored rows, ggml type, reference stored as F16) of every
    grid-checkable tensor, the reference from the file llama.cpp quantized."""
    out = []
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(QUANT_DIR / TRUE_SOURCE[quant_file]) as ref:
        for name, info in cand.tensors.items():
            qt = quant_type(info.dtype) if info.block_size > 1 else None
            if qt is not None and qt.check is not None and qt.cells is not None:
                out.append((name, np.ascontiguousarray(ref.read_rows(name)), cand.raw_rows(name), qt.ggml_type,
                            ref.info(name).dtype == "F16"))
    return out


def test_tiles_are_fixed_by_the_data() -> None:
    n = 8192  # blocks of 32: 262,144 weights, four tiles whatever the thread count
    bounds = tile_bounds(n, n * 32)
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == 5
    assert all(b - a >= MIN_WEIGHTS_PER_THREAD // 32 for a, b in pairwise(bounds))
    assert tile_bounds(10, 320) == [0, 10]


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_check_and_cells_same_on_one_and_two_threads(quant_file: str) -> None:
    tensors = _checked_tensors(quant_file)
    multi_tile = 0
    for name, x, raw, ggml_type, f16 in tensors:
        multi_tile += len(tile_bounds(raw.shape[0], x.size)) > 2
        xt = torch.from_numpy(x)
        for precision in ("f32", "f16"):
            serial, parallel = (check_block_rows(xt, raw, ggml_type, precision, threads=t) for t in (1, 2))
            assert asdict(serial[0]) == asdict(parallel[0]), (name, precision)
            assert asdict(serial[1]) == asdict(parallel[1]), (name, precision)
        cells = []
        for threads, other_f16 in ((1, False), (2, False), (1, f16), (2, f16)):
            # the F16 source's values are their own f16 rounding: skipping it changes nothing
            check = GridCheck("candidate", _info(quant_file, name), threads, other_f16=other_f16)
            check.add_compiled(quant_type(ggml_type), raw, xt)
            cells.append((check.outside, check.total, check.noise_energy))
        assert cells[1:] == cells[:1] * 3, name
    if quant_file.startswith("tiny-llama"):  # 262k-weight tensors: the split is exercised, not one tile per call
        assert multi_tile >= 1
    if TRUE_SOURCE[quant_file].endswith("f16.gguf"):  # the f16 rounding skipped, same counts and sums
        assert all(t[4] for t in tensors)


def _info(quant_file: str, name: str):  # type: ignore[no-untyped-def]
    with open_checkpoint(QUANT_DIR / quant_file) as cand:
        return cand.info(name)


def test_quantcheck_same_on_one_and_two_threads() -> None:
    cand, ref = QUANT_DIR / "tiny-llama-Q4_K_M.gguf", QUANT_DIR / "tiny-llama-f32.gguf"
    one, two = (quantcheck(cand, ref, QuantCheckOptions(threads=t)) for t in (1, 2))
    assert one.verdict == two.verdict and one.source_precision == two.source_precision
    # repr: every field, float sums to the last bit, NaN equal to NaN
    assert repr(one.tensors) == repr(two.tensors) and repr(one.layers) == repr(two.layers)
    assert any(t.grid is not None and t.grid.n_checked for t in one.tensors)


def _grid_columns(t) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    return (t.name, t.grid_type, t.grid_lossy_side, t.grid_outside_fraction, t.grid_checked, t.grid_outside)


def test_compare_grid_same_on_one_and_two_threads() -> None:
    cand, ref = QUANT_DIR / "tiny-llama-Q8_0.gguf", QUANT_DIR / "tiny-llama-f32.gguf"
    one, two = (compare(cand, ref, CompareOptions(permutations=19, threads=t)) for t in (1, 2))
    assert repr(one.verdict) == repr(two.verdict)
    grids = [[_grid_columns(t) for t in r.tensors] for r in (one, two)]
    assert grids[0] == grids[1] and any(g[4] for g in grids[0])
