"""The fused change sums of embed (:func:`provenance.watermark.change.change_sums`) equal
the separate passes they replaced bit for bit: the report's rel_change and q8_ratio must not
move."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from provenance.watermark.change import Q8_BLOCK, change_sums
from provenance.watermark.signals import SUM_CHUNK


def _separate_passes(w: np.ndarray, back: np.ndarray) -> np.ndarray:
    """What embed computed before: a scratch of differences, float32 dots per SUM_CHUNK added
    in float64, and torch's abs/amax per Q8_0 block."""
    flat_w, diff = w.reshape(-1), (back - w).reshape(-1)
    sums = np.zeros(3)
    sums[0] += sum((np.float64(np.dot(flat_w[i:i + SUM_CHUNK], flat_w[i:i + SUM_CHUNK]))
                    for i in range(0, flat_w.size, SUM_CHUNK)), 0.0)
    sums[1] += sum((np.float64(np.dot(diff[i:i + SUM_CHUNK], diff[i:i + SUM_CHUNK]))
                    for i in range(0, diff.size, SUM_CHUNK)), 0.0)
    amax = torch.abs(torch.from_numpy(w).reshape(-1)).view(-1, Q8_BLOCK).amax(dim=1)
    sums[2] += float(amax.double().div_(127.0).square_().sum())
    return sums


def _fused(w: np.ndarray, back: np.ndarray) -> np.ndarray:
    sums = np.zeros(4)
    amax = torch.empty(w.size // Q8_BLOCK, dtype=torch.float32)
    change_sums(w.reshape(-1), back.reshape(-1), sums, amax.numpy())
    sums[2] += float(amax.double().div_(127.0).square_().sum())
    return sums[:3]


@pytest.mark.parametrize("shape", [(1, 32), (3, 4096), (7, 11008), (5, 96)])
def test_fused_sums_equal_separate_passes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    w[0, 3] = -0.5  # the block maximum is an absolute value
    back = torch.from_numpy(w + 1e-5 * rng.standard_normal(shape).astype(np.float32)).half().float().numpy()
    assert _fused(w, back).tobytes() == _separate_passes(w, back).tobytes()


def test_block_maxima_are_per_block_and_nan_propagates() -> None:
    w = np.zeros((1, 4 * Q8_BLOCK), dtype=np.float32)
    w[0, 5], w[0, Q8_BLOCK + 7], w[0, 2 * Q8_BLOCK] = -3.0, 2.0, np.nan
    sums, amax = np.zeros(4), np.full(4, -1.0, dtype=np.float32)
    change_sums(w.reshape(-1), w.reshape(-1), sums, amax)
    assert amax[0] == 3.0 and amax[1] == 2.0 and np.isnan(amax[2]) and amax[3] == 0.0
    assert np.isnan(sums[0]) and np.isnan(sums[1])
