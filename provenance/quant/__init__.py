"""Quantization forensics above the readers: grid consistency against a reference
(``quantcheck``), dequantization error, and llama.cpp's per-tensor type mixes and model
writer. The per-type block math lives in :mod:`provenance.codecs`."""
from provenance.quant.api import quantcheck
from provenance.quant.result import QuantCheckOptions, QuantCheckResult, TensorCheck

__all__ = ["QuantCheckOptions", "QuantCheckResult", "TensorCheck", "quantcheck"]
