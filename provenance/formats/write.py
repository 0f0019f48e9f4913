"""The one model writer: a checkpoint rewritten with some tensors replaced or retyped.

Everything in the package that writes a model goes through here: the quantizer
(:func:`provenance.quant.writer.quantize_model`), the watermark embedder, the attack
variants and the calibration variants. One function, :func:`write_checkpoint`, covers

* GGUF in, GGUF out (a split input is written as one file);
* safetensors in, safetensors out: a single file stays a single file; an HF directory or
  a sharded checkpoint becomes a full directory copy (config, tokenizer and every other
  regular file copied, shards rewritten under their names, the index updated);
* any readable checkpoint in, GGUF out (``to="gguf"``): canonical names and layout, HF
  q/k rows in llama.cpp's order, llama hyperparameters from its architecture record;

and :func:`write_gguf` writes a fresh GGUF from arrays. Guarantees:

* **atomic**: the output is written beside its destination under a temp name and renamed
  into place when complete; on any error or Ctrl-C nothing is left behind
  (:func:`provenance.fileio.atomic_file`);
* **streaming**: tensor by tensor, a bounded chunk of rows at a time: memory does not grow
  with the model (never the whole model, never a whole tensor in float64);
* **byte-faithful**: a tensor neither replaced nor retyped is copied byte for byte (rows
  reordered, never re-encoded, when HF q/k go to GGUF); GGUF metadata is copied from our
  own validated parse (in file order, each value with its stored type, string arrays as
  raw bytes, so invalid UTF-8 survives), never by handing the hostile file to gguf-py's
  reader; GGUF files are laid out by ``gguf.GGUFWriter`` (the quantizer's output equals
  llama.cpp's byte for byte, ``tests/quant/test_quantize_writer.py``) and safetensors
  files as the safetensors library lays them out (tensors by dtype then name, compact
  JSON header padded to 8 bytes; held to the library in ``tests/formats/test_write.py``).

New values are float rows in the canonical layout (``(n_rows, row_length)``, or the
tensor's numpy shape), or a function ``rows(start, stop)`` the writer calls chunk by chunk;
chunks always hold whole multiples of 256 weights and, for HF q/k, whole heads. Values are
encoded to the output type by :func:`provenance.codecs.quantize_rows` for GGUF (llama.cpp's
exact quantizers) and by a torch cast for safetensors; values already in the output type
(e.g. a float16 tensor for an F16 tensor) are written as they are.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from provenance.codecs.types import type_info
from provenance.errors import ProvenanceError
from provenance.fileio import atomic_directory, atomic_file
from provenance.formats.base import DEFAULT_CHUNK_BYTES, Checkpoint, TensorInfo
from provenance.formats.direct_out import DirectAppender
from provenance.formats.dtypes import STORAGE_TYPES, numpy_dtype, storage_type, torch_dtype
from provenance.formats.gguf_header import DEFAULT_ALIGNMENT, GGUFArray, GGUFKeyValue, ValueType
from provenance.formats.gguf_reader import GGUFCheckpoint
from provenance.formats.safetensors_reader import INDEX_NAME
from provenance.names.arch import ArchRecord
from provenance.names.qk_permute import gguf_to_hf_rows, llama_qk_row_order

CHUNK_WEIGHTS = 1 << 22
"""Weights converted at a time (4 Mi: 16 MiB of float32)."""
GROUP_WEIGHTS = 256
"""Chunks hold whole multiples of this many weights (the largest ggml block), so block
statistics a value function keeps are never split across chunks."""
SPLIT_KEYS = frozenset({"split.no", "split.count", "split.tensors.count"})
"""A split input is written whole: its split bookkeeping does not carry over."""

Values = np.ndarray | torch.Tensor | Callable[[int, int], "np.ndarray | torch.Tensor"]
"""New values of one tensor: canonical float rows, or ``rows(start, stop)`` giving them."""


class WriteError(ProvenanceError):
    """A checkpoint cannot be written as asked (unknown type, wrong shape, unsupported format)."""


@dataclass
class WriteReport:
    """What :func:`write_checkpoint` / :func:`write_gguf` wrote."""

    path: str
    format: str
    """``gguf``, ``safetensors`` (one file) or ``safetensors-directory``."""
    types: dict[str, str] = field(default_factory=dict)
    """Canonical tensor name -> stored type, in the order written."""
    replaced: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)
    """Tensors re-encoded from the source's own values into another type."""
    copied: list[str] = field(default_factory=list)
    """Tensors whose stored bytes were copied as they are."""


# ----- one output tensor ----------------------------------------------------------------
@dataclass
class _Output:
    name: str
    """Name as written (canonical for GGUF, stored for safetensors)."""
    shape: tuple[int, ...]
    dtype: str
    n_bytes: int
    chunks: Callable[[], Iterator[Any]]
    """Produces the stored bytes in order (bytes-like or uint8 arrays)."""
    source_bytes: int = 0
    """Stored bytes of the source tensor this output consumes (0: new values), for progress."""


def _geometry(dtype: str, gguf: bool, tensor: str) -> tuple[int, int]:
    """``(block_size, block_bytes)`` of a storage type in the output format."""
    if gguf:
        try:
            geometry = type_info(dtype)
        except (KeyError, ValueError):
            raise WriteError(f"{tensor}: {dtype!r} is not a ggml type (GGUF output needs one)") from None
        return geometry.block_size, geometry.type_size
    if dtype not in STORAGE_TYPES or torch_dtype(dtype) is None:
        raise WriteError(f"{tensor}: safetensors output cannot encode {dtype!r}")
    return storage_type(dtype).block


def _chunk_rows(info: TensorInfo, qk_aligned: bool) -> int:
    rows = max(1, CHUNK_WEIGHTS // max(1, info.row_length))
    unit = GROUP_WEIGHTS // gcd(GROUP_WEIGHTS, info.row_length)
    if qk_aligned and info.qk_heads:
        head_rows = info.n_rows // info.qk_heads
        unit = unit * head_rows // gcd(unit, head_rows)
    return max(unit, rows // unit * unit)


def _encode(values: np.ndarray | torch.Tensor, dtype: str, gguf: bool) -> np.ndarray:
    """``(rows, row_length)`` values -> stored bytes ``(rows, row_bytes)`` of ``dtype``."""
    target = torch_dtype(dtype)
    if isinstance(values, torch.Tensor):
        if target is not None and values.dtype == target:
            return values.detach().cpu().contiguous().view(torch.uint8).numpy()
        values = values.detach().cpu().to(torch.float32).numpy()
    elif values.dtype == numpy_dtype(dtype):
        return np.ascontiguousarray(values).view(np.uint8)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if gguf:
        from provenance.codecs import quantize_rows

        return quantize_rows(values, dtype)
    assert target is not None
    return torch.from_numpy(values).to(target).contiguous().view(torch.uint8).numpy()


RowSource = Callable[[], Callable[[int, int], "np.ndarray | torch.Tensor"]]
"""Made when the tensor's turn comes, so buffers live only while it is written."""


def _value_rows(values: Values, info: TensorInfo) -> RowSource:
    """Canonical rows ``[start, stop)`` of a replacement, checked against the tensor's shape."""
    if callable(values):
        return lambda: values
    if tuple(values.shape) not in ((info.n_rows, info.row_length), tuple(info.shape)):
        raise WriteError(f"{info.name}: new values have shape {tuple(values.shape)}, the tensor {tuple(info.shape)}")
    matrix = values.reshape(info.n_rows, info.row_length)
    return lambda: lambda start, stop: matrix[start:stop]


def _source_rows(source: Checkpoint, info: TensorInfo) -> RowSource:
    # canonical float32 rows, decoded into one reader's reused buffer
    return lambda: source.row_reader(info.name, _chunk_rows(info, True)).read


def _encoded_chunks(info: TensorInfo, source: RowSource, dtype: str, gguf: bool,
                    to_hf_order: bool) -> Callable[[], Iterator[np.ndarray]]:
    step = _chunk_rows(info, to_hf_order)

    def chunks() -> Iterator[np.ndarray]:
        rows = source()
        for start in range(0, info.n_rows, step):
            stop = min(info.n_rows, start + step)
            values = rows(start, stop)
            if tuple(values.shape) != (stop - start, info.row_length):
                raise WriteError(f"{info.name}: rows [{start}, {stop}) came back with shape {tuple(values.shape)}")
            data = _encode(values, dtype, gguf)
            if to_hf_order and info.qk_heads:  # whole heads: the permutation stays inside the chunk
                data = gguf_to_hf_rows(data, info.qk_heads * (stop - start) // info.n_rows)
            yield data

    return chunks


def _stored_chunks(source: Checkpoint, info: TensorInfo, to_canonical: bool) -> Callable[[], Iterator[Any]]:
    """The stored bytes as they are, or with HF q/k rows moved to llama.cpp's order."""
    if not (to_canonical and info.qk_heads):
        return lambda: source.iter_raw(info.name, DEFAULT_CHUNK_BYTES)
    order = llama_qk_row_order(info.n_rows, info.qk_heads)
    step = _chunk_rows(info, True)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, info.n_rows, step):
            stop = min(info.n_rows, start + step)
            yield source.raw_rows(info.name, start, stop)[order[start:stop] - start]

    return chunks


def _plan(source: Checkpoint, info: TensorInfo, new: Values | None, dtype: str, gguf: bool,
          report: WriteReport) -> _Output:
    """How one tensor is written: copied, re-encoded from the source, or replaced."""
    block_size, block_bytes = _geometry(dtype, gguf, info.name)
    if info.row_length % block_size:
        raise WriteError(f"{info.name}: rows of {info.row_length} weights do not split into {dtype} blocks of {block_size}")
    n_bytes = info.n_rows * (info.row_length // block_size * block_bytes)
    name, shape = (info.name, info.shape) if gguf else (info.stored_name, info.shape)
    hf_layout = not gguf  # safetensors output keeps the stored (HF) row order
    if new is not None:
        report.replaced.append(info.name)
        chunks = _encoded_chunks(info, _value_rows(new, info), dtype, gguf, hf_layout)
    elif dtype == info.dtype:
        report.copied.append(info.name)
        chunks = _stored_chunks(source, info, to_canonical=gguf)
    else:
        report.retyped.append(info.name)
        chunks = _encoded_chunks(info, _source_rows(source, info), dtype, gguf, hf_layout)
    report.types[info.name] = dtype
    return _Output(name, tuple(shape), dtype, n_bytes, chunks, info.n_bytes)


Progress = Callable[[int], None]
"""Told how many more bytes of the source were consumed (output bytes for new values)."""


def _write_chunks(handle: Any, out: _Output, progress: Progress | None = None) -> None:
    written = reported = 0
    scale = out.source_bytes or out.n_bytes
    for chunk in out.chunks():
        data = memoryview(np.ascontiguousarray(chunk) if isinstance(chunk, np.ndarray) else chunk).cast("B")
        handle.write(data)
        written += len(data)
        if progress is not None and out.n_bytes:
            done = written * scale // out.n_bytes
            progress(done - reported)
            reported = done
    if written != out.n_bytes:
        raise WriteError(f"{out.name}: wrote {written} bytes, expected {out.n_bytes}")


# ----- GGUF -------------------------------------------------------------------------------
def _add_key_value(writer: GGUFWriter, kv: GGUFKeyValue) -> None:
    if isinstance(kv.value, GGUFArray):
        array = kv.value
        items = list(array.iter_bytes()) if array.element_type == ValueType.STRING else array.to_numpy().tolist()
        if items:  # gguf-py's writer cannot store an empty array
            writer.add_key_value(kv.key, items, GGUFValueType.ARRAY, sub_type=GGUFValueType(int(array.element_type)))
        return
    if kv.type == ValueType.ARRAY and isinstance(kv.value, list | tuple) and kv.value \
            and all(isinstance(x, bytes | str) for x in kv.value):
        # a new list of strings (a token list): gguf-py's writer encodes each as UTF-8 bytes
        writer.add_key_value(kv.key, list(kv.value), GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
        return
    if kv.type == ValueType.ARRAY:
        raise WriteError(f"metadata {kv.key!r}: new arrays are supported as non-empty lists of strings only")
    writer.add_key_value(kv.key, kv.value, GGUFValueType(int(kv.type)))


def _write_gguf_file(path: Path, arch: str, key_values: Sequence[GGUFKeyValue], tensors: Sequence[_Output],
                     progress: Progress | None = None) -> None:
    """Header, key/values and tensor table by ``gguf.GGUFWriter``; tensor data streamed after
    it with the same alignment padding ``GGUFWriter.write_tensor_data`` writes. The alignment
    is the one the written ``general.alignment`` states (32 without it), so readers agree."""
    stated = [kv.value for kv in key_values if kv.key == "general.alignment"]
    alignment = stated[-1] if stated else DEFAULT_ALIGNMENT
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise WriteError(f"general.alignment {alignment!r} is not a power of two")
    writer = GGUFWriter(str(path), arch)  # general.architecture first, as llama.cpp writes it
    try:
        writer.data_alignment = alignment
        for kv in key_values:
            if kv.key != "general.architecture":
                _add_key_value(writer, kv)
        for out in tensors:
            geometry = type_info(out.dtype)
            byte_shape = (*out.shape[:-1], out.shape[-1] // geometry.block_size * geometry.type_size)
            writer.add_tensor_info(out.name, byte_shape, np.dtype(np.uint8), out.n_bytes,
                                   raw_dtype=GGMLQuantizationType[out.dtype])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    finally:
        writer.close()
    if not tensors:
        return
    with DirectAppender(path) as handle:
        handle.write(b"\0" * (-handle.tell() % alignment))
        for out in tensors:
            _write_chunks(handle, out, progress)
            handle.write(b"\0" * (-out.n_bytes % alignment))


def gguf_arch_key_values(arch: ArchRecord) -> list[GGUFKeyValue]:
    """llama-style hyperparameters of a non-GGUF source as GGUF key/values (what
    :func:`provenance.names.arch.from_gguf_metadata` reads back); unknown ones are left out."""
    name = arch.arch or "llama"
    u32, f32 = ValueType.UINT32, ValueType.FLOAT32
    head_dim = arch.head_dim or ((arch.n_embd // arch.n_head) if arch.n_embd and arch.n_head else None)
    items: list[tuple[str, Any, ValueType]] = [
        ("context_length", arch.context_length, u32), ("embedding_length", arch.n_embd, u32),
        ("block_count", arch.n_layer, u32), ("feed_forward_length", arch.n_ff, u32),
        ("attention.head_count", arch.n_head, u32), ("attention.head_count_kv", arch.n_head_kv or arch.n_head, u32),
        ("rope.dimension_count", arch.rope_dim or head_dim, u32), ("attention.layer_norm_rms_epsilon", arch.norm_eps, f32),
        ("rope.freq_base", arch.rope_freq_base, f32), ("expert_count", arch.n_expert, u32),
        ("expert_used_count", arch.n_expert_used, u32), ("vocab_size", arch.vocab_size, u32),
    ]
    return [GGUFKeyValue(f"{name}.{key}", value, vtype) for key, value, vtype in items if value is not None]


def _gguf_metadata(source: Checkpoint, drop_keys: Collection[str]) -> tuple[str, list[GGUFKeyValue]]:
    """``(architecture, key/values)`` a GGUF copy of ``source`` starts from."""
    if isinstance(source, GGUFCheckpoint):
        kvs = [kv for kv in source.key_values if kv.key not in SPLIT_KEYS and kv.key not in drop_keys]
        return source.architecture_name or "llama", kvs
    arch = source.architecture
    return arch.arch or "llama", [kv for kv in gguf_arch_key_values(arch) if kv.key not in drop_keys]


def write_gguf(output: str | os.PathLike[str], arch: str, tensors: Mapping[str, np.ndarray | torch.Tensor],
               key_values: Sequence[GGUFKeyValue] = (), types: Mapping[str, str] | None = None) -> WriteReport:
    """A new GGUF at ``output`` holding ``tensors`` (canonical names, numpy shapes, float
    values), each stored as ``types[name]`` (default ``F32``), after ``key_values`` (a
    ``general.alignment`` among them sets the data alignment)."""
    report = WriteReport(os.fspath(output), "gguf")
    outputs = []
    for name, values in tensors.items():
        shape = tuple(values.shape) if values.ndim else (1,)
        info = TensorInfo(name=name, stored_name=name, shape=shape, dtype="F32", file="", offset=0, n_bytes=0)
        dtype = (types or {}).get(name, "F32")
        outputs.append(_plan_new(info, values.reshape(shape), dtype, report))
    with atomic_file(output) as tmp:
        _write_gguf_file(tmp, arch, key_values, outputs)
    return report


def _plan_new(info: TensorInfo, values: np.ndarray | torch.Tensor, dtype: str, report: WriteReport) -> _Output:
    block_size, block_bytes = _geometry(dtype, True, info.name)
    if info.row_length % block_size:
        raise WriteError(f"{info.name}: rows of {info.row_length} weights do not split into {dtype} blocks of {block_size}")
    report.replaced.append(info.name)
    report.types[info.name] = dtype
    chunks = _encoded_chunks(info, _value_rows(values, info), dtype, True, False)
    return _Output(info.name, info.shape, dtype, info.n_rows * (info.row_length // block_size * block_bytes), chunks)


# ----- safetensors ------------------------------------------------------------------------
def _safetensors_header(tensors: Sequence[_Output], metadata: Mapping[str, str]) -> tuple[bytes, list[_Output]]:
    """The header bytes and tensor order the safetensors library would write."""
    ordered = sorted(tensors, key=lambda t: (-STORAGE_TYPES[t.dtype].safetensors_rank, t.name.encode("utf-8")))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for out in ordered:
        header[out.name] = {"dtype": out.dtype, "shape": list(out.shape), "data_offsets": [offset, offset + out.n_bytes]}
        offset += out.n_bytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def _write_safetensors_file(path: Path, tensors: Sequence[_Output], metadata: Mapping[str, str],
                            progress: Progress | None = None) -> None:
    header, ordered = _safetensors_header(tensors, metadata)
    Path(path).write_bytes(b"")  # appended to from its start
    with DirectAppender(path) as handle:
        handle.write(header)
        for out in ordered:
            _write_chunks(handle, out, progress)


def _write_safetensors(source: Checkpoint, output: Path, plans: dict[str, list[_Output]],
                       progress: Progress | None = None) -> str:
    file_metadata: Mapping[str, Mapping[str, str]] = getattr(source, "file_metadata", {})
    if source.format == "safetensors" and not os.path.isdir(source.path):
        shard = source.files[0].path
        with atomic_file(output) as tmp:
            _write_safetensors_file(tmp, plans.get(shard, []), file_metadata.get(shard, {}), progress)
        return "safetensors"
    source_dir = Path(source.path if os.path.isdir(source.path) else os.path.dirname(source.path))
    with atomic_directory(output) as staging:
        sizes = 0
        for shard, outputs in plans.items():
            _write_safetensors_file(staging / os.path.basename(shard), outputs, file_metadata.get(shard, {}), progress)
            sizes += sum(o.n_bytes for o in outputs)
        for entry in sorted(source_dir.iterdir()):
            if entry.is_symlink() or not entry.is_file() or (staging / entry.name).exists():
                continue  # shards are already written; links are not followed out of the model
            shutil.copy2(entry, staging / entry.name)
        _update_index(staging / INDEX_NAME, sizes)
    return "safetensors-directory"


def _update_index(index: Path, total_size: int) -> None:
    """A retyped sharded copy changes the byte count its index states; nothing else in it."""
    if not index.is_file():
        return
    data = json.loads(index.read_text("utf-8"))  # already validated by the reader
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and "total_size" in metadata and metadata["total_size"] != total_size:
        metadata["total_size"] = total_size
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")


# ----- the entry point --------------------------------------------------------------------
def write_checkpoint(
    source: Checkpoint,
    output: str | os.PathLike[str],
    *,
    replace: Mapping[str, Values] | None = None,
    retype: Mapping[str, str] | None = None,
    to: str | None = None,
    tensors: Sequence[str] | None = None,
    drop_keys: Collection[str] = (),
    add_keys: Sequence[GGUFKeyValue] = (),
    progress: Progress | None = None,
) -> WriteReport:
    """Write a copy of ``source`` to ``output`` with the tensors in ``replace`` (canonical
    name -> new values) swapped in and those in ``retype`` (name -> storage type: a ggml
    type for GGUF output, a safetensors dtype otherwise) re-encoded; a replaced tensor
    keeps its type unless it is retyped too. Every other tensor is copied byte for byte.

    ``to="gguf"`` writes a GGUF whatever the source; otherwise the output has the source's
    format. GGUF output only: ``tensors`` chooses which tensors are written and in what
    order (default: all, in the source's order); the source's key/values (minus
    ``drop_keys`` and split bookkeeping; for a non-GGUF source, its hyperparameters) are
    followed by ``add_keys``. ``progress`` is told each chunk's share of the source's
    stored bytes as it is written (their sum is the written tensors' ``n_bytes``).
    """
    replace, retype = dict(replace or {}), dict(retype or {})
    gguf = to == "gguf" or (to is None and source.format.startswith("gguf"))
    if to not in (None, "gguf") or (not gguf and not source.format.startswith(("safetensors", "hf"))):
        raise WriteError(f"{source.path}: cannot write {source.format} as {to or source.format} (GGUF and safetensors only)")
    names = list(tensors) if tensors is not None else list(source.tensors)
    unknown = [n for n in [*replace, *retype, *names] if n not in source.tensors]
    if unknown:
        raise WriteError(f"{source.path}: no tensor named {unknown[0]!r}")
    if len(set(names)) != len(names):
        raise WriteError(f"{source.path}: a tensor is listed twice in tensors=")
    if not gguf and (tensors is not None or drop_keys or add_keys):
        raise WriteError("tensors=, drop_keys= and add_keys= are for GGUF output (a safetensors copy keeps every tensor)")
    report = WriteReport(os.fspath(output), "gguf" if gguf else "safetensors")
    plans: dict[str, list[_Output]] = {}
    for name in names:
        info = source.info(name)
        plan = _plan(source, info, replace.get(name), retype.get(name, info.dtype), gguf, report)
        plans.setdefault("" if gguf else info.file, []).append(plan)
    if gguf:
        arch, kvs = _gguf_metadata(source, drop_keys)
        with atomic_file(output) as tmp:
            _write_gguf_file(tmp, arch, [*kvs, *add_keys], plans.get("", []), progress)
    else:
        report.format = _write_safetensors(source, Path(output), plans, progress)
    return report

