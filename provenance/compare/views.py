"""A checkpoint seen through a layer map and a shared vocabulary, without copying a byte.

When the candidate's layers are not the reference's layer for layer (depth upscaling,
removed or reordered layers), or its vocabulary is longer or shorter, pairing by name
would compare the wrong tensors or none. :class:`CheckpointView` presents a checkpoint
under another tensor table: reference layer ``i`` under the name of the candidate layer
``j`` that maps to it (``blk.i.* -> blk.j.*``, one reference layer under several names
for an upscaled candidate), and token-indexed tensors cut to the rows both vocabularies
share: a row prefix (token ids ``0 .. n-1``), or, when the rows were paired by token string,
the listed rows in the shared order (:class:`_TokenRows`). Reads go through the underlying
checkpoint's own row readers (same file, offset and codec), so the streamed pass reads each
tensor as it would have, and the readers' validation stands.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from provenance.formats.base import Checkpoint, ReadObserver, TensorInfo
from provenance.formats.rows import RowReader

#: roles whose rows are token ids
TOKEN_ROWS = ("token_embd", "output")


def _layer_name(name: str, old: int, new: int) -> str:
    prefix = f"blk.{old}."
    return f"blk.{new}." + name[len(prefix):] if name.startswith(prefix) else name


class _TokenRows(RowReader):
    """Rows ``index[r]`` of a base tensor as row ``r`` (token rows paired by string); every read
    path of :class:`RowReader` (read, read_into, gather) goes through ``_decode``."""

    def __init__(self, view: CheckpointView, name: str, max_rows: int | None, source: RowReader,
                 index: np.ndarray) -> None:
        super().__init__(view, name, max_rows)
        self._source, self._index = source, index

    def _decode(self, start: int, stop: int, target: torch.Tensor) -> torch.Tensor:
        self._source.gather(self._index[start:stop], out=target)
        return target

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Stored bytes of the listed rows (runs of consecutive base rows read at once)."""
        rows = self._index[start:stop]
        out = np.empty((len(rows), self.info.row_bytes), np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        pos = 0
        for run in np.split(rows, breaks) if len(rows) else []:
            out[pos:pos + len(run)] = self._source.raw(int(run[0]), int(run[-1]) + 1)
            pos += len(run)
        return out

    def close(self) -> None:
        self._source.close()
        super().close()


class CheckpointView(Checkpoint):
    """``base`` under the table ``names`` (view name -> base name), token-indexed tensors
    cut to their first ``token_rows`` rows, or to the rows ``token_index`` lists (in its order)."""

    def __init__(self, base: Checkpoint, names: Mapping[str, str], token_rows: int | None = None,
                 n_layer: int | None = None, token_index: np.ndarray | None = None) -> None:
        super().__init__(base.path)
        self.base = base
        self.format = base.format
        self.metadata = base.metadata
        self.files = base.files
        self.warnings = base.warnings
        self.location = base.location
        self.model_card = base.model_card
        self._source: dict[str, str] = {}
        self._n_layer = n_layer
        self._token_index = None if token_index is None else np.asarray(token_index, dtype=np.int64)
        if self._token_index is not None:
            token_rows = len(self._token_index)
        self._indexed: set[str] = set()
        for view_name, base_name in names.items():
            info = base.info(base_name)
            layer = _view_layer(view_name, info.layer)
            new = replace(info, name=view_name, layer=layer)
            if self._token_index is not None and _token_indexed(info):
                new = replace(new, shape=(token_rows, info.shape[1]), n_bytes=token_rows * info.row_bytes)
                self._indexed.add(view_name)
            elif token_rows is not None and _token_indexed(info) and info.shape[0] > token_rows:
                new = replace(new, shape=(token_rows, info.shape[1]), n_bytes=token_rows * info.row_bytes)
            self.tensors[view_name] = new
            self._source[view_name] = base_name

    @property
    def architecture(self) -> Any:
        arch = self.base.architecture
        return replace(arch, n_layer=self._n_layer) if self._n_layer is not None else arch

    @property
    def metadata_claims(self) -> Mapping[str, Any]:
        return self.base.metadata_claims

    def close(self) -> None:  # the base checkpoint owns the files
        super().close()

    def source(self, name: str) -> str:
        """The base checkpoint's name for view tensor ``name``."""
        return self._source[name]

    def row_reader(self, name: str, max_rows: int | None = None) -> RowReader:
        """The base checkpoint's own reader of the tensor behind ``name`` (the view's callers
        stay within the view's rows: a vocabulary cut is a prefix), or one that reads the listed
        token rows."""
        source = self.base.row_reader(self._source[name], max_rows)
        if name in self._indexed:
            assert self._token_index is not None
            return _TokenRows(self, name, max_rows, source, self._token_index)
        return source

    def read_blocks(self, name: str, rows: np.ndarray, first_block: np.ndarray, n_blocks: int,
                    observe: ReadObserver | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if name in self._indexed:
            assert self._token_index is not None
            rows = self._token_index[rows]
        return self.base.read_blocks(self._source[name], rows, first_block, n_blocks, observe)


def _token_indexed(info: TensorInfo) -> bool:
    return info.role in TOKEN_ROWS and len(info.shape) == 2


def _view_layer(name: str, default: int | None) -> int | None:
    if name.startswith("blk."):
        head = name.split(".", 2)[1]
        if head.isdigit():
            return int(head)
    return default


def layer_view(base: Checkpoint, mapping: Mapping[int, int], token_rows: int | None = None,
               n_layer: int | None = None, token_index: np.ndarray | None = None) -> CheckpointView:
    """``base``'s layer ``mapping[j]`` presented as layer ``j`` (layers not in the map are
    left out; global tensors pass through)."""
    names: dict[str, str] = {}
    for name, info in base.tensors.items():
        if info.layer is None:
            names[name] = name
    for new, old in sorted(mapping.items()):
        for name, info in base.tensors.items():
            if info.layer == old:
                names[_layer_name(name, old, new)] = name
    return CheckpointView(base, names, token_rows, n_layer, token_index)


def vocabulary_view(base: Checkpoint, token_rows: int, token_index: np.ndarray | None = None) -> CheckpointView:
    """``base`` with its token-indexed tensors cut to the first ``token_rows`` rows, or to the
    rows ``token_index`` lists, in its order (rows paired by token string)."""
    return CheckpointView(base, {name: name for name in base.tensors}, token_rows, token_index=token_index)
