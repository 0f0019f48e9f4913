"""A residual-rotated candidate carried back into the reference's basis, without a copy.

A rotation of the residual stream combined with permuted MLP units defeats both calibrated
tests (the residual test sees ``Q^T M Q``, the unit-space test ``P K P^T``). But the rotation
is recovered from the shared embedding rows alone (:func:`provenance.compare.structure.
estimate_rotation`), and undoing it leaves a candidate whose circuits the residual test reads
again, unit permutations included (its circuits are invariant to them). :class:`RotatedView`
presents the candidate with every matrix the rotation moves (:mod:`.rotbasis`) carried back:
readers ``W Q^T``, writers ``Q W``, as float32 tensors; the streamed pass, the test and the
alignment then run on it as on any checkpoint (docs/lineage.md, "Rotation and MLP-unit
permutation together").

Reads go through the base's row readers: a reader's rows are rotated chunk by chunk; a
writer's rows mix every stored row, so its tensor is read once whole (float32, bounded by the
largest tensor) when its first rows are asked for.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from provenance.compare.rotbasis import WRITERS, moved_by_rotation
from provenance.compare.views import TOKEN_ROWS, CheckpointView
from provenance.formats.base import Checkpoint, ReadObserver, TensorInfo
from provenance.formats.rows import RowReader


def _plain_f32(info: TensorInfo) -> TensorInfo:
    """The tensor's entry as the float32 values the view serves (no stored bytes behind it)."""
    return replace(info, dtype="F32", block_size=1, block_bytes=4, ggml_type=0, n_bytes=info.n_elements * 4,
                   qk_heads=None, packing=None)


class _RotatedRows(RowReader):
    """Rows of ``W Q^T`` (reader) or ``Q W`` (writer) from the base tensor's own reader."""

    def __init__(self, view: RotatedView, name: str, max_rows: int | None, source: RowReader, writer: bool) -> None:
        super().__init__(view, name, max_rows)
        self._source, self._writer, self._q = source, writer, view.rotation
        self._whole: torch.Tensor | None = None

    def _decode(self, start: int, stop: int, target: torch.Tensor) -> torch.Tensor:
        if self._writer:
            if self._whole is None:
                self._whole = self._source.read_all()
            torch.matmul(self._q[start:stop], self._whole, out=target)
        else:
            torch.matmul(self._source.read(start, stop), self._q.T, out=target)
        return target

    def raw(self, start: int, stop: int) -> np.ndarray:
        """The served float32 values' bytes (the view has no stored bytes of its own)."""
        return self.read(start, stop).numpy().copy().view(np.uint8)

    def close(self) -> None:
        self._source.close()
        self._whole = None
        super().close()


class RotatedView(CheckpointView):
    """``base`` with the residual rotation ``rotation`` (``E_base ~ E_ref rotation``) undone on
    every matrix it moves; other tensors (norm gains, ...) pass through. ``layers_only``: the
    token-indexed tensors (embedding, output head) left out, as the de-rotated test needs: the
    rotation was fitted on the embedding rows, so they match by construction."""

    def __init__(self, base: Checkpoint, rotation: np.ndarray, layers_only: bool = False) -> None:
        super().__init__(base, {name: name for name, info in base.tensors.items()
                                if not (layers_only and info.role in TOKEN_ROWS)})
        d = rotation.shape[0]
        self.rotation = torch.from_numpy(np.ascontiguousarray(rotation, dtype=np.float32))
        self._writers: dict[str, bool] = {}
        for name, info in self.tensors.items():
            if not moved_by_rotation(info.role) or len(info.shape) != 2:
                continue
            writer = info.role in WRITERS
            if (info.shape[0] if writer else info.shape[1]) != d:
                continue
            self._writers[name] = writer
            self.tensors[name] = _plain_f32(self.tensors[name])

    def row_reader(self, name: str, max_rows: int | None = None) -> RowReader:
        if name not in self._writers:
            return super().row_reader(name, max_rows)
        return _RotatedRows(self, name, max_rows, self.base.row_reader(name, max_rows), self._writers[name])

    def raw_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        if name not in self._writers:
            return super().raw_rows(name, start, stop)
        with self.row_reader(name) as reader:
            return reader.raw(start, stop if stop is not None else self.info(name).n_rows)

    def read_blocks(self, name: str, rows: np.ndarray, first_block: np.ndarray, n_blocks: int,
                    observe: ReadObserver | None = None) -> np.ndarray:
        if name not in self._writers:
            return super().read_blocks(name, rows, first_block, n_blocks, observe)
        rows = np.asarray(rows, dtype=np.int64)
        with self.row_reader(name) as reader:
            whole = reader.gather(rows).numpy()
        index = np.asarray(first_block, dtype=np.int64)[:, None] + np.arange(n_blocks)[None, :]
        return np.take_along_axis(whole, index, axis=1)
