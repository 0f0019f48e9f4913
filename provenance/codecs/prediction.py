"""What a recipe returns, and the float32 pieces of llama.cpp's arithmetic recipes share.

Each type's recipe (its ``Recipe.predict``, in :mod:`provenance.codecs.ggml`) reproduces
ggml-quants.c's final code choice in float32, in llama.cpp's order; :mod:`provenance.codecs.recipes`
dispatches to them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

F16_REL = 2.0 ** -11
"""Half an f16 ulp, relative."""


@dataclass
class Prediction:
    """What the quantizer would have stored for the given source, per weight."""

    level: torch.Tensor
    """Predicted level ``L(code)`` (float32)."""
    u: torch.Tensor
    """The source's position in level units (``x*id``, ``(x+dm)/d`` ...)."""
    valid: torch.Tensor
    """Where the prediction is determined."""
    tolerance: torch.Tensor | None = None
    """Per weight, in level units: mismatches closer than this to a boundary are
    explained by arithmetic the file does not record (IQ4 super-scale rounding)."""
    scale_ok: torch.Tensor | None = None
    """Per block, for types whose scale is recomputed from the source: does
    ``fp16(scale)`` equal the stored one?"""


def roundf(v: torch.Tensor) -> torch.Tensor:
    """C ``roundf``: half away from zero, exact (no ``floor(v + 0.5)`` double rounding)."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)


def safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """C's ``d ? 1.0f/d : 0.0f``."""
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def f16_round(x: torch.Tensor) -> torch.Tensor:
    """``GGML_FP32_TO_FP16`` and back: what the file keeps of an f32 scale."""
    return x.to(torch.float16).to(torch.float32)


def best_index(values: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """llama.cpp ``best_index_int8``: nearest table entry, ties to the upper one."""
    hi = torch.searchsorted(values, v.contiguous(), right=True).clamp(1, len(values) - 1)
    below, above = values[hi - 1], values[hi]
    pick = torch.where(v - below < above - v, hi - 1, hi)
    pick = torch.where(v <= values[0], torch.zeros_like(pick), pick)
    return torch.where(v >= values[-1], torch.full_like(pick, len(values) - 1), pick)
