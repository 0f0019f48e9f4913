"""Copy a GGUF checkpoint's key/values into a ``gguf.GGUFWriter``, from our own validated parse.

Every tool that writes a derived GGUF (the quantizer, the watermark embedder, attack
variants) carries the source's metadata over this way: in file order, each value with its
stored type, string arrays as raw bytes (invalid UTF-8 survives as is). gguf-py's reader is
never handed the (untrusted) source file.
"""
from __future__ import annotations

from collections.abc import Container
from typing import Any

from provenance.formats.gguf_header import GGUFArray, ValueType
from provenance.formats.gguf_reader import GGUFCheckpoint

SPLIT_KEYS = frozenset({"split.no", "split.count", "split.tensors.count"})
"""A split input is written whole: its split bookkeeping does not carry over."""


def copy_gguf_metadata(checkpoint: GGUFCheckpoint, writer: Any, skip: Container[str] = ()) -> None:
    """Add every key/value of ``checkpoint`` (its first file, for a split model) to ``writer``.

    ``general.architecture`` is always skipped (the writer adds it first), as are the keys in
    ``skip`` and empty arrays, which gguf-py's writer cannot store. The writer's data alignment
    is set to the source's.
    """
    import gguf

    header = checkpoint.headers[0]
    writer.data_alignment = header.alignment
    for key, value in header.metadata.items():
        if key == "general.architecture" or key in skip:
            continue
        if isinstance(value, GGUFArray):
            if value.element_type == ValueType.STRING:
                items: list[Any] = list(value.iter_bytes())
            else:
                items = value.to_numpy().tolist()
            if items:
                writer.add_key_value(key, items, gguf.GGUFValueType.ARRAY,
                                     sub_type=gguf.GGUFValueType(int(value.element_type)))
        else:
            writer.add_key_value(key, value, gguf.GGUFValueType(int(header.metadata_types[key])))
