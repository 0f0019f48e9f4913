"""Whole-file output and strict JSON, shared by every layer that writes results.

A report, a model or a database entry is written whole or not at all (temp file in the
same directory, fsync, rename), so an interrupted run never leaves a partial file."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole file or nothing: a temp file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_files_atomic(directory: str | Path, files: Mapping[str, str | bytes]) -> dict[str, Path]:
    """Write several files into ``directory`` all at once or not at all.

    Everything is already in memory; it goes into a temporary sibling directory first. A new
    directory is then renamed into place in one step. An existing one is never replaced
    (it may hold the user's other files): our files are moved in one by one, each rename
    atomic, only after every one of them was written. Names may hold ``/`` (subfolders) but
    never leave ``directory``. Returns ``{name: path}``.
    """
    directory = Path(directory)
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"output name {name!r} leaves the output directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        if directory.exists():
            for name in files:
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, directory / name)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: directory / name for name in files}


def json_ready(value: Any) -> Any:
    """Strict-JSON form: NaN/inf become null (pandas fills gaps with NaN), numpy scalars
    and arrays become Python numbers and lists, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(document: Any) -> str:
    # ensure_ascii: file-derived strings cannot put raw control or bidi characters on a terminal.
    return json.dumps(json_ready(document), indent=2, ensure_ascii=True, allow_nan=False, default=str) + "\n"
