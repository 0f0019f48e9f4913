"""GGUF checkpoints (single files and llama.cpp split files) behind the Checkpoint interface."""
from __future__ import annotations

import mmap
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provenance.codecs.types import type_info
from provenance.errors import MalformedCheckpoint
from provenance.formats.base import Checkpoint, FileSpan, TensorInfo
from provenance.formats.documents import GGUF_ARCHITECTURE
from provenance.formats.files import member, open_input, present
from provenance.formats.gguf_header import GGUFArray, GGUFHeader, GGUFKeyValue, ValueType, parse_header
from provenance.formats.schema import validate
from provenance.names.arch import ArchRecord, from_gguf_metadata
from provenance.names.canonical import layer_and_role

_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_SPLIT_NO, _SPLIT_COUNT, _SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
MAX_SPLITS = 1024


def _map_file(path: str) -> tuple[mmap.mmap | bytes, int]:
    """Map a regular file read-only (empty files cannot be mapped: return empty bytes)."""
    with open_input(path, "file") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return b"", 0
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), size


def validated_architecture(header: GGUFHeader, path: str) -> ArchRecord:
    """The architecture record of a GGUF header, its ``{arch}.*`` keys checked first against
    :data:`provenance.formats.documents.GGUF_ARCHITECTURE` (a NaN layer count or a string
    head count is an error naming the key, not a crash in an analysis)."""
    metadata = header.metadata
    arch = metadata.get("general.architecture")
    if isinstance(arch, str):
        for key, spec in GGUF_ARCHITECTURE.fields.items():
            full = f"{arch}.{key}"
            value = metadata.get(full)
            if isinstance(value, GGUFArray) and value.element_type != ValueType.STRING:
                value = value.head(1)[0] if len(value) else None  # per-layer values: the record keeps the first
            if value is not None:
                validate(value, spec, path, full, base_offset=header.key_offsets[full])
    tokens = metadata.get("tokenizer.ggml.tokens")
    return from_gguf_metadata(metadata, len(tokens) if isinstance(tokens, GGUFArray) else None)


class GGUFCheckpoint(Checkpoint):
    """A GGUF model. Open a split model through any of its ``-0000K-of-0000N.gguf`` files."""

    format = "gguf"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._maps: list[Any] = []
        self._headers: list[GGUFHeader] = []
        paths = self._split_paths(str(path))
        for part in paths:
            buffer, size = _map_file(part)
            self._maps.append(buffer)
            header = parse_header(buffer, part, size)
            self._headers.append(header)
            self.files.append(FileSpan(part, size, header.data_start, header.data_end))
        if len(paths) > 1:
            self.format = "gguf-split"
            self._check_splits(paths)
        self.metadata = dict(self._headers[0].metadata)
        self.version = self._headers[0].version
        self._arch = validated_architecture(self._headers[0], paths[0])
        self._build_table()

    # ----- splits ------------------------------------------------------------------
    def _split_paths(self, path: str) -> list[str]:
        match = _SPLIT_NAME.match(os.path.basename(path))
        if not match:
            return [path]
        count = int(match.group("count"))
        if not 1 <= count <= MAX_SPLITS:
            raise MalformedCheckpoint(path, f"split count {count} in the file name is out of range", field="file name")
        directory, stem = os.path.dirname(os.path.abspath(path)), match.group("stem")
        paths = []
        for i in range(1, count + 1):
            name = f"{stem}-{i:05d}-of-{count:05d}.gguf"
            if not present(os.path.join(directory, name)):
                raise MalformedCheckpoint(path, f"split file {name} is missing", field="split.count")
            # Every part, the one named included, must resolve inside the set's directory.
            paths.append(member(directory, name, path, "split"))
        return paths

    def _check_splits(self, paths: list[str]) -> None:
        total = None
        for index, (part, header) in enumerate(zip(paths, self._headers, strict=True)):
            split_no, split_count = header.metadata.get(_SPLIT_NO), header.metadata.get(_SPLIT_COUNT)
            if split_no != index or split_count != len(paths):
                raise MalformedCheckpoint(
                    part, f"split.no={split_no!r} split.count={split_count!r}, expected {index} and {len(paths)}",
                    field=_SPLIT_NO,
                )
            if index == 0:
                total = header.metadata.get(_SPLIT_TENSORS)
        found = sum(len(h.tensors) for h in self._headers)
        if total != found:
            raise MalformedCheckpoint(
                paths[0], f"split.tensors.count is {total!r} but the splits hold {found} tensors", field=_SPLIT_TENSORS
            )

    # ----- table -------------------------------------------------------------------
    def _build_table(self) -> None:
        seen_in: dict[str, str] = {}
        for span, header in zip(self.files, self._headers, strict=True):
            for entry in header.tensors:
                if entry.name in seen_in:
                    raise MalformedCheckpoint(
                        span.path, f"tensor {entry.name!r} also appears in {os.path.basename(seen_in[entry.name])}",
                        field=f"tensor {entry.name}", offset=entry.entry_offset,
                    )
                seen_in[entry.name] = span.path
                geometry = type_info(entry.ggml_type)
                layer, role = layer_and_role(entry.name)
                self.tensors[entry.name] = TensorInfo(
                    name=entry.name,
                    stored_name=entry.name,
                    shape=tuple(reversed(entry.ne)),
                    dtype=entry.ggml_type.name,
                    file=span.path,
                    offset=header.data_start + entry.relative_offset,
                    n_bytes=entry.n_bytes,
                    block_size=geometry.block_size,
                    block_bytes=geometry.type_size,
                    ggml_type=int(entry.ggml_type),
                    layer=layer,
                    role=role,
                )

    # ----- header facts --------------------------------------------------------------
    @property
    def alignment(self) -> int:
        """Data alignment of the tensor section (``general.alignment``, default 32)."""
        return self._headers[0].alignment

    @property
    def key_values(self) -> list[GGUFKeyValue]:
        """Every metadata key/value in file order with its stored type (a split model's
        first file, which holds the model's metadata)."""
        header = self._headers[0]
        return [GGUFKeyValue(key, value, header.metadata_types[key]) for key, value in header.metadata.items()]

    @property
    def architecture_name(self) -> str | None:
        """``general.architecture`` when it is a string."""
        name = self.metadata.get("general.architecture")
        return name if isinstance(name, str) else None

    @property
    def architecture(self) -> ArchRecord:
        return self._arch

    @property
    def metadata_claims(self) -> Mapping[str, Any]:
        keys = [k for k in self.metadata if k.startswith("general.") and k != "general.alignment"]
        return {**{k: self.metadata[k] for k in keys if not isinstance(self.metadata[k], GGUFArray)}, **self.beside_claims()}

    def close(self) -> None:
        super().close()
        for buffer in self._maps:
            if isinstance(buffer, mmap.mmap):
                try:
                    buffer.close()
                except BufferError:  # a lazy array view is still alive; the GC will unmap it
                    pass
        self._maps.clear()
