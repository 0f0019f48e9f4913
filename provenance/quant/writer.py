"""``quantize_model``: write a GGUF quantized the way ``llama_model_quantize`` would.

Reads any checkpoint :func:`provenance.formats.open_checkpoint` opens (canonical GGUF
names and layout; HF q/k rows already permuted to llama.cpp's order), picks each
tensor's type with llama.cpp's recipe (:mod:`provenance.quant.quantize_mix`) and
quantizes it with the bit-exact reference quantizers (:mod:`provenance.codecs.quantize_ref`),
one tensor at a time (memory: one tensor's output bytes plus one chunk of float32 rows).

Layout follows llama.cpp so that, from a GGUF source, the *whole file* comes out as
llama.cpp writes it: tensors in ``weight_name_comparer`` order; the source's KVs in
their order minus ``general.file_type`` / ``general.quantization_version`` / ``split.*``,
then ``general.quantization_version = 2`` and ``general.file_type`` appended (llama.cpp's
``gguf_set_val`` removes and re-appends a key).

What the quantizer sees is the source's values converted to float32 exactly (f16/bf16
widen exactly). llama.cpp behaves the same on a GGUF source; an HF bf16 checkpoint that
llama.cpp users first convert with ``--outtype f16`` would instead be quantized from
f16-rounded values, so results differ from that two-step path wherever the f16 rounding
changed a value.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
    GGUFValueType,
    GGUFWriter,
)

from provenance.codecs.quantize_ref import quantize_rows
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.formats.gguf_copy import SPLIT_KEYS, copy_gguf_metadata
from provenance.quant.quantize_mix import (
    MixModel,
    TensorSpec,
    parse_ftype,
    tensor_types,
)

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
CHUNK_WEIGHTS = 1 << 22
"""Source weights converted to float32 at a time."""

_SKIP_KEYS = SPLIT_KEYS | {"general.file_type", "general.quantization_version"}
"""Keys not carried over: llama.cpp re-adds these two at the end (see quantize_model)."""
_PLAIN = {"F32": np.float32, "F16": np.float16}


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` wrote."""

    path: str
    ftype: str
    types: dict[str, str] = field(default_factory=dict)
    """Tensor name -> ggml type written, in file order."""
    n_quantized: int = 0
    n_copied: int = 0


def mix_model(ckpt: Checkpoint) -> MixModel:
    """The model facts llama.cpp's recipe needs, from the checkpoint's ArchRecord."""
    a = ckpt.architecture
    n_head = a.n_head or 1
    n_layer = a.n_layer
    if n_layer is None:
        layers = [i.layer for i in ckpt.tensors.values() if i.layer is not None]
        n_layer = max(layers) + 1 if layers else 0
    return MixModel(arch=a.arch or "llama", n_layer=n_layer, n_head=n_head,
                    n_head_kv=a.n_head_kv or n_head, n_expert=a.n_expert or 0)


def _specs(ckpt: Checkpoint) -> list[TensorSpec]:
    is_gguf = ckpt.format.startswith("gguf")
    # Non-GGUF sources: what llama.cpp's converter would have stored for tensors the
    # recipe leaves alone is F32 (norms, biases), so that is their "source type".
    return [TensorSpec(name, info.shape, info.dtype if is_gguf else "F32") for name, info in ckpt.tensors.items()]


def _add_arch_kvs(ckpt: Checkpoint, writer: GGUFWriter) -> None:
    """llama-style hyperparameters for a non-GGUF source (no tokenizer is written)."""
    a = ckpt.architecture
    arch = writer.arch
    u32 = GGUFValueType.UINT32
    f32 = GGUFValueType.FLOAT32
    head_dim = a.head_dim or ((a.n_embd // a.n_head) if a.n_embd and a.n_head else None)
    items: list[tuple[str, Any, GGUFValueType]] = [
        ("context_length", a.context_length, u32), ("embedding_length", a.n_embd, u32),
        ("block_count", a.n_layer, u32), ("feed_forward_length", a.n_ff, u32),
        ("attention.head_count", a.n_head, u32), ("attention.head_count_kv", a.n_head_kv or a.n_head, u32),
        ("rope.dimension_count", a.rope_dim or head_dim, u32), ("attention.layer_norm_rms_epsilon", a.norm_eps, f32),
        ("rope.freq_base", a.rope_freq_base, f32), ("expert_count", a.n_expert, u32),
        ("expert_used_count", a.n_expert_used, u32), ("vocab_size", a.vocab_size, u32),
    ]
    for key, value, vtype in items:
        if value is not None:
            writer.add_key_value(f"{arch}.{key}", value, vtype)


def _convert(ckpt: Checkpoint, name: str, target: str) -> np.ndarray:
    """The tensor's bytes in ``target``, quantized chunk by chunk of rows."""
    info = ckpt.info(name)
    step = max(1, CHUNK_WEIGHTS // max(1, info.row_length))
    parts = [quantize_rows(ckpt.read_rows(name, s, min(info.n_rows, s + step)), target)
             for s in range(0, info.n_rows, step)]
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def quantize_model(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], ftype: str,
                   allow_requantize: bool = False) -> QuantizeReport:
    """Write ``dst_path``: ``src_path`` quantized to llama.cpp file type ``ftype``
    (``"Q4_K_M"``, ``"Q8_0"``, ``"Q6_K"`` ..., or ``"f16"`` / ``"f32"`` for plain
    conversions), per llama.cpp's type recipe, bit-exact with ``llama_model_quantize``
    without an importance matrix for every type :func:`quantize_rows` supports.

    A tensor whose chosen type equals its stored type is copied byte for byte; an
    already-quantized source tensor is re-quantized only with ``allow_requantize``
    (llama.cpp refuses by default as well).
    """
    ft = parse_ftype(ftype)
    src, dst = os.fspath(src_path), os.fspath(dst_path)
    with open_checkpoint(src) as ckpt:
        is_gguf = ckpt.format.startswith("gguf")
        model = mix_model(ckpt)
        types = tensor_types(_specs(ckpt), ft, model)
        report = QuantizeReport(path=dst, ftype=ft.name, types=types)
        writer = GGUFWriter(dst, model.arch)
        try:
            if is_gguf:
                copy_gguf_metadata(ckpt, writer, _SKIP_KEYS)
            else:
                _add_arch_kvs(ckpt, writer)
            writer.add_quantization_version(QUANTIZATION_VERSION)
            writer.add_file_type(int(ft))
            for name, target in types.items():
                info = ckpt.info(name)
                qtype = GGMLQuantizationType[target]
                block, size = GGML_QUANT_SIZES[qtype]
                row_bytes = info.row_length // block * size
                if target in _PLAIN:
                    writer.add_tensor_info(name, info.shape, np.dtype(_PLAIN[target]), info.n_rows * row_bytes)
                else:
                    writer.add_tensor_info(name, (info.n_rows, row_bytes), np.dtype(np.uint8), info.n_rows * row_bytes, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for name, target in types.items():
                info = ckpt.info(name)
                if is_gguf and info.dtype == target:
                    data = ckpt.raw_rows(name)
                    report.n_copied += 1
                else:
                    if is_gguf and info.block_size > 1 and not allow_requantize:
                        raise ValueError(f"{name}: requantizing from {info.dtype} to {target} is disabled (allow_requantize=False)")
                    data = _convert(ckpt, name, target)
                    report.n_quantized += target not in _PLAIN
                writer.write_tensor_data(np.ascontiguousarray(data).reshape(-1))
        finally:
            writer.close()
    return report
