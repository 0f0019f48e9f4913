"""Is a related candidate a copy that was obfuscated, and how? The rules that name it.

A leaker who knows the tool changes a copy just enough to break hashes and the exact grid
test. What the change looks like tells it apart from retraining (docs/lineage.md, "The
shape of the difference"); each word below is one rule over the typed per-tensor results
(:class:`provenance.compare.result.TensorComparison`, its ``shape_of_change`` from
:mod:`.shape`), applied in this order after "identical" and "requantized":

* **magnitude-pruned copy**: at least ``PRUNED_MIN`` of the weights of the changed
  matrices zeroed (median over them), the zeroed ones small (their mean |w| at most
  ``PRUNED_MAGNITUDE_RATIO`` x the mean), and nothing else changed: the rest equal (within
  ``ROUNDING_REL``), inside the quantized side's cells, or i.i.d. noise as below;
* **perturbed copy**: every changed matrix's difference (for a quantized candidate, what
  lies outside its cells) i.i.d. by the keyless classifier (or, in a few, too small on the
  sampled rows to classify: no change seen there), at least one i.i.d., and every 1-D tensor
  (norm gains) unchanged up to storage.

Why the second clause of "perturbed copy": training moves every parameter it updates, norm
gains included, and fine-tunes' deltas that look i.i.d. in some matrices (a heavy fine-tune
of a small model does) never do in all of them with the gains untouched (synth fine-tunes,
the real small-model fine-tune: docs/lineage.md). A leaker who also adds noise to the gains
is called a fine-tune: a stated limit, not a silent one.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence

from provenance.compare.result import CopyDetails, TensorComparison

#: a tensor is "inside the grid" (requantized) when at most this fraction left its cells
GRID_OUTSIDE_MAX = 1e-3
#: relative delta below which a difference is float rounding (rescaled copies)
ROUNDING_REL = 1e-6
#: median share of zeroed weights over changed matrices for "pruned" (noise flips into the
#: zero cell of a quantized copy stay near 0.1%, fine-tunes below 1%: docs/lineage.md)
PRUNED_MIN = 0.02
#: the zeroed weights' mean |w| over all weights' mean |w| at most this (random zeroing: ~1)
PRUNED_MAGNITUDE_RATIO = 0.5
IID = "iid-perturbation"
#: classes of a difference that is no change beyond storage rounding or exact quantization
NO_CHANGE = ("identical", "precision", "exact-quantization")


#: a packed layout whose writer does not round to nearest (GPTQ, AWQ) counts as a quantized
#: copy when its dequantization error is at most this many times the grid's rounding noise
#: (measured ~1.0 on auto-round RTN exports; GPTQ's error feedback raises weight error
#: modestly; a fine-tuned source adds its whole delta on top)
QUANT_NOISE_MAX = 3.0


def inside_grid(row: TensorComparison) -> bool:
    """Inside the lossy side's grid: at most ``GRID_OUTSIDE_MAX`` outside their cells, or, for
    a packed layout whose writer does not round to nearest (GPTQ, AWQ), a dequantization
    error within ``QUANT_NOISE_MAX`` times the grid's rounding noise."""
    frac = row.grid_outside_fraction
    if frac is not None and frac <= GRID_OUTSIDE_MAX:
        return True
    ratio = row.grid_noise_ratio
    return row.grid_rounds_to_nearest is False and ratio is not None and ratio <= QUANT_NOISE_MAX


def unchanged(row: TensorComparison) -> bool:
    """Equal, inside the lossy side's cells, or (once a recovered rescaling was undone) equal
    up to float rounding."""
    if row.max_abs_delta == 0 or inside_grid(row):
        return True
    if not row.aligned:
        return False
    rel = row.rel_delta_norm if row.rel_delta_norm is not None else row.max_abs_delta / max(row.norm_reference, 1e-30)
    return rel <= ROUNDING_REL


def changed_matrices(rows: Sequence[TensorComparison]) -> list[TensorComparison]:
    """Matrices that differ beyond storage (:func:`unchanged`)."""
    return [r for r in rows if r.is_matrix and not unchanged(r)]


def vectors_unchanged(rows: Sequence[TensorComparison]) -> bool:
    """Every 1-D tensor (norm gains) unchanged up to storage (:func:`unchanged`)."""
    return all(unchanged(r) for r in rows if not r.is_matrix)


def quantized_types(rows: Sequence[TensorComparison]) -> tuple[str, ...]:
    """Storage types of the candidate where it is the coarser side."""
    return tuple(sorted({str(r.grid_type) for r in rows if r.grid_lossy_side == "candidate" and r.grid_type}))


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _rest_clean(row: TensorComparison) -> bool:
    """Outside its zeroed weights, the matrix is unchanged up to storage, or i.i.d. noise."""
    shape = row.shape_of_change
    if shape is None:
        return False
    if shape.change_class in NO_CHANGE or shape.change_class == IID:
        return True
    if shape.rest_rel is not None and shape.rest_rel <= ROUNDING_REL:
        return True
    return shape.rest_outside_fraction is not None and shape.rest_outside_fraction <= GRID_OUTSIDE_MAX


def _details(rows: Sequence[TensorComparison], changed: list[TensorComparison]) -> CopyDetails:
    shapes = [r.shape_of_change for r in changed if r.shape_of_change is not None]
    noisy = [s.noise_rel for s in shapes if s.change_class == IID and s.noise_rel is not None]
    zeroed = [s.zeroed_fraction for s in shapes]
    ratios = [s.zeroed_magnitude_ratio for s in shapes if s.zeroed_magnitude_ratio is not None]
    return CopyDetails(quantized_types=quantized_types(rows), changed_matrices=len(changed),
                       iid_matrices=sum(s.change_class == IID for s in shapes), noise_rel=_median(noisy),
                       zeroed_fraction=_median(zeroed), zeroed_magnitude_ratio=_median(ratios),
                       vectors_unchanged=vectors_unchanged(rows))


def pruned_copy(rows: Sequence[TensorComparison]) -> CopyDetails | None:
    """The "magnitude-pruned copy" rule (module docstring), or None."""
    changed = changed_matrices(rows)
    if not changed or any(r.shape_of_change is None for r in changed):
        return None
    details = _details(rows, changed)
    if (details.zeroed_fraction is None or details.zeroed_fraction < PRUNED_MIN
            or details.zeroed_magnitude_ratio is None or details.zeroed_magnitude_ratio > PRUNED_MAGNITUDE_RATIO):
        return None
    return details if all(_rest_clean(r) for r in changed) else None


def perturbed_copy(rows: Sequence[TensorComparison]) -> CopyDetails | None:
    """The "perturbed copy" rule (module docstring), or None."""
    changed = changed_matrices(rows)
    if not changed or any(r.shape_of_change is None for r in changed):
        return None
    details = _details(rows, changed)
    quiet = sum(r.shape_of_change.change_class in NO_CHANGE for r in changed if r.shape_of_change is not None)
    if details.iid_matrices and details.iid_matrices + quiet == len(changed) and details.vectors_unchanged:
        return details
    return None


def describe_copy(details: CopyDetails, pruned: bool) -> str:
    """The words of a pruned or perturbed copy: what was done, with its size."""
    parts = []
    if pruned and details.zeroed_fraction is not None:
        bound = "at least " if details.quantized_types else ""
        parts.append(f"{bound}{100 * details.zeroed_fraction:.0f}% of weights zeroed, the smallest")
    if details.noise_rel is not None and details.iid_matrices:
        parts.append(f"i.i.d. noise ~{details.noise_rel:.1g} of each row's spread")
    what = "magnitude-pruned copy" if pruned else "perturbed copy"
    if details.quantized_types:
        what = f"quantized ({', '.join(details.quantized_types)}) {what}"
    return f"{what} of the reference ({'; '.join(parts)})" if parts else f"{what} of the reference"
