"""A model's *sketch*: the slices of its weights that alignment and the lineage test need.

Everything is indexed by a fixed subset ``S`` of residual-stream coordinates (all of them
for models up to ``max_residual`` wide): columns ``S`` of the matrices that read the
residual stream (q, k, v, gate, up, embeddings) and rows ``S`` of those that write it
(attention output, down). Per layer that is ``O((n_heads * head_dim + n_ff) * |S|)``
floats, so a 70B model's sketch is a few hundred MB at most and the full weights are
streamed once. ``S`` is chosen from a fixed seed, never from the data, which keeps the
residual-permutation test exact (it permutes within ``S``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from provenance.formats.base import Checkpoint

#: roles whose columns index the residual stream / whose rows do
READS_RESIDUAL = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up", "token_embd", "output")
WRITES_RESIDUAL = ("attn_output", "ffn_down")
NORMS = ("attn_norm", "ffn_norm", "output_norm")


def residual_subset(n_embd: int, max_residual: int, seed: int = 0) -> np.ndarray:
    """Sorted residual coordinates kept in sketches (all when the model is narrow enough)."""
    if n_embd <= max_residual:
        return np.arange(n_embd)
    return np.sort(np.random.default_rng(seed).choice(n_embd, size=max_residual, replace=False))


def token_subset(vocab: int, max_tokens: int, seed: int = 1) -> np.ndarray:
    """Sorted token rows of the embedding kept in sketches (shared vocabulary pins them)."""
    if vocab <= max_tokens:
        return np.arange(vocab)
    return np.sort(np.random.default_rng(seed).choice(vocab, size=max_tokens, replace=False))


@dataclass
class Sketch:
    """Residual-indexed slices of one model, in its own frame (no alignment applied)."""

    residual: np.ndarray
    tokens: np.ndarray
    layers: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    globals: dict[str, np.ndarray] = field(default_factory=dict)

    def put(self, role: str, layer: int | None, value: np.ndarray) -> None:
        if layer is None:
            self.globals[role] = value
        else:
            self.layers.setdefault(layer, {})[role] = value


class TensorSketch:
    """One tensor's slices of a sketch, taken from its row chunks as they stream past (no
    extra reads).

    Matrices that read the residual stream keep columns ``S`` of every row, those that
    write it rows ``S``: both gathered with ``index_select`` into one preallocated float32
    buffer (per-chunk numpy fancy indexing and copies were ~10% of the streamed pass).
    Embeddings keep rows of the sampled tokens, norms the whole vector (cut to ``S`` in
    :meth:`SketchBuilder.finish`), chunk by chunk.
    """

    def __init__(self, role: str, n_rows: int, row_len: int, residual: np.ndarray, tokens: np.ndarray) -> None:
        if not SketchBuilder.wants(role):
            raise ValueError(f"{role} has no part in a sketch")
        self.role, self.residual, self.tokens = role, residual, tokens
        self._pieces: list[tuple[int, np.ndarray]] = []
        self._buffer: torch.Tensor | None = None
        self._index = torch.empty(0, dtype=torch.int64)
        self._rows = np.zeros(0, dtype=np.int64)  # a writer's residual rows, in buffer order
        if role in ("token_embd", "output") or role in NORMS:
            return
        if role in READS_RESIDUAL:
            if len(residual) and int(residual[-1]) >= row_len:
                raise ValueError(f"{role}: rows of {row_len} values have no residual coordinate {int(residual[-1])}")
            self._index = torch.from_numpy(np.ascontiguousarray(residual, dtype=np.int64))
            self._buffer = torch.empty((n_rows, len(residual)), dtype=torch.float32)
        else:  # writes the residual stream: its rows S (those it has)
            self._rows = np.asarray(residual, dtype=np.int64)[np.asarray(residual) < n_rows]
            self._index = torch.from_numpy(self._rows)
            self._buffer = torch.empty((len(self._rows), row_len), dtype=torch.float32)

    def add(self, start: int, rows: torch.Tensor | np.ndarray) -> None:
        """``rows``: canonical float32 rows ``[start, start + len)`` (reference frame) of the tensor."""
        t = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        stop = start + t.shape[0]
        if self._buffer is None:
            self._pieces.append((start, self._piece(start, t.numpy())))
        elif self.role in READS_RESIDUAL:
            torch.index_select(t, 1, self._index, out=self._buffer[start:stop])
        else:
            lo, hi = np.searchsorted(self._rows, [start, stop])
            if hi > lo:
                torch.index_select(t, 0, self._index[lo:hi] - start, out=self._buffer[lo:hi])

    def _piece(self, start: int, rows: np.ndarray) -> np.ndarray:
        if self.role in NORMS:
            part = rows.reshape(-1)
        else:
            tok = self.tokens
            part = rows[tok[(tok >= start) & (tok < start + len(rows))] - start][:, self.residual]
        # float32: the recovered scales come from sketch norms and must undo a rescaling
        # to ~1e-7 (float16 left 2e-5 and turned "same weights" into "fine-tune")
        return np.array(part, dtype=np.float32)

    def parts(self) -> list[tuple[int, np.ndarray]]:
        """The slices as ``(first row, values)`` pieces, for :meth:`SketchBuilder.add`."""
        if self._buffer is not None:
            return [(0, self._buffer.numpy())]
        return list(self._pieces)


def sketch_tensor(ckpt: Checkpoint, name: str, residual: np.ndarray, tokens: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One tensor's sketch slices read on their own, in bounded row chunks (outside a
    streamed comparison, which takes them from the rows it already reads)."""
    info = ckpt.info(name)
    part = TensorSketch(info.role or "", info.n_rows, info.row_length, residual, tokens)
    for start, rows in ckpt.iter_rows(name):
        part.add(start, rows)
    return part.parts()


class SketchBuilder:
    """Collects one model's sketch, tensor by tensor (:class:`TensorSketch` parts)."""

    def __init__(self, residual: np.ndarray, tokens: np.ndarray) -> None:
        self.residual, self.tokens = residual, tokens
        self._parts: dict[tuple[str, int | None], list[tuple[int, np.ndarray]]] = {}

    @staticmethod
    def wants(role: str) -> bool:
        return role in READS_RESIDUAL or role in WRITES_RESIDUAL or role in NORMS

    def add(self, role: str, layer: int | None, parts: list[tuple[int, np.ndarray]]) -> None:
        """The parts of tensor (``role``, ``layer``), as :meth:`TensorSketch.parts` gives them."""
        self._parts[(role, layer)] = list(parts)

    def finish(self) -> Sketch:
        sketch = Sketch(self.residual, self.tokens)
        for (role, layer), parts in self._parts.items():
            parts.sort(key=lambda p: p[0])
            if role in NORMS:
                value = np.concatenate([p[1] for p in parts])[self.residual]
            else:
                value = np.concatenate([p[1] for p in parts], axis=0).astype(np.float32)
            sketch.put(role, layer, value)
        self._parts.clear()
        return sketch
