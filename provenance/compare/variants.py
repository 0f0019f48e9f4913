"""Derived checkpoints for calibration and tests: symmetry-transformed and quantized copies.

* :func:`apply_symmetries`: the function-preserving moves an adversary gets for free
  (MLP unit permutation, sign flips and rescaling; KV-group and within-group head
  permutations; v-channel rescaling; residual-channel rescaling at each RMSNorm).
* :func:`write_variant`: a quantized copy exactly as llama.cpp would write it, via the
  project's llama.cpp-exact quantizers (:func:`provenance.quant.writer.quantize_model`:
  ``llama_tensor_get_type`` with its fallbacks for rows that are not a multiple of the
  K-quant block, byte-identical output, docs/quantization.md section 4). At
  stories260K's shape (rows of 64 and 172) llama.cpp itself writes Q8_0/Q5_0/IQ4_NL/F16
  for Q4_K_M and Q2_K, never K-quants. ``2bit-emu`` is an emulated 2-bit stress level
  (4 levels per 16 weights with f32 scale/min, stored dequantized as F32): a noise level
  like a real 2-bit format's, which llama.cpp cannot produce at this shape; not a format.
* :func:`write_gguf`: a llama-architecture GGUF through the package's model writer
  (:func:`provenance.formats.write.write_gguf`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import gguf
import numpy as np

from provenance.formats import open_checkpoint
from provenance.formats.gguf_header import GGUFKeyValue, ValueType
from provenance.formats.write import gguf_arch_key_values
from provenance.formats.write import write_gguf as write_model_gguf
from provenance.names.arch import ArchRecord

Q = gguf.GGMLQuantizationType
SCHEMES = ("Q8_0", "Q4_K_M", "Q2_K", "2bit-emu")


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

        def n(role: str, layer: int = layer) -> str:
            return f"blk.{layer}.{role}.weight"

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


def emulate_2bit(x: np.ndarray) -> np.ndarray:
    """4 levels per 16 consecutive weights (min + k * (max - min) / 3), rows padded."""
    rows, cols = x.shape
    pad = (-cols) % 16
    y = np.pad(x.astype(np.float32), ((0, 0), (0, pad)), mode="edge").reshape(rows, -1, 16)
    lo, hi = y.min(axis=2, keepdims=True), y.max(axis=2, keepdims=True)
    step = np.where(hi > lo, (hi - lo) / 3, 1.0)
    q = np.clip(np.rint((y - lo) / step), 0, 3)
    return (lo + q * step).reshape(rows, -1)[:, :cols].astype(np.float32)


def write_variant(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], arch: ArchRecord, scheme: str | None,
                  name: str, base_model: str | None = None, tokens: Sequence[bytes] | None = None) -> dict[str, str]:
    """Write ``tensors`` (canonical, float32) as a GGUF at ``path`` under ``scheme``.

    ``None``: F32 as is. A llama.cpp file type (``"Q8_0"``, ``"Q4_K_M"``, ``"Q2_K"``, ...):
    an F32 GGUF is written next to ``path`` and quantized by :func:`llama_quantize`
    (the project's llama.cpp-exact quantizers and writer; see there for the one
    fallback corrected). ``2bit-emu``:
    the emulated stress level, stored dequantized as F32. Returns name -> stored type.
    """
    path = os.fspath(path)
    if scheme is None or scheme == "2bit-emu":
        typed = {k: ((emulate_2bit(v) if scheme and v.ndim == 2 else np.asarray(v, dtype=np.float32)), Q.F32)
                 for k, v in tensors.items()}
        write_gguf(path, typed, arch, name, base_model, tokens)
        return {k: "F32" for k in tensors}
    src = path + ".f32.gguf"
    try:
        write_gguf(src, {k: (np.asarray(v, dtype=np.float32), Q.F32) for k, v in tensors.items()}, arch, name, base_model,
                   tokens)
        return llama_quantize(src, path, scheme)
    finally:
        if os.path.exists(src):
            os.remove(src)


def llama_cpp_types(ckpt: Any, ftype: str) -> dict[str, str]:
    """Per-tensor types ``llama-quantize`` writes for ``ftype`` (no imatrix), in its order:
    :func:`provenance.quant.quantize_mix.tensor_types`, fallbacks included. (Checked against
    llama-cpp-python 0.3.36's real quantizer on stories260K, whose rows of 64 do not fit 256:
    its Q2_K/Q3_K fallback is Q4_0, as ``quantize_mix`` has it.)"""
    from provenance.quant.quantize_mix import parse_ftype, tensor_types
    from provenance.quant.writer import _specs, mix_model

    return tensor_types(_specs(ckpt), parse_ftype(ftype), mix_model(ckpt))


def llama_quantize(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], ftype: str) -> dict[str, str]:
    """``llama-quantize src dst ftype`` from an unquantized GGUF, by the project's
    llama.cpp-exact writer (byte-identical to llama.cpp's output, fallbacks included).
    Returns name -> type written."""
    from provenance.quant.writer import quantize_model

    with open_checkpoint(src_path) as ckpt:
        if not ckpt.format.startswith("gguf") or any(i.block_size > 1 for i in ckpt.tensors.values()):
            raise ValueError("llama_quantize needs an unquantized GGUF source")
    return dict(quantize_model(src_path, dst_path, ftype).types)


def write_gguf(path: str | os.PathLike[str], tensors: Mapping[str, tuple[np.ndarray, Any]], arch: ArchRecord,
               name: str, base_model: str | None = None, tokens: Sequence[bytes] | None = None) -> None:
    """A llama GGUF holding ``tensors`` (canonical names and layout; float values, each
    stored as the ggml type paired with it), with ``tokens`` as its tokenizer when given."""
    claims = [GGUFKeyValue("general.name", name, ValueType.STRING)]
    if tokens:
        claims += [GGUFKeyValue("tokenizer.ggml.model", "llama", ValueType.STRING),
                   GGUFKeyValue("tokenizer.ggml.tokens", list(tokens), ValueType.ARRAY)]
    if base_model:
        claims += [GGUFKeyValue("general.base_model.count", 1, ValueType.UINT32),
                   GGUFKeyValue("general.base_model.0.name", base_model, ValueType.STRING)]
    # llama.cpp's defaults where the source does not say (llama2.c files carry no rope base or eps)
    hparams = replace(arch, arch="llama", context_length=arch.context_length or 512,
                      rope_freq_base=arch.rope_freq_base or 10000.0, norm_eps=arch.norm_eps or 1e-5)
    write_model_gguf(path, "llama", {k: v for k, (v, _) in tensors.items()}, [*claims, *gguf_arch_key_values(hparams)],
                     types={k: Q(qtype).name for k, (_, qtype) in tensors.items()})
