"""llama.cpp's own arithmetic for choosing each weight's code, given the source weights.

For every type the final codes are a deterministic function of the source values and of
scales that are either stored in the file or recomputable from the source. Reproducing
that function *exactly* (float32 operations in llama.cpp's order, its rounding rules)
makes a clean quantization of the true source match the stored codes with zero
mismatches, so any mismatch is evidence that the source differed.

References (ggml-quants.c, no importance matrix):

* ``quantize_row_q8_0_ref``: ``d = amax/127`` (f32), ``id = d ? 1/d : 0``,
  ``q = roundf(x*id)``: the codes use the f32 ``d`` and its f32 *inverse*; only the
  stored copy of ``d`` is rounded to f16. Using the stored f16 ``d`` instead flips ~0.7%
  of codes, rounding ``x/d`` instead of ``x*id`` ~1 in 10^6 (measured on random data).
  (The shared README's 9 leftover Q8_0 mismatches are a different effect, f16 double
  rounding of the source: see :mod:`provenance.quant.gridcheck`.)
* ``quantize_row_q4_0_ref`` / ``q5_0``: ``max`` = the signed value of largest magnitude
  (first one wins), ``d = max/-8`` (``/-16``), ``q = min(15, (int8)(x*id + 8.5f))``
  (``31``, ``16.5f``): truncation after a float add, not round().
* ``q4_1`` / ``q5_1``: ``d = (max-min)/15`` (``/31``), ``q = min(15, (int8)((x-min)*id + 0.5f))``.
* K-quants: after the scale search, codes are recomputed from the *stored* f16 ``d``,
  ``dmin`` and 6/4-bit sub-scales: ``q = nearest_int((x + dm)/d)`` (Q2_K, Q4_K, Q5_K) or
  ``nearest_int(x/d)`` (Q3_K, Q6_K), clamped; ``nearest_int`` rounds half to even.
  Sub-blocks with ``d == 0`` keep the search's codes and are not predictable.
* IQ4_NL / IQ4_XS: ``best_index_int8(values, idl*x)`` with ``idl = 1/(d*l)`` where ``d`` is
  the *f32* super-scale before its f16 rounding, which the file does not keep; a code is
  therefore only determined up to the f16 rounding of ``d`` (relative 2^-11), and
  mismatches within that tolerance are *explained*.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGMLQuantizationType as T

from provenance.codecs.grid import QuantGrid

EXACT_TYPES = {T.Q8_0, T.Q4_0, T.Q5_0, T.Q4_1, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}
TOLERANT_TYPES = {T.IQ4_NL, T.IQ4_XS}
F16_REL = 2.0 ** -11  # half an f16 ulp, relative


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


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _legacy_symmetric(x: torch.Tensor, grid: QuantGrid, divisor: float, bias: float, top: int, qtype: T) -> Prediction:
    xb = x.reshape(-1, 32)
    if qtype == T.Q8_0:
        amax = xb.abs().amax(dim=1, keepdim=True)
        d = amax / 127.0
    else:
        idx = xb.abs().argmax(dim=1, keepdim=True)  # first largest |x|, as llama.cpp's strict '<'
        d = torch.gather(xb, 1, idx) / divisor
    inv = _safe_inverse(d)
    v = xb * inv
    if qtype == T.Q8_0:
        level = roundf(v)
    else:
        level = torch.clamp(torch.trunc(v + bias), max=top) - (bias - 0.5)
    scale_ok = _f16(d).view(-1) == grid.scale.reshape(-1)
    shape = x.shape
    return Prediction(level.view(shape), v.view(shape), torch.ones(shape, dtype=torch.bool), scale_ok=scale_ok)


def _legacy_affine(x: torch.Tensor, grid: QuantGrid, levels: int) -> Prediction:
    xb = x.reshape(-1, 32)
    lo = xb.amin(dim=1, keepdim=True)
    hi = xb.amax(dim=1, keepdim=True)
    d = (hi - lo) / float(levels)
    inv = _safe_inverse(d)
    v = (xb - lo) * inv
    level = torch.clamp(torch.trunc(v + 0.5), max=levels)
    assert grid.offset is not None
    scale_ok = (_f16(d).view(-1) == grid.scale.reshape(-1)) & (_f16(lo).view(-1) == grid.offset.reshape(-1))
    shape = x.shape
    return Prediction(level.view(shape), v.view(shape), torch.ones(shape, dtype=torch.bool), scale_ok=scale_ok)


def _k_quant(x: torch.Tensor, grid: QuantGrid) -> Prediction:
    d = grid.scale_per_weight()
    if grid.offset is not None:
        dm = -grid.offset_per_weight()  # llama.cpp's dm = dmin * m (the offset is -dm)
        v = (x + dm) / torch.where(d != 0, d, torch.ones_like(d))
    else:
        v = x / torch.where(d != 0, d, torch.ones_like(d))
    level = torch.clamp(torch.round(v), grid.qmin, grid.qmax)  # torch.round: half to even
    return Prediction(level, v, d != 0)


def _best_index(values: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """llama.cpp ``best_index_int8``: nearest table entry, ties to the upper one."""
    hi = torch.searchsorted(values, v.contiguous(), right=True).clamp(1, len(values) - 1)
    below, above = values[hi - 1], values[hi]
    pick = torch.where(v - below < above - v, hi - 1, hi)
    pick = torch.where(v <= values[0], torch.zeros_like(pick), pick)
    return torch.where(v >= values[-1], torch.full_like(pick, len(values) - 1), pick)


def _iq4(x: torch.Tensor, grid: QuantGrid, raw: torch.Tensor | None) -> Prediction:
    assert grid.levels is not None
    dl = grid.scale_per_weight()
    v = x * _safe_inverse(dl)
    values = grid.levels.to(x.device)
    level = values[_best_index(values, v)]
    # The codes were chosen with the f32 super-scale d; the file keeps fp16(d), which is
    # off by at most half an f16 spacing: relative 2^-11 for normal f16, but an absolute
    # 2^-25 for subnormal ones (common: d = max_scale/32 is often below 6.1e-5).
    rel = torch.full_like(v, F16_REL)
    if raw is not None:
        d16 = _f16_scales(raw, grid).abs()
        rel = torch.maximum(rel, torch.where(d16 > 0, 2.0 ** -25 / d16, torch.zeros_like(d16)))
    tolerance = v.abs() * (2 * rel) + 1e-4
    return Prediction(level, v, dl != 0, tolerance=tolerance)


def _f16_scales(raw: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Per weight, the block's stored f16 super-scale (bytes 0..1 of IQ4 blocks)."""
    rows = grid.codes.shape[0]
    from provenance.codecs.types import type_info

    info = type_info(grid.qtype)
    blocks = raw.reshape(-1, info.type_size)[:, 0:2].contiguous().view(torch.float16).to(torch.float32)
    return blocks.view(rows, -1).repeat_interleave(info.block_size, dim=1)


def predict(x: torch.Tensor, grid: QuantGrid, ggml_type: int, raw: torch.Tensor | None = None) -> Prediction:
    """Codes llama.cpp would store for source ``x`` (float32, the grid's shape); ``raw``
    (the stored blocks) sharpens the IQ4 tolerance."""
    qtype = T(ggml_type)
    x = x.to(torch.float32)
    if qtype == T.Q8_0:
        return _legacy_symmetric(x, grid, 127.0, 0.0, 127, qtype)
    if qtype == T.Q4_0:
        return _legacy_symmetric(x, grid, -8.0, 8.5, 15, qtype)
    if qtype == T.Q5_0:
        return _legacy_symmetric(x, grid, -16.0, 16.5, 31, qtype)
    if qtype == T.Q4_1:
        return _legacy_affine(x, grid, 15)
    if qtype == T.Q5_1:
        return _legacy_affine(x, grid, 31)
    if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        return _k_quant(x, grid)
    if qtype in TOLERANT_TYPES:
        return _iq4(x, grid, raw)
    raise NotImplementedError(f"no code recipe for {qtype.name}")


def supported(ggml_type: int) -> bool:
    return T(ggml_type) in EXACT_TYPES or T(ggml_type) in TOLERANT_TYPES
