"""``grid_shape`` of a sample where no weight moved (every matrix of an exact quantized copy)
takes a shortcut past the per-weight noise widths; it gives the full computation's shape, the
noise amplitude's 0.0 / None included, on rows that are constant, without a cell width, with
NaN / infinite widths, or ordinary."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.compare.shape import _moved_grid_shape, grid_shape


def _case(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    ref = (rng.standard_normal((8, 256)) * 0.02).astype(np.float32)
    step = np.abs(rng.standard_normal(ref.shape)).astype(np.float32) * 1e-3
    if kind == "constant rows with steps":
        ref[:] = np.float32(0.1)  # a constant row's float64 deviation may still be a rounding above 0
    elif kind == "constant zero rows":
        ref[:] = 0.0
    elif kind == "no width":
        step[:] = 0.0
    elif kind == "widths only on constant rows":
        step[1:] = 0.0
        ref[0] = np.float32(-3.0)
    elif kind == "non-finite widths":
        step[::2] = np.inf
        step[1::2] = np.nan
    return np.zeros(ref.shape, np.float32), np.zeros(ref.shape, bool), ref, step


@pytest.mark.parametrize("kind", ["ordinary", "constant rows with steps", "constant zero rows", "no width",
                                  "widths only on constant rows", "non-finite widths"])
def test_unmoved_shortcut_equals_the_full_shape(kind: str) -> None:
    residual, zeroed, ref, step = _case(kind)
    with np.errstate(invalid="ignore"):
        want = _moved_grid_shape(residual, zeroed, ref, step)
    got = grid_shape(residual, zeroed, ref, step)
    assert got == want
    assert got.change_class == "exact-quantization"


def test_a_moved_weight_takes_the_full_computation() -> None:
    residual, zeroed, ref, step = _case("ordinary")
    residual[3, 5] = 1e-3
    assert grid_shape(residual, zeroed, ref, step) == _moved_grid_shape(residual, zeroed, ref, step)
    assert grid_shape(residual, zeroed, ref, step).rest_outside_fraction > 0
