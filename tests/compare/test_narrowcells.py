"""The compiled 16-bit cell test counts exactly what the torch/numpy reference formulas count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from provenance.compare.narrowcells import cell_test, count_outside
from provenance.compare.shape import rounding_cells


def _reference_outside(values: np.ndarray, x: np.ndarray, dtype: torch.dtype) -> int:
    lo, hi = (t.double().numpy() for t in rounding_cells(torch.from_numpy(values), dtype))
    inside, *_ = cell_test(x, lo, hi)
    return int((~inside).sum())


def _stored(dtype: torch.dtype, rng: np.random.Generator) -> np.ndarray:
    """Every kind of 16-bit value: normals of all sizes, subnormals, signed zeros, the largest
    finite values, infinities and NaN."""
    finfo = torch.finfo(dtype)
    special = [0.0, -0.0, finfo.max, -finfo.max, finfo.tiny, -finfo.tiny, finfo.smallest_normal / 4,
               -finfo.smallest_normal / 4, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0, 0.5]
    normal = rng.standard_normal(20000) * np.exp(rng.uniform(-12, 10, 20000))
    raw = np.concatenate([np.array(special, dtype=np.float64), normal])
    return torch.from_numpy(raw).to(dtype).float().numpy()


@pytest.mark.parametrize("x_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_count_equals_the_reference(dtype: torch.dtype, x_dtype: type) -> None:
    """float32 weights take the rounding shortcut (only those not rounding to the stored value
    are tested); float64 ones are all tested. Both count what the reference counts."""
    rng = np.random.default_rng(7)
    values = _stored(dtype, rng)
    lo, hi = (t.double().numpy() for t in rounding_cells(torch.from_numpy(values), dtype))
    with np.errstate(invalid="ignore"):
        width = np.where(np.isfinite(hi - lo), hi - lo, 1.0)

    def check(x: np.ndarray) -> int:
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(x_dtype)
        counted = count_outside(values, x, dtype)
        assert counted == _reference_outside(values, x.astype(np.float64), dtype)
        return counted

    # weights inside, at the cell edges, just past the tolerance, far away, and non-finite
    offsets = [0.0, 0.5, -0.5, 0.549, -0.549, 0.551, -0.551, 3.0, -3.0]
    for offset in offsets:
        check(values.astype(np.float64) + offset * width)
    for x in (lo, hi, np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf), np.full_like(lo, np.nan),
              np.full_like(lo, np.inf), np.full_like(lo, -np.inf), np.full_like(lo, 65520.0)):
        check(x)
    # float32 weights just inside and just outside each edge (the shortcut's own boundary)
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    for x32 in (lo32, hi32, np.nextafter(lo32, np.float32(-np.inf)), np.nextafter(hi32, np.float32(np.inf)),
                np.nextafter(lo32, np.float32(np.inf)), np.nextafter(hi32, np.float32(-np.inf))):
        check(x32.astype(np.float64))
    # the test can fail: a weight moved by many cells is counted
    x = values.astype(np.float64)
    x[100:110] += 5 * width[100:110]
    assert check(x) >= 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_marked_copy_counts_what_the_reference_counts(dtype: torch.dtype) -> None:
    """The case the shortcut is for: the stored values are float32 weights rounded to 16 bits,
    so none is tested, and a few moved weights among them still are."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    values = torch.from_numpy(x).to(dtype).float().numpy()
    assert count_outside(values, x, dtype) == _reference_outside(values, x.astype(np.float64), dtype) == 0
    x[5, :40] += np.float32(0.01)
    assert count_outside(values, x, dtype) == _reference_outside(values, x.astype(np.float64), dtype) >= 30


def test_two_dimensional_rows_are_counted_whole() -> None:
    rng = np.random.default_rng(1)
    values = torch.from_numpy(rng.standard_normal((64, 96))).half().float().numpy()
    x = values.astype(np.float64) + rng.standard_normal(values.shape) * 1e-3
    assert count_outside(values, x, torch.float16) == _reference_outside(values, x, torch.float16) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_rounding_to_the_other_zero_or_the_largest_values_count_as_the_reference(dtype: torch.dtype) -> None:
    """The rounding shortcut compares values: a weight rounding to -0 where +0 is stored (and
    back) is passed over as inside, the largest values and infinities are always tested."""
    finfo = torch.finfo(dtype)
    values = torch.tensor([0.0, -0.0, finfo.max, -finfo.max, 2.0**127 if dtype == torch.bfloat16 else 32768.0,
                           np.inf, -np.inf, 1.0], dtype=torch.float32).to(dtype).float().numpy()
    x = np.array([-1e-30, 1e-30, finfo.max, np.inf, 2.0**127 if dtype == torch.bfloat16 else 32768.0,
                  finfo.max, -np.inf, 1.0], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = _reference_outside(values, x.astype(np.float64), dtype)
    assert count_outside(values, x, dtype) == want
    assert count_outside(values, x.astype(np.float64), dtype) == want
