"""One Transform for the streamed comparison (torch row chunks) and whole-tensor numpy uses
(watermark residuals, quantization cells and flip signs)."""
from __future__ import annotations

import numpy as np
import torch

from provenance.compare.transform import Transform
from provenance.formats import open_checkpoint
from tests.conftest import QUANT_DIR


def _moved() -> tuple[np.ndarray, Transform]:
    with open_checkpoint(QUANT_DIR / "stories260K-f32.gguf") as ckpt:
        w = ckpt.read("blk.0.ffn_down.weight")  # (64, 172): columns are the MLP units
    rng = np.random.default_rng(0)
    scale = np.exp(rng.normal(0.0, 0.5, w.shape[1])) * rng.choice([-1.0, 1.0], w.shape[1])
    return w, Transform(row_index=rng.permutation(w.shape[0]), col_index=rng.permutation(w.shape[1]),
                        row_scale=np.exp(rng.normal(0.0, 0.3, w.shape[0])), col_scale=scale)


def test_numpy_map_is_the_streamed_map_and_undoes_itself() -> None:
    w, t = _moved()
    aligned = t.apply_numpy(w)
    assert aligned.dtype == np.float32 and aligned.flags.c_contiguous
    streamed = [t.apply(torch.from_numpy(w[t.candidate_rows(a, min(a + 10, len(w)))]), a).numpy() for a in range(0, len(w), 10)]
    assert np.array_equal(np.concatenate(streamed), aligned)
    back = t.unapply_numpy(t.apply_numpy(w.astype(np.float64)))
    np.testing.assert_allclose(back, w, rtol=1e-12, atol=0)
    assert not np.allclose(aligned, w)


def test_signs_follow_values_into_the_reference_frame() -> None:
    w, t = _moved()
    signs = np.sign(w).astype(np.int8)
    np.testing.assert_array_equal(t.apply_signs(signs), np.sign(t.apply_numpy(w.astype(np.float64))))
