"""From the command line's INPUTS to the list of models to scan.

* a file is one model (a split GGUF part stands for its whole set);
* a manifest (``.jsonl``/``.ndjson``/``.csv``) lists models, one per line (:mod:`.manifest`);
* a model folder (``config.json`` beside weights, or a sharded safetensors index) is one model;
* any other directory is walked: model folders and split GGUF sets become one model each,
  and each other file is a model when its first bytes are a checkpoint's (GGUF, safetensors,
  pickle, llama2.c) or its name is a weights file's. The rest (READMEs, tokenizer files,
  test vectors) is counted as skipped. Directory links are not followed (no cycles).

Only names and the first 64 bytes are read here; every model's bytes are read by a worker.
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from provenance.formats.llama2c_reader import looks_like_llama2c
from provenance.scan.manifest import is_manifest, read_manifest
from provenance.scan.units import ModelUnit, stamp_members

WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Names that mark a file as weights even when its bytes are unreadable (so a truncated
upload becomes an error row, not a skipped file)."""
SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
"""llama.cpp's split naming (``gguf-split``); the reader checks the parts' own headers."""
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass
class Discovery:
    units: list[ModelUnit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Walked files that are not models."""

    def add(self, unit: ModelUnit, seen: set[str]) -> None:
        if unit.key_path not in seen:  # the same model reached twice is scanned once
            seen.add(unit.key_path)
            self.units.append(unit)


def _sniff(path: str) -> bool:
    """Do the first bytes look like a checkpoint (the readers decide for sure)?"""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(64)
    except OSError:
        return False
    if prefix[:4] in (b"GGUF", b"FUGG"):
        return True
    if len(prefix) >= 9 and prefix[8:9] == b"{" and 2 <= struct.unpack_from("<Q", prefix)[0] <= size - 8:
        return True  # safetensors: a header length that fits, then a JSON object
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return True  # a pickle: refused by the readers, flagged by the policy
    return looks_like_llama2c(prefix, size)


def is_model_folder(names: Iterable[str]) -> bool:
    """An HF directory (``config.json`` beside weights) or a sharded safetensors folder."""
    names = set(names)
    if any(n.endswith(INDEX_SUFFIX) for n in names):
        return True
    return "config.json" in names and any(n.lower().endswith(WEIGHT_SUFFIXES) for n in names)


def _folder_unit(path: str, ident: str) -> ModelUnit:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        names = []
    return ModelUnit(ident, os.path.abspath(path), stamp_members([os.path.join(path, n) for n in names]))


def _split_parts(path: str) -> list[str] | None:
    match = SPLIT_GGUF.match(os.path.basename(path))
    if not match:
        return None
    directory, count = os.path.dirname(path), int(match.group("count"))
    parts = [os.path.join(directory, f"{match.group('stem')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, min(count, 99_999) + 1)]
    return [p for p in parts if os.path.isfile(p)] or [path]


def file_unit(path: str, ident: str | None = None) -> ModelUnit:
    """One named file as a model; a split GGUF part becomes its whole set (opened by its first part)."""
    parts = _split_parts(path)
    if parts:
        first = parts[0]
        return ModelUnit(ident or os.path.join(os.path.dirname(path), os.path.basename(first)), os.path.abspath(first),
                         stamp_members(parts))
    return ModelUnit(ident or path, os.path.abspath(path), stamp_members([path]))


def _walk(top: str, found: Discovery, seen: set[str]) -> None:
    for directory, dirnames, filenames in os.walk(top, onerror=lambda exc: found.add(file_unit(str(exc.filename)), seen)):
        dirnames.sort()
        if directory != top and is_model_folder(filenames):
            dirnames.clear()  # the folder is one model; its subfolders belong to it
            found.add(_folder_unit(directory, directory), seen)
            continue
        grouped: set[str] = set()
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            if path in grouped or not os.path.isfile(path):
                continue
            parts = _split_parts(path)
            if parts:
                grouped.update(parts)
                found.add(file_unit(path), seen)
            elif name.lower().endswith(WEIGHT_SUFFIXES) or _sniff(path):
                found.add(file_unit(path), seen)
            else:
                found.skipped.append(path)


def discover(inputs: Sequence[str]) -> Discovery:
    """Every model named by ``inputs``, in order, each once. Raises
    :class:`provenance.scan.manifest.ManifestError` on a bad manifest."""
    found, seen = Discovery(), set()
    for raw in inputs:
        path = os.path.normpath(os.fspath(raw))
        if os.path.isdir(path):
            try:
                names = os.listdir(path)
            except OSError:
                names = []
            if is_model_folder(names):
                found.add(_folder_unit(path, path), seen)
            else:
                _walk(path, found, seen)
        elif is_manifest(path):
            for entry in read_manifest(path):
                unit = _folder_unit(entry.path, entry.id or entry.path) if os.path.isdir(entry.path) else file_unit(entry.path, entry.id)
                found.add(unit, seen)
        else:
            found.add(file_unit(path), seen)  # missing or unreadable: the reader's error becomes the row
    return found
