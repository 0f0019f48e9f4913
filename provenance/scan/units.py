"""What the scan schedules: one model (a unit) and the files it is made of.

A unit is a single checkpoint file, a split GGUF set, or a model folder (an HF directory
or a sharded safetensors folder). Its members' sizes and modification times, taken when
the unit is discovered, key a finished row on a rerun (docs/scan.md, "Resuming").
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FileStamp:
    """One member file as it was when discovered."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileStamp:
        info = os.stat(path)
        return cls(path, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class ModelUnit:
    """One model to scan: the path the readers open, and the files it is made of."""

    id: str
    """The row's id: the manifest's ``id``, else the path as found."""
    path: str
    """What :func:`provenance.formats.open_checkpoint` opens (a file, or a model folder), absolute:
    workers on other nodes run in other directories."""
    members: tuple[FileStamp, ...]
    """Every file of the unit (empty when the path does not exist or is not readable)."""

    @property
    def key_path(self) -> str:
        """The path that identifies the unit across runs (absolute, links resolved)."""
        return os.path.realpath(self.path)

    @property
    def n_bytes(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def mtime_ns(self) -> int:
        return max((m.mtime_ns for m in self.members), default=0)

    @property
    def stat_key(self) -> str:
        """A digest of every member's name, size and mtime: equal keys mean an unchanged unit."""
        digest = hashlib.sha256()
        for member in sorted(self.members, key=lambda m: m.path):
            digest.update(f"{os.path.basename(member.path)}\0{member.size}\0{member.mtime_ns}\n".encode())
        return digest.hexdigest()[:32]


def stamp_members(paths: list[str]) -> tuple[FileStamp, ...]:
    """Stamps of the regular files among ``paths``, absolute (others vanish: the reader reports them)."""
    stamps = []
    for path in paths:
        try:
            if os.path.isfile(path):
                stamps.append(FileStamp.of(os.path.abspath(path)))
        except OSError:
            continue
    return tuple(stamps)
