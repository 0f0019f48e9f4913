"""The lineage test's skewness and Pearson III tail are scipy.stats', bit for bit, without
importing scipy.stats in ``compare`` (docs/benchmarks.md, fixed costs)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pearson3, skew

from provenance.compare.symtest import pearson3_sf, sample_skew


def _samples() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        rng.standard_normal(999),
        rng.gamma(2.0, size=999) * 0.08 + 5.0,  # skewed, shifted: the permuted statistics' look
        -rng.gamma(0.5, size=99),
        rng.standard_normal(3),
        np.array([1.0, 2.0]),
        np.full(50, 7.25),  # constant: no second moment, NaN
        np.array([1e300, -1e300, 3.0]),
        np.array([1.0, np.nan, 2.0, 4.0]),
    ]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy warns of the overflow and cancellation too
@pytest.mark.parametrize("sample", _samples())
def test_sample_skew_is_scipys(sample: np.ndarray) -> None:
    want = float(skew(sample, bias=False))
    got = sample_skew(sample)
    assert (math.isnan(want) and math.isnan(got)) or got == want


@pytest.mark.parametrize("gamma", [0.0, 1e-7, 1e-5, 0.077, 0.31, 0.5, 1.0, 2.5, -0.4])
@pytest.mark.parametrize("z", [-40.0, -3.0, -0.5, 0.0, 1.3, 4.75, 12.0, 60.0, 1e4, math.inf, -math.inf, math.nan])
def test_pearson3_sf_is_scipys(z: float, gamma: float) -> None:
    want = float(pearson3.sf(z, gamma))
    got = pearson3_sf(z, gamma)
    assert (math.isnan(want) and math.isnan(got)) or got == want


def test_compare_does_not_import_scipy_stats() -> None:
    """The lineage test, its alignment and the comparison entry point load neither
    scipy.stats nor scipy.optimize (about 0.5 s and 0.3 s of CPU per process)."""
    code = ("import sys, provenance.compare.api, provenance.compare.symtest, provenance.compare.align; "
            "print(sorted(m for m in sys.modules if m.startswith(('scipy.stats', 'scipy.optimize'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
