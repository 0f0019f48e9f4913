"""llama.cpp's per-tensor type selection for a file type (``llama_tensor_get_type``).

``llama_model_quantize`` does not quantize every tensor to the file type's base type:
``src/llama-quant.cpp`` picks a type per tensor from its category (output, token_embd,
attn_v, ffn_down ...), its position among the layers, the model's shape (GQA, experts,
70B) and its row length (a K-quant needs rows of a multiple of 256, else it falls back
to a 32-block type, else to F16). This module reproduces that choice without an
importance matrix and without user overrides, for every ``LLAMA_FTYPE_MOSTLY_*``.
(:mod:`provenance.codecs.recipes` is about something else: the *codes* llama.cpp writes
once the type is chosen.)

Tensor order matters: the counters ``i_attention_wv`` / ``i_ffn_down`` advance in the
order llama.cpp visits tensors, which is its ``weight_name_comparer`` order (layer
number, non-layer tensors first, then name); :func:`llama_weight_order` gives it.

Verified against every file in ``shared/data/llamacpp-quant`` (tests/quant/test_quantize_mix.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

T = GGMLQuantizationType
F = LlamaFileType

_BLK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class MixModel:
    """The few model facts the type selection looks at."""

    arch: str = "llama"
    n_layer: int = 1
    n_head: int = 1
    n_head_kv: int = 1
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        # llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped KV heads
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    """numpy order: ``shape[-1]`` is ggml's ``ne[0]`` (the row length)."""
    ggml_type: str = "F32"
    """Storage type of the source tensor (kept as is when it is not quantized)."""


def parse_ftype(ftype: str | int) -> LlamaFileType:
    """``"Q4_K_M"``, ``"MOSTLY_Q4_K_M"``, ``"f16"``, ``"F32"`` or the number -> LlamaFileType."""
    if isinstance(ftype, int):
        return F(ftype)
    key = ftype.upper()
    if key in ("F32", "ALL_F32"):
        return F.ALL_F32
    key = key.removeprefix("MOSTLY_")
    try:
        return F["MOSTLY_" + key]
    except KeyError:
        raise ValueError(f"unknown llama.cpp file type {ftype!r}") from None


_DEFAULT_TYPE: dict[LlamaFileType, T] = {
    F.MOSTLY_Q4_0: T.Q4_0, F.MOSTLY_Q4_1: T.Q4_1, F.MOSTLY_Q5_0: T.Q5_0, F.MOSTLY_Q5_1: T.Q5_1,
    F.MOSTLY_Q8_0: T.Q8_0, F.MOSTLY_F16: T.F16, F.MOSTLY_BF16: T.BF16, F.ALL_F32: T.F32,
    F.MOSTLY_MXFP4_MOE: T.MXFP4, F.MOSTLY_NVFP4: T.NVFP4,
    F.MOSTLY_Q2_K_S: T.Q2_K, F.MOSTLY_Q2_K: T.Q2_K, F.MOSTLY_IQ3_XS: T.IQ3_S,
    F.MOSTLY_Q3_K_S: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q3_K, F.MOSTLY_Q3_K_L: T.Q3_K,
    F.MOSTLY_Q4_K_S: T.Q4_K, F.MOSTLY_Q4_K_M: T.Q4_K, F.MOSTLY_Q5_K_S: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q5_K,
    F.MOSTLY_Q6_K: T.Q6_K, F.MOSTLY_TQ1_0: T.TQ1_0, F.MOSTLY_TQ2_0: T.TQ2_0,
    F.MOSTLY_IQ2_XXS: T.IQ2_XXS, F.MOSTLY_IQ2_XS: T.IQ2_XS, F.MOSTLY_IQ2_S: T.IQ2_XS, F.MOSTLY_IQ2_M: T.IQ2_S,
    F.MOSTLY_IQ3_XXS: T.IQ3_XXS, F.MOSTLY_IQ1_S: T.IQ1_S, F.MOSTLY_IQ1_M: T.IQ1_M,
    F.MOSTLY_IQ4_NL: T.IQ4_NL, F.MOSTLY_IQ4_XS: T.IQ4_XS, F.MOSTLY_IQ3_S: T.IQ3_S, F.MOSTLY_IQ3_M: T.IQ3_S,
}


def default_type(ftype: LlamaFileType) -> T:
    """``llama_ftype_get_default_type``."""
    return _DEFAULT_TYPE[ftype]


def _layer(name: str) -> int:
    m = _BLK.match(name)
    return int(m.group(1)) if m else -1


def llama_weight_order(names: Iterable[str]) -> list[str]:
    """llama.cpp's ``weight_name_comparer``: by ``blk.N.`` layer (others first, as -1),
    then by name (byte order)."""
    return sorted(names, key=lambda n: (_layer(n), n.encode()))


def _category(name: str) -> str:
    """``tensor_get_category`` (substring tests, in llama.cpp's order)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for needle, cat in (
        ("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"),
    ):
        if needle in name:
            return cat
    return "other"


def _is_attn_v(cat: str) -> bool:
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


def _n_dims(shape: Sequence[int]) -> int:
    """``ggml_n_dims``: trailing (ggml order) dimensions of 1 do not count."""
    ne = list(reversed(shape)) or [1]
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


_NOT_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)


def allows_quantization(spec: TensorSpec) -> bool:
    """``tensor_allows_quantization`` with default parameters: 2-D/3-D ``*weight`` tensors
    that are not norms, routers, positional embeddings or the small special tensors."""
    if _n_dims(spec.shape) < 2 or not spec.name.endswith("weight"):
        return False
    if spec.name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in spec.name for s in _NOT_QUANTIZED)


_FALLBACK: dict[T, T] = {
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}


def _fallback(ncols: int, target: T) -> T:
    """``tensor_type_fallback``: a 256-block type on rows that are not a multiple of 256
    falls back to a 32-block type; if that does not fit either (or the target was a
    32-block type already), to F16. (stories260K: ffn_down rows of 172 are F16 in the
    real Q8_0 file.)"""
    if ncols % GGML_QUANT_SIZES[target][0] == 0:
        return target
    out = _FALLBACK.get(target, T.F16)
    return out if ncols % GGML_QUANT_SIZES[out][0] == 0 else T.F16


@dataclass
class _State:
    n_attention_wv: int = 0
    n_layer: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    has_tied_embeddings: bool = True


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer_info(i_layer: int, n_layer: int, name: str, model: MixModel) -> tuple[int, int]:
    if max(1, model.n_expert) > 1:
        i_layer = _layer(name)
        if not 0 <= i_layer < n_layer:
            raise ValueError(f"bad layer for tensor {name}")
    return i_layer, n_layer


def _impl(qs: _State, new: T, spec: TensorSpec, ft: LlamaFileType, cat: str, m: MixModel) -> T:
    """``llama_tensor_get_type_impl``, branch for branch."""
    ncols = spec.shape[-1]
    ne2 = spec.shape[-3] if len(spec.shape) >= 3 else 1
    falcon = m.arch == "falcon"
    IQ_LOW = (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M)
    if cat == "output" or (qs.has_tied_embeddings and cat == "token_embd"):
        if ft == F.MOSTLY_MXFP4_MOE or falcon or ncols % GGML_QUANT_SIZES[new][0] != 0:
            new = T.Q8_0
        elif ft in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M):
            new = T.Q5_K
        elif new != T.Q8_0:
            new = T.Q6_K
    elif ft == F.MOSTLY_MXFP4_MOE:
        experts = m.arch != "bailingmoe3" or cat in ("ffn_up", "ffn_gate", "ffn_down")
        new = T.MXFP4 if ne2 > 1 and experts else T.Q8_0
    elif cat == "token_embd":
        if ft in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
            new = T.Q2_K
        elif ft in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS):
            new = T.IQ3_S
        elif ft in (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0):
            new = T.Q4_K
    elif ft in IQ_LOW:
        iq3 = ft in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)
        if _is_attn_v(cat):
            new = T.Q4_K if (m.n_gqa >= 4 or m.n_expert >= 4) else (T.IQ3_S if iq3 else T.Q2_K)
            qs.i_attention_wv += 1
        elif m.n_expert == 8 and cat == "attn_k":
            new = T.Q4_K
        elif cat == "ffn_down":
            if qs.i_ffn_down < qs.n_layer // 8:
                new = T.IQ3_S if iq3 else T.Q2_K
            qs.i_ffn_down += 1
        elif cat == "attn_output":
            if m.n_expert == 8:
                new = T.Q5_K
            elif ft in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                new = T.IQ2_XXS
            elif iq3:
                new = T.IQ3_S
    elif _is_attn_v(cat):
        i, n = qs.i_attention_wv, qs.n_attention_wv
        if ft == F.MOSTLY_Q2_K:
            new = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
        elif ft == F.MOSTLY_Q2_K_S and m.n_gqa >= 4:
            new = T.Q4_K
        elif ft == F.MOSTLY_IQ3_XXS:
            new = T.Q4_K if m.n_gqa >= 4 else T.IQ3_S  # no imatrix
        elif (ft in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and m.n_gqa >= 4) or ft == F.MOSTLY_IQ3_M:
            new = T.Q4_K
        elif ft == F.MOSTLY_Q3_K_M:
            new = T.Q5_K if i < 2 else T.Q4_K
        elif ft == F.MOSTLY_Q3_K_L or (ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and m.n_gqa >= 4):
            new = T.Q5_K
        elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(i, n):
            new = T.Q6_K
        elif ft == F.MOSTLY_Q4_K_S and i < 4:
            new = T.Q5_K
        if m.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if m.n_expert == 8:
            new = T.Q8_0
        qs.i_attention_wv += 1
    elif cat == "attn_k":
        if m.n_expert == 8:
            new = T.Q8_0
        elif ft == F.MOSTLY_IQ3_XS:
            new = T.IQ3_XXS
        elif ft == F.MOSTLY_IQ3_XXS:
            new = T.IQ2_S
    elif cat == "attn_q":
        if ft == F.MOSTLY_IQ3_XS:
            new = T.IQ3_XXS
        elif ft == F.MOSTLY_IQ3_XXS:
            new = T.IQ2_S
    elif cat == "ffn_down":
        i, n = _layer_info(qs.i_ffn_down, qs.n_layer, spec.name, m)
        if ft == F.MOSTLY_Q2_K:
            new = T.Q3_K
        elif ft == F.MOSTLY_Q2_K_S:
            if i < n // 8:
                new = T.Q4_K
        elif ft == F.MOSTLY_IQ3_XXS:  # and no imatrix
            new = T.Q4_K if i < n // 8 else T.Q3_K
        elif ft == F.MOSTLY_Q3_K_M:
            new = T.Q5_K if i < n // 16 else (T.Q4_K if (not falcon or _use_more_bits(i, n)) else T.Q3_K)
        elif ft == F.MOSTLY_IQ3_M and (i < n // 8 or (m.n_expert == 8 and _use_more_bits(i, n))):
            new = T.Q4_K
        elif ft == F.MOSTLY_Q3_K_L:
            new = T.Q4_K if falcon else T.Q5_K
        elif ft == F.MOSTLY_Q4_K_M:
            if falcon:
                new = T.Q6_K if i < n // 16 else (T.Q5_K if _use_more_bits(i, n) else T.Q4_K)
            elif _use_more_bits(i, n):
                new = T.Q6_K
        elif i < n // 8 and ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS):  # and no imatrix
            new = T.Q5_K
        elif ft == F.MOSTLY_Q5_K_M and _use_more_bits(i, n):
            new = T.Q6_K
        elif ft == F.MOSTLY_Q4_K_S and not falcon and i < n // 8:
            new = T.Q5_K
        # (Q4_0/Q5_0 -> Q4_1/Q5_1 on the first layers happens only with an imatrix)
        qs.i_ffn_down += 1
    elif cat == "attn_output":
        if not falcon:
            if m.n_expert == 8:
                if ft in (F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL,
                          F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M, F.MOSTLY_IQ4_XS):
                    new = T.Q5_K
            else:
                new = {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_IQ3_XXS: T.IQ3_S, F.MOSTLY_Q3_K_M: T.Q4_K,
                       F.MOSTLY_Q3_K_L: T.Q5_K, F.MOSTLY_IQ3_M: T.Q4_K}.get(ft, new)
        elif ft == F.MOSTLY_Q3_K_L:
            new = T.Q4_K
    elif cat == "attn_qkv":  # (unreachable: attn_qkv is attn_v-like above; kept as in llama.cpp)
        pass
    elif cat == "ffn_gate":
        i, n = _layer_info(qs.i_ffn_gate, qs.n_layer, spec.name, m)
        if ft == F.MOSTLY_IQ3_XS and n // 8 <= i < 7 * n // 8:
            new = T.IQ3_XXS
        qs.i_ffn_gate += 1
    elif cat == "ffn_up":
        i, n = _layer_info(qs.i_ffn_up, qs.n_layer, spec.name, m)
        if ft == F.MOSTLY_IQ3_XS and n // 8 <= i < 7 * n // 8:
            new = T.IQ3_XXS
        qs.i_ffn_up += 1
    return new


def tensor_types(specs: Sequence[TensorSpec], ftype: str | int | LlamaFileType, model: MixModel) -> dict[str, str]:
    """The ggml type llama.cpp's ``llama_model_quantize`` (no imatrix, default parameters)
    writes for each tensor, as ``{name: type name}`` in llama.cpp's tensor order.
    Tensors that are not quantized keep their source type."""
    ft = ftype if isinstance(ftype, LlamaFileType) else parse_ftype(ftype)
    base = default_type(ft)
    by_name = {s.name: s for s in specs}
    order = llama_weight_order(by_name)
    qs = _State(n_layer=model.n_layer)
    for name in order:
        cat = _category(name)
        qs.n_attention_wv += _is_attn_v(cat)
        if cat == "output":
            qs.has_tied_embeddings = False
    out: dict[str, str] = {}
    for name in order:
        spec = by_name[name]
        if not allows_quantization(spec):
            out[name] = spec.ggml_type
            continue
        new = base
        if new not in (T.F32, T.F16, T.BF16):  # ggml_is_quantized(default_type)
            new = _impl(qs, new, spec, ft, _category(name), model)
            new = _fallback(spec.shape[-1], new)
        out[name] = new.name
    return out
