"""The lineage test: Spearman agreement of circuit matrices, with a residual-permutation null.

Null hypothesis H0: the candidate was trained independently of the reference. Llama
training is equivariant to permutations of the residual-stream coordinates (i.i.d.
initialisation of every matrix, RMSNorm gains initialised equal, element-wise AdamW), so
under H0 the candidate's residual coordinates are exchangeable: for any fixed
permutation ``P`` the candidate with its residual stream permuted by ``P`` is exactly as
likely, and independent of the reference. (This is the symmetry argument of the
independence-test literature, Zhu et al. ICML 2025, applied to the residual stream
instead of MLP units, because the circuits of :mod:`.invariants` are already immune to
MLP-unit and head permutations.)

Statistic: for each circuit, Spearman's rho between the reference's and the candidate's
entries (off-diagonal entries of square circuits); ``atanh(rho)`` summed over the
circuits of a layer gives the layer statistic, summed over layers the model statistic.
Permuting the candidate's residual coordinates permutes its circuit entries, hence its
ranks, so each permuted statistic is one gather and one dot product.

* exact p-value: ``(1 + #{k : T(P_k) >= T}) / (K + 1)`` over ``K`` uniform random
  permutations; valid for any K under H0 (its floor is ``1 / (K + 1)``);
* asymptotic p-value: the upper tail at ``z = (T - mean_K) / sd_K`` of a Pearson type
  III distribution with the permutation distribution's skewness (the classic moment
  approximation of Mantel-type permutation tests). Assumption: the permutation
  distribution is well described by its first three moments. A plain normal tail was
  anti-conservative here (skewness 0.3-0.5 on the synth pool: normal p 7e-4 where 9,999
  permutations gave 4e-3); the skewness used is the estimate plus one standard error
  (``sqrt(6/K)``), floored at 0, so the approximation errs conservative. It reaches far
  below ``1 / (K + 1)``; its tail is checked on the calibration pool, not assumed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import gammainc, gammaincc, ndtr

from provenance.compare.invariants import Circuit
from provenance.compare.permgather import gather_permuted
from provenance.compare.result import CircuitScore, LayerTest, PermutationTestResult

ATANH_CLIP = 1 - 1e-12
#: permuted circuit entries gathered per batch (float32: 4 MB, cache-friendly)
_GATHER_BUDGET = 1_000_000


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(x)`` (ties get their average rank) of a 1-D array.

    The same numbers from an unstable sort: tied values share one rank whatever order the
    sort leaves them in, and the ranks (integers and halves) are exact in float64. The
    stable sort rankdata uses is most of the cost of the test's per-layer scoring (6x the
    SIMD quicksort on 16K circuit entries). NaN: rankdata's answer (all NaN)."""
    if np.isnan(x).any():
        from scipy.stats import rankdata  # only here: scipy.stats costs ~0.5 s to import

        return rankdata(x).astype(np.float64)
    order = np.argsort(x)
    y = x[order]
    starts = np.flatnonzero(np.concatenate(([True], y[1:] != y[:-1])))
    counts = np.diff(np.append(starts, len(y)))
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(starts + 1 + (counts - 1) / 2, counts)
    return ranks


def _standardised_ranks(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Ranks of the masked entries, centred and scaled to unit norm (zeros elsewhere)."""
    out = np.zeros(values.shape, dtype=np.float64)
    sel = values[mask] if mask is not None else values.ravel()
    r = _average_ranks(sel)
    r -= r.mean()
    norm = math.sqrt(float((r * r).sum()))
    if norm > 0:
        r /= norm
    if mask is not None:
        out[mask] = r
    else:
        out = r.reshape(values.shape)
    return out


def _z_p(value: float, sample: np.ndarray) -> tuple[float, float, float, float]:
    mean = float(sample.mean())
    sd = float(sample.std(ddof=1)) if len(sample) > 1 else 0.0
    if sd <= 0:
        return mean, sd, (math.inf if value > mean else 0.0), (0.0 if value > mean else 1.0)
    z = (value - mean) / sd
    return mean, sd, z, pearson3_sf(z, conservative_skew(sample))


def conservative_skew(sample: np.ndarray) -> float:
    """Sample skewness plus one standard error, floored at 0 (see the module doc)."""
    n = len(sample)
    if n < 3:
        return 0.0
    return max(0.0, sample_skew(sample) + math.sqrt(6.0 / n))


# The two functions below are scipy.stats' ``skew(x, bias=False)`` and ``pearson3.sf`` for
# the one case the test needs (a 1-D float64 sample, a scalar at loc 0 and scale 1), written
# out with scipy.special so that ``compare`` does not import scipy.stats (~0.5 s of CPU per
# process, most of it building the docstrings of its ~100 distributions). Same arithmetic in
# the same order: tests/compare/test_symtest_moments.py holds them to scipy.stats bit for bit.

def sample_skew(sample: np.ndarray) -> float:
    """Bias-corrected sample skewness (``scipy.stats.skew(sample, bias=False)``); NaN when
    the sample's second moment is zero to float64 precision."""
    n = len(sample)
    with np.errstate(all="ignore"):
        mean = sample.mean(keepdims=True)
        centred = sample - mean
        m2 = (centred**2).mean()
        m3 = (centred**2 * centred).mean()
        if m2 <= (np.finfo(np.float64).eps * mean[0]) ** 2:
            return math.nan
        if n > 2:
            return float(((n - 1.0) * n) ** 0.5 / (n - 2.0) * m3 / m2**1.5)
        return float(m3 / m2**1.5)


def pearson3_sf(z: float, gamma: float) -> float:
    """Upper tail of the standardised Pearson type III law with skewness ``gamma``
    (the normal tail when ``gamma`` is 0).

    For ``gamma > 0`` the law is a gamma law of shape ``alpha = 4 / gamma^2`` shifted and
    scaled (``x = (y - alpha) / beta``, ``beta = 2 / gamma``), so its tail at ``z`` is
    ``Q(alpha, beta (z - zeta))``, the regularised upper incomplete gamma function, and 1
    below the law's lower end ``zeta = -2 / gamma`` (as scipy.stats.pearson3.sf)."""
    if abs(gamma) < _NORMAL_SKEW:  # where scipy.stats.pearson3 uses the normal law itself
        return float(ndtr(-z))
    beta = 2.0 / gamma
    alpha = beta**2
    zeta = 0.0 - alpha / beta
    shifted = beta * (z - zeta)
    if math.isnan(shifted):
        return math.nan
    if gamma < 0:  # mirrored: the law's upper end is zeta, its tail the lower gamma tail
        return 0.0 if shifted <= 0 else float(gammainc(alpha, shifted))
    return 1.0 if shifted <= 0 else float(gammaincc(alpha, shifted))


#: scipy.stats.pearson3 treats ``|skew|`` below this as the normal law
_NORMAL_SKEW = 0.000016


#: a test drawn in two stages stops after the first when every statistic (the model's and
#: each layer's) is at least this many null sds above the null mean with no permuted value
#: reaching it: decided far beyond any threshold of the verdict (asymptotic p < 1e-6 is z ~ 5-7)
FAR_Z = 20.0


@dataclass
class _Kept:
    """What a circuit's permuted rhos are computed from, kept until the test is complete:
    float32 standardised ranks of both sides (square circuits), or ``A^T B`` (column blocks)."""

    square: bool
    a32: np.ndarray | None = None
    b32: np.ndarray | None = None
    cross: np.ndarray | None = None


class PermutationTest:
    """The test accumulated one circuit group (one layer, or the embedding blocks) at a time.

    The ``K`` residual permutations are drawn up front from the seed (``(K, m)`` indices,
    1 KB per permutation at ``m = 128``), so each group's circuits can be scored under the
    identity and under every permutation as soon as they exist, and then dropped: what is
    kept per circuit is its observed rho and its ``K`` permuted rhos (8 KB), never the
    circuit or the sketch it came from. Memory therefore does not grow with the width of
    the model and only by ``8 K`` bytes per circuit with its depth.

    ``first``: score the groups under the first ``first`` permutations only, keeping each
    circuit's ranks (``8 m^2`` bytes: 128 KB at ``m = 128``, still nothing that grows with the
    width); :meth:`result` stops there when the comparison is decided far from any threshold
    (:data:`FAR_Z`), else it scores the kept circuits under the other ``K - first``
    permutations, and the result is then the one-stage test's, bit for bit (the same draws,
    the same per-permutation arithmetic). The exact p-value of a stopped test is exact for its ``first``
    permutations (floor ``1 / (first + 1)``); its z and asymptotic p are estimated from them.
    """

    def __init__(self, m: int, permutations: int = 999, seed: int = 0, first: int = 0) -> None:
        self.m, self.planned = m, permutations
        rng = np.random.default_rng(seed)
        # one global P per draw, shared by every group (same draws, same order as drawing
        # them in batches: the generator's stream is sequential)
        self.perms = np.argsort(rng.random((permutations, m)), axis=1) if permutations else np.empty((0, m), dtype=np.int64)
        self.permutations = first if 0 < first < permutations else permutations
        self.kept: list[_Kept] | None = [] if self.permutations < permutations else None
        self.labels: list[tuple[str, int | None]] = []
        self.observed: list[float] = []
        self.rho_perm: list[np.ndarray] = []

    def _batch(self) -> int:
        return max(1, int(_GATHER_BUDGET // (self.m * self.m)))

    def add(self, reference: list[Circuit], candidate: list[Circuit]) -> int:
        """Score the circuits of one group (those present on both sides with equal shapes);
        returns how many were added."""
        by_key = {(c.label, c.layer): c for c in candidate}
        pairs = [(r, by_key[(r.label, r.layer)]) for r in reference
                 if (r.label, r.layer) in by_key and by_key[(r.label, r.layer)].matrix.shape == r.matrix.shape
                 and r.matrix.shape[1] == self.m]
        if not pairs:
            return 0
        m = self.m
        for r, c in pairs:
            mask = ~np.eye(m, dtype=bool) if r.square else None
            ra, rb = _standardised_ranks(r.matrix, mask), _standardised_ranks(c.matrix, mask)
            # Square circuits: rho(P) = sum_ij A_ij B_P(i)P(j), one flat gather per permutation
            # (float32 ranks: the statistic needs ~1e-6, not 1e-16). Column-permuted blocks:
            # rho(P) = sum_j M_j,P(j) with M = A^T B, so O(m) per permutation.
            kept = (_Kept(True, ra.ravel().astype(np.float32), np.ascontiguousarray(rb, dtype=np.float32))
                    if r.square else _Kept(False, cross=ra.T @ rb))
            self.labels.append((r.label, r.layer))
            self.observed.append(float((ra * rb).sum()))
            self.rho_perm.append(self._permuted(kept, 0, self.permutations))
            if self.kept is not None:
                self.kept.append(kept)
        return len(pairs)

    def _permuted(self, kept: _Kept, lo: int, hi: int) -> np.ndarray:
        """The circuit's rho under permutations ``lo..hi`` (float64)."""
        out = np.empty(hi - lo)
        if hi <= lo:
            return out
        perms = self.perms[lo:hi]
        if not kept.square:
            assert kept.cross is not None
            out[:] = kept.cross[np.arange(self.m)[None, :], perms].sum(axis=1)
            return out
        assert kept.a32 is not None and kept.b32 is not None
        # a fixed batch per circuit (not per group), so a circuit's permuted rhos do not
        # depend on which circuits it is scored with: streamed and whole-model runs agree
        # bit for bit. The gather is compiled (:mod:`.permgather`: no index array); the dot
        # products go through einsum's own loop, not BLAS: numpy's threaded OpenBLAS gemv
        # on these (61, 16384) batches spun its threads for ~30 ms a call on the shared
        # 2-core machine (0.54 s vs 0.001 s per circuit for 999 permutations,
        # docs/lineage.md), most of the test's cost per layer
        batch = self._batch()
        permuted = np.empty((min(batch, hi - lo), self.m * self.m), dtype=np.float32)
        # batches at multiples of ``batch`` from the first permutation whatever ``lo``: a
        # second stage starting mid-batch scores its permutations in the rest of that batch,
        # and every permutation's dot product is the one-stage run's (einsum's loop gives
        # each row the same float32 sum in any batch of two rows or more)
        start = lo
        while start < hi:
            stop = min(hi, (start // batch + 1) * batch)
            k = stop - start
            gather_permuted(kept.b32, perms[start - lo:stop - lo], permuted[:k])
            out[start - lo:stop - lo] = np.einsum("kn,n->k", permuted[:k], kept.a32)
            start = stop
        return out

    def _complete(self) -> None:
        """Score every kept circuit under the permutations not drawn yet."""
        if self.kept is None:
            return
        lo, hi = self.permutations, self.planned
        self.rho_perm = [np.concatenate([rho, self._permuted(kept, lo, hi)])
                         for rho, kept in zip(self.rho_perm, self.kept, strict=True)]
        self.permutations, self.kept = hi, None

    def __len__(self) -> int:
        return len(self.labels)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # circuits in model order (layers ascending, then the embedding blocks) whatever
        # order the groups were streamed in: sums are then taken in one fixed order
        order = sorted(range(len(self.labels)), key=lambda i: (self.labels[i][1] is None, self.labels[i][1] or 0))
        if order != list(range(len(order))):
            self.labels = [self.labels[i] for i in order]
            self.observed = [self.observed[i] for i in order]
            self.rho_perm = [self.rho_perm[i] for i in order]
            if self.kept is not None:
                self.kept = [self.kept[i] for i in order]
        observed = np.asarray(self.observed, dtype=np.float64)
        rho_perm = np.stack(self.rho_perm, axis=1) if self.rho_perm else np.empty((self.permutations, 0))
        t_obs = np.arctanh(np.clip(observed, -ATANH_CLIP, ATANH_CLIP))
        t_perm = np.arctanh(np.clip(rho_perm, -ATANH_CLIP, ATANH_CLIP))
        return observed, rho_perm, t_obs, t_perm

    def running_p(self) -> float:
        """Asymptotic p of the statistic over the groups added so far (a progress signal)."""
        if not self.labels or self.permutations < 3:
            return 1.0
        _, _, t_obs, t_perm = self._arrays()
        return _z_p(float(t_obs.sum()), t_perm.sum(axis=1))[3]

    def result(self) -> PermutationTestResult:
        """The test over the permutations drawn; a first stage decided far from every
        threshold (:data:`FAR_Z`) is the result, else the rest are drawn first."""
        if not self.labels:
            raise ValueError("no comparable circuits")
        if self.kept is not None:
            first = self._result()
            floor = first.p_exact_floor
            if (first.z >= FAR_Z and first.p_exact <= floor and all(
                    layer.z >= FAR_Z and layer.p_exact <= floor for layer in first.layers)):
                return replace(first, permutations_planned=self.planned)
            self._complete()
        return self._result()

    def _result(self) -> PermutationTestResult:
        permutations = self.permutations
        observed, rho_perm, t_obs, t_perm = self._arrays()
        total_obs = float(t_obs.sum())
        total_perm = t_perm.sum(axis=1)
        p_exact = (1 + int((total_perm >= total_obs - 1e-12).sum())) / (permutations + 1)
        mean, sd, z, p_asym = _z_p(total_obs, total_perm)
        circuits_out = [CircuitScore(layer, label, float(observed[i]), float(rho_perm[:, i].std(ddof=1)))
                        for i, (label, layer) in enumerate(self.labels)]
        layers_out = []
        layer_keys: list[int | None] = []
        for _, layer in self.labels:
            if layer not in layer_keys:
                layer_keys.append(layer)
        for layer in layer_keys:
            cols = [i for i, (_, lay) in enumerate(self.labels) if lay == layer]
            obs = float(t_obs[cols].sum())
            perm = t_perm[:, cols].sum(axis=1)
            p_ex = (1 + int((perm >= obs - 1e-12).sum())) / (permutations + 1)
            _, _, lz, lp = _z_p(obs, perm)
            layers_out.append(LayerTest(layer, tuple(self.labels[i][0] for i in cols), obs, lz, p_ex, lp,
                                        float(np.mean(observed[cols]))))
        return PermutationTestResult(
            statistic=total_obs, p_exact=p_exact, p_asymptotic=p_asym, z=z, permutations=permutations,
            perm_mean=mean, perm_sd=sd, circuits=tuple(circuits_out), layers=tuple(layers_out),
            null_sample=tuple(float(x) for x in total_perm[:200]),
        )


def residual_permutation_test(
    reference: list[Circuit], candidate: list[Circuit], permutations: int = 999, seed: int = 0,
) -> PermutationTestResult:
    """Exact and asymptotic p-values for H0 (independent training) on all circuits at
    once (the streamed pipeline feeds :class:`PermutationTest` group by group instead)."""
    if not reference:
        raise ValueError("no comparable circuits")
    test = PermutationTest(reference[0].matrix.shape[1], permutations, seed)
    test.add(reference, candidate)
    return test.result()
