"""A checkpoint seen through a layer map and a shared vocabulary, without copying a byte.

When the candidate's layers are not the reference's layer for layer (depth upscaling,
removed or reordered layers), or its vocabulary is longer or shorter, pairing by name
would compare the wrong tensors or none. :class:`CheckpointView` presents a checkpoint
under another tensor table: reference layer ``i`` under the name of the candidate layer
``j`` that maps to it (``blk.i.* -> blk.j.*``, one reference layer under several names
for an upscaled candidate), and token-indexed tensors cut to the rows both vocabularies
share (a row prefix: token ids ``0 .. n-1``). Reads go through the underlying checkpoint's
own row readers (same file, offset and codec), so the streamed pass reads each tensor as it
would have, and the readers' validation stands.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from provenance.formats.base import Checkpoint
from provenance.formats.rows import RowReader

#: roles whose rows are token ids
TOKEN_ROWS = ("token_embd", "output")


def _layer_name(name: str, old: int, new: int) -> str:
    prefix = f"blk.{old}."
    return f"blk.{new}." + name[len(prefix):] if name.startswith(prefix) else name


class CheckpointView(Checkpoint):
    """``base`` under the table ``names`` (view name -> base name), token-indexed tensors
    cut to their first ``token_rows`` rows."""

    def __init__(self, base: Checkpoint, names: Mapping[str, str], token_rows: int | None = None,
                 n_layer: int | None = None) -> None:
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
        for view_name, base_name in names.items():
            info = base.info(base_name)
            layer = _view_layer(view_name, info.layer)
            new = replace(info, name=view_name, layer=layer)
            if token_rows is not None and info.role in TOKEN_ROWS and len(info.shape) == 2 and info.shape[0] > token_rows:
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
        stay within the view's rows: a vocabulary cut is a prefix)."""
        return self.base.row_reader(self._source[name], max_rows)


def _view_layer(name: str, default: int | None) -> int | None:
    if name.startswith("blk."):
        head = name.split(".", 2)[1]
        if head.isdigit():
            return int(head)
    return default


def layer_view(base: Checkpoint, mapping: Mapping[int, int], token_rows: int | None = None,
               n_layer: int | None = None) -> CheckpointView:
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
    return CheckpointView(base, names, token_rows, n_layer)


def vocabulary_view(base: Checkpoint, token_rows: int) -> CheckpointView:
    """``base`` with its token-indexed tensors cut to the first ``token_rows`` rows."""
    return CheckpointView(base, {name: name for name in base.tensors}, token_rows)
