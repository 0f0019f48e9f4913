"""The shape of a plain difference on sampled rows (:func:`provenance.compare.shape.dense_shape`):
float32 rows share their float64 copies, difference and row deviations with the classifier,
and give the very shape that classifying the difference on its own gives (float64 rows, which
are classified from fresh copies), for every class of change."""
from __future__ import annotations

import numpy as np
import torch

from provenance.compare.shape import dense_shape


def test_shared_arrays_give_the_shape_classified_on_its_own() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 1000)) * 0.02).astype(np.float32)
    sigma = w.std(axis=1, keepdims=True)
    candidates = {
        "marked": torch.from_numpy(w + 1e-3 * sigma * rng.standard_normal(w.shape).astype(np.float32)).half().float().numpy(),
        "same": w.copy(),
        "rounded": torch.from_numpy(w).half().float().numpy(),
        "pruned": np.where(np.abs(w) < 0.01, 0, w).astype(np.float32),
        "low rank": (w + 0.01 * np.outer(rng.standard_normal(64), rng.standard_normal(1000))).astype(np.float32),
        "unrelated": (rng.standard_normal(w.shape) * 0.02).astype(np.float32),
    }
    classes = set()
    for name, cand in candidates.items():
        shared = dense_shape(cand, w)
        assert repr(shared) == repr(dense_shape(cand.astype(np.float64), w.astype(np.float64))), name
        classes.add(shared.change_class)
    assert {"identical", "precision", "iid-perturbation", "structured", "unrelated"} <= classes
