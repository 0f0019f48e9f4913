"""``inspect``: what is this file? Format, architecture, metadata, tokenizer, tensors, hashes.

The result is a plain, JSON-ready dict following the documented schema
``provenance.inspect/1`` (docs/inspect-schema.md).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provenance.errors import input_boundary
from provenance.formats import Checkpoint, open_checkpoint
from provenance.formats.gguf_header import GGUFArray
from provenance.hashing import CheckpointHashes, checkpoint_sha256s
from provenance.tokenizer import summarize_tokenizer
from provenance.version import __version__

SCHEMA = "provenance.inspect/1"
ARRAY_PREVIEW = 5


def metadata_value(value: Any) -> Any:
    """JSON-ready metadata value; arrays are summarised, never expanded in full."""
    if isinstance(value, GGUFArray):
        return {
            "array_of": value.element_type.name.lower(),
            "count": len(value),
            "sha256": value.sha256(),
            "head": value.head(ARRAY_PREVIEW),
        }
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value


def quant_histogram(checkpoint: Checkpoint) -> dict[str, dict[str, int]]:
    histogram: dict[str, dict[str, int]] = {}
    for info in checkpoint.tensors.values():
        entry = histogram.setdefault(info.dtype, {"tensors": 0, "elements": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["elements"] += info.n_elements
        entry["bytes"] += info.n_bytes
    return dict(sorted(histogram.items(), key=lambda item: -item[1]["bytes"]))


@input_boundary
def inspect_checkpoint(
    path: str | Path,
    *,
    hashes: bool = False,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Inspect one checkpoint; raises :class:`provenance.errors.CheckpointError` on a bad file.

    With ``hashes``, every file's SHA-256 and every tensor's SHA-256 of its raw stored
    bytes are computed (streamed; ``progress`` receives byte counts, ``on_total`` the
    total first).
    """
    with open_checkpoint(path) as checkpoint:
        return describe_checkpoint(checkpoint, path, hashes=hashes, progress=progress, on_total=on_total)


def add_hashes(files: list[dict[str, Any]], tensors: list[dict[str, Any]], hashes: CheckpointHashes) -> None:
    """Each file's and each tensor's ``sha256`` into :func:`inspect_checkpoint`'s ``files`` and
    ``tensors`` entries (hashes taken elsewhere: ``investigate`` takes them in its lineage pass)."""
    for entry in files:
        entry["sha256"] = hashes.files[entry["path"]]
    for entry in tensors:
        entry["sha256"] = hashes.tensors[entry["name"]]


def describe_checkpoint(
    checkpoint: Checkpoint,
    path: str | Path,
    *,
    hashes: bool = False,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """:func:`inspect_checkpoint` of a checkpoint already open (``path`` as the user named it)."""
    files = [{"path": span.path, "size": span.size} for span in checkpoint.files]
    tensors = [info.to_dict() for info in checkpoint.tensors.values()]
    n_params = sum(info.n_elements for info in checkpoint.tensors.values())
    n_bytes = sum(info.n_bytes for info in checkpoint.tensors.values())
    if hashes:
        if on_total:
            on_total(sum(span.size for span in checkpoint.files))
        add_hashes(files, tensors, CheckpointHashes(*checkpoint_sha256s(checkpoint, progress)))
    metadata = {key: metadata_value(value) for key, value in checkpoint.metadata.items()}
    return {
        "schema": SCHEMA,
        "tool": {"name": "provenance", "version": __version__},
        "path": os.fspath(path),
        "location": checkpoint.location.to_dict() if checkpoint.location else None,
        "format": checkpoint.format,
        "gguf_version": getattr(checkpoint, "version", None),
        "files": files,
        "architecture": checkpoint.architecture.to_dict(),
        "claims": {k: metadata_value(v) for k, v in checkpoint.metadata_claims.items()},
        "metadata": metadata,
        "tokenizer": summarize_tokenizer(checkpoint).to_dict(),
        "summary": {
            "tensors": len(tensors),
            "parameters": n_params,
            "tensor_bytes": n_bytes,
            "bits_per_weight": round(8 * n_bytes / n_params, 4) if n_params else None,
            "layers": len({t["layer"] for t in tensors if t["layer"] is not None}),
            "roles": dict(Counter(t["role"] for t in tensors if t["role"])),
        },
        "quant_types": quant_histogram(checkpoint),
        "tensors": tensors,
        "warnings": list(checkpoint.warnings),
    }
