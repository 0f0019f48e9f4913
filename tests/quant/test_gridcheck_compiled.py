"""The compiled grid checks (``QuantType.check``, ``QuantType.cells``) give today's verdicts:
every count equal to the torch implementation's, float64 sums equal up to summation order,
on random data with the awkward cases and on every tensor of every real llama.cpp file."""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from provenance.codecs.quantize_ref import quantize_rows
from provenance.codecs.registry import QUANT_TYPES, quant_type
from provenance.compare.engine import GridCheck
from provenance.formats import open_checkpoint
from provenance.formats.base import TensorInfo
from provenance.quant.error import error_stats, error_stats_torch
from provenance.quant.gridcheck import PRECISIONS, check_block_rows, check_block_rows_torch
from tests.codecs.test_quantize_ref import TRUE_SOURCE
from tests.conftest import QUANT_DIR, single_torch_thread

CHECKED = [qt.name for qt in QUANT_TYPES.values() if qt.check is not None]
CELLS = [qt.name for qt in QUANT_TYPES.values() if qt.cells is not None]
SUMS_REL = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():  # type: ignore[no-untyped-def]
    with single_torch_thread():
        yield


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=SUMS_REL, abs_tol=1e-300)


def assert_same_check(compiled, reference) -> None:  # type: ignore[no-untyped-def]
    """Integer counts and kept distances identical, float64 sums equal up to order."""
    (counts, errors), (want_counts, want_errors) = compiled, reference
    got, want = asdict(counts), asdict(want_counts)
    for key in ("inv_step_sum", "near_sum"):
        assert _close(got.pop(key), want.pop(key)), key
    assert np.array_equal(got.pop("distances"), want.pop("distances"), equal_nan=True)
    assert got == want
    got, want = asdict(errors), asdict(want_errors)
    for key, value in got.items():
        assert value == want[key] if isinstance(value, int) else _close(value, want[key]), key


def _awkward(block: int, rows: int = 24, width: int = 1024) -> np.ndarray:
    """Gaussian weights with the cases recipes trip on: an all-zero block, exact .5 ties in
    code units, a spiky row, constant runs, f16 midpoints, tiny (subnormal-f16) values and
    a few NaN / inf."""
    rng = np.random.default_rng(block)
    x = (rng.standard_normal((rows, width)) * 0.02).astype(np.float32)
    x[0, :block] = 0.0
    x[1] = np.round(x[1] * 1e3) / 1e3
    x[2, ::3] *= -50
    x[3, : 4 * block] = 0.3
    x[4] = (rng.standard_normal(width) * 1e-6).astype(np.float32)
    f16 = x[5].astype(np.float16)
    up = np.nextafter(f16, np.float16(np.inf)).astype(np.float32)
    x[5] = (f16.astype(np.float32) + up) / 2  # exactly between two f16 values
    x[6, 7], x[7, 100], x[8, 5] = np.nan, np.inf, -np.inf
    return x


def _awkward_case(name: str, noise: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Stored blocks of the finite awkward data, and three sources: with NaN/inf, finite, noisy."""
    x = _awkward(quant_type(name).block_size)
    finite = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    noisy = finite + (np.random.default_rng(5).standard_normal(x.shape) * noise).astype(np.float32)
    return quantize_rows(finite, name), (x, finite, noisy)


@pytest.mark.parametrize("name", CHECKED)
def test_check_equals_torch_on_awkward_data(name: str) -> None:
    qt = quant_type(name)
    raw, sources = _awkward_case(name, 2e-4)
    for source in sources:
        for precision in PRECISIONS:
            xt = torch.from_numpy(source)
            want = check_block_rows_torch(xt, raw, qt.ggml_type, precision)
            for threads in (1, 2):
                assert_same_check(check_block_rows(xt, raw, qt.ggml_type, precision, threads=threads), want)


def _random_stored(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hostile stored bytes (random: NaN, infinite, negative, zero and subnormal scales,
    every code) and a reference of the same shape."""
    qt = quant_type(name)
    rng = np.random.default_rng(seed)
    width = 2 * max(256, qt.block_size)
    raw = rng.integers(0, 256, (6, width // qt.block_size * qt.type_size), dtype=np.uint8)
    return raw, (rng.standard_normal((6, width)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("name", CHECKED)
def test_check_equals_torch_on_random_stored_bytes(name: str) -> None:
    """A weight whose stored step is not finite adds nothing to ``abs_steps`` (the level
    types' kernel added NaN: an infinite error times a 0 factor)."""
    qt = quant_type(name)
    for seed in range(3):
        raw, x = _random_stored(name, seed)
        xt = torch.from_numpy(x)
        for precision in ("f32", "f16"):
            assert_same_check(check_block_rows(xt, raw, qt.ggml_type, precision, threads=1),
                              check_block_rows_torch(xt, raw, qt.ggml_type, precision))


@pytest.mark.parametrize("name", CELLS)
def test_cells_equal_torch_on_random_stored_bytes(name: str) -> None:
    """The noise energy sums finite steps only, as the torch path does (it was NaN as soon
    as one stored scale was infinite or NaN)."""
    for seed in range(3):
        raw, x = _random_stored(name, seed)
        for other in (x, x.astype(np.float16).astype(np.float32)):
            got, want = _cells(name, raw, other, True), _cells(name, raw, other, False)
            assert got[:2] == want[:2] and _close(got[2], want[2])
            assert math.isfinite(got[2])


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_check_equals_torch_on_every_real_tensor(quant_file: str) -> None:
    source = QUANT_DIR / TRUE_SOURCE[quant_file].replace("f16", "f32")
    checked = 0
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(source) as ref:
        for name, info in cand.tensors.items():
            qt = quant_type(info.dtype) if info.block_size > 1 else None
            if qt is None or qt.check is None:
                continue
            x = torch.from_numpy(np.ascontiguousarray(ref.read_rows(name)))
            raw = cand.raw_rows(name)
            for precision in ("f32", "f16"):
                assert_same_check(check_block_rows(x, raw, qt.ggml_type, precision, threads=2),
                                  check_block_rows_torch(x, raw, qt.ggml_type, precision))
            checked += 1
    assert checked >= 10


def _info(name: str, rows: int, width: int) -> TensorInfo:
    qt = quant_type(name)
    return TensorInfo(name="t", stored_name="t", shape=(rows, width), dtype=name, file="unused", offset=0,
                      n_bytes=rows * width // qt.block_size * qt.type_size, block_size=qt.block_size,
                      block_bytes=qt.type_size, ggml_type=qt.ggml_type)


def _cells(name: str, raw: np.ndarray, other: np.ndarray, compiled: bool) -> tuple[int, int, float]:
    qt = quant_type(name)
    check = GridCheck("candidate", _info(name, *other.shape))
    if compiled:
        check.add_compiled(qt, raw, torch.from_numpy(other))
    else:
        check.add_torch(raw, torch.from_numpy(other))
    return check.outside, check.total, check.noise_energy


@pytest.mark.parametrize("name", CELLS)
def test_cells_equal_torch(name: str) -> None:
    raw, others = _awkward_case(name, 2e-3)
    for other in others:
        got, want = _cells(name, raw, other, True), _cells(name, raw, other, False)
        assert got[:2] == want[:2] and _close(got[2], want[2])
        assert got[1] > 0


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_cells_equal_torch_on_every_real_tensor(quant_file: str) -> None:
    source = QUANT_DIR / TRUE_SOURCE[quant_file]
    with open_checkpoint(QUANT_DIR / quant_file) as cand, open_checkpoint(source) as ref:
        for name, info in cand.tensors.items():
            qt = quant_type(info.dtype) if info.block_size > 1 else None
            if qt is None or qt.cells is None:
                continue
            other = np.ascontiguousarray(ref.read_rows(name))
            raw = cand.raw_rows(name)
            got, want = _cells(info.dtype, raw, other, True), _cells(info.dtype, raw, other, False)
            assert got[:2] == want[:2] and _close(got[2], want[2]), name


def test_error_stats_compiled_equals_torch() -> None:
    rng = np.random.default_rng(7)
    ref = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    values = ref + (rng.standard_normal(ref.shape) * 1e-3).astype(np.float32)
    clean = ref + (rng.standard_normal(ref.shape) * 1e-3).astype(np.float32)
    step = np.abs(rng.standard_normal(ref.shape)).astype(np.float32) * 1e-2
    step[0, :5] = [0.0, np.inf, np.nan, -1.0, 1e-30]
    values[1, 3] = np.nan
    t = [torch.from_numpy(a) for a in (values, ref, clean, step)]
    for args in (t, t[:2], [t[0], t[1], None, t[3]]):
        got, want = asdict(error_stats(*args)), asdict(error_stats_torch(*args))
        assert got.keys() == want.keys() and all(_close(float(got[k]), float(want[k])) for k in got), (got, want)
    ok = [torch.from_numpy(np.nan_to_num(a)) for a in (values, ref, clean)]
    got, want = asdict(error_stats(*ok)), asdict(error_stats_torch(*ok))
    assert all(_close(float(got[k]), float(want[k])) for k in got) and got["max_abs"] > 0
