"""Lineage of quantized safetensors candidates (written by their real writers) against
their fp source and an unrelated model: "quantized copy" with the dequantization error of
the grid, and "unrelated"."""
from __future__ import annotations

from pathlib import Path

import pytest

from provenance.compare.api import CompareOptions, compare
from tests.support.packed_writers import packed_source, packed_unrelated, written

__all__ = ["packed_source", "packed_unrelated"]  # fixtures


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gptq", "awq", "ct-pack", "ct-fp8", "bnb-nf4", "bnb-int8", "mlx"])
def test_quantized_copy_and_unrelated(kind: str, packed_source: Path, packed_unrelated: Path,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    candidate = written(kind, packed_source, tmp_path_factory)
    result = compare(candidate, packed_source, CompareOptions(permutations=99))
    verdict = result.verdict
    assert verdict.kind == "requantized", verdict.summary
    assert verdict.summary.startswith("quantized copy")
    error = verdict.details
    # the error is the grid's own rounding noise (step^2/12 per weight), not a changed source
    assert 0.5 < error.noise_ratio_max < 2.0, error
    assert error.dequantization_rel_delta < (0.05 if kind in ("ct-fp8", "bnb-int8") else 0.15)
    matrices = [r for r in result.tensors if r.grid_rounds_to_nearest is not None]
    assert len(matrices) >= 14
    # RTN writers: every weight of the source lies in the cell of its stored code
    assert all(r.grid_outside_fraction <= 1e-3 for r in matrices)
    other = compare(candidate, packed_unrelated, CompareOptions(permutations=99))
    assert other.verdict.kind == "unrelated", other.verdict.summary
    assert all(r.grid_outside_fraction > 0.5 for r in other.tensors if r.grid_rounds_to_nearest is not None)


@pytest.mark.slow
def test_autoawq_scaled_copy_is_derived_not_called_a_plain_quantized_copy(
        packed_source: Path, packed_unrelated: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """AutoAWQ's activation-aware search multiplies input channels by a scale and divides the
    norm before them by it: the stored weights are not a rounding of the source's, so the
    verdict is a rescaled derivative (docs/formats.md, limits), still far from unrelated."""
    candidate = written("awq-autoawq", packed_source, tmp_path_factory)
    result = compare(candidate, packed_source, CompareOptions(permutations=99))
    assert result.verdict.related and result.verdict.kind not in ("requantized", "identical"), result.verdict.summary
    assert result.verdict.p_asymptotic is not None and result.verdict.p_asymptotic < 1e-10
    other = compare(candidate, packed_unrelated, CompareOptions(permutations=99))
    assert other.verdict.kind == "unrelated", other.verdict.summary
