"""safetensors checkpoints: single files, sharded checkpoints and HF model directories.

The header is validated here before any tensor is touched: size cap, strict JSON
(duplicate keys rejected), known dtypes, byte sizes that match shapes, offsets that
are contiguous from 0 and cover the data section exactly (no gaps, no overlap, no
trailing bytes where a polyglot payload could hide). Index files may only name
shards inside the model directory.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from math import prod
from pathlib import Path
from typing import Any

from provenance.errors import LimitExceeded, MalformedCheckpoint, PickleCheckpointRefused, UnsupportedCheckpoint
from provenance.formats.base import Checkpoint, FileSpan, TensorInfo
from provenance.formats.documents import ADAPTER_CONFIG, HF_CONFIG, SAFETENSORS_HEADER, SAFETENSORS_INDEX
from provenance.formats.dtypes import STORAGE_TYPES, element_bytes
from provenance.formats.files import member, member_if_present, open_input, read_exactly
from provenance.formats.packed import PackedTensor, find_packed
from provenance.formats.schema import parse_document, read_document
from provenance.names.arch import ArchRecord, from_hf_config
from provenance.names.canonical import hf_to_canonical, layer_and_role
from provenance.names.qk_permute import splits_into_heads

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap
MAX_SHARDS = 4096
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME, ADAPTER_CONFIG_NAME = "config.json", "adapter_config.json"
MAX_CONFIG_BYTES = 64 * 1024 * 1024
PICKLE_WEIGHT_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def parse_safetensors_header(path: str) -> tuple[dict[str, dict[str, Any]], dict[str, str], int, int]:
    """Validate a safetensors file's header.

    Returns ``(tensors, metadata, data_start, file_size)`` where ``tensors`` maps each
    stored name to ``{"dtype", "shape", "begin", "end"}`` with absolute offsets, in
    file order.
    """
    with open_input(path, "header") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = read_exactly(handle, 8)
        if len(prefix) < 8:
            raise MalformedCheckpoint(path, f"truncated: {len(prefix)} bytes, the header length needs 8", field="header length", offset=0)
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise LimitExceeded(path, f"header length {header_len} exceeds the cap of {MAX_HEADER_BYTES}", field="header length", offset=0)
        if header_len > size - 8:
            raise MalformedCheckpoint(
                path,
                f"header length {header_len} runs past the end of the file ({size} bytes)",
                field="header length",
                offset=0,
            )
        header_bytes = read_exactly(handle, header_len)
    if len(header_bytes) != header_len:
        raise MalformedCheckpoint(path, "file shrank while reading the header", field="header", offset=8)
    header = parse_document(header_bytes, SAFETENSORS_HEADER, path, "header", base_offset=8)
    metadata = header.pop("__metadata__", None) or {}

    data_start = 8 + header_len
    data_len = size - data_start
    entries: list[tuple[int, int, str, dict[str, Any]]] = []
    for name, spec in header.items():
        entries.append(_validate_entry(path, name, spec) + (name, spec))
    entries.sort(key=lambda item: (item[0], item[1]))
    expected = 0
    tensors: dict[str, dict[str, Any]] = {}
    for begin, end, name, spec in entries:
        if begin != expected:
            problem = (
                "overlaps the previous tensor" if begin < expected else f"leaves a gap of {begin - expected} bytes"
            )
            raise MalformedCheckpoint(
                path, f"tensor {name!r} at data offset {begin} {problem}", field=f"{name}.data_offsets", offset=8
            )
        expected = end
        tensors[name] = {
            "dtype": spec["dtype"],
            "shape": tuple(spec["shape"]),
            "begin": data_start + begin,
            "end": data_start + end,
        }
    if expected != data_len:
        problem = (
            "trailing bytes after the last tensor"
            if expected < data_len
            else "tensor data runs past the end of the file"
        )
        raise MalformedCheckpoint(
            path,
            f"{problem}: tensors cover {expected} bytes, the data section holds {data_len}",
            field="data_offsets",
            offset=data_start + min(expected, data_len),
        )
    return tensors, metadata, data_start, size


def _validate_entry(path: str, name: str, spec: dict[str, Any]) -> tuple[int, int]:
    """What the schema cannot say about one entry (its types are already checked): a known
    dtype, and a byte span that is the shape's size."""
    dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in STORAGE_TYPES:
        raise UnsupportedCheckpoint(
            path, f"tensor {name!r} has unknown dtype {dtype!r}", field=f"{name}.dtype", offset=8
        )
    n_bytes = prod(shape) * element_bytes(dtype)
    if n_bytes.denominator != 1 or end - begin != n_bytes:
        raise MalformedCheckpoint(
            path,
            f"tensor {name!r} spans {end - begin} bytes but {dtype}{shape} needs {float(n_bytes):.0f}",
            field=f"{name}.data_offsets",
            offset=8,
        )
    return begin, end


class SafetensorsCheckpoint(Checkpoint):
    """One or more safetensors files, optionally with an HF ``config.json``."""

    format = "safetensors"

    def __init__(
        self,
        path: str | Path,
        shard_paths: list[str] | None = None,
        weight_map: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(path)
        self.config: dict[str, Any] = dict(config or {})
        self.file_metadata: dict[str, dict[str, str]] = {}
        arch = from_hf_config(self.config) if self.config else ArchRecord()
        self._arch = arch
        shard_paths = shard_paths or [str(path)]
        headers = []
        for shard in shard_paths:
            tensors, metadata, data_start, size = parse_safetensors_header(shard)
            self.file_metadata[shard] = metadata
            self.files.append(FileSpan(shard, size, data_start, size))
            headers.append((shard, tensors))
        n_tensors = sum(len(tensors) for _, tensors in headers)
        if arch.n_layer is not None and arch.n_layer > n_tensors:
            raise MalformedCheckpoint(self.path, f"config.json claims {arch.n_layer} layers but the weights hold "
                                      f"{n_tensors} tensors", field="config.json: num_hidden_layers")
        entries: dict[str, tuple[str, dict[str, Any]]] = {}
        for shard, tensors in headers:
            for stored_name, spec in tensors.items():
                if weight_map is not None:
                    listed = weight_map.get(stored_name)
                    if listed is None:
                        raise MalformedCheckpoint(
                            shard, f"tensor {stored_name!r} is not listed in {INDEX_NAME}", field="weight_map"
                        )
                    if os.path.basename(shard) != listed:
                        raise MalformedCheckpoint(
                            shard, f"tensor {stored_name!r} is listed in shard {listed!r}", field="weight_map"
                        )
                entries[stored_name] = (shard, spec)
        self._add_all(entries, shard_paths[0])
        if weight_map is not None:
            missing = [n for n in weight_map if n not in entries]
            if missing:
                raise MalformedCheckpoint(
                    str(path),
                    f"{len(missing)} tensors listed in the index are in no shard, e.g. {missing[0]!r}",
                    field="weight_map",
                )
        self.metadata = {"__metadata__": self.file_metadata.get(shard_paths[0], {}), "config": self.config}

    def _add_all(self, entries: dict[str, tuple[str, dict[str, Any]]], first_shard: str) -> None:
        """Add every stored tensor; the parts of each quantized weight become one logical
        tensor with its true shape (:mod:`provenance.formats.packed`)."""
        config_path = os.path.join(os.path.dirname(os.path.abspath(first_shard)), "config.json")
        packed = find_packed(self, entries, self.config, config_path, self.file_metadata.get(first_shard, {}))
        consumed = {part.name for t in packed.values() for part in t.parts.values()}
        for stored_name, (shard, spec) in entries.items():
            if stored_name not in consumed:
                self._add(shard, stored_name, spec)
        for module, tensor in packed.items():
            first = next(iter(tensor.parts.values()))
            spec = {"dtype": tensor.dtype_label, "shape": list(tensor.shape), "begin": first.offset,
                    "end": first.offset + tensor.n_bytes}
            self._add(first.file, f"{module}.weight", spec, packing=tensor)

    def _add(self, shard: str, stored_name: str, spec: Mapping[str, Any], packing: PackedTensor | None = None) -> None:
        arch = self._arch
        canonical = hf_to_canonical(stored_name, arch.arch, arch.n_layer) or stored_name
        if canonical in self.tensors:
            other = self.tensors[canonical]
            raise MalformedCheckpoint(
                shard,
                f"tensor {stored_name!r} duplicates {other.stored_name!r} in {os.path.basename(other.file)}",
                field=stored_name,
            )
        layer, role = layer_and_role(canonical)
        shape = spec["shape"]
        dtype = spec["dtype"]
        qk_heads = None
        # An empty tensor has no rows to reorder (and zero rows would make zero-row heads).
        if arch.qk_permuted_in_gguf and len(shape) == 2 and role in ("attn_q", "attn_k") and prod(shape):
            qk_heads = arch.n_head if role == "attn_q" else arch.n_head_kv
            if not splits_into_heads(shape[0], qk_heads):
                raise MalformedCheckpoint(
                    shard, f"{stored_name!r} rows {shape[0]} do not split into {qk_heads} heads", field=stored_name
                )
        row_length = shape[-1] if shape else 1
        # a packed weight has no byte rows: it is read through its parts (TensorInfo.packing)
        block_size, block_bytes = (1, 4) if packing is not None else STORAGE_TYPES[dtype].block
        if row_length % block_size:
            raise UnsupportedCheckpoint(
                shard, f"{dtype} rows of {row_length} elements are not whole bytes", field=stored_name
            )
        self.tensors[canonical] = TensorInfo(
            name=canonical,
            stored_name=stored_name,
            shape=tuple(shape),
            dtype=dtype,
            file=shard,
            offset=spec["begin"],
            n_bytes=spec["end"] - spec["begin"],
            block_size=block_size,
            block_bytes=block_bytes,
            layer=layer,
            role=role,
            qk_heads=qk_heads,
            packing=packing,
        )

    @property
    def architecture(self) -> ArchRecord:
        return self._arch

    @property
    def metadata_claims(self) -> Mapping[str, Any]:
        claims: dict[str, Any] = {}
        for key in ("_name_or_path", "base_model", "model_type", "architectures", "transformers_version"):
            if key in self.config:
                claims[f"config.{key}"] = self.config[key]
        for key, value in self.metadata.get("__metadata__", {}).items():
            claims[f"safetensors.{key}"] = value
        return {**claims, **self.beside_claims()}


def read_config(directory: str) -> dict[str, Any]:
    """The validated ``config.json`` of a model folder, ``{}`` when it has none."""
    path = member_if_present(directory, CONFIG_NAME, CONFIG_NAME)
    return read_document(path, HF_CONFIG, CONFIG_NAME, MAX_CONFIG_BYTES) if path else {}


def open_index(index_path: str, config: Mapping[str, Any] | None = None) -> SafetensorsCheckpoint:
    """A sharded checkpoint through its ``model.safetensors.index.json``."""
    index = read_document(index_path, SAFETENSORS_INDEX, "index", MAX_CONFIG_BYTES)
    weight_map: dict[str, str] = index["weight_map"]
    if not weight_map:
        raise MalformedCheckpoint(index_path, "the index's weight_map is empty", field="weight_map")
    directory = os.path.dirname(os.path.abspath(index_path))
    shard_names = sorted(set(weight_map.values()))
    if len(shard_names) > MAX_SHARDS:
        raise LimitExceeded(index_path, f"{len(shard_names)} shards exceed the cap of {MAX_SHARDS}", field="weight_map")
    shard_paths = [member(directory, name, index_path, "weight_map") for name in shard_names]
    by_name = dict(zip(shard_names, shard_paths, strict=True))
    checkpoint = SafetensorsCheckpoint(
        directory,
        shard_paths,
        {tensor: os.path.basename(by_name[shard]) for tensor, shard in weight_map.items()},
        read_config(directory) if config is None else config,
    )
    checkpoint.format = "safetensors-sharded"
    return checkpoint


def open_directory(directory: str) -> SafetensorsCheckpoint:
    """An HF model directory: config.json plus model.safetensors or a sharded index (an
    adapter folder: ``adapter_config.json`` and ``adapter_model.safetensors``)."""
    config = read_config(directory)
    adapter_path = member_if_present(directory, ADAPTER_CONFIG_NAME, ADAPTER_CONFIG_NAME)
    adapter = read_document(adapter_path, ADAPTER_CONFIG, ADAPTER_CONFIG_NAME, MAX_CONFIG_BYTES) if adapter_path else None
    index_path = member_if_present(directory, INDEX_NAME, INDEX_NAME)
    if index_path is not None:
        checkpoint = open_index(index_path, config)
    else:
        names = os.listdir(directory)
        candidates = sorted(n for n in names if n.endswith(".safetensors"))
        if len(candidates) == 1:
            weights = member(directory, candidates[0], directory, "directory")
            checkpoint = SafetensorsCheckpoint(weights, config=config)
        elif candidates:
            raise MalformedCheckpoint(
                directory, f"{len(candidates)} .safetensors files but no {INDEX_NAME}", field="directory"
            )
        else:
            pickles = [n for n in names if n in PICKLE_WEIGHT_NAMES or n.endswith((".bin", ".pt", ".pth"))]
            if pickles:
                raise PickleCheckpointRefused(
                    os.path.join(directory, sorted(pickles)[0]),
                    "pickle checkpoints are never loaded (they can run code); convert to safetensors first",
                )
            raise UnsupportedCheckpoint(directory, "no safetensors weights in this directory", field="directory")
    if adapter is not None:
        checkpoint.metadata["adapter_config"] = adapter
    checkpoint.path = directory
    checkpoint.format = "hf-directory"
    return checkpoint
