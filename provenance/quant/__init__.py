"""Quantization forensics above the readers: grid consistency against a reference
(``quantcheck``), dequantization error, and llama.cpp's per-tensor type mixes and model
writer. The per-type block math lives in :mod:`provenance.codecs`."""
from typing import TYPE_CHECKING

from provenance.lazy import lazy_package

if TYPE_CHECKING:
    from provenance.quant.api import quantcheck
    from provenance.quant.options import QuantCheckOptions
    from provenance.quant.result import QuantCheckResult, TensorCheck

lazy_package(__name__, {
    "quantcheck": "provenance.quant.api",
    "QuantCheckOptions": "provenance.quant.options",
    "QuantCheckResult": "provenance.quant.result",
    "TensorCheck": "provenance.quant.result",
})
__all__ = [
    "QuantCheckOptions", "QuantCheckResult", "TensorCheck", "quantcheck",
]
