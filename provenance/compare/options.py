"""Options of ``compare``: each user-facing field declares its default and help once
(:mod:`provenance.options`); ``provenance compare`` generates its command-line options from them."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from provenance.options import option, seed_option, threads_option

LayoutMode = Literal["auto", "same", "transposed-bytes"]


@dataclass(frozen=True)
class CompareOptions:
    permutations: int = option(999, "Residual permutations for the exact p-value (floor 1/(N+1)).",
                               range=(19, 1_000_000))
    """Residual permutations for the exact p-value (its floor is 1 / (permutations + 1))."""
    first_permutations: int = 99
    """Permutations drawn first: the test stops there when every statistic (the model's and
    each layer's) lies at least ``symtest.FAR_Z`` null sds beyond the null mean, and draws
    the rest otherwise (docs/lineage.md, "Two stages"); 0 draws all of them at once."""
    seed: int = seed_option()
    """Seed of the permutations and of the residual/token/row samples (results are reproducible)."""
    max_residual: int = option(128, "Residual coordinates sampled for the test and alignment.", range=(8, 1 << 16))
    """Residual coordinates kept in sketches (all of them for narrower models)."""
    max_tokens: int = 2048
    """Embedding rows kept in sketches."""
    sample_rows: int = 128
    """Rows of each delta kept for its effective rank. The LoRA call needs ranks <= 8 to
    show (``verdict.LOW_RANK_MAX``, at most a quarter of the sample); 128 rows show any rank
    up to 128, and the Gram matrix behind the rank costs a quarter of 256 rows' (it was
    the largest single cost of the streamed pass on 7B layers)."""
    threads: int = threads_option(2)
    """Tensors streamed concurrently (torch runs one thread per tensor)."""
    layout: LayoutMode = option("auto", "Candidate data layout; auto detects transposed data.")
    """``auto`` (detect transposed data), ``same`` or ``transposed-bytes``."""
    align: bool = option(True, "Recover permutations/scales before the per-tensor statistics.")
    """Recover permutations/scales when the models are related."""
    grid_check: bool = option(True, "Check the quantization grid of the lossy side (requantization evidence).")
    """Check a lossy side's quantization grid against the other side (requantization)."""
    chunk_elems: int = 1 << 21
    """Elements per streamed chunk: the arithmetic costs the same per element from 64K to 4M,
    the per-chunk overhead does not: Python, and the hand-offs to the threads that read ahead
    and check the grid (~0.3 ms of wake-ups per call on a 2-vCPU VM). 7B Q4_K_M vs F16, cold:
    512K 65.7 s, 2M 50.1 s, 4M 57.0 s (peak RSS 901, 1046, 1165 MB; docs/benchmarks.md)."""
    max_units: int = option(128, "MLP units sampled for the rotation-blind unit-space test (0: no such test).",
                            range=(0, 1 << 16))
    """MLP units kept whole for the rotation-blind unit-space test (:mod:`.unitspace`); 0: no such test."""
    max_probe_tokens: int = 1024
    """Embedding rows kept whole (at most twice the width) to recover a residual rotation."""
    layer_map: bool = option(True, "Map candidate layers onto reference layers by evidence (upscaled, pruned, "
                                   "reordered models).")
    """Map candidate layers onto reference layers by evidence (:mod:`.layermap`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
