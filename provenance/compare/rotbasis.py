"""Which matrices a residual-stream rotation moves, and how (docs/lineage.md, "Structure").

SliceGPT/QuaRot-style tooling folds each RMSNorm's gains into the matrices that read its
output (RMSNorm commutes with an orthogonal map only with unit gains), then rotates the
residual stream by an orthogonal ``Q``: every matrix that *reads* the residual stream
(its rows are residual vectors: q/k/v, gate/up, the token embedding, the output head)
becomes ``W Q``, every one that *writes* it (attention output, MLP down) ``Q^T W``. The
network computes the same function. Both directions of the comparison need this table:
the reference carried into a rotated candidate's basis (:mod:`.rotgrid`) and a rotated
candidate carried back into the reference's (:mod:`.rotview`).
"""
from __future__ import annotations

import numpy as np

from provenance.formats.base import Checkpoint

#: roles whose rows are residual vectors (``W -> W Q``), and the norm whose gains they absorb
READER_NORMS: dict[str, str | None] = {
    "attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm",
    "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm", "token_embd": None, "output": "output_norm",
}
#: roles whose columns are residual vectors (``W -> Q^T W``)
WRITERS = ("attn_output", "ffn_down")


def moved_by_rotation(role: str | None) -> bool:
    return role in READER_NORMS or role in WRITERS


def reference_gains(ckpt: Checkpoint, role: str, layer: int | None) -> np.ndarray | None:
    """The gains of the norm a reader of ``role`` absorbs (float64), or None."""
    norm = READER_NORMS.get(role)
    if norm is None:
        return None
    name = f"blk.{layer}.{norm}.weight" if layer is not None else f"{norm}.weight"
    if name not in ckpt.tensors:
        return None
    return ckpt.read(name).reshape(-1).astype(np.float64)


def reference_source(ref: Checkpoint, name: str, role: str) -> str | None:
    """The reference tensor a rotation tool starts ``name`` from: itself, or for an output head
    tied to the embedding the embedding (a rotated copy unties it); None when there is none."""
    source = name
    if role == "output" and name not in ref.tensors and ref.architecture.tie_word_embeddings:
        source = "token_embd.weight"
    return source if source in ref.tensors else None


def fold(rows: np.ndarray, gains: np.ndarray | None) -> np.ndarray:
    """Reference rows (float32, canonical) as a rotation tool starts from them: float64, a
    reader's norm gains folded into its columns."""
    w = rows.astype(np.float64)
    if gains is not None and w.ndim == 2 and gains.shape[0] == w.shape[1]:
        w *= gains[None, :]
    return w


def unit_gains(ckpt: Checkpoint) -> bool:
    """Every RMSNorm gain of ``ckpt`` is 1: the gains were folded, as a rotation needs."""
    for name, info in ckpt.tensors.items():
        if (info.role or "").endswith("_norm") and len(info.shape) == 1 and not np.all(ckpt.read(name) == 1.0):
            return False
    return True
