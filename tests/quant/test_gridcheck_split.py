"""The check kernels' split pass for uniform grids (``gridcheck._check_uniform``) adds exactly
what the one-pass loop (``gridcheck.check_block``) adds, in the same order: every count, kept
distance and float64 sum bit for bit, on the awkward cases (all-zero blocks, ties, f16
midpoints, NaN / inf, a noisy source full of mismatches) and on every tensor of the real
llama.cpp files. The one-pass kernels below are the same types' kernels with the split
turned off."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.codecs.ggml.kquants import (
    _predict_q4_k_block,
    _predict_q6_k_block,
    _q4_k_grid,
    _q6_k_grid,
)
from provenance.codecs.ggml.legacy import _predict_q4_1_block, _predict_q8_0_block, _q4_1_grid, _q8_0_grid
from provenance.codecs.native import bind, f16_table
from provenance.codecs.native import gridcheck as native
from provenance.codecs.native.gridcheck import NO_TABLE, check
from provenance.codecs.registry import quant_type
from provenance.formats import open_checkpoint
from provenance.jit import kernel
from provenance.quant.gridcheck import NEAR, PRECISIONS
from tests.codecs.test_quantize_ref import TRUE_SOURCE
from tests.conftest import QUANT_DIR
from tests.quant.test_gridcheck_compiled import _awkward_case


@kernel
def _q8_0_one_pass(blocks, x, counts, sums, dist, precision, near_margin, f16):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16, _q8_0_grid, _predict_q8_0_block,
          1, True, False, False, NO_TABLE, -128, 127, False)


@kernel
def _q4_1_one_pass(blocks, x, counts, sums, dist, precision, near_margin, f16):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16, _q4_1_grid, _predict_q4_1_block,
          1, True, True, False, NO_TABLE, 0, 15, False)


@kernel
def _q4_k_one_pass(blocks, x, counts, sums, dist, precision, near_margin, f16):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16, _q4_k_grid, _predict_q4_k_block,
          8, True, True, False, NO_TABLE, 0, 15, False)


@kernel
def _q6_k_one_pass(blocks, x, counts, sums, dist, precision, near_margin, f16):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16, _q6_k_grid, _predict_q6_k_block,
          16, True, False, False, NO_TABLE, -32, 31, False)


ONE_PASS = {"Q8_0": _q8_0_one_pass, "Q4_1": _q4_1_one_pass, "Q4_K": _q4_k_one_pass, "Q6_K": _q6_k_one_pass}
"""Uniform types covering what the split pass branches on: one or several sub-blocks per
block, with and without an offset (min)."""


def _run(fn, name: str, raw: np.ndarray, x: np.ndarray, precision: str) -> tuple[np.ndarray, ...]:  # type: ignore[no-untyped-def]
    qt = quant_type(name)
    counts, sums = np.zeros(native.N_COUNTS, np.int64), np.zeros(native.N_SUMS, np.float64)
    dist = np.zeros(x.size, np.float32)
    fn(np.ascontiguousarray(raw).reshape(-1, qt.type_size), np.ascontiguousarray(x, dtype=np.float32).reshape(-1, qt.block_size),
       counts, sums, dist, native.PRECISION_CODES[precision], np.float32(NEAR), f16_table())
    return counts, sums, dist[: counts[native.N_KEPT]]


def assert_bit_identical(name: str, raw: np.ndarray, x: np.ndarray, precision: str) -> np.ndarray:
    """The production kernel and the one-pass kernel on the same blocks: the same bits."""
    split_fn, _ = bind(quant_type(name).check)
    got, want = _run(split_fn, name, raw, x, precision), _run(ONE_PASS[name], name, raw, x, precision)
    assert np.array_equal(got[0], want[0]), (got[0], want[0])
    assert np.array_equal(got[1].view(np.int64), want[1].view(np.int64)), (got[1], want[1])  # NaN payloads too
    assert np.array_equal(got[2].view(np.int32), want[2].view(np.int32))
    return got[0]


@pytest.mark.parametrize("name", sorted(ONE_PASS))
def test_split_pass_is_the_one_pass_loop_on_awkward_data(name: str) -> None:
    raw, sources = _awkward_case(name, 2e-4)
    mismatches = 0
    for source in sources:
        for precision in PRECISIONS:
            counts = assert_bit_identical(name, raw, source, precision)
            mismatches += int(counts[native.N_MISMATCH])
    assert mismatches > 0  # the mismatch pass ran, not only the common case


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_split_pass_is_the_one_pass_loop_on_real_files(quant_file: str) -> None:
    checked = 0
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(QUANT_DIR / TRUE_SOURCE[quant_file]) as ref:
        for name, info in cand.tensors.items():
            if info.dtype not in ONE_PASS:
                continue
            x = np.ascontiguousarray(ref.read_rows(name))
            noisy = x + (np.random.default_rng(3).standard_normal(x.shape) * 1e-3 * float(np.std(x))).astype(np.float32)
            for source, precision in ((x, "f32"), (x, "f16"), (noisy, "f32")):
                assert_bit_identical(info.dtype, cand.raw_rows(name), source, precision)
            checked += 1
    if not checked:
        pytest.skip(f"{quant_file} has no tensor of {sorted(ONE_PASS)}")
