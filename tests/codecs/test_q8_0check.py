"""Q8_0's fused grid checks (``provenance.codecs.native.q8_0check``) against the shared passes
they replace for Q8_0 (``gridcheck.check`` with the split uniform pass, ``gridcheck.cells``),
compiled here from the same inlined helpers: every count, kept distance and float64 sum bit
for bit, on Gaussian weights (clean, and noisy enough that most groups mismatch), the awkward
blocks (NaN / inf, all-zero, ties, f16 midpoints), chunk lengths that leave a remainder to the
shared pass, every precision hypothesis, and every Q8_0 tensor of the real llama.cpp files."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.codecs.ggml.legacy import _predict_q8_0_block, _q8_0_grid
from provenance.codecs.native import bind, f16_table
from provenance.codecs.native import gridcheck as native
from provenance.codecs.native.gridcheck import NO_TABLE, cells, check
from provenance.codecs.native.q8_0check import RUN_BLOCKS
from provenance.codecs.quantize_ref import quantize_rows
from provenance.codecs.registry import quant_type
from provenance.compare.shape import GRID_TOLERANCE_STEPS
from provenance.formats import open_checkpoint
from provenance.jit import kernel
from provenance.quant.gridcheck import NEAR, PRECISIONS
from tests.conftest import QUANT_DIR
from tests.quant.test_gridcheck_compiled import _awkward_case

Q8_0 = quant_type("Q8_0")


@kernel
def _shared_check(blocks, x, counts, sums, dist, precision, near_margin, f16):  # type: ignore[no-untyped-def]
    check(blocks, x, counts, sums, dist, precision, near_margin, f16, _q8_0_grid, _predict_q8_0_block,
          1, True, False, False, NO_TABLE, -128, 127)


@kernel
def _shared_cells(blocks, other, counts, sums, tol_steps, exact16, f16):  # type: ignore[no-untyped-def]
    cells(blocks, other, counts, sums, tol_steps, exact16, f16, _q8_0_grid, 1, True, False, -128, 127, NO_TABLE, NO_TABLE)


def _check(fn, raw: np.ndarray, x: np.ndarray, precision: str, kept: int) -> tuple[np.ndarray, ...]:  # type: ignore[no-untyped-def]
    counts, sums = np.zeros(native.N_COUNTS, np.int64), np.zeros(native.N_SUMS, np.float64)
    dist = np.zeros(kept, np.float32)
    fn(raw.reshape(-1, Q8_0.type_size), np.ascontiguousarray(x, np.float32).reshape(-1, 32), counts, sums, dist,
       native.PRECISION_CODES[precision], np.float32(NEAR), f16_table())
    return counts, sums, dist[: counts[native.N_KEPT]]


def _cells(fn, raw: np.ndarray, other: np.ndarray, exact16: bool) -> tuple[np.ndarray, ...]:  # type: ignore[no-untyped-def]
    counts, sums = np.zeros(2, np.int64), np.zeros(1, np.float64)
    fn(raw.reshape(-1, Q8_0.type_size), np.ascontiguousarray(other, np.float32).reshape(-1, 32), counts, sums,
       np.float32(GRID_TOLERANCE_STEPS), exact16, f16_table())
    return counts, sums


def _same(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and np.array_equal(g.view(np.uint8), w.view(np.uint8)), (g, w)  # NaN payloads too


def assert_check_identical(raw: np.ndarray, x: np.ndarray, precision: str, kept: int = 1 << 20) -> np.ndarray:
    fused, _ = bind(Q8_0.check)
    got = _check(fused, raw, x, precision, kept)
    _same(got, _check(_shared_check, raw, x, precision, kept))
    return got[0]


def assert_cells_identical(raw: np.ndarray, other: np.ndarray) -> int:
    fused, _ = bind(Q8_0.cells)
    outside = 0
    for exact16 in (True, False):
        got = _cells(fused, raw, other, exact16)
        _same(got, _cells(_shared_cells, raw, other, exact16))
        outside += int(got[0][0])
    return outside


def _gaussian(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    return x.astype(np.float16).astype(np.float32)  # an F16 reference, as the 7B benchmark's


@pytest.mark.parametrize("blocks", [RUN_BLOCKS * 40, RUN_BLOCKS * 40 + 13, RUN_BLOCKS - 1])
def test_check_is_the_shared_pass_on_gaussian_weights(blocks: int) -> None:
    x = _gaussian(blocks, 32, seed=blocks)
    raw = quantize_rows(x, "Q8_0")
    noisy = x + (np.random.default_rng(1).standard_normal(x.shape) * 2e-4).astype(np.float32)
    mismatches = 0
    for source in (x, noisy):
        for precision in PRECISIONS:
            mismatches += int(assert_check_identical(raw, source, precision)[native.N_MISMATCH])
    assert mismatches > blocks  # the mismatch path ran, group after group


def test_check_is_the_shared_pass_on_awkward_blocks() -> None:
    raw, sources = _awkward_case("Q8_0", 2e-4)
    assert raw.size // Q8_0.type_size >= 2 * RUN_BLOCKS  # the fused runs are exercised
    scale_bad = 0
    for source in sources:
        for precision in PRECISIONS:
            counts = assert_check_identical(raw, source, precision)
            scale_bad += int(counts[native.N_SCALE_BAD])
            assert_check_identical(raw, source, precision, kept=7)  # the kept distances fill up
    assert scale_bad > 0


def test_check_max_error_is_nan_after_a_nan_and_exact_otherwise() -> None:
    x = _gaussian(RUN_BLOCKS * 3, 32)
    raw = quantize_rows(x, "Q8_0")
    _, sums, _ = _check(bind(Q8_0.check)[0], raw, x, "f32", 16)
    values = raw.reshape(-1, 34)
    d = values[:, :2].copy().view(np.float16).astype(np.float32)
    stored = d * values[:, 2:].view(np.int8).astype(np.float32)
    assert sums[native.MAX_ABS] == np.abs(stored.astype(np.float64) - x.astype(np.float64)).max()
    poisoned = x.copy()
    poisoned[RUN_BLOCKS + 5, 7] = np.nan
    assert_check_identical(raw, poisoned, "f32")
    assert np.isnan(_check(bind(Q8_0.check)[0], raw, poisoned, "f32", 16)[1][native.MAX_ABS])


def test_cells_is_the_shared_pass() -> None:
    x = _gaussian(RUN_BLOCKS * 12 + 5, 32)
    raw = quantize_rows(x, "Q8_0")
    assert_cells_identical(raw, x)
    assert assert_cells_identical(raw, x + (np.random.default_rng(2).standard_normal(x.shape) * 1e-3).astype(np.float32)) > 0
    awkward_raw, others = _awkward_case("Q8_0", 2e-3)
    for other in others:
        assert_cells_identical(awkward_raw, other)


@pytest.mark.parametrize("quant_file", ["tiny-llama-Q8_0.gguf", "stories260K-Q8_0.gguf"])
def test_fused_kernels_on_every_q8_0_tensor_of_real_files(quant_file: str) -> None:
    source = {"tiny-llama-Q8_0.gguf": "tiny-llama-f16.gguf", "stories260K-Q8_0.gguf": "stories260K-f32.gguf"}[quant_file]
    checked = 0
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(QUANT_DIR / source) as ref:
        for name, info in cand.tensors.items():
            if info.dtype != "Q8_0":
                continue
            raw = np.ascontiguousarray(cand.raw_rows(name))
            x = np.ascontiguousarray(ref.read_rows(name), np.float32)
            noisy = x + (np.random.default_rng(3).standard_normal(x.shape) * 1e-3 * float(np.std(x))).astype(np.float32)
            for src, precision in ((x, "f32"), (x, "f16"), (noisy, "f32")):
                assert_check_identical(raw, src, precision)
            assert_cells_identical(raw, x)
            assert_cells_identical(raw, noisy)
            checked += 1
    assert checked > 0
