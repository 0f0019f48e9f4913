"""Per-model limits enforced inside the worker: memory (RLIMIT_DATA) around one task.

RLIMIT_DATA bounds the heap and private writable mappings, which is what an analysis
allocates, and leaves out the read-only file mappings the GGUF reader uses, so a 40 GB
model can be mapped under a 4 GiB limit. The limit is set relative to what the worker
already holds (its imports and caches) and lifted after the task, so it bounds what one
model may add. An allocation past it raises ``MemoryError`` (numpy) or a ``RuntimeError``
(torch's allocator) that becomes the model's error row; if native code aborts instead, the
worker dies and the executor reports the row (the driver never does the allocation).
Wall time is enforced from outside by the executor, which can kill a worker that hangs.
"""
from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager


def data_bytes() -> int | None:
    """The process's data segment size (VmData), or None where /proc is not available."""
    try:
        with open(f"/proc/{os.getpid()}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextmanager
def memory_limit(extra_bytes: int | None) -> Iterator[None]:
    """Allow the block ``extra_bytes`` of data memory on top of the current use (Linux; elsewhere no limit)."""
    current = data_bytes() if extra_bytes is not None else None
    if current is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = current + int(extra_bytes or 0)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
