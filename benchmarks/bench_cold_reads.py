"""How a cold file is read fastest and cheapest here: buffered reads (plain, with the kernel's
read-ahead asked for, with the pages dropped behind) against ``O_DIRECT`` (what the readers do for
large reads of large files: docs/architecture.md, "Reading cold files").

    python benchmarks/bench_cold_reads.py FILE [--gb 6] [--reps 2]

Each way reads the first ``--gb`` GB of FILE in 16 MB reads into one page-aligned buffer, the
file's page cache dropped first, in its own process (so its system CPU is its own); the ways
alternate, ``--reps`` times. Prints seconds, GB/s and system CPU per way, and each way's ratio
to the plain buffered read measured in the same run.
"""
from __future__ import annotations

import argparse
import mmap
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant_e2e import drop_cache

CHUNK = 16 << 20
WAYS = ("buffered", "willneed", "dontneed", "direct")


def read_once(path: str, way: str, limit: int) -> tuple[float, float]:
    """(seconds, system CPU seconds) of one cold read of ``path``'s first ``limit`` bytes."""
    drop_cache([Path(path)])
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if way == "direct" else 0))
    view = memoryview(mmap.mmap(-1, CHUNK))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t0 = time.perf_counter()
    offset = 0
    while offset < limit and (n := os.preadv(fd, [view], offset)) > 0:
        if way == "willneed":
            os.posix_fadvise(fd, offset + n, 4 * CHUNK, os.POSIX_FADV_WILLNEED)
        elif way == "dontneed":
            os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)
        offset += n
    seconds = time.perf_counter() - t0
    os.close(fd)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--gb", type=float, default=6.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one read, in a child process
    args = ap.parse_args()
    limit = min(int(args.gb * 1e9), os.path.getsize(args.file))
    if args.way:
        print(*read_once(args.file, args.way, limit))
        return
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for _ in range(args.reps):
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, args.file, "--gb", str(args.gb), "--way", way],
                                 capture_output=True, text=True, check=True).stdout.split()
            results[way].append((float(out[0]), float(out[1])))
    base = statistics.median(s for s, _ in results["buffered"])
    print(f"{limit / 1e9:.1f} GB of {args.file}, medians of {args.reps}, load {os.getloadavg()[0]:.1f}")
    print("| way | s | GB/s | system CPU s | x buffered |")
    print("|---|---|---|---|---|")
    for way, runs in results.items():
        seconds, system = statistics.median(s for s, _ in runs), statistics.median(c for _, c in runs)
        print(f"| {way} | {seconds:.1f} | {limit / seconds / 1e9:.2f} | {system:.2f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
