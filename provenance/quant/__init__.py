"""Quantization forensics: dequantization of every ggml type, and quantization grids."""
from provenance.quant.dequant import dequantize_rows

__all__ = ["dequantize_rows"]
