"""llama.cpp's own arithmetic for choosing each weight's code, given the source weights.

For every type the final codes are a deterministic function of the source values and of
scales that are either stored in the file or recomputable from the source. Reproducing
that function *exactly* (float32 operations in llama.cpp's order, its rounding rules)
makes a clean quantization of the true source match the stored codes with zero
mismatches, so any mismatch is evidence that the source differed.

Each type's rule is its descriptor's ``Recipe`` (in :mod:`provenance.codecs.ggml`, where
the references to ggml-quants.c are written down); this module dispatches to it.
*Exact* recipes determine every code; *tolerant* ones (IQ4) only up to arithmetic the
file does not record, within ``Prediction.tolerance``.
"""
from __future__ import annotations

import torch

from provenance.codecs.grid import QuantGrid
from provenance.codecs.prediction import Prediction, roundf
from provenance.codecs.quanttype import Recipe
from provenance.codecs.registry import find_quant_type

__all__ = ["Prediction", "predict", "recipe", "roundf", "supported", "tolerant"]


def recipe(ggml_type: int) -> Recipe | None:
    """The code recipe of ``ggml_type``, or None (unregistered, or no recipe)."""
    qt = find_quant_type(ggml_type)
    return None if qt is None else qt.recipe


def predict(x: torch.Tensor, grid: QuantGrid, ggml_type: int, raw: torch.Tensor | None = None) -> Prediction:
    """Codes llama.cpp would store for source ``x`` (float32, the grid's shape); ``raw``
    (the stored blocks) sharpens the IQ4 tolerance."""
    rule = recipe(ggml_type)
    if rule is None:
        raise NotImplementedError(f"no code recipe for {grid.qtype}")
    return rule.predict(x.to(torch.float32), grid, raw)


def supported(ggml_type: int) -> bool:
    """Does ``ggml_type`` have a code recipe (exact or tolerant)?"""
    return recipe(ggml_type) is not None


def tolerant(ggml_type: int) -> bool:
    """Are ``ggml_type``'s codes determined only up to a tolerance (IQ4)?"""
    rule = recipe(ggml_type)
    return rule is not None and rule.tolerant
