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
#: roles whose rows are MLP units / whose columns are (the unit-space slices of
#: :mod:`.unitspace`: full rows or columns of a fixed unit subset ``U``)
UNIT_ROWS = ("ffn_gate", "ffn_up")
UNIT_COLS = ("ffn_down",)


def residual_subset(n_embd: int, max_residual: int, seed: int = 0) -> np.ndarray:
    """Sorted residual coordinates kept in sketches (all when the model is narrow enough)."""
    if n_embd <= max_residual:
        return np.arange(n_embd)
    return np.sort(np.random.default_rng(seed).choice(n_embd, size=max_residual, replace=False))


def unit_subset(n_units: int, max_units: int, seed: int = 2) -> np.ndarray:
    """Sorted MLP units kept whole in unit-space sketches (a fixed-seed subset, like ``S``)."""
    return residual_subset(n_units, max_units, seed)


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
    units: dict[int | None, dict[str, np.ndarray]] = field(default_factory=dict)
    """Unit-space slices (:mod:`.unitspace`): full rows ``U`` of gate/up, full columns
    ``U`` of down, whole ``ffn_norm`` gains; for the embedding (key None) full rows of
    the probe tokens. Only when the sketch was asked for them."""

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

    def __init__(self, role: str, n_rows: int, row_len: int, residual: np.ndarray, tokens: np.ndarray,
                 units: np.ndarray | None = None, probe_tokens: np.ndarray | None = None) -> None:
        if not SketchBuilder.wants(role):
            raise ValueError(f"{role} has no part in a sketch")
        self.role, self.residual, self.tokens = role, residual, tokens
        self._pieces: list[tuple[int, np.ndarray]] = []
        self._units = _UnitSlices.of(role, n_rows, row_len, units, probe_tokens)
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
        if self._units is not None:
            self._units.add(start, t)
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

    def unit_part(self) -> np.ndarray | None:
        """The unit-space slice (None when none was asked for or the role has none)."""
        return None if self._units is None else self._units.value()


class _UnitSlices:
    """Full rows (gate/up: units ``U``; embedding: probe tokens), full columns (down:
    units ``U``) or the whole vector (ffn_norm) of one tensor, gathered chunk by chunk."""

    def __init__(self, mode: str, index: np.ndarray, shape: tuple[int, int]) -> None:
        self.mode = mode
        self.index = np.asarray(index, dtype=np.int64)
        self._index_t = torch.from_numpy(self.index)
        self.buffer = torch.empty(shape, dtype=torch.float32)

    @classmethod
    def of(cls, role: str, n_rows: int, row_len: int, units: np.ndarray | None,
           probe_tokens: np.ndarray | None) -> _UnitSlices | None:
        if units is not None and len(units) and role in UNIT_ROWS and int(units[-1]) < n_rows:
            return cls("rows", units, (len(units), row_len))
        if units is not None and len(units) and role in UNIT_COLS and int(units[-1]) < row_len:
            return cls("cols", units, (n_rows, len(units)))
        if units is not None and role == "ffn_norm":
            return cls("rows", np.arange(n_rows), (n_rows, row_len))
        if probe_tokens is not None and len(probe_tokens) and role == "token_embd" and int(probe_tokens[-1]) < n_rows:
            return cls("rows", probe_tokens, (len(probe_tokens), row_len))
        return None

    def add(self, start: int, rows: torch.Tensor) -> None:
        stop = start + rows.shape[0]
        if self.mode == "cols":
            torch.index_select(rows, 1, self._index_t, out=self.buffer[start:stop])
            return
        lo, hi = np.searchsorted(self.index, [start, stop])
        if hi > lo:
            torch.index_select(rows, 0, self._index_t[lo:hi] - start, out=self.buffer[lo:hi])

    def value(self) -> np.ndarray:
        return self.buffer.numpy()


@dataclass(frozen=True)
class SketchSpec:
    """What a sketch keeps: residual coordinates ``S``, embedding rows, and optionally the
    unit-space slices (MLP units ``U``, full embedding rows of the probe tokens)."""

    residual: np.ndarray
    tokens: np.ndarray
    units: np.ndarray | None = None
    probe_tokens: np.ndarray | None = None

    def tensor(self, role: str, n_rows: int, row_len: int) -> TensorSketch:
        return TensorSketch(role, n_rows, row_len, self.residual, self.tokens, self.units, self.probe_tokens)


def read_sketch(ckpt: Checkpoint, name: str, spec: SketchSpec) -> TensorSketch:
    """One tensor's sketch read on its own, in bounded row chunks (outside a streamed
    comparison, which takes it from the rows it already reads)."""
    info = ckpt.info(name)
    part = spec.tensor(info.role or "", info.n_rows, info.row_length)
    for start, rows in ckpt.iter_rows(name):
        part.add(start, rows)
    return part


def sketch_tensor(ckpt: Checkpoint, name: str, residual: np.ndarray, tokens: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One tensor's sketch slices (:func:`read_sketch` without unit-space slices)."""
    return read_sketch(ckpt, name, SketchSpec(residual, tokens)).parts()


class SketchBuilder:
    """Collects one model's sketch, tensor by tensor (:class:`TensorSketch` parts)."""

    def __init__(self, residual: np.ndarray, tokens: np.ndarray) -> None:
        self.residual, self.tokens = residual, tokens
        self._parts: dict[tuple[str, int | None], list[tuple[int, np.ndarray]]] = {}
        self._units: dict[tuple[str, int | None], np.ndarray] = {}

    @staticmethod
    def wants(role: str) -> bool:
        return role in READS_RESIDUAL or role in WRITES_RESIDUAL or role in NORMS

    def add(self, role: str, layer: int | None, parts: list[tuple[int, np.ndarray]]) -> None:
        """The parts of tensor (``role``, ``layer``), as :meth:`TensorSketch.parts` gives them."""
        self._parts[(role, layer)] = list(parts)

    def add_units(self, role: str, layer: int | None, value: np.ndarray | None) -> None:
        """The unit-space slice of tensor (``role``, ``layer``) (:meth:`TensorSketch.unit_part`)."""
        if value is not None:
            self._units[(role, layer)] = value

    def finish(self) -> Sketch:
        sketch = Sketch(self.residual, self.tokens)
        for (role, layer), parts in self._parts.items():
            parts.sort(key=lambda p: p[0])
            if role in NORMS:
                value = np.concatenate([p[1] for p in parts])[self.residual]
            else:
                value = np.concatenate([p[1] for p in parts], axis=0).astype(np.float32)
            sketch.put(role, layer, value)
        for (role, layer), value in self._units.items():
            sketch.units.setdefault(layer, {})[role] = value.reshape(-1) if role in NORMS else value
        self._parts.clear()
        self._units.clear()
        return sketch
