"""Quantized calibration variants are what llama-quantize writes (project's exact quantizers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provenance.codecs import quantize_rows
from provenance.compare.variants import llama_cpp_types, llama_quantize, write_variant
from provenance.formats import open_checkpoint
from provenance.quant.writer import quantize_model

ROOT = Path(__file__).resolve().parents[2]
QUANT = ROOT.parent / "shared" / "data" / "llamacpp-quant"
F32 = QUANT / "stories260K-f32.gguf"


def test_q8_0_variant_is_llama_cpp_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "q8.gguf"
    llama_quantize(F32, out, "Q8_0")
    assert out.read_bytes() == (QUANT / "stories260K-Q8_0.gguf").read_bytes()


def test_same_bytes_as_the_project_writer_where_types_agree(tmp_path: Path) -> None:
    for ftype in ("Q4_K_M", "Q8_0"):
        a, b = tmp_path / f"a-{ftype}.gguf", tmp_path / f"b-{ftype}.gguf"
        llama_quantize(F32, a, ftype)
        quantize_model(F32, b, ftype)
        assert a.read_bytes() == b.read_bytes(), ftype


def test_q2_k_falls_back_to_q4_0_like_llama_cpp(tmp_path: Path) -> None:
    """llama.cpp 0.3.36's tensor_type_fallback (checked against its real quantizer, see
    test_quant_quantize_writer): Q2_K on rows of 64 -> Q4_0; rows of 172 -> F16."""
    with open_checkpoint(F32) as src:
        types = llama_cpp_types(src, "Q2_K")
        values = src.read("blk.1.attn_q.weight")
    assert types["blk.1.attn_q.weight"] == "Q4_0" and types["blk.1.attn_v.weight"] == "Q4_0"
    assert types["blk.1.ffn_down.weight"] == "F16" and types["token_embd.weight"] == "Q8_0"
    out = tmp_path / "q2.gguf"
    llama_quantize(F32, out, "Q2_K")
    with open_checkpoint(out) as q:
        assert q.info("blk.1.attn_q.weight").dtype == "Q4_0"
        stored = q.raw_rows("blk.1.attn_q.weight")
    assert np.array_equal(stored, quantize_rows(np.asarray(values, dtype=np.float32), "Q4_0"))


@pytest.mark.parametrize("scheme", ["Q4_K_M", "2bit-emu", None])
def test_write_variant_round_trips(tmp_path: Path, scheme: str | None) -> None:
    from provenance.compare.variants import load_canonical

    tensors, arch, _ = load_canonical(F32)
    types = write_variant(tmp_path / "v.gguf", tensors, arch, scheme, "v", base_model="stories260K")
    with open_checkpoint(tmp_path / "v.gguf") as v:
        assert {n: i.dtype for n, i in v.tensors.items()} == types
        assert v.metadata_claims.get("general.base_model.0.name") == "stories260K"
        got = v.read("blk.0.attn_q.weight")
    ref = tensors["blk.0.attn_q.weight"]
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err == 0 if scheme is None else 0 < err < 0.5
