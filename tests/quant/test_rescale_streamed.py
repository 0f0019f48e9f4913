"""``quantcheck --realign`` streams the reference into the candidate's frame: the scale fit in
passes over chunks of rows equals the whole-matrix fit bit for bit, and no whole tensor is read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provenance.quant.rescale import reference_in_frame, refine_factors, refine_factors_streamed
from tests.compare.test_transformations import TINY, permuted_q4km  # noqa: F401  (the fixture)


def _rescaled_grid(seed: int, n: int = 257, m: int = 96) -> tuple[np.ndarray, ...]:
    """A matrix and the cells of a rescaled copy of it on a uniform grid."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    r, c = np.exp(rng.normal(0, 0.3, n)), np.exp(rng.normal(0, 0.3, m))
    step = 0.05
    stored = np.round(x * r[:, None] * c[None, :] / step) * step
    return x, stored, stored - step / 2, stored + step / 2


@pytest.mark.parametrize("cols", [True, False])
@pytest.mark.parametrize("rows_per_chunk", [1, 7, 64, 1000])
def test_streamed_fit_equals_the_whole_matrix_fit(cols: bool, rows_per_chunk: int) -> None:
    x, stored, lo, hi = _rescaled_grid(seed=rows_per_chunk)
    whole_r, whole_c = refine_factors(x, stored, lo, hi, True, cols)
    assert not np.allclose(whole_r, 1.0)  # something was fitted

    def chunks():  # type: ignore[no-untyped-def]
        return ((x[a:a + rows_per_chunk], stored[a:a + rows_per_chunk], lo[a:a + rows_per_chunk],
                 hi[a:a + rows_per_chunk]) for a in range(0, x.shape[0], rows_per_chunk))

    r, c = refine_factors_streamed(chunks, *x.shape, True, cols)
    assert np.array_equal(r, whole_r) and np.array_equal(c, whole_c)


def test_realigned_rows_equal_the_whole_tensor_mapping(permuted_q4km: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Every realigned tensor's rows, streamed, are the whole-tensor mapping's bit for bit, and
    the streamed check reads no whole tensor (at 70B an MLP matrix is 235 M weights)."""
    from provenance.codecs.grid import quant_grid
    from provenance.formats import open_checkpoint
    from provenance.formats.base import Checkpoint
    from provenance.quant import api
    from provenance.watermark.realign import realign

    with open_checkpoint(permuted_q4km) as cand, open_checkpoint(TINY) as ref:
        frames = realign(cand, ref).tensors
        assert any(f.row_scale is not None or f.col_scale is not None for f in frames.values())
        expected = {}
        for name, frame in frames.items():
            grid = quant_grid(cand.raw_rows(name), int(cand.info(name).ggml_type))  # type: ignore[arg-type]
            lo, hi = grid.cell_bounds(clip=True)
            expected[name] = reference_in_frame(ref.read_rows(name), frame, lo.double().numpy(), hi.double().numpy(),
                                                grid.values().double().numpy(), tolerance_steps=0.0).astype(np.float32)

        def whole_read(self: Checkpoint, name: str, *args: object, **kwargs: object) -> None:
            raise AssertionError(f"{name} read whole")

        monkeypatch.setattr(Checkpoint, "read_rows", whole_read)
        monkeypatch.setattr(Checkpoint, "read", whole_read)
        fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, frame in frames.items():
            rows = api._frame_rows(cand, ref, name, frame, step=37, fitted=fitted)
            n = cand.info(name).n_rows
            got = np.concatenate([rows.rows(a, min(n, a + 37)).astype(np.float32) for a in range(0, n, 37)])
            rows.close()
            assert np.array_equal(got, expected[name]), name
