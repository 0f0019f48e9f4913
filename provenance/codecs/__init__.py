"""Codecs: how every stored weight format is encoded and decoded, below the readers.

One module per job: block geometry (:mod:`.types`), dequantization (torch kernels in
:mod:`.kernels`, compiled CPU kernels in :mod:`.native`, the dispatcher :mod:`.dequant`),
the stored quantization grid (:mod:`.grid`), the quantizer's own rounding rule per type
(:mod:`.recipes`) and llama.cpp-exact reference quantizers (:mod:`.quantize_ref`). Nothing
here opens a file or knows a checkpoint: readers hand codecs validated bytes.
"""
from provenance.codecs.dequant import dequantize_rows, dequantize_torch
from provenance.codecs.kernels import kernel_coverage
from provenance.codecs.quantize_ref import quantize_rows

__all__ = ["dequantize_rows", "dequantize_torch", "kernel_coverage", "quantize_rows"]
