"""Derived checkpoints for calibration and tests: symmetry-transformed and quantized copies.

* :func:`apply_symmetries`: the function-preserving moves an adversary gets for free
  (MLP unit permutation, sign flips and rescaling; KV-group and within-group head
  permutations; v-channel rescaling; residual-channel rescaling at each RMSNorm).
* :func:`quantize_model`: llama.cpp's tensor-type choice for a file type, including its
  fallback for rows that are not a multiple of the K-quant block (256): at stories260K's
  shape (rows of 64 and 172) llama.cpp itself writes Q5_0/Q8_0/IQ4_NL/F16, never
  K-quants. Q8_0, Q4_0 and Q5_0 are quantized with ``gguf.quants.quantize``, bit-exact
  with llama.cpp's reference quantizer; IQ4_NL (llama.cpp's fallback for Q2_K/Q3_K) has
  no bit-exact quantizer here and is replaced by Q4_0 (same block size and bit width).
  ``2bit-emu`` is an emulated 2-bit stress level (4 levels per 16 weights with f32
  scale/min, stored dequantized as F32): a noise level like Q2_K's, not a format.
* :func:`write_gguf`: a llama-architecture GGUF via ``gguf.GGUFWriter``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np

from provenance.formats import open_checkpoint
from provenance.names.arch import ArchRecord

Q = gguf.GGMLQuantizationType
SCHEMES = ("Q8_0", "Q4_K_M", "Q2_K", "2bit-emu")
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0}
_EXACT = (Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.F16, Q.F32)


def load_canonical(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], ArchRecord, dict[str, Any]]:
    """All tensors of a checkpoint in the canonical layout, its architecture and claims."""
    with open_checkpoint(path) as ckpt:
        tensors = {name: ckpt.read(name) for name, info in ckpt.tensors.items() if not (info.role or "").startswith("rope_freqs")}
        return tensors, ckpt.architecture, dict(ckpt.metadata_claims)


def _log_uniform(rng: np.random.Generator, n: int, lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def apply_symmetries(tensors: Mapping[str, np.ndarray], arch: ArchRecord, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A function-preserving re-parametrisation of a Llama model (canonical layout)."""
    rng = np.random.default_rng(seed)
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in tensors.items()}
    nh, nkv, hd = int(arch.n_head), int(arch.n_head_kv), int(arch.head_dim)  # type: ignore[arg-type]
    group = nh // nkv
    record: dict[str, Any] = {"seed": seed, "layers": []}
    for layer in range(int(arch.n_layer)):  # type: ignore[arg-type]
        n = lambda role: f"blk.{layer}.{role}.weight"  # noqa: E731
        # residual rescaling at the norms: gain x a, following columns / a
        a = _log_uniform(rng, out[n("attn_norm")].shape[0])
        out[n("attn_norm")] *= a
        for role in ("attn_q", "attn_k", "attn_v"):
            out[n(role)] /= a[None, :]
        b = _log_uniform(rng, out[n("ffn_norm")].shape[0])
        out[n("ffn_norm")] *= b
        for role in ("ffn_gate", "ffn_up"):
            out[n(role)] /= b[None, :]
        # MLP units: permutation, scale and sign (up row x s, down column / s)
        n_ff = out[n("ffn_up")].shape[0]
        perm = rng.permutation(n_ff)
        s = _log_uniform(rng, n_ff) * rng.choice([-1.0, 1.0], n_ff)
        out[n("ffn_gate")] = out[n("ffn_gate")][perm]
        out[n("ffn_up")] = out[n("ffn_up")][perm] * s[:, None]
        out[n("ffn_down")] = out[n("ffn_down")][:, perm] / s[None, :]
        # attention: permute KV groups, q heads within each group, rescale v channels
        kv_perm = rng.permutation(nkv)
        q_heads = np.concatenate([kv_perm[g] * group + rng.permutation(group) for g in range(nkv)])
        kv_rows = (kv_perm[:, None] * hd + np.arange(hd)).reshape(-1)
        q_rows = (q_heads[:, None] * hd + np.arange(hd)).reshape(-1)
        t = _log_uniform(rng, nkv * hd)
        out[n("attn_q")] = out[n("attn_q")][q_rows]
        out[n("attn_k")] = out[n("attn_k")][kv_rows]
        out[n("attn_v")] = out[n("attn_v")][kv_rows] * t[:, None]
        new_kv_of_q = (np.arange(nh) // group)[:, None] * hd + np.arange(hd)
        out[n("attn_output")] = out[n("attn_output")][:, q_rows] / t[new_kv_of_q.reshape(-1)][None, :]
        record["layers"].append({"layer": layer, "mlp_perm_moved": int((perm != np.arange(n_ff)).sum()),
                                 "kv_perm": kv_perm.tolist(), "q_heads": q_heads.tolist(),
                                 "negative_mlp_scales": int((s < 0).sum())})
    return out, record


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama_cpp_type(name: str, shape: tuple[int, ...], scheme: str, n_layer: int, tied: bool) -> Any:
    """llama.cpp's ``llama_tensor_get_type`` for the few file types used here (llama arch,
    no importance matrix), then its fallback when a row is not a whole number of blocks."""
    if len(shape) < 2:
        return Q.F32
    role = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    if scheme == "Q8_0":
        t = Q.Q8_0
    elif role == "output" or (role == "token_embd" and tied):
        t = Q.Q6_K
    elif scheme == "Q4_K_M":
        t = Q.Q6_K if role in ("attn_v", "ffn_down") and layer is not None and _use_more_bits(layer, n_layer) else Q.Q4_K
    elif scheme == "Q2_K":
        t = Q.Q3_K if role in ("attn_v", "attn_output", "ffn_down") else Q.Q2_K
    else:
        raise ValueError(scheme)
    block = gguf.GGML_QUANT_SIZES[t][0]
    if shape[-1] % block:
        t = _FALLBACK.get(t, t)
        if shape[-1] % gguf.GGML_QUANT_SIZES[t][0]:
            t = Q.F16
    return t


def emulate_2bit(x: np.ndarray) -> np.ndarray:
    """4 levels per 16 consecutive weights (min + k * (max - min) / 3), rows padded."""
    rows, cols = x.shape
    pad = (-cols) % 16
    y = np.pad(x.astype(np.float32), ((0, 0), (0, pad)), mode="edge").reshape(rows, -1, 16)
    lo, hi = y.min(axis=2, keepdims=True), y.max(axis=2, keepdims=True)
    step = np.where(hi > lo, (hi - lo) / 3, 1.0)
    q = np.clip(np.rint((y - lo) / step), 0, 3)
    return (lo + q * step).reshape(rows, -1)[:, :cols].astype(np.float32)


def quantize_model(tensors: Mapping[str, np.ndarray], scheme: str, n_layer: int) -> dict[str, tuple[np.ndarray, Any]]:
    """``name -> (array for GGUFWriter, ggml type)`` for one scheme."""
    tied = "output.weight" not in tensors
    out: dict[str, tuple[np.ndarray, Any]] = {}
    for name, x in tensors.items():
        x = np.ascontiguousarray(x, dtype=np.float32)
        if scheme == "2bit-emu":
            out[name] = (emulate_2bit(x) if x.ndim == 2 else x, Q.F32)
            continue
        t = llama_cpp_type(name, x.shape, scheme, n_layer, tied)
        if t not in _EXACT:
            raise AssertionError(f"{name}: {t.name} has no bit-exact quantizer here")
        if t == Q.F32:
            out[name] = (x, Q.F32)
        elif t == Q.F16:
            out[name] = (x.astype(np.float16), Q.F16)
        else:
            out[name] = (gguf.quants.quantize(x, t), t)
    return out


def write_gguf(path: str | os.PathLike[str], tensors: Mapping[str, tuple[np.ndarray, Any]], arch: ArchRecord,
               name: str, base_model: str | None = None) -> None:
    """A llama GGUF holding ``tensors`` (canonical names and layout)."""
    writer = gguf.GGUFWriter(os.fspath(path), "llama")
    writer.add_name(name)
    if base_model:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base_model)
    writer.add_block_count(int(arch.n_layer))  # type: ignore[arg-type]
    writer.add_embedding_length(int(arch.n_embd))  # type: ignore[arg-type]
    writer.add_feed_forward_length(int(arch.n_ff))  # type: ignore[arg-type]
    writer.add_head_count(int(arch.n_head))  # type: ignore[arg-type]
    writer.add_head_count_kv(int(arch.n_head_kv))  # type: ignore[arg-type]
    writer.add_context_length(int(arch.context_length or 512))
    writer.add_rope_freq_base(float(arch.rope_freq_base or 10000.0))
    writer.add_layer_norm_rms_eps(float(arch.norm_eps or 1e-5))
    writer.add_vocab_size(int(arch.vocab_size))  # type: ignore[arg-type]
    for tname, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(tname, array)
        else:
            writer.add_tensor(tname, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
