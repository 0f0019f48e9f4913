"""One chunk of a packed tensor's rows as codes plus grid: values and grid cells.

Two grids cover every layout here:

* affine: ``value = scale * (code - zero) + bias`` with codes in ``[0, n_levels)`` (GPTQ,
  AWQ and compressed-tensors integers use ``zero``; MLX uses ``bias``; LLM.int8 neither);
* codebook: ``value = levels[code] * scale`` (bitsandbytes NF4/FP4 with their stored
  ``quant_map`` and block ``absmax``; fp8 with its per-channel scale).

``values`` rounds the exact float32 result to the ecosystem's arithmetic dtype (GPTQ/AWQ
kernels compute in their fp16 scales' dtype; bitsandbytes in float32 then casts to the
quant state's dtype), so the float32 rows equal what that dequantizer returns, bit for bit.
``cells`` gives the interval of source values that round to each stored code (half a
step either side of an affine level, the midpoints to the neighbouring levels of a
codebook; unbounded at the ends of the range): a weight of the reference outside its
cell was not rounded to nearest from that reference. That is the grid-consistency test,
meaningful where the writer rounds to nearest (RTN int8/fp8, MLX, bitsandbytes) and
reported, not trusted, for GPTQ/AWQ, whose error feedback moves codes on purpose.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedRows:
    """Codes of ``(rows, cols)`` canonical elements and their grid, expanded per element."""

    codes: torch.Tensor
    """integer codes, ``(rows, cols)``"""
    scale: torch.Tensor
    """float32 ``(rows, cols)``: the affine step, or the codebook's block scale"""
    n_levels: int
    arithmetic: torch.dtype = torch.float32
    """dtype the ecosystem's dequantizer returns (its rounding of the exact value)"""
    zero: torch.Tensor | None = None
    """affine zero point (float32, per element), subtracted from the code"""
    bias: torch.Tensor | None = None
    """affine offset added after scaling (MLX)"""
    levels: torch.Tensor | None = None
    """codebook: float32 level of each code (then ``value = levels[code] * scale``)"""
    post_scale: float | None = None
    """a constant the scaled code is multiplied by afterwards, rounding again (LLM.int8's
    ``q * SCB * (1/127)``)"""

    def select_rows(self, index: torch.Tensor) -> PackedRows:
        """These rows in the order of ``index`` (per-element tensors gathered, shared ones kept)."""
        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return x if x is None or x.dim() < 2 else x.index_select(0, index)
        return PackedRows(self.codes.index_select(0, index), self.scale.index_select(0, index), self.n_levels,
                          self.arithmetic, pick(self.zero), pick(self.bias), self.levels, self.post_scale)

    def nearest(self, x: torch.Tensor) -> PackedRows:
        """The same grid with each code replaced by the level nearest to ``x`` (same shape): what
        a round-to-nearest writer would have stored for ``x`` on these scales (codes stay
        where ``x`` or the grid is not finite)."""
        if self.levels is not None:
            lv = self.levels.to(torch.float32)
            order = torch.argsort(torch.where(torch.isfinite(lv), lv, torch.inf))
            finite = int(torch.isfinite(lv).sum())
            ranked = lv[order[:finite]]
            u = x / self.scale
            codes = order[torch.searchsorted((ranked[1:] + ranked[:-1]) / 2, u.contiguous())] if finite else self.codes
        else:
            base = x if self.bias is None else x - self.bias
            step = self.scale if self.post_scale is None else self.scale * self.post_scale
            u = base / step + (self.zero if self.zero is not None else 0.0)
            codes = torch.round(u).clamp(0, self.n_levels - 1)
        ok = torch.isfinite(u)
        codes = torch.where(ok, codes.to(self.codes.dtype), self.codes)
        return PackedRows(codes, self.scale, self.n_levels, self.arithmetic, self.zero, self.bias, self.levels,
                          self.post_scale)

    def exact(self) -> torch.Tensor:
        """The grid value of each code in float32 before the ecosystem's final rounding."""
        if self.levels is not None:
            return self.levels[self.codes.long()] * self.scale
        q = self.codes.to(torch.float32)
        if self.zero is not None:
            q = q - self.zero
        if self.bias is None:
            v = q * self.scale
            return v if self.post_scale is None else v * torch.tensor(self.post_scale, dtype=torch.float32)
        # MLX computes in the scales' dtype: the product rounds to it before the bias is added
        return (q * self.scale).to(self.arithmetic).to(torch.float32) + self.bias

    def values(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 values as the ecosystem's dequantizer returns them (into ``out`` if given)."""
        v = self.exact()
        if self.arithmetic != torch.float32:
            v = v.to(self.arithmetic).to(torch.float32)
        if out is None:
            return v
        return out.copy_(v)

    def cells(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lo, hi, step)`` per element: the source values that round to the stored code."""
        if self.levels is not None:
            lo_l, hi_l, gap = codebook_cells(self.levels)
            c = self.codes.long()
            s = self.scale
            lo, hi = lo_l[c] * s, hi_l[c] * s
            lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # a negative scale flips the cell
            return lo, hi, gap[c] * s.abs()
        centre = self.exact()
        half = 0.5 * self.scale.abs() * (1.0 if self.post_scale is None else abs(self.post_scale))
        inf = torch.tensor(float("inf"), device=centre.device)
        lo = torch.where(self.codes > 0, centre - half, -inf)
        hi = torch.where(self.codes < self.n_levels - 1, centre + half, inf)
        if bool((self.scale < 0).any()):  # a negative step reverses which end is open
            lo, hi = (torch.where(self.scale < 0, torch.where(self.codes < self.n_levels - 1, centre - half, -inf), lo),
                      torch.where(self.scale < 0, torch.where(self.codes > 0, centre + half, inf), hi))
        step = self.scale.abs() if self.post_scale is None else self.scale.abs() * abs(self.post_scale)
        return lo, hi, step


def codebook_cells(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each code of a codebook: the midpoints to its neighbouring levels (``-inf``/
    ``inf`` at the ends; ``nan`` for a non-finite level) and its smaller neighbour gap."""
    lv = levels.to(torch.float64)
    finite = torch.isfinite(lv)
    distinct = torch.unique(lv[finite])  # sorted; a repeated level (fp8 -0) shares its cell
    pos = torch.searchsorted(distinct, torch.where(finite, lv, 0.0))
    mids = (distinct[1:] + distinct[:-1]) / 2
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    lo_mid = torch.cat((-inf, mids))[pos]
    hi_mid = torch.cat((mids, inf))[pos]
    gaps = torch.diff(distinct)
    big = torch.tensor([float("inf")], dtype=torch.float64)
    gap = torch.minimum(torch.cat((big, gaps))[pos], torch.cat((gaps, big))[pos])
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    lo_mid, hi_mid, gap = (torch.where(finite, x, nan) for x in (lo_mid, hi_mid, gap))
    return (lo_mid.to(torch.float32).to(levels.device), hi_mid.to(torch.float32).to(levels.device),
            gap.to(torch.float32).to(levels.device))
