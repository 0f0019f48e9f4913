"""Trained synth models and their Q4_K_M variants for the structure tests (tests/compare)."""
from __future__ import annotations

from pathlib import Path

import pytest

from provenance.compare.variants import load_canonical, write_variant
from provenance.synth.store import synth_model_path


def synth_model(name: str) -> Path:
    """A shipped synth model's folder (skips when the pool is not built)."""
    try:
        return synth_model_path(name)
    except Exception:  # pragma: no cover - the synth pool ships with the repository
        pytest.skip("synth pool not built")


def q4_k_m(path: Path, tmp: Path) -> Path:
    """``path`` as llama-quantize would write its Q4_K_M (the project's llama.cpp-exact writer)."""
    tensors, arch, _ = load_canonical(path)
    dst = tmp / f"{path.name}-Q4_K_M.gguf"
    write_variant(dst, tensors, arch, "Q4_K_M", path.name)
    return dst
