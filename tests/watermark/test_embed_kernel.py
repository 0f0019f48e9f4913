"""The embed's fused kernel (``mark_store_rows``) against the operations it replaced: the
marked rows cast to storage by torch, read back, and the change terms summed in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from provenance.watermark import DerivedKey
from provenance.watermark.embed import Q8_BLOCK, STORAGE_CODES, mark_rows, mark_store_rows, store_marked_rows

WORDS = DerivedKey(b"provenance-test-secret-0001", "acme").words("blk.0.ffn_up.weight")


def _rows(cols: int, hostile: bool) -> np.ndarray:
    rng = np.random.default_rng(cols)
    w = (rng.standard_normal((7, cols)) * 0.02).astype(np.float16).astype(np.float32)
    if hostile:  # what a hostile or broken source may hold: every class of float, in two rows
        special = np.array([0.0, -0.0, 65504.0, -65519.0, 65520.0, 6.1e-5, -5.96e-8, 2.98e-8, 1e-30, 3e38,
                            np.inf, -np.inf, np.nan], np.float32)
        w[5, :special.size] = special
        w[6] = np.frombuffer(rng.integers(0, 1 << 32, cols, dtype=np.uint64).astype(np.uint32).tobytes(), np.float32)
    return w


def _expected(w: np.ndarray, marked: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Torch's cast of the marked rows (the storage bytes) and the change terms in float64."""
    stored = torch.from_numpy(marked).to(dtype)
    back = stored.float().numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):  # signalling NaNs among the random bits
        w64 = w.astype(np.float64)
    blocks = [np.abs(w64[:, b:b + Q8_BLOCK]).max(axis=1) for b in range(0, w.shape[1], Q8_BLOCK)]
    steps = sum((m / 127.0) ** 2 for m in blocks)
    terms = np.stack([(w64 ** 2).sum(axis=1), ((back - w64) ** 2).sum(axis=1), steps], axis=1)
    return stored.view(torch.int16).numpy().view(np.uint16) if dtype != torch.float32 else stored.numpy(), terms


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cols", [4096, 11008, 200, 45])
@pytest.mark.parametrize("hostile", [False, True])
def test_fused_mark_equals_torch_casts_and_float64_sums(dtype: torch.dtype, cols: int, hostile: bool) -> None:
    w = _rows(cols, hostile)
    marked = np.empty_like(w)
    mark_rows(w, WORDS, np.int64(3 * cols), 1e-3, marked)
    bits_ref, terms_ref = _expected(w, marked, dtype)
    storage = STORAGE_CODES[dtype]
    for fused in (True, False):  # the key's generator in the kernel, or rows marked beforehand
        bits = np.zeros(w.shape, np.uint16) if storage else np.zeros((w.shape[0], 0), np.uint16)
        values = np.zeros(w.shape, np.float32) if storage == 0 else np.zeros((w.shape[0], 0), np.float32)
        change = np.zeros((w.shape[0], 3))
        if fused:
            mark_store_rows(w, WORDS, np.int64(3 * cols), 1e-3, storage, bits, values, Q8_BLOCK, change)
        else:
            store_marked_rows(w, marked, storage, bits, values, Q8_BLOCK, change)
        stored = bits if storage else values
        finite = ~np.isnan(marked)
        # the stored bytes: torch's, except that a NaN is stored as a NaN of our choosing
        assert np.array_equal(stored[finite], bits_ref[finite])
        if storage:
            nan_bits = stored[~finite]
            assert np.all((nan_bits & 0x7FFF) > (0x7C00 if dtype == torch.float16 else 0x7F80))
        else:
            assert np.isnan(stored[~finite]).all()
        clean = np.isfinite(terms_ref).all(axis=1)
        assert np.allclose(change[clean], terms_ref[clean], rtol=1e-5, atol=0)
        # a row with a NaN or an infinity: the same terms are NaN, or infinite (also where
        # float32 partial sums of squares overflow that float64 ones do not: ~1e38 weights)
        assert np.array_equal(np.isnan(change[~clean]), np.isnan(terms_ref[~clean]))
        assert np.isinf(change[~clean][np.isinf(terms_ref[~clean])]).all()
