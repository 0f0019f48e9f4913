"""Shared pieces of the torch dequantization kernels (the kernels themselves are per type,
in :mod:`provenance.codecs.ggml`; :mod:`provenance.codecs.dequant` runs them).

A kernel turns a chunk of stored blocks into :class:`Decoded` levels, scales and offsets
(also the basis of :mod:`provenance.codecs.grid`); :mod:`._common` has the block-field
readers, SWAR bit planes and table lookups they are written with, and the per-thread
scratch :class:`Workspace`.
"""
from provenance.codecs.kernels._common import Decoded, Workspace, workspace

__all__ = ["Decoded", "Workspace", "workspace"]
