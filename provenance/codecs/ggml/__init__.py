"""The ggml block-quantized types, one module per family (a new type: one module of its own).

Each module holds all of its types' block arithmetic, torch kernels, compiled CPU kernels,
grid facts, recipes, and ends with their :class:`provenance.codecs.quanttype.QuantType`
descriptors; :mod:`provenance.codecs.registry` registers them. Shared machinery lives
beside: torch block helpers in :mod:`provenance.codecs.kernels`, compiled-kernel field
readers and threading in :mod:`provenance.codecs.native`, the K-quant and IQ4 reference
quantizers in :mod:`provenance.codecs.quantize_k` and :mod:`provenance.codecs.quantize_iq4`.
"""
