"""The in-place polar factor (Newton) against the SVD's ``U V^T`` it replaces in the rotation refit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from provenance.compare.polar import SingularMatrixError, orthogonal_polar_factor, polar_dtype


def _matrix(n: int, condition: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A matrix of the given condition number and its exact polar factor ``U V^T``."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (u * np.logspace(0, -np.log10(condition), n)) @ v.T, u @ v.T


@pytest.mark.parametrize(("n", "condition"), [(64, 1e3), (300, 1e8)])
def test_float64_is_the_svd_factor(n: int, condition: float) -> None:
    m, exact = _matrix(n, condition)
    u, _, vt = torch.linalg.svd(torch.from_numpy(m))
    svd_q = (u @ vt).numpy()
    x = np.asfortranarray(m)
    q = orthogonal_polar_factor(x)
    assert q is x  # in place: no copy of the input
    assert np.abs(q - svd_q).max() < 1e-9 * condition ** 0.5
    assert np.abs(q - exact).max() < 1e-9 * condition ** 0.5
    assert np.abs(q.T @ q - np.eye(n)).max() < 1e-13


def test_float32_stays_within_its_precision() -> None:
    m, exact = _matrix(256, 1e2, seed=1)
    q = orthogonal_polar_factor(np.asfortranarray(m, dtype=np.float32))
    assert q.dtype == np.float32
    assert np.abs(q - exact).max() < 2e-5
    assert np.abs(q.astype(np.float64).T @ q - np.eye(256)).max() < 1e-5


def test_singular_and_malformed_inputs() -> None:
    m, _ = _matrix(32, 10.0)
    m[:, 5] = 0.0
    with pytest.raises(SingularMatrixError):
        orthogonal_polar_factor(np.asfortranarray(m))
    with pytest.raises(ValueError):
        orthogonal_polar_factor(np.ascontiguousarray(_matrix(8, 2.0)[0]))  # C order: refused, not copied
    with pytest.raises(ValueError):
        orthogonal_polar_factor(np.zeros((4, 5), order="F"))


def test_precision_follows_the_width() -> None:
    assert polar_dtype(64) is np.float64 and polar_dtype(4096) is np.float64  # 7B: 3 x 128 MB
    assert polar_dtype(8192) is np.float32  # 70B: 3 x 256 MB instead of 3 x 512 MB
