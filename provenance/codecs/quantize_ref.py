"""``quantize_rows``: float32 rows -> stored bytes, bit-exact with llama.cpp's reference
quantizers (what ``llama_model_quantize`` runs without an importance matrix).

* Q2_K..Q6_K: :mod:`provenance.codecs.quantize_k` (our float32-exact port of
  ``quantize_row_q*_K_ref``);
* Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / BF16: ``gguf.quants.quantize``, already bit-exact
  with ``quantize_row_q*_ref`` (its Q8_0 scales with the f32 ``d`` and rounds
  ``x * (1/d)`` half away from zero, as ggml does);
* IQ4_NL / IQ4_XS: :mod:`provenance.codecs.quantize_iq4`;
* F32 / F16: plain conversion (numpy's float16 cast rounds to nearest even, like
  ``ggml_fp32_to_fp16_row``).

Verified against every tensor of every file in ``shared/data/llamacpp-quant``
(tests/codecs/test_quantize_ref.py).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from provenance.codecs.quantize_iq4 import quantize_iq4_nl, quantize_iq4_xs
from provenance.codecs.quantize_k import BLOCK_QUANTIZERS, CHUNK_WEIGHTS, quantize_k_rows

_GGUF_EXACT = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"}
_IQ4 = {"IQ4_NL": (32, quantize_iq4_nl), "IQ4_XS": (256, quantize_iq4_xs)}


def supported_types() -> list[str]:
    """ggml type names :func:`quantize_rows` can produce."""
    return ["F32", "F16", *sorted(_GGUF_EXACT), *BLOCK_QUANTIZERS, *_IQ4]


def quantize_rows(values: np.ndarray, ggml_type: int | str) -> np.ndarray:
    """Quantize float32 ``(rows, row_length)`` to ``ggml_type`` (number or name);
    returns the stored bytes, uint8 ``(rows, row_bytes)``. ``row_length`` must be a
    multiple of the type's block size."""
    name = GGMLQuantizationType[ggml_type].name if isinstance(ggml_type, str) else GGMLQuantizationType(ggml_type).name
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected (rows, row_length) values, got shape {values.shape}")
    rows = values.shape[0]
    if name == "F32":
        return np.ascontiguousarray(values).view(np.uint8).reshape(rows, -1)
    if name == "F16":
        return values.astype(np.float16).view(np.uint8).reshape(rows, -1)
    if name in BLOCK_QUANTIZERS:
        return quantize_k_rows(values, name)
    if name in _IQ4:
        block, fn = _IQ4[name]
        if values.shape[1] % block:
            raise ValueError(f"{name} needs rows of a multiple of {block} weights, got {values.shape[1]}")
        blocks = np.ascontiguousarray(values).reshape(-1, block)
        step = max(1, CHUNK_WEIGHTS // block)
        return np.concatenate([fn(blocks[s:s + step]) for s in range(0, blocks.shape[0], step)]).reshape(rows, -1)
    if name in _GGUF_EXACT:
        return gguf_quants.quantize(values, GGMLQuantizationType[name]).reshape(rows, -1)
    raise NotImplementedError(f"no bit-exact quantizer for {name} (supported: {', '.join(supported_types())})")
