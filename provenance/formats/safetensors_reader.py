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
from provenance.formats.dtypes import STORAGE_TYPES, element_bytes
from provenance.formats.jsonsafe import loads_strict, read_json_file
from provenance.formats.packed import PackedTensor, find_packed
from provenance.names.arch import ArchRecord, from_hf_config
from provenance.names.canonical import hf_to_canonical, layer_and_role

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap
MAX_SHARDS = 4096
INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHT_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def parse_safetensors_header(path: str) -> tuple[dict[str, dict[str, Any]], dict[str, str], int, int]:
    """Validate a safetensors file's header.

    Returns ``(tensors, metadata, data_start, file_size)`` where ``tensors`` maps each
    stored name to ``{"dtype", "shape", "begin", "end"}`` with absolute offsets, in
    file order.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
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
        header_bytes = handle.read(header_len)
    if len(header_bytes) != header_len:
        raise MalformedCheckpoint(path, "file shrank while reading the header", field="header", offset=8)
    header = loads_strict(header_bytes, path, "header", offset=8)
    if not isinstance(header, dict):
        raise MalformedCheckpoint(path, "header is not a JSON object", field="header", offset=8)

    metadata = header.pop("__metadata__", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise MalformedCheckpoint(path, "__metadata__ must map strings to strings", field="__metadata__", offset=8)

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


def _validate_entry(path: str, name: str, spec: Any) -> tuple[int, int]:
    field = f"{name}"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise MalformedCheckpoint(
            path, f"tensor {name!r} needs exactly dtype, shape and data_offsets", field=field, offset=8
        )
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in STORAGE_TYPES:
        raise UnsupportedCheckpoint(
            path, f"tensor {name!r} has unknown dtype {dtype!r}", field=f"{name}.dtype", offset=8
        )
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 1 << 62 for d in shape):
        raise MalformedCheckpoint(
            path, f"tensor {name!r} has an invalid shape {shape!r}", field=f"{name}.shape", offset=8
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise MalformedCheckpoint(
            path, f"tensor {name!r} has invalid data_offsets", field=f"{name}.data_offsets", offset=8
        )
    begin, end = offsets
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
        entries: dict[str, tuple[str, dict[str, Any]]] = {}
        for shard in shard_paths:
            tensors, metadata, data_start, size = parse_safetensors_header(shard)
            self.file_metadata[shard] = metadata
            self.files.append(FileSpan(shard, size, data_start, size))
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
        if arch.qk_permuted_in_gguf and len(shape) == 2 and role in ("attn_q", "attn_k"):
            qk_heads = arch.n_head if role == "attn_q" else arch.n_head_kv
            if not qk_heads or shape[0] % (2 * qk_heads):
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
        return claims


def _inside(directory: str, name: Any, index_path: str) -> str:
    """Resolve an index.json shard name, refusing anything that escapes ``directory``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise MalformedCheckpoint(index_path, f"shard name {name!r} is not a file name", field="weight_map")
    if os.path.isabs(name) or os.path.normpath(name).startswith("..") or "/" in name.replace("\\", "/"):
        raise MalformedCheckpoint(index_path, f"shard path {name!r} escapes the model directory", field="weight_map")
    base = os.path.realpath(directory)
    full = os.path.realpath(os.path.join(directory, name))
    if os.path.dirname(full) != base:
        raise MalformedCheckpoint(
            index_path, f"shard path {name!r} resolves outside the model directory", field="weight_map"
        )
    return full


def open_index(index_path: str, config: Mapping[str, Any] | None = None) -> SafetensorsCheckpoint:
    """A sharded checkpoint through its ``model.safetensors.index.json``."""
    index = read_json_file(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise MalformedCheckpoint(index_path, "index has no weight_map object", field="weight_map")
    directory = os.path.dirname(os.path.abspath(index_path))
    shard_names = sorted(set(weight_map.values()), key=str)
    if len(shard_names) > MAX_SHARDS:
        raise LimitExceeded(index_path, f"{len(shard_names)} shards exceed the cap of {MAX_SHARDS}", field="weight_map")
    shard_paths = []
    for name in shard_names:
        full = _inside(directory, name, index_path)
        if not os.path.isfile(full):
            raise MalformedCheckpoint(index_path, f"shard {name!r} is missing", field="weight_map")
        shard_paths.append(full)
    if config is None:
        config_path = os.path.join(directory, "config.json")
        config = read_json_file(config_path, "config") if os.path.isfile(config_path) else {}
    checkpoint = SafetensorsCheckpoint(
        directory,
        shard_paths,
        {k: os.path.basename(_inside(directory, v, index_path)) for k, v in weight_map.items()},
        config,
    )
    checkpoint.format = "safetensors-sharded"
    return checkpoint


def open_directory(directory: str) -> SafetensorsCheckpoint:
    """An HF model directory: config.json plus model.safetensors or a sharded index."""
    config_path = os.path.join(directory, "config.json")
    config: dict[str, Any] = {}
    if os.path.isfile(config_path):
        loaded = read_json_file(config_path, "config")
        if not isinstance(loaded, dict):
            raise MalformedCheckpoint(config_path, "config.json is not a JSON object", field="config", offset=0)
        config = loaded
    index_path = os.path.join(directory, INDEX_NAME)
    if os.path.isfile(index_path):
        checkpoint = open_index(index_path, config)
    else:
        candidates = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
        if len(candidates) == 1:
            checkpoint = SafetensorsCheckpoint(os.path.join(directory, candidates[0]), config=config)
        elif candidates:
            raise MalformedCheckpoint(
                directory, f"{len(candidates)} .safetensors files but no {INDEX_NAME}", field="directory"
            )
        else:
            pickles = [
                n for n in os.listdir(directory) if n in PICKLE_WEIGHT_NAMES or n.endswith((".bin", ".pt", ".pth"))
            ]
            if pickles:
                raise PickleCheckpointRefused(
                    os.path.join(directory, sorted(pickles)[0]),
                    "pickle checkpoints are never loaded (they can run code); convert to safetensors first",
                )
            raise UnsupportedCheckpoint(directory, "no safetensors weights in this directory", field="directory")
    checkpoint.path = directory
    checkpoint.format = "hf-directory"
    return checkpoint
