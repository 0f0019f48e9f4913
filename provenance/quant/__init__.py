"""Quantization forensics: dequantization of every ggml type, and quantization grids."""
from provenance.quant.api import quantcheck
from provenance.quant.dequant import dequantize_rows, dequantize_torch
from provenance.quant.kernels import kernel_coverage
from provenance.quant.quantize_ref import quantize_rows

__all__ = ["dequantize_rows", "dequantize_torch", "kernel_coverage", "quantcheck", "quantize_rows"]
