"""Architecture facts in one typed record, from GGUF metadata or an HF config.json."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class ArchRecord:
    """What a checkpoint says about its architecture (all fields optional: files omit things)."""

    arch: str | None = None
    """llama.cpp architecture name (``llama``, ``qwen2``...)."""
    hf_architecture: str | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_ff: int | None = None
    n_head: int | None = None
    n_head_kv: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    rope_freq_base: float | None = None
    rope_dim: int | None = None
    norm_eps: float | None = None
    n_expert: int | None = None
    n_expert_used: int | None = None
    tie_word_embeddings: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def qk_permuted_in_gguf(self) -> bool:
        """Whether llama.cpp's converter reorders q/k rows for this architecture."""
        return self.arch in architecture_table()["gguf_qk_permuted"]


@lru_cache(maxsize=1)
def architecture_table() -> dict[str, Any]:
    text = resources.files("provenance.data").joinpath("architectures.json").read_text("utf-8")
    return json.loads(text)


def _int(value: Any) -> int | None:
    """A count, or None for anything else. The readers validate these keys first
    (:mod:`provenance.formats.documents`); this stays total for any mapping: a NaN, an
    infinity, a fraction or a negative number is no count."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _float(value: Any) -> float | None:
    """A finite number, or None (NaN and infinity are no setting)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def from_gguf_metadata(metadata: Mapping[str, Any], vocab_size: int | None = None) -> ArchRecord:
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return ArchRecord(vocab_size=vocab_size)

    def get(key: str) -> Any:
        return metadata.get(f"{arch}.{key}")

    n_head_value = get("attention.head_count")
    n_head_kv_value = get("attention.head_count_kv")
    # Some architectures store per-layer head counts as arrays; report the first.
    if hasattr(n_head_value, "head"):
        n_head_value = (n_head_value.head(1) or [None])[0]
    if hasattr(n_head_kv_value, "head"):
        n_head_kv_value = (n_head_kv_value.head(1) or [None])[0]
    n_embd, n_head = _int(get("embedding_length")), _int(n_head_value)
    n_ff = get("feed_forward_length")
    if hasattr(n_ff, "head"):
        n_ff = (n_ff.head(1) or [None])[0]
    head_dim = _int(get("attention.key_length")) or (n_embd // n_head if n_embd and n_head else None)
    return ArchRecord(
        arch=arch,
        n_layer=_int(get("block_count")),
        n_embd=n_embd,
        n_ff=_int(n_ff),
        n_head=n_head,
        n_head_kv=_int(n_head_kv_value) or n_head,
        head_dim=head_dim,
        vocab_size=_int(get("vocab_size")) or vocab_size,
        context_length=_int(get("context_length")),
        rope_freq_base=_float(get("rope.freq_base")),
        rope_dim=_int(get("rope.dimension_count")),
        norm_eps=_float(get("attention.layer_norm_rms_epsilon")) or _float(get("attention.layer_norm_epsilon")),
        n_expert=_int(get("expert_count")),
        n_expert_used=_int(get("expert_used_count")),
    )


def hf_architecture_name(config: Mapping[str, Any]) -> str | None:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    model_type = config.get("model_type")
    if isinstance(model_type, str):
        return architecture_table()["model_types"].get(model_type)
    return None


def from_hf_config(config: Mapping[str, Any]) -> ArchRecord:
    hf_arch = hf_architecture_name(config)
    entry = architecture_table()["architectures"].get(hf_arch or "", {})
    # Multimodal configs nest the language model's settings.
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    n_embd, n_head = _int(text.get("hidden_size")), _int(text.get("num_attention_heads"))
    rope_theta = text.get("rope_theta")
    rope_params = text.get("rope_parameters")
    if rope_theta is None and isinstance(rope_params, Mapping):
        rope_theta = rope_params.get("rope_theta")
    return ArchRecord(
        arch=entry.get("gguf_arch"),
        hf_architecture=hf_arch,
        n_layer=_int(text.get("num_hidden_layers")),
        n_embd=n_embd,
        n_ff=_int(text.get("intermediate_size")),
        n_head=n_head,
        n_head_kv=_int(text.get("num_key_value_heads")) or n_head,
        head_dim=_int(text.get("head_dim")) or (n_embd // n_head if n_embd and n_head else None),
        vocab_size=_int(text.get("vocab_size")),
        context_length=_int(text.get("max_position_embeddings")),
        rope_freq_base=_float(rope_theta),
        norm_eps=_float(text.get("rms_norm_eps")) or _float(text.get("layer_norm_eps")),
        n_expert=_int(text.get("num_local_experts")),
        n_expert_used=_int(text.get("num_experts_per_tok")),
        tie_word_embeddings=text.get("tie_word_embeddings") if isinstance(text.get("tie_word_embeddings"), bool) else None,
    )
