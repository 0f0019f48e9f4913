"""What a worker reads once and reuses for every model it scans: the policy, the reference
database and the key registry (docs/scan.md, "Workers").

Each cache is keyed by the path and by the files' sizes and mtimes, so a worker never uses
a stale copy; the values are the same objects a fresh load returns, so a model's result
does not depend on which worker scanned it or in what order.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from provenance.policy import Policy, load_policy
from provenance.policy.load import KNOWN_FORMATS

if TYPE_CHECKING:  # refdb and watermark import torch: load them only in the worker that needs them
    from provenance.refdb import RefDB
    from provenance.watermark import KeySource

NO_POLICY = Policy(path="(no policy)", allow_formats=frozenset(KNOWN_FORMATS))
"""Without ``--policy``: every readable format passes; pickles and unreadable files are still flagged."""


@lru_cache(maxsize=4)
def _policy(path: str, size: int, mtime_ns: int) -> Policy:
    return load_policy(path)


def policy(path: str | None) -> Policy:
    if path is None:
        return NO_POLICY
    info = os.stat(path)
    return _policy(path, info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=4)
def _refdb(directory: str | None) -> RefDB:
    from provenance.refdb import RefDB

    return RefDB(directory)  # entries are decoded on first use and kept by the RefDB itself


def refdb(directory: str | None) -> RefDB:
    return _refdb(directory)


def registry(path: str, arch: object | None) -> list[KeySource]:
    from provenance.watermark.trace import cached_registry

    return cached_registry(path, arch)
