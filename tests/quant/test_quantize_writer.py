"""quantize_model end to end: llama.cpp's files reproduced byte for byte."""
from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from provenance.errors import UsageProblem
from provenance.formats import open_checkpoint
from provenance.names.qk_permute import gguf_to_hf_rows
from provenance.quant import quantcheck
from provenance.quant.writer import quantize_model
from tests.codecs.test_quantize_ref import TRUE_SOURCE
from tests.conftest import QUANT_DIR
from tests.support.ggml_reference import llama_cpp_quantize

torch.set_num_threads(1)


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_whole_file_identical_to_llama_cpp(quant_file: str, tmp_path: Path) -> None:
    ftype = quant_file.rsplit("-", 1)[1].removesuffix(".gguf")
    out = tmp_path / quant_file
    report = quantize_model(QUANT_DIR / TRUE_SOURCE[quant_file], out, ftype)
    with open_checkpoint(QUANT_DIR / quant_file) as ref, open_checkpoint(out) as ours:
        assert list(ours.tensors) == list(ref.tensors)
        for name, info in ref.tensors.items():
            assert ours.info(name).dtype == info.dtype, name
            assert np.array_equal(ours.raw_rows(name), ref.raw_rows(name)), name
    # metadata (KV order, file_type, quantization_version), alignment and padding too
    assert out.read_bytes() == (QUANT_DIR / quant_file).read_bytes()
    assert report.n_quantized > 0


@pytest.mark.parametrize("quant_file", ["tiny-llama-Q4_K_M.gguf", "tiny-llama-Q3_K_M.gguf"])
def test_result_passes_quantcheck(quant_file: str, tmp_path: Path) -> None:
    ftype = quant_file.rsplit("-", 1)[1].removesuffix(".gguf")
    out = tmp_path / quant_file
    quantize_model(QUANT_DIR / TRUE_SOURCE[quant_file], out, ftype)
    result = quantcheck(out, QUANT_DIR / TRUE_SOURCE[quant_file])
    assert result.verdict == "exact" and result.n_unexplained == 0


def test_plain_conversions(tmp_path: Path) -> None:
    out = tmp_path / "f16.gguf"
    quantize_model(QUANT_DIR / "tiny-llama-f32.gguf", out, "f16")
    with open_checkpoint(QUANT_DIR / "tiny-llama-f32.gguf") as src, open_checkpoint(out) as ours:
        assert ours.info("blk.0.attn_q.weight").dtype == "F16"
        assert ours.info("blk.0.attn_norm.weight").dtype == "F32"
        x = src.read("blk.1.ffn_down.weight")
        assert np.array_equal(ours.read("blk.1.ffn_down.weight"), x.astype(np.float16).astype(np.float32))
    fields = GGUFReader(out).fields
    assert fields["general.file_type"].contents() == 1 and fields["general.quantization_version"].contents() == 2
    back = tmp_path / "f32.gguf"
    quantize_model(out, back, "F32")
    with open_checkpoint(back) as b:
        assert b.info("token_embd.weight").dtype == "F32"


def test_requantize_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem, match="requantiz"):
        quantize_model(QUANT_DIR / "tiny-llama-Q8_0.gguf", tmp_path / "x.gguf", "Q4_K_M")


def _write_hf(src: Path, directory: Path) -> None:
    """An HF llama checkpoint (f16 safetensors + config.json) holding exactly the values
    of a GGUF, with q/k rows put back in HF's rotate-half order."""
    from safetensors.numpy import save_file

    n_head = 4
    hf = {}
    with open_checkpoint(src) as g:
        for name in g.tensors:
            x = g.read(name)
            if name.startswith("blk."):
                _, i, role, _ = name.split(".")
                if role in ("attn_q", "attn_k"):
                    x = gguf_to_hf_rows(x, n_head)
                key = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                       "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                       "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                       "ffn_norm": "post_attention_layernorm"}[role]
                hf[f"model.layers.{i}.{key}.weight"] = x
            else:
                hf[{"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
                    "output_norm.weight": "model.norm.weight"}[name]] = x
    save_file({k: v.astype(np.float16 if v.ndim == 2 else np.float32) for k, v in hf.items()}, str(directory / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 768,
              "num_hidden_layers": 2, "num_attention_heads": n_head, "num_key_value_heads": n_head, "vocab_size": 1024,
              "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "tie_word_embeddings": False}
    (directory / "config.json").write_text(json.dumps(config))


def test_hf_source_gives_llama_cpp_tensors(tmp_path: Path) -> None:
    """From an HF checkpoint with the same values (q/k in HF order), every tensor of the
    result equals llama.cpp's Q4_K_M file; metadata carries the llama hyperparameters."""
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    _write_hf(QUANT_DIR / "tiny-llama-f16.gguf", hf_dir)
    out = tmp_path / "q4km.gguf"
    quantize_model(hf_dir, out, "Q4_K_M")
    with open_checkpoint(QUANT_DIR / "tiny-llama-Q4_K_M.gguf") as ref, open_checkpoint(out) as ours:
        assert list(ours.tensors) == list(ref.tensors)
        for name, info in ref.tensors.items():
            assert ours.info(name).dtype == info.dtype, name
            assert np.array_equal(ours.raw_rows(name), ref.raw_rows(name)), name
        a = ours.architecture
        assert (a.arch, a.n_layer, a.n_embd, a.n_head, a.n_ff) == ("llama", 2, 256, 4, 768)


@pytest.mark.download
@pytest.mark.parametrize("ftype", ["Q2_K", "Q3_K_M", "Q4_K_M", "Q8_0"])
def test_fallback_types_match_the_real_llama_cpp(ftype: str, tmp_path: Path) -> None:
    """stories260K's rows of 64 do not fit 256-weight K blocks: llama.cpp falls back per tensor.
    The real quantizer (llama-cpp-python 0.3.36, built into .cache/llamacpp as docs/watermark.md
    shows; skipped without it) and ours must write byte-identical files."""
    from provenance.quant.writer import quantize_model

    source = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "llamacpp-quant" / "stories260K-f32.gguf"
    real = llama_cpp_quantize(source, tmp_path / "real.gguf", ftype)
    ours = tmp_path / "ours.gguf"
    quantize_model(source, ours, ftype)
    assert ours.read_bytes() == real.read_bytes()
