"""Decoy keys: many innocent Gaussian keys scored on the same candidate, nearly for free.

A decoy key is a cyclic shift of a fresh i.i.d. N(0, 1) stream ``g`` over a chunk of the
tensor: ``k_j[i] = g[(i + lag_j) mod n]``. Each decoy is itself exactly an i.i.d. Gaussian
key (a permutation of i.i.d. draws), so its score is exactly N(0, 1) given the candidate,
like any innocent client's key. The scores for *all* ``n`` lags of a chunk come from one
FFT cross-correlation (``O(n log n)`` instead of ``O(n)`` per decoy), and every chunk draws
its own stream and lags, so two decoys share no stream over a chunk unless their lags
coincide there. Distinct decoys are uncorrelated up to the candidate's circular
autocorrelation at their lag difference (``O(1/sqrt(n))`` for noise-like residuals).

``independent=True`` instead draws a separate Gaussian key per decoy with the watermark's own
generator (:mod:`.keygen`, cost ``n`` per decoy): slower, with no dependence at all; the tests
compare both.

Decoys are scored on a sample of the model only (:data:`provenance.watermark.detect.DECOY_WEIGHTS`,
the first blocks of the pass): each decoy's z is exactly N(0, 1) on any sample, so the check of
the null needs no more, and 1000 FFT passes over every chunk of a 7B model cost minutes.

The shifted streams are torch's (fast, not promised stable across versions): decoys only need
to be random, not reproducible elsewhere.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from provenance.watermark.keygen import gaussian_dots


def _generator(seed: int, tensor: str, chunk: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\0{tensor}\0{chunk}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _decoy_words(seed: int, tensor: str, chunk: int, decoy: int) -> np.ndarray:
    digest = hashlib.sha256(f"decoy\0{seed}\0{tensor}\0{chunk}\0{decoy}".encode()).digest()
    return np.frombuffer(digest[:16], dtype="<u4").astype(np.uint32)


@dataclass
class DecoyBank:
    """Accumulates ``sum(k_j * y)`` for ``n_decoys`` decoy keys and each statistic."""

    n_decoys: int
    statistics: tuple[str, ...]
    seed: int = 0
    independent: bool = False
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sums = {name: np.zeros(self.n_decoys) for name in self.statistics}

    def add(self, tensor: str, chunk: int, ys: dict[str, np.ndarray]) -> None:
        """Add one chunk's contribution; ``ys`` maps statistic -> flat ``y`` (float32)."""
        if self.n_decoys == 0 or not ys:
            return
        n = next(iter(ys.values())).size
        if n == 0:
            return
        if self.independent:
            y = np.ascontiguousarray(np.stack([ys[name] for name in ys]), dtype=np.float32)
            dots = np.zeros(len(ys))
            for j in range(self.n_decoys):
                dots[:] = 0.0
                gaussian_dots(_decoy_words(self.seed, tensor, chunk, j), 0, y, 0, n, dots)
                for column, name in enumerate(ys):
                    self.sums[name][j] += dots[column]
            return
        gen = _generator(self.seed, tensor, chunk)
        g = torch.randn(n, generator=gen, dtype=torch.float64)
        lags = torch.randint(0, n, (self.n_decoys,), generator=gen)
        g_hat = torch.fft.rfft(g)
        for name, y in ys.items():
            # sum_i y[i] g[(i + s) mod n] for every s at once: irfft(conj(Y) * G).
            corr = torch.fft.irfft(torch.conj(torch.fft.rfft(torch.from_numpy(y).double())) * g_hat, n=n)
            self.sums[name] += corr[lags].numpy()

    def z(self, name: str, q: float) -> np.ndarray:
        return self.sums[name] / np.sqrt(q) if q > 0 else np.zeros(self.n_decoys)
