"""Karpathy's llama2.c legacy ``.bin`` checkpoints: a strict loader and a torch forward.

Only used for ``stories260K.bin``, the real trained tiny Llama that generates our
training corpus and is the real-model parent of some derivatives. The file is raw
float32 with a 7 x int32 header and no other framing, so the header is the only
thing that says how to cut it up: it is checked for plausibility and the file size
must equal *exactly* the size the header implies (a wrong header would otherwise
silently mis-slice every tensor).

Layout, legacy version 0 (``export.py legacy_export``), all float32 little-endian::

    header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    tok_embeddings (vocab, dim)     attention_norm (L, dim)
    wq (L, dim, dim)  wk (L, kv_dim, dim)  wv (L, kv_dim, dim)  wo (L, dim, dim)
    ffn_norm (L, dim)  w1 (L, hidden, dim)  w2 (L, dim, hidden)  w3 (L, hidden, dim)
    norm (dim)  freqs_cos (seq_len, head_dim/2)  freqs_sin (seq_len, head_dim/2)
    output (vocab, dim)   only when the header's vocab_size is negative

q/k rows are in Meta's interleaved-pair RoPE order (same as GGUF), not HF's
rotate-half order; see :mod:`provenance.synth.convert`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from provenance.errors import MalformedCheckpoint

RMS_EPS = 1e-5  # llama2.c's run.c and model.py both use 1e-5


@dataclass(frozen=True)
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads


@dataclass(frozen=True)
class Llama2cWeights:
    path: str
    config: Llama2cConfig
    tensors: dict[str, torch.Tensor]
    """float32 tensors by the names of :meth:`Llama2cConfig.tensor_shapes`;
    ``output`` is always present (the embedding itself when shared)."""


# llama2.c tensor names (as the torch forward below uses them) -> the canonical names the
# project's reader gives the same slabs; per-layer roles are stacked back into (L, ...).
_PER_LAYER = {"attention_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
              "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
_GLOBAL = {"tok_embeddings": "token_embd", "norm": "output_norm", "freqs_cos": "rope_freqs_real",
           "freqs_sin": "rope_freqs_imag", "output": "output"}


def load_llama2c(path: str | os.PathLike[str]) -> Llama2cWeights:
    """Read a llama2.c legacy checkpoint through the project's strict reader
    (:class:`provenance.formats.llama2c_reader.Llama2cCheckpoint`: plausible header, exact
    file size), as float32 torch tensors in llama2.c's own names and stacked layout."""
    from provenance.formats.llama2c_reader import Llama2cCheckpoint as Llama2cReader

    with Llama2cReader(path) as reader:
        dim, hidden, layers, heads, kv_heads, vocab, seq = reader.header
        config = Llama2cConfig(dim, hidden, layers, heads, kv_heads, abs(vocab), seq, shared_classifier=vocab > 0)

        def read(name: str) -> torch.Tensor:
            return torch.from_numpy(np.array(reader.read(name), dtype=np.float32))

        tensors = {ours: read(f"{canonical}.weight") for ours, canonical in _GLOBAL.items()
                   if f"{canonical}.weight" in reader}
        for ours, role in _PER_LAYER.items():
            tensors[ours] = torch.stack([read(f"blk.{i}.{role}.weight") for i in range(layers)])
    if config.shared_classifier:
        tensors["output"] = tensors["tok_embeddings"]
    return Llama2cWeights(str(path), config, tensors)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """llama2.c's ``precompute_freqs_cis``: (seq_len, head_dim/2) cos and sin tables."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def infer_rope_theta(ckpt: Llama2cWeights,
                     candidates: tuple[float, ...] = (10000.0, 100000.0, 500000.0, 1000000.0)) -> float:
    """The RoPE base whose tables match the ones stored in the file (they are the
    only record of it); raise if none does, rather than guess."""
    cfg = ckpt.config
    for theta in candidates:
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, theta)
        if torch.allclose(cos, ckpt.tensors["freqs_cos"], atol=1e-4) and torch.allclose(
                sin, ckpt.tensors["freqs_sin"], atol=1e-4):
            return theta
    raise MalformedCheckpoint(ckpt.path, "stored RoPE tables match no known rope base",
                              field="freqs_cos")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * weight


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, H, hd); adjacent elements (2i, 2i+1) are the real/imaginary parts of pair i.
    xr, xi = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((xr * cos - xi * sin, xr * sin + xi * cos), dim=-1).flatten(-2)


class Llama2cModel(nn.Module):
    """llama2.c's ``Transformer.forward`` (no dropout), with an optional KV cache so the
    corpus can be sampled in O(T) per token. Weights are buffers: this is for inference."""

    def __init__(self, ckpt: Llama2cWeights) -> None:
        super().__init__()
        self.config = ckpt.config
        for name, tensor in ckpt.tensors.items():
            self.register_buffer(name, tensor, persistent=False)

    def new_cache(self, batch: int, max_len: int) -> list[torch.Tensor]:
        c = self.config
        shape = (c.n_layers, batch, max_len, c.n_kv_heads, c.head_dim)
        return [torch.zeros(shape), torch.zeros(shape)]

    def forward(self, tokens: torch.Tensor, start_pos: int = 0,
                cache: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for ``tokens`` (B, T) placed at ``start_pos``. With a
        cache, keys/values of earlier calls are reused and this call's are stored."""
        c = self.config
        bsz, t = tokens.shape
        end = start_pos + t
        if end > c.seq_len:
            raise ValueError(f"positions up to {end} exceed the model's RoPE table ({c.seq_len})")
        cos, sin = self.freqs_cos[start_pos:end], self.freqs_sin[start_pos:end]
        x = self.tok_embeddings[tokens]
        # Queries at absolute position start_pos+i may see keys at positions <= start_pos+i.
        mask = torch.ones(t, end, dtype=torch.bool).tril(diagonal=start_pos)
        rep = c.n_heads // c.n_kv_heads
        for layer in range(c.n_layers):
            h = _rms_norm(x, self.attention_norm[layer])
            q = (h @ self.wq[layer].T).view(bsz, t, c.n_heads, c.head_dim)
            k = (h @ self.wk[layer].T).view(bsz, t, c.n_kv_heads, c.head_dim)
            v = (h @ self.wv[layer].T).view(bsz, t, c.n_kv_heads, c.head_dim)
            q, k = _rope_interleaved(q, cos, sin), _rope_interleaved(k, cos, sin)
            if cache is not None:
                cache[0][layer, :bsz, start_pos:end] = k
                cache[1][layer, :bsz, start_pos:end] = v
                k, v = cache[0][layer, :bsz, :end], cache[1][layer, :bsz, :end]
            elif start_pos:
                raise ValueError("start_pos > 0 needs a cache")
            # Query head j uses kv head j // rep (llama2.c's repeat_kv).
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c.head_dim)
            attn = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            out = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(bsz, t, c.dim)
            x = x + out @ self.wo[layer].T
            h = _rms_norm(x, self.ffn_norm[layer])
            x = x + (F.silu(h @ self.w1[layer].T) * (h @ self.w3[layer].T)) @ self.w2[layer].T
        return _rms_norm(x, self.norm) @ self.output.T
