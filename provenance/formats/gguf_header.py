"""A bounded parser for GGUF v2/v3 headers (key/values and tensor infos).

The header is untrusted: every count and length is checked against the bytes that
remain and against hard caps before anything is sized by it; nested arrays are
refused (llama.cpp refuses them too); tensor dims, types, element counts, alignment
and offsets are validated so that every tensor's bytes are in bounds, ordered and
non-overlapping. Arrays are parsed lazily: only their extent is recorded at open
time, so a 150k-token vocabulary costs one pass over string lengths, not 150k
Python strings.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from math import prod
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from provenance.codecs.types import type_info
from provenance.errors import LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats import gguf_strings
from provenance.formats.cursor import BoundedCursor

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Hard caps, far above anything real, far below anything that could exhaust memory.
MAX_KEY_BYTES = 64 * 1024
MAX_STRING_BYTES = 64 * 1024 * 1024
_U64 = struct.Struct("<Q")
MAX_KV_COUNT = 1 << 20
MAX_TENSOR_COUNT = 1 << 20
MAX_ARRAY_LENGTH = 1 << 28
MAX_NAME_BYTES = 64 * 1024
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 20


class ValueType(IntEnum):
    """GGUF metadata value types (same numbering as ``gguf.GGUFValueType``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMAT = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "B",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}
_SCALAR_NUMPY = {
    ValueType.UINT8: "<u1",
    ValueType.INT8: "<i1",
    ValueType.UINT16: "<u2",
    ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4",
    ValueType.INT32: "<i4",
    ValueType.FLOAT32: "<f4",
    ValueType.BOOL: "<u1",
    ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8",
    ValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array whose extent is validated but whose items are read on demand."""

    buffer: Any = None  # the header buffer (bytes or mmap); excluded from equality below
    element_type: ValueType = ValueType.UINT8
    count: int = 0
    offset: int = 0
    """Offset of the first element in the file."""
    n_bytes: int = 0

    def __len__(self) -> int:
        return self.count

    def raw_bytes(self) -> bytes:
        return bytes(self.buffer[self.offset : self.offset + self.n_bytes])

    def sha256(self) -> str:
        """Hash of the stored element bytes (for strings: u64 length + UTF-8 bytes each)."""
        return hashlib.sha256(self.buffer[self.offset : self.offset + self.n_bytes]).hexdigest()

    def iter_bytes(self) -> Iterator[bytes]:
        """String arrays: each element's raw bytes, in order."""
        if self.element_type != ValueType.STRING:
            raise TypeError("iter_bytes() is for string arrays")
        yield from self.bytes_list()

    def bytes_list(self) -> list[bytes]:
        """String arrays: every element's raw bytes, in order (one tight loop: 780k strings in ~0.2 s)."""
        if self.element_type != ValueType.STRING:
            raise TypeError("bytes_list() is for string arrays")
        out: list[bytes] = []
        append, unpack, view, pos = out.append, _U64.unpack_from, self.buffer, self.offset
        for _ in range(self.count):
            (length,) = unpack(view, pos)
            append(bytes(view[pos + 8 : pos + 8 + length]))
            pos += 8 + length
        return out

    def to_numpy(self) -> np.ndarray:
        """Numeric arrays as a read-only numpy array (a copy; bounded by the file)."""
        if self.element_type == ValueType.STRING:
            raise TypeError("to_numpy() is for numeric arrays")
        dtype = np.dtype(_SCALAR_NUMPY[self.element_type])
        arr = np.frombuffer(self.buffer, dtype=dtype, count=self.count, offset=self.offset).copy()
        return arr.astype(bool) if self.element_type == ValueType.BOOL else arr

    def to_list(self) -> list[Any]:
        if self.element_type == ValueType.STRING:
            return [b.decode("utf-8", errors="replace") for b in self.iter_bytes()]
        return self.to_numpy().tolist()

    def head(self, n: int = 5) -> list[Any]:
        """The first ``n`` items (cheap preview for reports)."""
        if self.element_type == ValueType.STRING:
            out, pos = [], self.offset
            for _ in range(min(n, self.count)):  # only the first n: a vocabulary has 262k
                (length,) = _U64.unpack_from(self.buffer, pos)
                out.append(bytes(self.buffer[pos + 8 : pos + 8 + length]).decode("utf-8", errors="replace"))
                pos += 8 + length
            return out
        dtype = np.dtype(_SCALAR_NUMPY[self.element_type])
        items = np.frombuffer(self.buffer, dtype=dtype, count=min(n, self.count), offset=self.offset).tolist()
        return [bool(v) for v in items] if self.element_type == ValueType.BOOL else items

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GGUFArray):
            return NotImplemented
        return self.element_type == other.element_type and self.raw_bytes() == other.raw_bytes()

    def __hash__(self) -> int:
        return hash((self.element_type, self.count, self.sha256()))

    def __repr__(self) -> str:
        return f"GGUFArray({self.element_type.name}, count={self.count})"


@dataclass(frozen=True)
class GGUFKeyValue:
    """One metadata key/value with its stored GGUF value type (arrays: lazily read)."""

    key: str
    value: Any
    """``int``, ``float``, ``bool``, ``str``, or a :class:`GGUFArray`."""
    type: ValueType


@dataclass(frozen=True)
class GGUFTensorEntry:
    name: str
    ne: tuple[int, ...]
    """Dimensions fastest-first, as stored (ggml ``ne``)."""
    ggml_type: GGMLQuantizationType
    relative_offset: int
    n_bytes: int
    entry_offset: int
    """Where this tensor's info record starts in the file (for error messages)."""


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    metadata_types: dict[str, ValueType]
    tensors: list[GGUFTensorEntry]
    alignment: int
    data_start: int
    data_end: int
    key_offsets: dict[str, int]
    """Where each metadata key/value record starts in the file (for error messages)."""


def _read_string(cur: BoundedCursor, field: str, cap: int) -> bytes:
    at = cur.pos
    length = cur.u64(field + " length")
    if length > cap:
        raise LimitExceeded(cur.path, f"string length {length} exceeds the cap of {cap}", field=field, offset=at)
    return cur.take(length, field)


def _decode(raw: bytes, cur: BoundedCursor, field: str, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedCheckpoint(
            cur.path, f"invalid UTF-8 at byte {exc.start} of the string", field=field, offset=offset
        ) from None


def _value_type(cur: BoundedCursor, field: str) -> ValueType:
    at = cur.pos
    code = cur.u32(field + " type")
    try:
        return ValueType(code)
    except ValueError:
        raise MalformedCheckpoint(cur.path, f"unknown value type {code}", field=field, offset=at) from None


def _read_value(cur: BoundedCursor, vtype: ValueType, field: str) -> Any:
    at = cur.pos
    if vtype == ValueType.STRING:
        return _decode(_read_string(cur, field, MAX_STRING_BYTES), cur, field, at)
    if vtype == ValueType.ARRAY:
        return _read_array(cur, field)
    value = cur.unpack(_SCALAR_FORMAT[vtype], field)
    if vtype == ValueType.BOOL:
        if value not in (0, 1):
            raise MalformedCheckpoint(cur.path, f"bool value {value} is not 0 or 1", field=field, offset=at)
        return bool(value)
    return value


def _skip_strings(cur: BoundedCursor, field: str, count: int) -> int:
    """Validate ``count`` length-prefixed strings from ``cur.pos``; return the end position.

    The same checks as ``cur.u64`` + ``cur.skip`` per item, made by one tight loop
    (:func:`provenance.formats.gguf_strings.walk`): a 262k-token vocabulary with 515k merges
    is ~780k strings, and the per-item calls (and their field names, built only on failure)
    cost a second.
    """
    pos, index, problem, length = gguf_strings.walk(cur.buffer, cur.pos, cur.end, count, MAX_STRING_BYTES)
    remain = cur.end - pos
    if problem == gguf_strings.TRUNCATED_LENGTH:
        raise MalformedCheckpoint(cur.path, f"truncated: needs 8 bytes, {remain} remain",
                                  field=f"{field}[{index}] length", offset=pos)
    if problem == gguf_strings.OVER_CAP:
        raise LimitExceeded(cur.path, f"string length {length} exceeds the cap", field=f"{field}[{index}]", offset=pos)
    if problem == gguf_strings.TRUNCATED_BYTES:
        raise MalformedCheckpoint(cur.path, f"truncated: needs {length} bytes, {remain - 8} remain",
                                  field=f"{field}[{index}]", offset=pos + 8)
    return pos


def _read_array(cur: BoundedCursor, field: str) -> GGUFArray:
    etype = _value_type(cur, field + " element")
    if etype == ValueType.ARRAY:
        raise UnsupportedCheckpoint(cur.path, "nested arrays are not supported", field=field, offset=cur.pos - 4)
    if etype == ValueType.STRING:
        count = cur.count(field + " count", min_item_bytes=8, cap=MAX_ARRAY_LENGTH)
        start = cur.pos
        cur.pos = _skip_strings(cur, field, count)
        return GGUFArray(cur.buffer, etype, count, start, cur.pos - start)
    size = struct.calcsize("<" + _SCALAR_FORMAT[etype])
    count = cur.count(field + " count", min_item_bytes=size, cap=MAX_ARRAY_LENGTH)
    start = cur.pos
    cur.skip(count * size, field)
    arr = GGUFArray(cur.buffer, etype, count, start, count * size)
    if etype == ValueType.BOOL and count and not np.isin(arr.to_numpy().view(np.uint8), (0, 1)).all():
        raise MalformedCheckpoint(cur.path, "bool array holds values other than 0 and 1", field=field, offset=start)
    return arr


def check_magic(buffer: bytes | memoryview, path: str) -> int:
    """Validate magic and version; return the version."""
    cur = BoundedCursor(buffer, path)
    if cur.take(4, "magic") != GGUF_MAGIC:
        raise MalformedCheckpoint(path, "not a GGUF file (bad magic)", field="magic", offset=0)
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        if swapped in SUPPORTED_VERSIONS:
            raise UnsupportedCheckpoint(path, f"big-endian GGUF v{swapped} is not supported", field="version", offset=4)
        raise UnsupportedCheckpoint(path, f"GGUF version {version} is not supported (2 or 3)", field="version", offset=4)
    return version


def parse_header(buffer: bytes | memoryview, path: str, file_size: int) -> GGUFHeader:
    """Parse and validate a whole GGUF header from ``buffer`` (the file's bytes or an mmap)."""
    version = check_magic(buffer, path)
    cur = BoundedCursor(buffer, path, start=8)
    # A tensor info is at least: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    n_tensors = cur.count("tensor_count", min_item_bytes=0, cap=MAX_TENSOR_COUNT)
    n_kv = cur.count("metadata_kv_count", min_item_bytes=0, cap=MAX_KV_COUNT)
    # Both counts precede the KV section, so check them jointly against what remains.
    if n_kv * 13 + n_tensors * 32 > cur.remaining:
        raise LimitExceeded(
            path, f"{n_kv} key/values and {n_tensors} tensors cannot fit in {file_size} bytes",
            field="metadata_kv_count", offset=16,
        )

    metadata: dict[str, Any] = {}
    types: dict[str, ValueType] = {}
    key_offsets: dict[str, int] = {}
    for i in range(n_kv):
        key_at = cur.pos
        key = _decode(_read_string(cur, f"kv[{i}].key", MAX_KEY_BYTES), cur, f"kv[{i}].key", key_at)
        if key in metadata:
            raise MalformedCheckpoint(path, f"duplicate metadata key {key!r}", field=f"kv[{i}].key", offset=key_at)
        vtype = _value_type(cur, key)
        metadata[key] = _read_value(cur, vtype, key)
        types[key] = vtype
        key_offsets[key] = key_at

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if types["general.alignment"] != ValueType.UINT32 or not (
            0 < alignment <= MAX_ALIGNMENT and alignment & (alignment - 1) == 0
        ):
            raise MalformedCheckpoint(
                path, f"alignment {alignment!r} is not a power of two up to {MAX_ALIGNMENT}",
                field="general.alignment", offset=key_offsets["general.alignment"],
            )

    entries: list[GGUFTensorEntry] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        entries.append(_read_tensor_entry(cur, i, seen))

    # With no tensors the writer adds no padding, so the file may end at the header.
    data_start = _align(cur.pos, alignment) if entries else cur.pos
    expected = 0
    for entry in entries:
        if entry.relative_offset != expected:
            raise MalformedCheckpoint(
                path,
                f"tensor {entry.name!r} has data offset {entry.relative_offset}, expected {expected} "
                "(tensors must be stored in order, aligned and non-overlapping)",
                field=f"tensor {entry.name} offset",
                offset=entry.entry_offset,
            )
        expected = _align(expected + entry.n_bytes, alignment)
    data_end = data_start + (entries[-1].relative_offset + entries[-1].n_bytes if entries else 0)
    if data_end > file_size:
        raise MalformedCheckpoint(
            path, f"tensor data ends at byte {data_end}, past the end of the file ({file_size} bytes)",
            field="tensor data", offset=data_start,
        )
    return GGUFHeader(version, metadata, types, entries, alignment, data_start, data_end, key_offsets)


def _read_tensor_entry(cur: BoundedCursor, index: int, seen: set[str]) -> GGUFTensorEntry:
    path = cur.path
    entry_at = cur.pos
    name = _decode(_read_string(cur, f"tensor[{index}].name", MAX_NAME_BYTES), cur, f"tensor[{index}].name", entry_at)
    if name in seen:
        raise MalformedCheckpoint(path, f"duplicate tensor name {name!r}", field=f"tensor[{index}].name", offset=entry_at)
    seen.add(name)
    field = f"tensor {name}"
    dims_at = cur.pos
    n_dims = cur.u32(field + " n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise MalformedCheckpoint(path, f"{n_dims} dimensions (must be 1..{MAX_DIMS})", field=field + " n_dims", offset=dims_at)
    ne = []
    for d in range(n_dims):
        at = cur.pos
        size = cur.u64(f"{field} ne[{d}]")
        if size == 0 or size >= 1 << 63:
            raise MalformedCheckpoint(path, f"dimension {d} is {size} (must be 1..2^63-1)", field=f"{field} ne[{d}]", offset=at)
        ne.append(size)
    type_at = cur.pos
    code = cur.u32(field + " type")
    try:
        qtype = GGMLQuantizationType(code)
        block_size, block_bytes = type_info(qtype).block_size, type_info(qtype).type_size
    except (ValueError, KeyError):
        raise MalformedCheckpoint(path, f"unknown ggml type {code}", field=field + " type", offset=type_at) from None
    offset = cur.u64(field + " offset")
    n_elements = prod(ne)  # Python ints: no overflow
    if n_elements >= 1 << 63:
        raise LimitExceeded(path, f"element count {n_elements} overflows int64", field=field + " dims", offset=dims_at)
    if ne[0] % block_size:
        raise MalformedCheckpoint(
            path, f"row length {ne[0]} is not a multiple of the {qtype.name} block size {block_size}",
            field=field + " ne[0]", offset=dims_at + 4,
        )
    n_bytes = n_elements // block_size * block_bytes
    return GGUFTensorEntry(name, tuple(ne), qtype, offset, n_bytes, entry_at)


def _align(value: int, alignment: int) -> int:
    return value + (-value % alignment)
