"""Truncate every real file of ../shared/data and read each prefix through the full read path.

    python scripts/truncation_sweep.py [--all] [--json OUT] [FILE ...]

For each file, a copy on tmpfs is cut with ``ftruncate`` to each length (longest first, so
each cut only shrinks it) and read by :func:`tests.fuzz.targets.read_everything` (open,
the ``inspect`` document, architecture, tokenizer, rows of the first tensors). Every length
must give either the full read (the uncut file) or a clean
:class:`~provenance.errors.ProvenanceError`; any other exception is printed with its
length and makes the exit status 1. The longest single read is reported (a hang would show).

Lengths: with ``--all``, every length from 0 to the file's size. By default (what fits a
shared 2-core machine), per kind of file:

* a checkpoint with tensors (GGUF, llama2.c, safetensors): every length through its headers
  (to the data section), every boundary the reader knows (each metadata record, tensor
  record and tensor extent, +-1), and a stride of 509 bytes through the tensor data, where the
  reader reads no byte at open and only the file's size decides;
* a GGUF without tensors (a vocabulary): its header is the whole file (1.7 MB of token
  strings, one array record): every length through the first 64 KiB (every record before
  the vocabulary and its first few thousand strings), each metadata record's start +-1 and a
  509-byte stride through the rest of the array;
* a SentencePiece ``tokenizer.model``: a stream of top-level records (32,000 ``pieces``, then
  ``trainer_spec`` and ``normalizer_spec``), each piece record of one shape whatever its
  index: every length through the first 8 KiB (the control, unknown and 256 byte-fallback
  pieces and the first normal ones), every length from the last piece's start to the end (the
  last piece and both specs), each 64th piece record's start +-1 and a 509-byte stride;
* anything else (text, archives): every length through the first 64 KiB (all of the
  files here) and a 509-byte stride through the rest.

Every uncut file is read whole too. ``docs/security.md`` records the counts of the last run.
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
from provenance.formats.sentencepiece_model import _Reader as _ProtoReader  # noqa: E402
from provenance.formats.sentencepiece_model import looks_like_sentencepiece  # noqa: E402
from tests.fuzz.targets import read_everything  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HEAD_BYTES = 64 * 1024
STRIDE = 509


SENTENCEPIECE_HEAD = 8 * 1024
PIECE_SAMPLE = 64


def _sentencepiece_records(path: Path) -> list[tuple[int, int]]:
    """``(field number, start)`` of each top-level record of a SentencePiece model (the
    reader's own protobuf cursor; the uncut file is valid)."""
    data = path.read_bytes()
    cursor = _ProtoReader(data, str(path))
    records = []
    while cursor.pos < cursor.end:
        start = cursor.pos
        number, wire = cursor.key("ModelProto")
        cursor.skip(wire, "ModelProto")
        records.append((number, start))
    return records


def lengths(path: Path, every: bool) -> list[int]:
    """The cut lengths of one file (longest first), by the rules of this script's docstring."""
    size = path.stat().st_size
    if every:
        return list(range(size, -1, -1))
    chosen = {size}
    with open(path, "rb") as handle:
        sentencepiece = looks_like_sentencepiece(handle.read(16))
    if sentencepiece:
        records = _sentencepiece_records(path)
        pieces = [start for number, start in records if number == 1]
        marks = {start + d for start in pieces[::PIECE_SAMPLE] for d in (-1, 0, 1)}
        chosen |= set(range(min(size, SENTENCEPIECE_HEAD) + 1)) | set(range(pieces[-1], size + 1)) | marks
        chosen |= set(range(0, size + 1, STRIDE))
        return sorted((n for n in chosen if 0 <= n <= size), reverse=True)
    try:
        checkpoint = open_checkpoint(path)
    except ProvenanceError:
        checkpoint = None
    if checkpoint is None:
        end, marks = min(size, HEAD_BYTES), set()
    else:
        with checkpoint:
            marks = set()
            if isinstance(checkpoint, GGUFCheckpoint):
                header = checkpoint._headers[0]
                marks |= set(header.key_offsets.values()) | {entry.entry_offset for entry in header.tensors}
            if checkpoint.tensors:
                end = max(min(span.data_start, size) for span in checkpoint.files)
                for info in checkpoint.tensors.values():
                    marks |= {info.offset, info.offset + info.n_bytes}
            else:  # tokenizer-only inputs and vocabulary GGUFs: all structure
                end = min(size, HEAD_BYTES)
    marks = {m + d for m in marks for d in (-1, 0, 1)}
    chosen |= set(range(end + 1)) | marks | set(range(end, size + 1, STRIDE))
    return sorted((n for n in chosen if 0 <= n <= size), reverse=True)


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
    started, cpu = time.perf_counter(), time.process_time()
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
            "lengths": len(cuts), "all_lengths": len(cuts) == size + 1,
            "cpu_s": round(time.process_time() - cpu, 1), "outcomes": dict(outcomes),
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
