"""Whole-file output and strict JSON, shared by every layer that writes results.

A report, a model or a database entry is written whole or not at all (temp file in the
same directory, fsync, rename), so an interrupted run never leaves a partial file."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: temp files get the mode a plain open() would give


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write (by any means) inside the ``with``; on success it
    is synced and renamed over ``path``, on any exception (Ctrl-C included) it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_file` for a directory: a staging directory beside ``path``, swapped
    in on success (a directory already at ``path`` is replaced), removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(staging, 0o777 & ~_UMASK)
    try:
        yield staging
        if path.is_dir() and not path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole file or nothing: a temp file in the same directory, then rename."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


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
