"""What every model of a scan is checked with, and the limits each model runs under.

Both are frozen dataclasses of plain values, so they pickle unchanged to a local worker
process or a Ray worker on another node. Paths are made absolute by :meth:`ScanOptions.resolved`
(workers run in other directories).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace

from provenance.options import option
from provenance.version import __version__

DEFAULT_SECONDS = 600.0
DEFAULT_MEMORY = 4 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(value: str | int | None) -> int | None:
    """``4GiB``, ``512M``, ``2g`` (binary units), a byte count, or ``none`` (no limit)."""
    if value is None or isinstance(value, int):
        return value or None
    if value.strip().lower() in ("none", "0"):
        return None
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 4GiB, 512M or none")
    return int(float(match.group(1)) * 1024 ** "bkmgt".index((match.group(2) or "b").lower()))


@dataclass(frozen=True)
class Limits:
    """Per model: wall time from dispatch to result, and memory it may allocate on top of the worker's own."""

    seconds: float = option(DEFAULT_SECONDS, "Wall-time limit per model, in seconds; a model past it becomes an error row.",
                            flag="--timeout", range=(0.001, None))
    memory_bytes: int | None = option(
        DEFAULT_MEMORY, "Memory one model may allocate in its worker, in bytes or as 4GiB, 512M (or none); past it the "
        "model becomes an error row. Heap and private mappings (RLIMIT_DATA), not the readers' file mappings.",
        flag="--memory", convert=parse_size, metavar="SIZE")


@dataclass(frozen=True)
class ScanOptions:
    """The analyses run on each model (docs/scan.md)."""

    policy: str | None = None
    """A ``check`` policy file; without one, every readable format passes and only
    pickles (violation) and unreadable files (error) are flagged."""
    refdb: str | None = None
    """Reference database for ``identify`` (default: the shipped one)."""
    references: tuple[str, ...] = ()
    """Checkpoints to test each model's lineage against; a related model is flagged."""
    keys: str | None = None
    """A watermark key registry; a model carrying a client's mark is flagged."""
    hashes: bool = option(False, "Key finished models by the SHA-256 of their files (read by the workers), not by "
                                 "size and mtime.")

    def resolved(self) -> ScanOptions:
        def absolute(path: str | None) -> str | None:
            return os.path.abspath(path) if path else None

        return replace(self, policy=absolute(self.policy), refdb=absolute(self.refdb),
                       references=tuple(os.path.abspath(r) for r in self.references), keys=absolute(self.keys))

    def fingerprint(self) -> str:
        """A digest of the options and of the files they name (name, size, mtime): a finished
        row counts as done on a rerun only under the same fingerprint."""
        stamps = {}
        for path in filter(None, (self.policy, self.refdb, self.keys, *self.references)):
            stamps[path] = _stamp(path)
        settings = {k: v for k, v in asdict(self).items() if k != "hashes"}  # hashing changes the key, not the row
        text = json.dumps({"version": __version__, "options": settings, "files": stamps}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _stamp(path: str) -> list[object]:
    """Name, size and mtime of a file, or of every file directly in a directory."""
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return []
        return [_stamp(os.path.join(path, n)) for n in names if os.path.isfile(os.path.join(path, n))]
    try:
        info = os.stat(path)
    except OSError:
        return [os.path.basename(path), None]
    return [os.path.basename(path), info.st_size, info.st_mtime_ns]
