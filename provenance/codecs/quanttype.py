"""The descriptor of one block-quantized ggml type: everything about it that is block math.

A :class:`QuantType` holds, for one type, what every consumer of the codecs needs and
nothing else keeps a table of: the torch kernel (any device), the compiled CPU kernel and
the lookup tables it takes, the facts of its stored grid, llama.cpp's rule for choosing
its codes (the recipe) and the bit-exact reference quantizer, where these exist. Geometry
is not stored but read from gguf's ``GGML_QUANT_SIZES`` (:func:`provenance.codecs.types.type_info`).

Descriptors are frozen dataclasses of data and plain functions rather than a class per
type (gguf-py's ``quants.py`` style): the parts vary independently (IQ2 has a torch kernel
and a grid but no compiled kernel, recipe or quantizer; TQ1_0 has both kernels but no
recipe), and an optional part that is ``None`` says so where an abstract method would
raise at run time. The family modules in :mod:`provenance.codecs.ggml` define them and
:mod:`provenance.codecs.registry` registers them; see docs/quantization.md, "Adding a
ggml type".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from gguf import GGMLQuantizationType

from provenance.codecs.types import type_info

if TYPE_CHECKING:
    import torch

    from provenance.codecs.grid import QuantGrid
    from provenance.codecs.kernels._common import Decoded, Workspace
    from provenance.codecs.prediction import Prediction

TorchKernel = Callable[["torch.Tensor", "Workspace"], "Decoded"]
"""``(n_blocks, type_size)`` uint8 blocks on any device -> levels, scales and offsets."""
TableBuilder = Callable[[], np.ndarray]
"""Builds one lookup table of a compiled kernel (called once; cache it)."""
Predictor = Callable[["torch.Tensor", "QuantGrid", "torch.Tensor | None"], "Prediction"]
"""``(source x, stored grid, stored blocks or None)`` -> the codes llama.cpp would store."""


@dataclass(frozen=True)
class CompiledKernel:
    """A numba kernel over a batch of blocks, ``fn(inp, out, f16_table, *tables)``, and the
    builders of the tables it takes after the shared f16 table: a dequantizer writes
    ``(n, block_size)`` float32 from ``(n, type_size)`` uint8 blocks, a quantizer the
    reverse. Loop bounds inside come from array shapes (see :mod:`provenance.jit`); the
    batch is split between threads by :func:`provenance.codecs.native.run_compiled`."""

    fn: Callable[..., None]
    tables: tuple[TableBuilder, ...] = ()


@dataclass(frozen=True)
class UniformGrid:
    """``value = scale * code (+ offset)``: the code is the integer level itself."""

    qmin: int
    qmax: int


@dataclass(frozen=True)
class LevelGrid:
    """``value = scale * levels[code] (+ offset)`` with a non-uniform level table."""

    levels: Callable[[], torch.Tensor]
    """Sorted distinct per-weight levels, float32 (exact values)."""
    codebook: Callable[[], torch.Tensor] | None = None
    """Vector types (IQ2/IQ3/IQ1): the codebook, entries x weights per entry (unsigned
    magnitudes; IQ1: -1/0/1). Per-weight cells are then a relaxation of it."""


Grid = UniformGrid | LevelGrid


@dataclass(frozen=True)
class Recipe:
    """llama.cpp's own rule for the codes, given the source weights (ggml-quants.c)."""

    predict: Predictor
    tolerant: bool = False
    """True when the file does not record all the quantizer computed with (IQ4's f32
    super-scale): codes are then determined up to a tolerance the prediction carries,
    and mismatches within it count as explained."""


@dataclass(frozen=True)
class QuantType:
    """Everything that is per-type block arithmetic for one block-quantized ggml type."""

    qtype: GGMLQuantizationType
    decode: TorchKernel
    grid: Grid
    f16_scales: tuple[int, ...] = ()
    """Byte offsets of the plain f16 scales / mins inside one block (not IQ1_M's split
    scale, nor MXFP4/NVFP4's 8-bit ones)."""
    compiled: CompiledKernel | None = None
    recipe: Recipe | None = None
    quantize: CompiledKernel | None = None
    """llama.cpp's reference quantizer (no importance matrix), bit-exact, if we have one:
    ``(n, block_size)`` float32 -> ``(n, type_size)`` uint8."""
    cells: CompiledKernel | None = None
    """Compiled cell test of ``compare``'s grid columns: ``fn(blocks, other, counts, sums,
    tol_steps, f16_table, *tables)`` (the type's grid decoder inlined into
    :func:`provenance.codecs.native.gridcheck.cells`); tables: for a ``LevelGrid`` the
    lower and upper cell midpoints per level."""
    check: CompiledKernel | None = None
    """Compiled grid-consistency check of ``quantcheck`` (the type's grid decoder and its
    recipe inlined into :func:`provenance.codecs.native.gridcheck.check`): ``fn(blocks, x,
    counts, sums, dist, precision, near_margin, f16_table, *tables)``; tables: for a
    ``LevelGrid`` the sorted levels. Only with a ``recipe``, and equal to it."""

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def ggml_type(self) -> int:
        return int(self.qtype)

    @property
    def block_size(self) -> int:
        return type_info(self.qtype).block_size

    @property
    def type_size(self) -> int:
        return type_info(self.qtype).type_size
