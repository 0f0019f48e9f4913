"""Truncate every real file of ../shared/data and read each prefix through the full read path.

    python scripts/truncation_sweep.py [--all] [--json OUT] [FILE ...]

For each file, a copy on tmpfs is cut with ``ftruncate`` to each length (longest first, so
each cut only shrinks it) and read by :func:`tests.fuzz.targets.read_everything` (open,
the ``inspect`` document, architecture, tokenizer, rows of the first tensors). Every length
must give either the full read (the uncut file) or a clean
:class:`~provenance.errors.ProvenanceError`; any other exception is printed with its
length and makes the exit status 1. The longest single read is reported (a hang would show).

Lengths: with ``--all``, every length from 0 to the file's size. By default (what fits a
shared 2-core machine): every length through the file's structure, where the reader
parses (a GGUF's header up to its data section, a safetensors header, a llama2.c header;
the first 64 KiB of a file without tensors: vocabularies, tokenizers, text), every boundary
the reader knows (each metadata record, tensor record and tensor extent, +-1), and a stride
of 509 bytes through the rest: tensor data, where the reader reads no byte at open and only
the file's size decides, and the rest of a long vocabulary or tokenizer. ``docs/security.md``
records the counts of the last run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance.errors import ProvenanceError  # noqa: E402
from provenance.formats import open_checkpoint  # noqa: E402
from provenance.formats.gguf_reader import GGUFCheckpoint  # noqa: E402
from tests.fuzz.targets import read_everything  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HEAD_BYTES = 64 * 1024
STRIDE = 509


def structure(path: Path) -> tuple[int, set[int]]:
    """``(end of the part the reader parses, boundaries it knows)`` of an intact file: a
    checkpoint's headers (to its data section), or the first 64 KiB of anything else."""
    size = path.stat().st_size
    try:
        checkpoint = open_checkpoint(path)
    except ProvenanceError:
        return min(size, HEAD_BYTES), set()
    with checkpoint:
        if not checkpoint.tensors:  # tokenizer-only inputs and vocabulary GGUFs: all structure
            return min(size, HEAD_BYTES), set()
        marks: set[int] = set()
        if isinstance(checkpoint, GGUFCheckpoint):
            header = checkpoint._headers[0]
            marks |= set(header.key_offsets.values()) | {entry.entry_offset for entry in header.tensors}
        end = max(min(span.data_start, size) for span in checkpoint.files)
        for info in checkpoint.tensors.values():
            marks |= {info.offset, info.offset + info.n_bytes}
        return end, {m + d for m in marks for d in (-1, 0, 1) if 0 <= m + d <= size}


def lengths(path: Path, every: bool) -> list[int]:
    size = path.stat().st_size
    if every:
        chosen = set(range(size + 1))
    else:
        end, marks = structure(path)
        chosen = set(range(end + 1)) | marks | set(range(end, size + 1, STRIDE)) | {size}
    return sorted(chosen, reverse=True)


def sweep(path: Path, every: bool, scratch: Path) -> dict[str, object]:
    copy = scratch / path.name
    shutil.copyfile(path, copy)
    cuts = lengths(path, every)
    try:  # warm up outside the timings: lazy imports, compiled kernels
        read_everything(copy)
    except ProvenanceError:
        pass
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []
    slowest = 0.0
    started = time.perf_counter()
    with open(copy, "r+b") as handle:
        for length in cuts:
            handle.truncate(length)
            t0 = time.perf_counter()
            try:
                read_everything(copy)
                outcomes["read" if length == path.stat().st_size else "read-truncated"] += 1
            except ProvenanceError as exc:
                outcomes[type(exc).__name__] += 1
            except Exception as exc:  # the sweep's finding: anything but a clean error
                crashes.append(f"{length}: {type(exc).__name__}: {exc}")
                (scratch / f"crash-{path.name}-{length}").write_bytes(path.read_bytes()[:length])
            slowest = max(slowest, time.perf_counter() - t0)
    copy.unlink()
    size = path.stat().st_size
    return {"file": str(path.relative_to(SHARED) if path.is_relative_to(SHARED) else path), "size": size,
            "lengths": len(cuts), "all_lengths": len(cuts) == size + 1, "outcomes": dict(outcomes),
            "crashes": crashes, "slowest_s": round(slowest, 4), "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to sweep (default: every file of ../shared/data)")
    parser.add_argument("--all", action="store_true", help="every length of every file")
    parser.add_argument("--json", type=Path, help="write the per-file results here")
    args = parser.parse_args()
    files = args.files or sorted(p for p in SHARED.rglob("*") if p.is_file())
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    scratch = Path(tempfile.mkdtemp(prefix="provenance-truncation-", dir=base))
    results, failed = [], False
    for path in files:
        result = sweep(path, args.all, scratch)
        results.append(result)
        failed |= bool(result["crashes"])
        print(json.dumps(result), flush=True)
    total = sum(int(r["lengths"]) for r in results)  # type: ignore[call-overload]
    print(f"{len(results)} files, {total} truncations read, "
          f"{sum(len(r['crashes']) for r in results)} crashes, slowest read "  # type: ignore[arg-type]
          f"{max(float(r['slowest_s']) for r in results):.3f} s", flush=True)  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not failed:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"reproducers in {scratch}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
