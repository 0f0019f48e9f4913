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
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from provenance.errors import LimitExceeded, MalformedCheckpoint

HEADER_BYTES = 7 * 4
# Hard caps keep the size arithmetic and allocations sane on a hostile header; far above
# any llama2.c model that exists (the largest, 110M, has dim 768, 12 layers).
_MAX_DIM = 1 << 14
_MAX_LAYERS = 1 << 10
_MAX_VOCAB = 1 << 20
_MAX_SEQ = 1 << 20
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

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor in file order with its numpy shape."""
        d, h, n, kv, v = self.dim, self.hidden_dim, self.n_layers, self.kv_dim, self.vocab_size
        half = self.head_dim // 2
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("tok_embeddings", (v, d)),
            ("attention_norm", (n, d)),
            ("wq", (n, d, d)),
            ("wk", (n, kv, d)),
            ("wv", (n, kv, d)),
            ("wo", (n, d, d)),
            ("ffn_norm", (n, d)),
            ("w1", (n, h, d)),
            ("w2", (n, d, h)),
            ("w3", (n, h, d)),
            ("norm", (d,)),
            ("freqs_cos", (self.seq_len, half)),
            ("freqs_sin", (self.seq_len, half)),
        ]
        if not self.shared_classifier:
            shapes.append(("output", (v, d)))
        return shapes

    def file_size(self) -> int:
        # Python ints: no overflow whatever the header says.
        return HEADER_BYTES + 4 * sum(math.prod(s) for _, s in self.tensor_shapes())


@dataclass(frozen=True)
class Llama2cCheckpoint:
    path: str
    config: Llama2cConfig
    tensors: dict[str, torch.Tensor]
    """float32 tensors by the names of :meth:`Llama2cConfig.tensor_shapes`;
    ``output`` is always present (the embedding itself when shared)."""


def _parse_header(path: Path, raw: bytes) -> Llama2cConfig:
    if len(raw) < HEADER_BYTES:
        raise MalformedCheckpoint(path, f"{len(raw)} bytes, shorter than the 28-byte header",
                                  field="header", offset=0)
    dim, hidden, layers, heads, kv_heads, vocab, seq = (
        int(x) for x in np.frombuffer(raw[:HEADER_BYTES], dtype="<i4"))
    fields = {"dim": dim, "hidden_dim": hidden, "n_layers": layers, "n_heads": heads,
              "n_kv_heads": kv_heads, "seq_len": seq}
    caps = {"dim": _MAX_DIM, "hidden_dim": 8 * _MAX_DIM, "n_layers": _MAX_LAYERS,
            "n_heads": _MAX_DIM, "n_kv_heads": _MAX_DIM, "seq_len": _MAX_SEQ}
    for offset, (name, value) in enumerate(fields.items()):
        at = 4 * offset if name != "seq_len" else 24
        if value <= 0:
            raise MalformedCheckpoint(path, f"{name} = {value} must be positive", field=name, offset=at)
        if value > caps[name]:
            raise LimitExceeded(path, f"{name} = {value} exceeds {caps[name]}", field=name, offset=at)
    if vocab == 0 or abs(vocab) > _MAX_VOCAB:
        raise LimitExceeded(path, f"vocab_size = {vocab} out of range", field="vocab_size", offset=20)
    if dim % heads or heads % kv_heads or (dim // heads) % 2:
        raise MalformedCheckpoint(
            path, f"dim {dim} / n_heads {heads} / n_kv_heads {kv_heads} do not form even-sized"
            " heads grouped evenly over kv heads", field="n_heads", offset=12)
    return Llama2cConfig(dim, hidden, layers, heads, kv_heads, abs(vocab), seq,
                         shared_classifier=vocab > 0)


def load_llama2c(path: str | os.PathLike[str]) -> Llama2cCheckpoint:
    """Read a llama2.c legacy checkpoint; raise :class:`MalformedCheckpoint` unless the
    header is plausible and the file is exactly as long as the header implies."""
    path = Path(path)
    with open(path, "rb") as fh:
        header = fh.read(HEADER_BYTES)
        config = _parse_header(path, header)
        actual = os.fstat(fh.fileno()).st_size
        expected = config.file_size()
        if actual != expected:
            raise MalformedCheckpoint(
                path, f"file is {actual} bytes but its header implies exactly {expected}",
                field="size", offset=min(actual, expected))
        data = np.frombuffer(fh.read(expected - HEADER_BYTES), dtype="<f4")
    tensors: dict[str, torch.Tensor] = {}
    pos = 0
    for name, shape in config.tensor_shapes():
        n = math.prod(shape)
        tensors[name] = torch.from_numpy(data[pos:pos + n].reshape(shape).copy())
        pos += n
    if config.shared_classifier:
        tensors["output"] = tensors["tok_embeddings"]
    return Llama2cCheckpoint(str(path), config, tensors)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """llama2.c's ``precompute_freqs_cis``: (seq_len, head_dim/2) cos and sin tables."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def infer_rope_theta(ckpt: Llama2cCheckpoint,
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

    def __init__(self, ckpt: Llama2cCheckpoint) -> None:
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
