"""llama2.c checkpoint -> HF ``LlamaForCausalLM``.

The only non-obvious step is the q/k row order: llama2.c (like Meta's original code
and GGUF) applies RoPE to adjacent pairs (2i, 2i+1) of each head, while HF's Llama
rotates the two halves of each head (i, i + head_dim/2). llama.cpp's converter maps
HF -> interleaved with a fixed per-head row permutation; we apply its inverse
(:func:`provenance.names.qk_permute.gguf_to_hf_rows`), with ``n_kv_heads`` for wk.
Every other matrix is copied as is (both store ``nn.Linear`` weights as (out, in)).
"""
from __future__ import annotations

import os

import torch
from transformers import LlamaForCausalLM

from provenance.errors import UnsupportedCheckpoint
from provenance.names.qk_permute import gguf_to_hf_rows
from provenance.synth.arch import STORIES260K_SHAPE, synth_config
from provenance.synth.llama2c import Llama2cWeights, infer_rope_theta, load_llama2c


def _qk_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    return torch.from_numpy(gguf_to_hf_rows(w.numpy(), n_heads).copy())


def llama2c_to_hf(ckpt: Llama2cWeights) -> LlamaForCausalLM:
    """An HF model computing the same function as ``ckpt`` (float32)."""
    c = ckpt.config
    shape = {"hidden_size": c.dim, "intermediate_size": c.hidden_dim, "num_hidden_layers": c.n_layers,
             "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
             "vocab_size": c.vocab_size}
    if shape != STORIES260K_SHAPE or not c.shared_classifier:
        # synth_config is fixed to this one shape on purpose; other llama2.c models would
        # need their own config, which nothing in the project asks for yet.
        raise UnsupportedCheckpoint(ckpt.path, f"llama2.c shape {shape} is not stories260K's")
    config = synth_config(rope_theta=infer_rope_theta(ckpt), max_position_embeddings=c.seq_len)
    t = ckpt.tensors
    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": t["tok_embeddings"],
        "model.norm.weight": t["norm"],
    }
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = t["attention_norm"][i]
        state[p + "self_attn.q_proj.weight"] = _qk_to_hf(t["wq"][i], c.n_heads)
        state[p + "self_attn.k_proj.weight"] = _qk_to_hf(t["wk"][i], c.n_kv_heads)
        state[p + "self_attn.v_proj.weight"] = t["wv"][i]
        state[p + "self_attn.o_proj.weight"] = t["wo"][i]
        state[p + "post_attention_layernorm.weight"] = t["ffn_norm"][i]
        state[p + "mlp.gate_proj.weight"] = t["w1"][i]
        state[p + "mlp.down_proj.weight"] = t["w2"][i]
        state[p + "mlp.up_proj.weight"] = t["w3"][i]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    # lm_head is tied to the embedding, so it is the only key allowed to be "missing".
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"conversion left keys unmatched: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model.eval()


def load_stories260k_as_hf(path: str | os.PathLike[str]) -> LlamaForCausalLM:
    """Load ``stories260K.bin`` (llama2.c format) as an HF ``LlamaForCausalLM``."""
    return llama2c_to_hf(load_llama2c(path))
