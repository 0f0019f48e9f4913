"""How many times ``investigate`` reads each file, and where its time goes, per analysis.

    python benchmarks/investigate_reads.py CANDIDATE [--reference REF ...] [--keys REGISTRY]
                                           [--json out.json]

Runs :func:`provenance.investigate.run_investigation` in this process with every byte read
counted where it is read: ``Checkpoint.pread_into`` (every tensor read of every reader) and
the streamed whole-file reads of ``provenance.formats.files.open_input`` (hashes). Prints,
for each step (inspect, then each analysis in the order they run), its wall and CPU time and
the bytes it read of each file, as a multiple of that file's size (1.00 = the file read once). Header parses
(mmap of the header, a few MB) are not counted. Warm or cold cache does not change the
counts, only the times.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance.formats import base as formats_base
from provenance.formats import files as formats_files

_lock = threading.Lock()
_counts: dict[str, int] = defaultdict(int)


def _count(path: str, n: int) -> None:
    with _lock:
        _counts[os.path.realpath(path)] += n


def _instrument() -> None:
    """Count every tensor read and every streamed whole-file read by path."""
    pread_into = formats_base.Checkpoint.pread_into

    def counted_pread(self: Any, path: str, buffer: Any, offset: int) -> None:
        pread_into(self, path, buffer, offset)
        _count(path, sum(len(b) for b in buffer) if isinstance(buffer, list) else len(buffer))

    formats_base.Checkpoint.pread_into = counted_pread  # type: ignore[method-assign]
    open_input = formats_files.open_input

    class CountedHandle:
        def __init__(self, handle: BinaryIO, path: str) -> None:
            self.handle, self.path = handle, path

        def readinto(self, buffer: Any) -> int:
            n = self.handle.readinto(buffer)
            _count(self.path, n or 0)
            return n or 0

        def read(self, n: int = -1) -> bytes:
            data = self.handle.read(n)
            _count(self.path, len(data))
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    @contextmanager
    def counted_open(path: str, field: str | None = None) -> Iterator[Any]:
        with open_input(path, field) as handle:
            yield CountedHandle(handle, path)

    formats_files.open_input = counted_open  # type: ignore[assignment]
    import provenance.hashing as hashing

    hashing.open_input = counted_open  # type: ignore[assignment]


def _snapshot() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def _timed(name: str, steps: list[dict[str, Any]], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before, t0, c0 = _snapshot(), time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            after = _snapshot()
            steps.append({"step": name, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                          "bytes": {p: after[p] - before.get(p, 0) for p in after if after[p] != before.get(p, 0)}})
    wrapped.__name__ = getattr(fn, "__name__", name)
    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidate")
    ap.add_argument("--reference", action="append", default=[])
    ap.add_argument("--keys", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    _instrument()
    import provenance.investigate as investigate
    from provenance.investigate import Inputs, registry

    steps: list[dict[str, Any]] = []
    investigate.inspect_checkpoint = _timed("inspect", steps, investigate.inspect_checkpoint)  # type: ignore[attr-defined]
    registry.ANALYSES[:] = [_timed(a.__name__.removesuffix("_analysis"), steps, a) for a in registry.ANALYSES]
    t0, c0 = time.perf_counter(), time.process_time()
    state = investigate.run_investigation(Inputs(args.candidate, tuple(args.reference), args.keys))
    total = time.perf_counter() - t0
    files = {os.path.realpath(p): p for p in (args.candidate, *args.reference)}
    sizes = {real: os.path.getsize(real) for real in files}
    print(f"load {os.getloadavg()[0]:.1f}; total {total:.1f} s")
    print("| step | seconds | cpu s | " + " | ".join(f"x {Path(p).name}" for p in files.values()) + " |")
    print("|---|---|---|" + "---|" * len(files))
    totals: dict[str, int] = defaultdict(int)
    for s in steps:
        for path, n in s["bytes"].items():
            totals[path] += n
        cells = [f"{s['bytes'].get(real, 0) / sizes[real]:.2f}" for real in files]
        print(f"| {s['step']} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | " + " | ".join(cells) + " |")
    cells = [f"{totals.get(real, 0) / sizes[real]:.2f}" for real in files]
    print(f"| all | {total:.1f} | {time.process_time() - c0:.1f} | " + " | ".join(cells) + " |")
    print("summary:", state.report.executive_summary[:300])
    if args.json:
        Path(args.json).write_text(json.dumps({"total_s": total, "steps": steps, "sizes": sizes,
                                               "summary": state.report.executive_summary}, indent=1))


if __name__ == "__main__":
    main()
