"""The schema of every JSON document a model input can carry (see :mod:`provenance.formats.schema`).

Ranges are those of real models with a wide margin (the largest released configs have
~160 layers, 128 heads, a 256k vocabulary, 10M positions) and bound every count an
analysis sizes work by. Fields a reader does not use are not listed and are ignored,
except where the format fixes the keys (a safetensors entry). ``null`` is accepted where
Hugging Face writes it for an unset field.
"""
from __future__ import annotations

from provenance.formats.schema import (
    ANY,
    BOOL,
    Int,
    ListOf,
    MapOf,
    Num,
    Obj,
    OneOf,
    Pair,
    Str,
    optional,
)
from provenance.formats.vocabulary import MAX_MERGES, MAX_VOCABULARY

MAX_LAYERS = 1 << 16
MAX_HEADS = 1 << 16
MAX_WIDTH = 1 << 20
MAX_TENSORS = 1 << 20
MAX_TOKEN_BYTES = 65536
MAX_NAME_BYTES = 4096

_NAME = Str(MAX_NAME_BYTES)
_SHORT = Str(256)
_NAMES = OneOf((_NAME, ListOf(_NAME, 256)))
_EPS = Num(0.0, 1.0)
_THETA = Num(0.0, 1e30)

_GROUP_SIZE = Int(-1, MAX_WIDTH)

CT_WEIGHTS = Obj({
    # compressed-tensors' ``config_groups.<name>.weights``: the scheme a group of modules was quantized with
    "type": optional(_SHORT),
    "num_bits": optional(Int(1, 64)),
    "group_size": optional(_GROUP_SIZE),
    "strategy": optional(_SHORT),
})

QUANTIZATION_CONFIG = Obj({
    # HF ``quantization_config`` (GPTQ, AWQ, compressed-tensors, bitsandbytes) and MLX ``quantization``:
    # the fields that size or select a codec (provenance.formats.packed); the shapes of the
    # tensors they describe are checked by that reader.
    "quant_method": optional(_SHORT),
    "bits": optional(Int(1, 64)),
    "group_size": optional(_GROUP_SIZE),
    "w_bit": optional(Int(1, 64)),  # AutoAWQ's own names for bits and group_size
    "q_group_size": optional(_GROUP_SIZE),
    "mode": optional(_SHORT),  # MLX: affine, mxfp4 ...
    "config_groups": optional(MapOf(optional(Obj({"weights": optional(CT_WEIGHTS)})), 4096, key=_SHORT)),
    "desc_act": optional(BOOL),
    "sym": optional(BOOL),
    "zero_point": optional(BOOL),
    "version": optional(_SHORT),
    "checkpoint_format": optional(_SHORT),
    "format": optional(_SHORT),
    "load_in_4bit": optional(BOOL),
    "load_in_8bit": optional(BOOL),
    "bnb_4bit_quant_type": optional(_SHORT),
    "modules_to_not_convert": optional(ListOf(_NAME, MAX_TENSORS)),
})

_ARCHITECTURE_FIELDS = {
    "architectures": optional(ListOf(_SHORT, 64)),
    "model_type": optional(_SHORT),
    "hidden_size": optional(Int(1, MAX_WIDTH)),
    "num_attention_heads": optional(Int(1, MAX_HEADS)),
    "num_key_value_heads": optional(Int(1, MAX_HEADS)),
    "num_hidden_layers": optional(Int(0, MAX_LAYERS)),
    "intermediate_size": optional(Int(0, 1 << 24)),
    "head_dim": optional(Int(1, MAX_WIDTH)),
    "vocab_size": optional(Int(0, MAX_VOCABULARY)),
    "max_position_embeddings": optional(Int(0, 1 << 40)),
    "rope_theta": optional(_THETA),
    "rope_parameters": optional(Obj({"rope_theta": optional(_THETA)})),
    "rms_norm_eps": optional(_EPS),
    "layer_norm_eps": optional(_EPS),
    "num_local_experts": optional(Int(0, MAX_HEADS)),
    "num_experts_per_tok": optional(Int(0, MAX_HEADS)),
    "tie_word_embeddings": optional(BOOL),
}

HF_CONFIG = Obj({
    **_ARCHITECTURE_FIELDS,
    "text_config": optional(Obj(_ARCHITECTURE_FIELDS)),  # multimodal configs nest the language model's
    "_name_or_path": optional(_NAME),
    "base_model": optional(_NAMES),
    "transformers_version": optional(_SHORT),
    "quantization_config": optional(QUANTIZATION_CONFIG),
    "quantization": optional(QUANTIZATION_CONFIG),
})
"""``config.json`` of an HF model folder: every field :func:`provenance.names.arch.from_hf_config`
and the claims read."""

MAX_ADAPTER_RANK = 1 << 16
MAX_ADAPTER_PATTERNS = 4096
_ADAPTER_MODULES = ListOf(_NAME, MAX_ADAPTER_PATTERNS)
_RANK = Int(1, MAX_ADAPTER_RANK)
_ALPHA = Num(-1e6, 1e6)

_ADAPTER_FIELDS = {
    "peft_type": optional(_SHORT),
    "task_type": optional(_SHORT),
    "peft_version": optional(_SHORT),
    "r": optional(_RANK),
    "lora_alpha": optional(_ALPHA),
    "lora_dropout": optional(Num(0.0, 1.0)),
    # module names, or one regular expression (kept as text, never evaluated)
    "target_modules": optional(OneOf((_NAME, _ADAPTER_MODULES))),
    "modules_to_save": optional(_ADAPTER_MODULES),
    "rank_pattern": optional(MapOf(_RANK, MAX_ADAPTER_PATTERNS, key=_NAME)),
    "alpha_pattern": optional(MapOf(_ALPHA, MAX_ADAPTER_PATTERNS, key=_NAME)),
    "base_model_name_or_path": optional(_NAME),
    "use_rslora": optional(BOOL),
    "fan_in_fan_out": optional(BOOL),
    "use_dora": optional(BOOL),
    "lora_bias": optional(BOOL),
    "bias": optional(_SHORT),
}

ADAPTER_CONFIG = Obj(_ADAPTER_FIELDS)
"""PEFT's ``adapter_config.json`` of any PEFT method, as an HF model folder may keep it beside
full weights (shown as metadata)."""

LORA_ADAPTER_CONFIG = Obj({**_ADAPTER_FIELDS, "peft_type": _SHORT, "r": _RANK},
                          required=frozenset({"peft_type", "r"}))
"""The same fields, of a LoRA adapter folder (``adapter_model.safetensors`` beside it): a type
and a rank required. :func:`provenance.formats.peft_adapter.parse_adapter_config` builds its
typed config from the validated document."""

BNB_BLOCK = Int(1, 4096)
_BNB_ROWS = Int(1, (1 << 31) - 1)

BNB_QUANT_STATE = Obj({
    "quant_type": Str(16, frozenset({"nf4", "fp4"})),
    "blocksize": BNB_BLOCK,
    "shape": Pair(_BNB_ROWS, _BNB_ROWS),
    "dtype": Str(16, frozenset({"float32", "float16", "bfloat16"})),
    "nested_blocksize": BNB_BLOCK,
    "nested_offset": Num(),
}, required=frozenset({"quant_type", "blocksize", "shape", "dtype"}))
"""A bitsandbytes 4-bit weight's ``quant_state`` (JSON stored in a U8 tensor beside the weight:
its shape, block size and type; the nested fields when its absmax is double-quantized)."""

SAFETENSORS_ENTRY = Obj({
    "dtype": Str(64),
    "shape": ListOf(Int(0, (1 << 62) - 1), 8),
    "data_offsets": Pair(Int(0, (1 << 62) - 1), Int(0, (1 << 62) - 1)),
}, required=frozenset({"dtype", "shape", "data_offsets"}), others=None)

SAFETENSORS_HEADER = Obj(
    {"__metadata__": optional(MapOf(Str(1 << 24), 1 << 16))},
    others=SAFETENSORS_ENTRY,
    max_keys=MAX_TENSORS,
)
"""The JSON header of a safetensors file: exactly ``dtype``, ``shape``, ``data_offsets`` per
tensor, and an optional ``__metadata__`` of strings."""

SAFETENSORS_INDEX = Obj({
    "weight_map": MapOf(Str(255), MAX_TENSORS, key=_NAME),
    "metadata": optional(Obj({"total_size": optional(Num(0.0, 1e20))})),
}, required=frozenset({"weight_map"}))
"""``model.safetensors.index.json``: tensor name -> shard file name (resolved by the reader)."""

_TOKEN = Str(MAX_TOKEN_BYTES)
_ID = Int(0, MAX_VOCABULARY)
MAX_MERGE_BYTES = 2 * MAX_TOKEN_BYTES + 1
"""A merge written as one string: two tokens and the space between them."""

TOKENIZER_MERGES = ListOf(OneOf((Str(MAX_MERGE_BYTES), Pair(_TOKEN, _TOKEN))), MAX_MERGES)
"""``model.merges`` of a ``tokenizer.json``: ``"left right"`` (older files) or ``[left, right]``.
:data:`TOKENIZER_JSON` bounds only the list's length; the reader checks every item against
this spec in the pass that hashes them (:func:`provenance.formats.tokenizer_json._checked_merges_sha256`:
515k pairs are 1M strings, walked once instead of twice)."""

TOKENIZER_JSON = Obj({
    "model": Obj({
        "type": optional(_SHORT),
        # token -> id (BPE, WordPiece, WordLevel) or [token, score] in id order (Unigram)
        "vocab": optional(OneOf((MapOf(_ID, MAX_VOCABULARY, key=_TOKEN), ListOf(Pair(_TOKEN, Num()), MAX_VOCABULARY)))),
        "merges": optional(ListOf(ANY, MAX_MERGES)),  # items: TOKENIZER_MERGES, checked by the reader
        "unk_token": optional(_TOKEN),
        "unk_id": optional(Int(0, MAX_VOCABULARY)),
    }, required=frozenset({"vocab"})),
    "added_tokens": optional(ListOf(Obj({"id": _ID, "content": _TOKEN}, required=frozenset({"id", "content"})),
                                    MAX_VOCABULARY)),
}, required=frozenset({"model"}))
"""Hugging Face ``tokenizer.json``: the model's vocabulary and merges, and the added tokens."""

SPECIAL_TOKEN = optional(OneOf((_TOKEN, Obj({"content": _TOKEN}, required=frozenset({"content"})))))

TOKENIZER_CONFIG_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
TOKENIZER_CONFIG = Obj({name: SPECIAL_TOKEN for name in TOKENIZER_CONFIG_FIELDS})
"""``tokenizer_config.json`` and ``special_tokens_map.json``: the special tokens they name,
as a string or an ``AddedToken`` object."""

GGUF_ARCHITECTURE = Obj({
    # GGUF ``{arch}.*`` keys read by provenance.names.arch (an array's first item where
    # llama.cpp allows one value per layer). Types as llama.cpp's loader requires them.
    "block_count": Int(0, MAX_LAYERS),
    "embedding_length": Int(1, MAX_WIDTH),
    "feed_forward_length": Int(0, 1 << 24),
    "attention.head_count": Int(0, MAX_HEADS),
    "attention.head_count_kv": Int(0, MAX_HEADS),
    "attention.key_length": Int(1, MAX_WIDTH),
    "vocab_size": Int(0, MAX_VOCABULARY),
    "context_length": Int(0, 1 << 40),
    "rope.freq_base": _THETA,
    "rope.dimension_count": Int(0, MAX_WIDTH),
    "attention.layer_norm_rms_epsilon": _EPS,
    "attention.layer_norm_epsilon": _EPS,
    "expert_count": Int(0, MAX_HEADS),
    "expert_used_count": Int(0, MAX_HEADS),
})
"""The architecture keys of a GGUF header, by their name after ``{arch}.``."""
