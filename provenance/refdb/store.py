"""A reference database directory: locate the shipped one, list, load and write entries.

Where the shipped database lives: the files are kept once, in the repository's
``data/reference_hashes/``; the package reaches them through ``provenance/refdb/shipped``,
a symbolic link to that directory, which setuptools follows when it builds a wheel, so
an installed (non-editable) package carries a real copy as package data. The lookup
order is: an explicit directory, ``$PROVENANCE_REFDB``, the package's ``shipped``
directory, then ``data/reference_hashes`` beside the source tree.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from provenance.fileio import write_atomic
from provenance.refdb.schema import ID_PATTERN, RefDBError, RefEntry, decode_entry, encode_entry

ENV_VAR = "PROVENANCE_REFDB"
MAX_ENTRY_JSON_BYTES = 64 * 1024 * 1024
MAX_ENTRY_NPZ_BYTES = 256 * 1024 * 1024


def default_refdb_path() -> Path:
    """The database used when no ``--refdb`` is given (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    shipped = Path(str(resources.files("provenance.refdb").joinpath("shipped")))
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parent.parent.parent / "data" / "reference_hashes"


class RefDB:
    """Entries of one database directory, loaded on demand and cached."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_refdb_path()
        if not self.directory.is_dir():
            raise RefDBError(f"reference database {self.directory} is not a directory")
        self._cache: dict[str, RefEntry] = {}

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json") if ID_PATTERN.match(p.stem))

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, str) and (self.directory / f"{entry_id}.json").is_file()

    def get(self, entry_id: str) -> RefEntry:
        if entry_id in self._cache:
            return self._cache[entry_id]
        if not ID_PATTERN.match(entry_id):
            raise RefDBError(f"no entry {entry_id!r} (not a valid id)")
        json_path = self.directory / f"{entry_id}.json"
        if not json_path.is_file():
            raise RefDBError(f"no entry {entry_id!r} in {self.directory}")
        text = _read_capped(json_path, MAX_ENTRY_JSON_BYTES).decode("utf-8")
        npz_path = self.directory / f"{entry_id}.npz"
        npz = _read_capped(npz_path, MAX_ENTRY_NPZ_BYTES) if npz_path.is_file() else None
        entry = decode_entry(text, npz, str(json_path))
        if entry.id != entry_id:
            raise RefDBError(f"{json_path}: holds entry {entry.id!r}, not {entry_id!r}")
        self._cache[entry_id] = entry
        if entry.tokenizer_same_as and entry.tokenizer is None:
            if entry.tokenizer_same_as == entry_id:
                raise RefDBError(f"{json_path}: tokenizer same_as refers to itself")
            entry.tokenizer = self.get(entry.tokenizer_same_as).tokenizer
        return entry

    def entries(self) -> list[RefEntry]:
        return [self.get(entry_id) for entry_id in self.ids()]

    def write(self, entry: RefEntry, overwrite: bool = False) -> Path:
        """Write an entry atomically: the arrays first, then the JSON that refers to them."""
        json_path = self.directory / f"{entry.id}.json"
        if json_path.exists() and not overwrite:
            raise RefDBError(f"entry {entry.id!r} already exists in {self.directory} (use --force to replace it)")
        text, npz = encode_entry(entry)
        npz_path = self.directory / f"{entry.id}.npz"
        if npz is not None:
            write_atomic(npz_path, npz)
            _readable(npz_path)
        elif npz_path.exists():
            npz_path.unlink()
        write_atomic(json_path, text)
        _readable(json_path)
        self._cache.pop(entry.id, None)
        return json_path


def _readable(path: Path) -> None:
    # write_atomic's temp files are private (0600); database files are meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _read_capped(path: Path, cap: int) -> bytes:
    size = path.stat().st_size
    if size > cap:
        raise RefDBError(f"{path}: {size} bytes exceeds the cap of {cap}")
    return path.read_bytes()
