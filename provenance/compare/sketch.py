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


class SketchBuilder:
    """Collects a sketch from row chunks as they stream past (no extra reads)."""

    def __init__(self, residual: np.ndarray, tokens: np.ndarray) -> None:
        self.sketch = Sketch(residual, tokens)
        self._parts: dict[tuple[str, int | None], list[tuple[int, np.ndarray]]] = {}

    @staticmethod
    def wants(role: str) -> bool:
        return role in READS_RESIDUAL or role in WRITES_RESIDUAL or role in NORMS

    def add_chunk(self, role: str, layer: int | None, start: int, rows: np.ndarray) -> None:
        """``rows``: canonical rows ``[start, start + len)`` (reference frame) of a tensor."""
        key = (role, layer)
        res = self.sketch.residual
        if role in ("token_embd", "output"):
            tok = self.sketch.tokens
            sel = tok[(tok >= start) & (tok < start + len(rows))] - start
            part = rows[sel][:, res]
        elif role in READS_RESIDUAL:
            part = rows[:, res]
        elif role in WRITES_RESIDUAL:
            sel = res[(res >= start) & (res < start + len(rows))] - start
            part = rows[sel]
        elif role in NORMS:
            part = rows.reshape(-1)
        else:
            return
        # float32: the recovered scales come from sketch norms and must undo a rescaling
        # to ~1e-7 (float16 left 2e-5 and turned "same weights" into "fine-tune")
        self._parts.setdefault(key, []).append((start, np.array(part, dtype=np.float32)))

    def add_vector(self, role: str, layer: int | None, values: np.ndarray) -> None:
        self._parts[(role, layer)] = [(0, np.asarray(values, dtype=np.float32).reshape(-1))]

    def finish(self) -> Sketch:
        for (role, layer), parts in self._parts.items():
            parts.sort(key=lambda p: p[0])
            if role in NORMS:
                value = np.concatenate([p[1] for p in parts])[self.sketch.residual]
            else:
                value = np.concatenate([p[1] for p in parts], axis=0).astype(np.float32)
            self.sketch.put(role, layer, value)
        self._parts.clear()
        return self.sketch
