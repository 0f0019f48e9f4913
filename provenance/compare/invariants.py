"""Residual-space circuit matrices that the free weight symmetries cannot change.

For each layer, with the RMSNorm gains folded into the matrices that follow them:

* ``qk``   = sum_h (W_q^h G)^T (W_k^{kv(h)} G)        (|S| x |S|)
* ``ov``   = sum_h W_o^h (W_v^{kv(h)} G)
* ``mlp``  = W_down (W_up F)
* ``gate`` = (W_gate F)^T (W_gate F)

plus the sampled token embedding (and an untied output matrix with its norm folded in).
Each is unchanged by permuting MLP hidden units, permuting heads within a KV group (or
whole groups), rescaling MLP units (up row x s, down column / s), rescaling v channels
(v row x t, o column / t), rescaling residual channels at a norm (gain x a, following
columns / a) and flipping signs. So the lineage test needs no fallible matching step:
an adversary using these symmetries changes nothing it looks at. What does change them,
a permutation of the residual stream, is exactly the symmetry the test's null
distribution is built from (see :mod:`provenance.compare.symtest`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from provenance.compare.sketch import Sketch


@dataclass(frozen=True)
class HeadLayout:
    n_head: int
    n_head_kv: int
    head_dim: int

    def kv_of_q_rows(self) -> np.ndarray:
        """For each q row, the k/v row it meets (llama.cpp's GQA: head h uses kv h // group)."""
        group = self.n_head // self.n_head_kv
        h = np.arange(self.n_head).repeat(self.head_dim)
        r = np.tile(np.arange(self.head_dim), self.n_head)
        return (h // group) * self.head_dim + r


@dataclass(frozen=True)
class Circuit:
    label: str
    layer: int | None
    """None for the embedding / output blocks."""
    matrix: np.ndarray
    square: bool
    """Square circuits are permuted on both axes; embedding blocks on columns only."""


def _fold(matrix: Any, gains: Any) -> Any:
    """A norm's gains folded into the matrix that reads its output (numpy or torch)."""
    return matrix if gains is None else matrix * gains[None, :]


def _t(x: np.ndarray | None) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def product(a: torch.Tensor, b: torch.Tensor, for_spectra: bool = False) -> torch.Tensor:
    """``a @ b`` in float32. ``for_spectra``: through numpy's BLAS instead of torch's (OpenBLAS
    ran these ``128 x n x 128`` shapes 15-25% faster than torch's MKL on this AMD machine, and
    numpy hands a product of an array with its own transpose, ``a.T @ a`` or ``a @ a.T``, to
    ``syrk``: half the multiplications). Same matrices up to float32 rounding; the caller
    limits BLAS to one thread (:func:`provenance.compare.layermap.signatures_of`)."""
    if not for_spectra:
        return a @ b
    return torch.from_numpy(a.numpy() @ b.numpy())


def _kv_sum(x: torch.Tensor, heads: HeadLayout, axis: int) -> torch.Tensor:
    """The q heads (rows, ``axis`` 0) or attention-output head columns (``axis`` 1) summed
    within each KV group: ``sum_h A_h^T B_kv(h) = sum_kv (sum_{h in kv} A_h)^T B_kv``."""
    group = heads.n_head // heads.n_head_kv
    if axis == 0:
        return x.reshape(heads.n_head_kv, group, heads.head_dim, -1).sum(1).reshape(heads.n_head_kv * heads.head_dim, -1)
    return x.reshape(x.shape[0], heads.n_head_kv, group, heads.head_dim).sum(2).reshape(x.shape[0], -1)


def layer_circuits(parts: dict[str, np.ndarray], heads: HeadLayout | None,
                   for_spectra: bool = False) -> dict[str, np.ndarray]:
    """The circuit matrices of one layer (those whose tensors are all present), float64.

    The products run in float32 torch matmuls: the sketches are float32 weights, the test
    only ranks the entries (a float32 product is accurate to ~3e-7 of the largest entry,
    measured on 7B shapes), and torch honours the comparison's one-thread-per-tensor
    setting where numpy's BLAS starts a thread per core of its own. 9 ms instead of 26 ms
    per 7B layer and side on one core.

    ``for_spectra`` (the layer map's signatures, which need only singular values): the q
    heads and attention-output columns are summed within each KV group before the product
    (8x fewer multiplications for ``qk`` and ``ov`` at 70B's 64 heads on 8 KV heads), the norm
    gains scale the ``|S| x |S|`` product's rows and columns instead of the tall factors
    (``(W_up F)`` is ``n_ff x |S|``: a copy of it cost a fifth of the time at 70B widths), and
    the products go through :func:`product`. The same matrices up to float32 rounding, so the
    test keeps the default: its circuits stay bit for bit those of the committed calibration.
    """
    g, f = _t(parts.get("attn_norm")), _t(parts.get("ffn_norm"))
    out: dict[str, torch.Tensor] = {}
    q, k, v, o = (_t(parts.get(r)) for r in ("attn_q", "attn_k", "attn_v", "attn_output"))
    if heads is not None and q is not None and k is not None and q.shape[0] == heads.n_head * heads.head_dim:
        kv = torch.from_numpy(heads.kv_of_q_rows())
        if k.shape[0] == heads.n_head_kv * heads.head_dim:
            if for_spectra:
                out["qk"] = _scaled(product(_kv_sum(q, heads, 0).T, k, True), g, g)
            else:
                out["qk"] = _fold(q, g).T @ _fold(k[kv], g)
        if v is not None and o is not None and v.shape[0] == k.shape[0] and o.shape[1] == q.shape[0]:
            out["ov"] = _scaled(product(_kv_sum(o, heads, 1), v, True), None, g) if for_spectra else o @ _fold(v[kv], g)
    down, up, gate = (_t(parts.get(r)) for r in ("ffn_down", "ffn_up", "ffn_gate"))
    if down is not None and up is not None and down.shape[1] == up.shape[0]:
        out["mlp"] = _scaled(product(down, up, True), None, f) if for_spectra else down @ _fold(up, f)
    if gate is not None:
        if for_spectra:
            out["gate"] = _scaled(product(gate.T, gate, True), f, f)
        else:
            gf = _fold(gate, f)
            out["gate"] = gf.T @ gf
    return {label: m.numpy().astype(np.float64) for label, m in out.items()}


def _scaled(m: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """``diag(rows) m diag(cols)``: gains folded into a product after it was taken (one outer
    product of the gains, so a symmetric ``m`` scaled by the same gains stays exactly symmetric)."""
    if rows is not None and cols is not None:
        return m * (rows[:, None] * cols[None, :])
    if rows is not None:
        return m * rows[:, None]
    return m if cols is None else m * cols[None, :]


def circuits(sketch: Sketch, heads: HeadLayout | None, for_spectra: bool = False) -> list[Circuit]:
    """All circuits of a sketch, layers in order, then the embedding blocks (``for_spectra``:
    see :func:`layer_circuits`)."""
    result: list[Circuit] = []
    for layer in sorted(sketch.layers):
        for label, matrix in layer_circuits(sketch.layers[layer], heads, for_spectra).items():
            result.append(Circuit(label, layer, matrix, True))
    emb = sketch.globals.get("token_embd")
    if emb is not None:
        result.append(Circuit("token_embd", None, emb.astype(np.float64), False))
    out = sketch.globals.get("output")
    if out is not None:
        result.append(Circuit("output", None, _fold(out.astype(np.float64), sketch.globals.get("output_norm")), False))
    return result
