"""Quantization chains on an unquantized candidate: a probe of the first rows rejects a chain
that cannot explain the tensor before the tensor is read whole (docs/lineage.md)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from provenance.codecs.dequant import dequantize_rows
from provenance.codecs.quantize_ref import quantize_rows
from provenance.codecs.types import type_info
from provenance.compare import compare
from provenance.compare.gridframe import CHAIN_PROBE_ROWS
from provenance.formats import open_checkpoint
from provenance.formats.write import write_checkpoint
from provenance.watermark.embed import embed_checkpoint
from provenance.watermark.keys import DerivedKey
from tests.conftest import QUANT_DIR
from tests.support.read_counts import count_reads

REFERENCE = QUANT_DIR / "tiny-llama-f32.gguf"


def test_a_marked_copy_tries_each_chain_on_a_probe_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marked = tmp_path / "marked.gguf"
    embed_checkpoint(REFERENCE, marked, DerivedKey(b"s" * 32, "acme"))
    import provenance.compare.api as api

    counts = count_reads(monkeypatch)
    chain_reads: dict[str, int] = {}
    explain = api.explain_codes

    def explain_counted(*args: Any, **kwargs: Any) -> Any:
        before = dict(counts)
        try:
            return explain(*args, **kwargs)
        finally:
            chain_reads.update({p: n - before.get(p, 0) for p, n in counts.items()})

    monkeypatch.setattr(api, "explain_codes", explain_counted)
    result = compare(marked, REFERENCE)
    assert result.verdict.kind == "perturbed-copy"
    assert all(r.grid_chain is None for r in result.tensors)
    with open_checkpoint(marked) as ckpt:
        widest = max(info.row_bytes for info in ckpt.tensors.values())
    # at most one probe per chain type and file; a whole tensor read per type before
    assert 0 < chain_reads[os.path.realpath(marked)] <= 6 * CHAIN_PROBE_ROWS * widest


def test_a_dequantized_requantization_is_still_named(tmp_path: Path) -> None:
    """A Q8_0 rounding of the reference stored back as F32: the chain passes the probe."""
    out = tmp_path / "through-q8.gguf"
    code = int(type_info("Q8_0").ggml_type)
    with open_checkpoint(REFERENCE) as ref:
        replaced = {name: dequantize_rows(quantize_rows(ref.read_rows(name), "Q8_0"), code).reshape(info.n_rows, -1)
                    .reshape(ref.read(name).shape)
                    for name, info in ref.tensors.items() if info.layer is not None and len(info.shape) == 2}
        write_checkpoint(ref, out, replace=replaced)
    result = compare(out, REFERENCE)
    chains = {r.grid_chain for r in result.tensors if r.name in replaced}
    assert chains == {"Q8_0"}, chains
    assert np.isfinite(result.verdict.p_asymptotic or 0.0)
