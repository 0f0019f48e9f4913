"""The one interface every checkpoint reader implements.

Metadata and the tensor table are read eagerly (and validated); tensor data is read
lazily, in bounded row chunks, so memory does not grow with model size.

Layout conventions, fixed here once for the whole package:

* ``TensorInfo.shape`` is in numpy (row-major) order. A GGUF tensor listed with
  ``ne = [640, 2048]`` (fastest dimension first) has ``shape == (2048, 640)``.
* Every tensor is also viewed as a 2-D matrix of ``n_rows x row_length`` where
  ``row_length`` is the last (fastest) dimension; quantization blocks run along rows.
* Canonical names are llama.cpp's GGUF names (``blk.3.attn_q.weight``), and the
  canonical layout is GGUF's, so a safetensors llama ``q_proj`` is row-permuted on read
  to match llama.cpp's converter (see :mod:`provenance.names.qk_permute`).
"""
from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np

from provenance.errors import MalformedCheckpoint, TensorNotFound, UnsupportedCheckpoint, from_os_error
from provenance.formats.direct import ModelFile
from provenance.formats.files import open_regular

if TYPE_CHECKING:  # torch is imported only by the readers that decode (inspect never does)
    from provenance.formats.locators import ModelLocation
    from provenance.formats.model_card import ModelCard
    from provenance.formats.packed import PackedTensor
    from provenance.formats.rows import RowBuffer, RowReader

#: Default size of one streamed chunk of raw tensor bytes.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024

_Buffer = TypeVar("_Buffer")

ReadObserver = Callable[[str, int, int], None]
"""Told ``(file, offset, n_bytes)`` of every read a sampling call makes (refdb meters them)."""

BytesObserver = Callable[[str, int, list[memoryview]], None]
"""Told every tensor read's bytes as they arrive: ``(file, offset, buffers)`` (filled in turn
from ``offset``; valid only during the call). What lets one streamed pass also feed a
consumer of the stored bytes themselves (``provenance.hashing.StreamedDigests``)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a checkpoint's table, as validated at open time."""

    name: str
    """Canonical (GGUF-style) name; the stored name when no mapping is known."""
    stored_name: str
    """The name exactly as stored in the file."""
    shape: tuple[int, ...]
    """numpy (row-major) order."""
    dtype: str
    """Storage type: a ggml type name for GGUF (``Q4_K``), a safetensors dtype otherwise."""
    file: str
    """The file that holds the bytes (differs between shards / splits)."""
    offset: int
    """Absolute byte offset of the tensor's first byte in ``file``."""
    n_bytes: int
    block_size: int = 1
    """Elements per quantization block (1 for plain types)."""
    block_bytes: int = 4
    """Bytes per block (the element size for plain types)."""
    ggml_type: int | None = None
    """``gguf.GGMLQuantizationType`` value for GGUF tensors."""
    layer: int | None = None
    role: str | None = None
    """Canonical role within its layer, e.g. ``attn_q``, ``ffn_down``, ``token_embd``."""
    qk_heads: int | None = None
    """When set, rows are stored in HF rotate-half order and are permuted on read with
    this many heads so the result matches llama.cpp's layout."""
    packing: PackedTensor | None = None
    """For a quantized weight stored as several tensors (GPTQ, AWQ, compressed-tensors,
    bitsandbytes, MLX): its layout and validated parts. ``dtype`` is then the layout's label
    (``GPTQ-4b-g128``), ``file``/``offset`` those of its first part, ``n_bytes`` the parts'
    total; its rows are decoded by :class:`provenance.formats.packed_read.PackedRowReader`."""

    @property
    def n_elements(self) -> int:
        return prod(self.shape)

    @property
    def row_length(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.row_length if self.row_length else 0

    @property
    def row_bytes(self) -> int:
        return self.row_length // self.block_size * self.block_bytes

    @property
    def quantized(self) -> bool:
        """Stored in ggml-style blocks, ``block_bytes`` per ``block_size`` weights (a packed
        layout is not: see :attr:`packed`)."""
        return self.block_size > 1

    @property
    def packed(self) -> bool:
        """A quantized weight made of several stored tensors (see :attr:`packing`)."""
        return self.packing is not None

    @property
    def spans(self) -> tuple[tuple[str, int, int], ...]:
        """``(file, offset, n_bytes)`` of every stored byte range of the tensor, in order."""
        if self.packing is None:
            return ((self.file, self.offset, self.n_bytes),)
        return tuple((p.file, p.offset, p.n_bytes) for p in self.packing.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stored_name": self.stored_name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "n_bytes": self.n_bytes,
            "offset": self.offset,
            "file": self.file,
            "layer": self.layer,
            "role": self.role,
            "qk_permuted_on_read": self.qk_heads is not None,
            **({"parts": [p.name for p in self.packing.parts.values()]} if self.packing is not None else {}),
        }


@dataclass
class FileSpan:
    """A file that is part of a checkpoint, with the byte range its tensors occupy."""

    path: str
    size: int
    data_start: int
    data_end: int


class Checkpoint(ABC):
    """A model checkpoint opened for reading. Use as a context manager."""

    format: str = "unknown"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[FileSpan] = []
        self.warnings: list[str] = []
        self.location: ModelLocation | None = None
        """Where the input was named from when it was a store name (``hf:``, ``ollama:``), set by ``open_checkpoint``."""
        self.model_card: ModelCard | None = None
        """The folder's ``README.md`` front matter (a Hugging Face snapshot's for a file in one), set by ``open_checkpoint``."""
        self._files: dict[str, ModelFile] = {}
        """Per file, its validated descriptor and how it is read (docs/architecture.md, "Reading cold files")."""
        self._fd_lock = threading.Lock()  # streams of one checkpoint run in threads
        self._bytes_observer: BytesObserver | None = None

    # ----- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        with self._fd_lock:
            for file in self._files.values():
                file.close()
            self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:
            pass

    # ----- table -------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise TensorNotFound(f"{self.path}: no tensor named {name!r}") from None

    @property
    @abstractmethod
    def architecture(self) -> Any:
        """The :class:`provenance.names.arch.ArchRecord` of this checkpoint."""

    @property
    def metadata_claims(self) -> Mapping[str, Any]:
        """Declared identity (name, base model, ...) as the file states it: claims, not evidence."""
        return self.beside_claims()

    def beside_claims(self) -> dict[str, Any]:
        """Claims from beside the weights, which every reader's ``metadata_claims`` includes: the model
        card's (``card.base_model``, ``card.base_model_relation``, ...) and, for a model named from the
        Hugging Face cache, the repo id it is filed under (``hub.repo_id``: a name the model goes by,
        so a card naming that repo as its base names this model; docs/lineage.md, "Claims")."""
        claims = self.model_card.claims() if self.model_card is not None else {}
        if self.location is not None and self.location.repo_id is not None:
            claims["hub.repo_id"] = self.location.repo_id
        return claims

    # ----- raw bytes ---------------------------------------------------------------
    def _file(self, path: str) -> ModelFile:
        file = self._files.get(path)
        if file is None:
            with self._fd_lock:
                file = self._files.get(path)
                if file is None:
                    # opened again, not trusted from the header's open: the file may have been swapped since
                    file = self._files[path] = ModelFile(open_regular(path, "tensor data"))
        return file

    @contextmanager
    def observing(self, observer: BytesObserver) -> Iterator[None]:
        """Within the ``with``, ``observer`` is told the bytes of every read (:data:`BytesObserver`)."""
        previous, self._bytes_observer = self._bytes_observer, observer
        try:
            yield
        finally:
            self._bytes_observer = previous

    def pread_into(self, path: str, buffer: memoryview | list[memoryview], offset: int) -> None:
        """Fill ``buffer`` (or, scattering, each of a list of at most 1024 buffers in turn)
        with the bytes of ``path`` from ``offset``. Validated ranges only: a short read means
        the file changed after it was validated."""
        file = self._files.get(path) or self._file(path)
        buffers = buffer if isinstance(buffer, list) else [buffer]
        total = sum(len(b) for b in buffers)
        try:
            done = file.preadv(buffers, offset)
            while done < total and len(buffers) == 1:  # one preadv moves at most ~2 GiB on Linux
                got = file.preadv([buffers[0][done:]], offset + done)
                if got <= 0:
                    break
                done += got
        except OSError as exc:  # the disk or the file failed under us: the input, named, not a bug
            raise from_os_error(exc, path, "tensor data") from exc
        if done != total:
            raise MalformedCheckpoint(path, f"short read: {done} of {total} bytes", offset=offset)
        if self._bytes_observer is not None:
            self._bytes_observer(path, offset, buffers)

    def prefetch(self, path: str, offset: int, n_bytes: int, scattered: bool = False) -> None:
        """Ask the kernel to start reading ``n_bytes`` of ``path`` from ``offset`` into the page
        cache (``posix_fadvise(WILLNEED)``: queued, not waited for), so a streamed pass's next
        chunk arrives from the disk while this one is decoded (docs/lineage.md, Performance);
        where the file is read past the page cache (docs/architecture.md, "Reading cold files"),
        on its read-ahead worker instead, or, ``scattered`` (one of many small ranges asked at
        once), still into the page cache. A hint only: where the platform has no
        ``posix_fadvise`` or refuses, nothing happens."""
        (self._files.get(path) or self._file(path)).will_need(offset, n_bytes, scattered)

    def _pread(self, path: str, n_bytes: int, offset: int) -> bytearray:
        # A bytearray is writable, so numpy and torch can wrap it without a copy.
        data = bytearray(n_bytes)
        self.pread_into(path, memoryview(data), offset)
        return data

    def raw_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stored bytes of rows ``[start, stop)`` as a ``(rows, row_bytes)`` uint8 array.

        Rows are in *storage* order (no Q/K permutation): these are the bytes whose
        quantization grid the quant module inspects.
        """
        info = self._byte_rows(name)
        start, stop = clip_rows(info, start, stop)
        data = self._pread(info.file, (stop - start) * info.row_bytes, info.offset + start * info.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, info.row_bytes)

    def _byte_rows(self, name: str) -> TensorInfo:
        """``info(name)`` of a tensor whose rows are byte ranges of one stored array."""
        info = self.info(name)
        if info.packing is not None:
            raise UnsupportedCheckpoint(info.file, f"{name} is a {info.dtype} weight made of {len(info.packing.parts)} "
                                        "stored tensors: it has no stored rows (its decoded rows and parts' bytes can be "
                                        "read)", field=info.stored_name)
        return info

    def iter_raw(self, name: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytearray]:
        """The tensor's stored bytes in order (each part of a packed weight in turn), in
        chunks of at most ``chunk_bytes``."""
        for file, offset, n_bytes in self.info(name).spans:
            for done in range(0, n_bytes, chunk_bytes):
                yield self._pread(file, min(chunk_bytes, n_bytes - done), offset + done)

    def tensor_sha256(self, name: str, progress: Callable[[int], None] | None = None) -> str:
        """SHA-256 of the tensor's raw stored bytes; ``progress`` gets each chunk's size."""
        digest = hashlib.sha256()
        for chunk in self.iter_raw(name):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
        return digest.hexdigest()

    # ----- decoded values ----------------------------------------------------------
    def _decode_rows(self, info: TensorInfo, raw: np.ndarray) -> np.ndarray:
        """``(rows, k * block_bytes)`` stored bytes -> fresh float32 ``(rows, k * block_size)``."""
        import torch

        from provenance.formats.rows import decode_into

        out = np.empty((raw.shape[0], raw.shape[1] // info.block_bytes * info.block_size), np.float32)
        decode_into(info, torch.from_numpy(np.ascontiguousarray(raw)), torch.from_numpy(out))
        return out

    def row_reader(self, name: str, max_rows: int | None = None) -> RowReader:
        """A :class:`provenance.formats.rows.RowReader` over one tensor: canonical float32 rows
        decoded into reused buffers (or the caller's), for streamed passes. A packed weight
        gets a :class:`provenance.formats.packed_read.PackedRowReader` (the same interface,
        plus its grid cells)."""
        if self.info(name).packing is not None:
            from provenance.formats.packed_read import PackedRowReader

            return PackedRowReader(self, name, max_rows)
        from provenance.formats.rows import RowReader

        return RowReader(self, name, max_rows)

    @overload
    def read_rows(self, name: str, start: int = 0, stop: int | None = None, out: None = None) -> np.ndarray: ...

    @overload
    def read_rows(self, name: str, start: int, stop: int | None, out: _Buffer) -> _Buffer: ...

    def read_rows(self, name: str, start: int = 0, stop: int | None = None, out: RowBuffer | None = None) -> Any:
        """Rows ``[start, stop)`` of the canonical 2-D view as float32 ``(rows, row_length)``:
        a fresh numpy array, or written into ``out`` (numpy or torch, contiguous float32 of
        that shape), which is returned."""
        info = self.info(name)
        start, stop = clip_rows(info, start, stop)
        target = np.empty((stop - start, info.row_length), np.float32) if out is None else out
        if stop > start:
            reader = self.row_reader(name, stop - start)
            reader.read_into(start, stop, target)
            reader.close()
        return target

    def read_blocks(self, name: str, rows: np.ndarray, first_block: np.ndarray, n_blocks: int,
                    observe: ReadObserver | None = None) -> np.ndarray:
        """``n_blocks`` quantization blocks (elements, for plain types) from ``first_block[i]``
        of canonical row ``rows[i]``, decoded: float32 ``(len(rows), n_blocks * block_size)``.
        One small read per row (the cheapest way to sample a huge tensor); ``observe`` is
        told each read (a packed weight's rows are decoded whole, and their parts' reads told)."""
        info = self.info(name)
        rows = np.asarray(rows, dtype=np.int64)
        first_block = np.asarray(first_block, dtype=np.int64)
        if info.packing is not None:
            return self._packed_blocks(info, rows, first_block, n_blocks, observe)
        stored = rows if info.qk_heads is None else _qk_order(info)[rows]
        n_bytes = n_blocks * info.block_bytes
        raw = np.empty((len(rows), n_bytes), np.uint8)
        blocks_per_row = info.row_length // info.block_size
        for i, (row, block) in enumerate(zip(stored.tolist(), first_block.tolist(), strict=True)):
            if not (0 <= row < info.n_rows and block >= 0 and block + n_blocks <= blocks_per_row):
                raise IndexError(f"blocks [{block}, {block + n_blocks}) of row {row} outside {name}")
            offset = info.offset + row * info.row_bytes + block * info.block_bytes
            self.pread_into(info.file, memoryview(raw[i]), offset)
            if observe is not None:
                observe(info.file, offset, n_bytes)
        return self._decode_rows(replace(info, shape=(n_blocks * info.block_size,)), raw)

    def _packed_blocks(self, info: TensorInfo, rows: np.ndarray, first_block: np.ndarray, n_blocks: int,
                       observe: ReadObserver | None) -> np.ndarray:
        # A packed weight has no per-element byte address (GPTQ packs along the input, its
        # zeros along the output): the rows asked for are decoded whole, in row order.
        from provenance.formats.packed_read import PackedRowReader

        if ((first_block < 0) | (first_block + n_blocks > info.row_length)).any():
            raise IndexError(f"elements beyond the rows of {info.name}")
        out = np.empty((len(rows), n_blocks), np.float32)
        with PackedRowReader(self, info.name, 1, observe=observe) as reader:
            for i in np.argsort(rows, kind="stable").tolist():
                row, first = int(rows[i]), int(first_block[i])
                out[i] = reader.read(row, row + 1)[0, first:first + n_blocks].numpy()
        return out

    def read_elements(self, name: str, flat_index: np.ndarray, observe: ReadObserver | None = None) -> np.ndarray:
        """Values at flat indices of the canonical element order, float32; each distinct
        block is read once."""
        info = self.info(name)
        rows, cols = np.divmod(np.asarray(flat_index, dtype=np.int64), info.row_length)
        blocks = cols // info.block_size
        keys = rows * (info.row_length // info.block_size + 1) + blocks
        unique, inverse = np.unique(keys, return_inverse=True)
        first_index = np.zeros(len(unique), np.int64)
        first_index[inverse[::-1]] = np.arange(len(keys))[::-1]
        values = self.read_blocks(name, rows[first_index], blocks[first_index], 1, observe)
        return values[inverse, cols % info.block_size]

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 in its numpy shape (canonical layout)."""
        info = self.info(name)
        return self.read_rows(name).reshape(info.shape)

    def iter_rows(self, name: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float32 rows)`` chunks covering the tensor, each bounded in size."""
        info = self.info(name)
        rows_per_chunk = max(1, chunk_bytes // max(1, info.row_length * 4))
        if info.qk_heads is not None:
            head_rows = max(1, info.n_rows // info.qk_heads)
            rows_per_chunk = max(head_rows, rows_per_chunk // head_rows * head_rows)
        for start in range(0, info.n_rows, rows_per_chunk):
            yield start, self.read_rows(name, start, min(info.n_rows, start + rows_per_chunk))


def _qk_order(info: TensorInfo) -> np.ndarray:
    from provenance.names.qk_permute import llama_qk_row_order

    assert info.qk_heads is not None
    return llama_qk_row_order(info.n_rows, info.qk_heads)


def clip_rows(info: TensorInfo, start: int, stop: int | None) -> tuple[int, int]:
    stop = info.n_rows if stop is None else stop
    if not 0 <= start <= stop <= info.n_rows:
        raise IndexError(f"rows [{start}, {stop}) outside 0..{info.n_rows} of {info.name}")
    return start, stop
