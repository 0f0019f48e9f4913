"""Grid-consistency flips as a watermark statistic.

Given the reference and a quantized candidate, each weight's code is predictable from
the reference on the candidate's stored grid (:mod:`provenance.quant.gridcheck`, llama.cpp's
own arithmetic). A mark ``delta`` added before quantization flips a code only when it
pushes the weight across a cell boundary, with probability ~ ``|delta| / step``, and the
flip's direction is the sign of ``delta`` there. The quantization noise of the
reference itself (``Q(w) - w``), which dominates the plain residual after coarse
quantization, cancels exactly: what is left is a sparse vector of +-1 signs whose
correlation with the key is the statistic (``z = sum(s*k) / sqrt(#flips)``; exactly
N(0, 1) for an innocent Gaussian key given the flips).
"""
from __future__ import annotations

import numpy as np
import torch

from provenance.codecs.dequant import as_torch
from provenance.codecs.grid import quant_grid
from provenance.codecs.recipes import predict, supported
from provenance.quant.gridcheck import source_variants


def flip_signs(reference_rows: np.ndarray, raw_rows: np.ndarray, ggml_type: int, precision: str = "f16") -> np.ndarray:
    """Per weight: +1 where the stored code lies above the reference's predicted code (the
    candidate's source was larger), -1 below, 0 where they agree or nothing is determined.

    ``reference_rows`` are float32 in the candidate's storage layout; ``raw_rows`` the
    candidate's stored blocks of the same rows.
    """
    if not supported(ggml_type):
        raise NotImplementedError(f"no code recipe for ggml type {ggml_type}")
    raw_t = as_torch(np.ascontiguousarray(raw_rows))
    grid = quant_grid(raw_t, ggml_type)
    x = torch.from_numpy(np.ascontiguousarray(reference_rows, dtype=np.float32)).reshape(grid.codes.shape)
    near, alt = source_variants(x, precision)
    pred = predict(near, grid, ggml_type, raw_t)
    stored = grid.level_values()
    mismatch = pred.valid & (pred.level != stored)
    if alt is not None:  # a midpoint the narrow rounding could take either way: not evidence
        mismatch &= predict(alt, grid, ggml_type, raw_t).level != stored
    if pred.tolerance is not None:  # IQ4: within the unrecorded f16 rounding of the scale
        mismatch &= ((pred.u - stored).abs() - 0.5) > pred.tolerance
    sign = torch.sign((stored - pred.level) * grid.scale_per_weight())
    out = torch.where(mismatch, sign, torch.zeros_like(sign))
    if pred.scale_ok is not None and not bool(pred.scale_ok.all()):
        # Legacy types recompute the block scale from the source. Where the perturbed
        # source changed it (its largest weight moved), the reference's scale is wrong for
        # the whole block; judge those blocks on the stored grid instead: a flip is the
        # reference lying outside the stored code's cell.
        lo, hi = grid.cell_bounds(clip=True)
        cell = torch.where(near > hi, -1.0, torch.where(near < lo, 1.0, 0.0))
        block = grid.codes.numel() // pred.scale_ok.numel()
        bad = (~pred.scale_ok).repeat_interleave(block).view(out.shape)
        out = torch.where(bad, cell, out)
    return out.to(torch.float64).numpy()
