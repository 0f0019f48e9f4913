"""``quantize_rows``: float32 rows -> stored bytes, bit-exact with llama.cpp's reference
quantizers (what ``llama_model_quantize`` runs without an importance matrix).

Each block-quantized type's quantizer is its descriptor's ``quantize``
(:mod:`provenance.codecs.registry`), a compiled kernel (numba, no fast-math) split between
threads by weights:

* Q2_K..Q6_K: :mod:`provenance.codecs.quantize_k` (float32-exact ports of
  ``quantize_row_q*_K_ref``);
* Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0: :mod:`provenance.codecs.ggml.legacy` (``quantize_row_q*_ref``);
* IQ4_NL / IQ4_XS: :mod:`provenance.codecs.quantize_iq4`; Q1_0: :mod:`provenance.codecs.ggml.q1_0`.

Plain float types are a conversion: numpy's float16 cast rounds to nearest even, like
``ggml_fp32_to_fp16_row``; BF16, which numpy lacks, through ``gguf.quants.quantize``
(``ggml_fp32_to_bf16``'s rounding).

Verified against every tensor of every file in ``shared/data/llamacpp-quant``
(tests/codecs/test_quantize_ref.py).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from provenance.codecs.native import run_compiled
from provenance.codecs.registry import find_quant_type
from provenance.codecs.types import PlainType, plain_type, type_info


def supported_types() -> list[str]:
    """ggml type names :func:`quantize_rows` can produce (:func:`can_quantize`)."""
    return [t.name for t in GGMLQuantizationType if can_quantize(t)]


def can_quantize(ggml_type: int | str) -> bool:
    """Can :func:`quantize_rows` produce ``ggml_type`` (a float type, or a block type with a
    bit-exact quantizer)?"""
    plain = plain_type(ggml_type)
    if plain is not None:
        return plain.is_float
    qt = find_quant_type(ggml_type)
    return qt is not None and qt.quantize is not None


def _plain(values: np.ndarray, plain: PlainType) -> np.ndarray:
    rows = values.shape[0]
    if plain.numpy_name is None:
        return np.asarray(gguf_quants.quantize(values, plain.qtype)).view(np.uint8).reshape(rows, -1)
    return np.ascontiguousarray(values.astype(plain.numpy_name, copy=False)).view(np.uint8).reshape(rows, -1)


def quantize_rows(values: np.ndarray, ggml_type: int | str, threads: int | None = None) -> np.ndarray:
    """Quantize float32 ``(rows, row_length)`` to ``ggml_type`` (number or name);
    returns the stored bytes, uint8 ``(rows, row_bytes)``. ``row_length`` must be a
    multiple of the type's block size. The blocks are split between ``threads`` threads
    (default: ``torch.get_num_threads()``, the CPU budget the dequantizers follow too)."""
    name = type_info(ggml_type).name
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected (rows, row_length) values, got shape {values.shape}")
    plain = plain_type(ggml_type)
    if plain is not None and plain.is_float:
        return _plain(values, plain)
    qt = find_quant_type(ggml_type)
    if qt is None or qt.quantize is None:
        raise NotImplementedError(f"no bit-exact quantizer for {name} (supported: {', '.join(supported_types())})")
    rows, row_length = values.shape
    if row_length % qt.block_size:
        raise ValueError(f"{name} needs rows of a multiple of {qt.block_size} weights, got {row_length}")
    blocks = np.ascontiguousarray(values).reshape(-1, qt.block_size)
    out = np.empty((blocks.shape[0], qt.type_size), dtype=np.uint8)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    run_compiled(qt.quantize, blocks, out, threads)
    return out.reshape(rows, -1)
