"""Benchmark: peak memory of ``provenance refdb add`` on generated checkpoints of growing size.

Checkpoints are written by gguf's own writer (bench_fingerprint.write_candidate: real Q8_0
blocks, llama layers, streamed to disk): llama-7B-shaped at two sizes, and one layer of
llama-70B's shapes (8192 wide, ffn 28672: the largest matrices a 70B model has). Each
measurement runs in a fresh process that prints its own peak RSS (``ru_maxrss``):

* baseline: the same process reading the largest tensor whole as float32 and taking the
  float64 copy a whole-matrix summary needs (what ``refdb add`` did before it streamed);
* ``refdb add`` (file and tensor hashes, streamed constancy and summaries, fingerprint).

``--existing FILE`` (repeatable) adds rows for checkpoints already on disk, read in place and
never modified: e.g. the 13.5 GB Llama-7B-shaped F16 GGUF that bench_quant_e2e.py caches
(``.cache/bench-7b/llama-7b-32L-f16.gguf``), a whole 32-layer model.

usage: python benchmarks/bench_refdb_add.py [--dir DIR] [--small-gb 0.5] [--large-gb 2] [--existing FILE]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_fingerprint import write_candidate

CHILD_ADD = """
import resource, sys
from provenance.cli import main
try:
    main(["refdb", "add", sys.argv[1], "--id", "bench", "--refdb", sys.argv[2]])
except SystemExit as exc:
    assert not exc.code, exc.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
CHILD_WHOLE = """
import resource, sys
import numpy as np
from provenance.formats import open_checkpoint
with open_checkpoint(sys.argv[1]) as ckpt:
    info = max(ckpt.tensors.values(), key=lambda i: i.n_elements)
    values = ckpt.read(info.name)
    as64 = values.astype(np.float64)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(code: str, *args: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``code`` run in a fresh interpreter."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return int(out.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - started


def _row(label: str, path: Path, work: Path) -> str:
    """One table row: the baseline and ``refdb add`` peak RSS on ``path`` (a scratch database in ``work``)."""
    from provenance.formats import open_checkpoint

    with open_checkpoint(path) as ckpt:
        largest = max(ckpt.tensors.values(), key=lambda i: i.n_elements)
        shape = "x".join(str(d) for d in largest.shape)
    whole, _ = peak_rss_mib(CHILD_WHOLE, str(path))
    db = work / "db"
    db.mkdir(exist_ok=True)
    try:
        added, seconds = peak_rss_mib(CHILD_ADD, str(path), str(db))
    finally:
        shutil.rmtree(db)
    return (f"| {label} | {path.stat().st_size / 1024**3:.2f} GiB | {shape} ({largest.n_elements * 4 / 1024**2:.0f} MiB "
            f"as float32) | {whole:.0f} MiB | {added:.0f} MiB | {added / whole:.2f}x | {seconds:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="where to write the checkpoints (deleted afterwards)")
    parser.add_argument("--small-gb", type=float, default=0.5)
    parser.add_argument("--large-gb", type=float, default=2.0)
    parser.add_argument("--existing", action="append", default=[], metavar="FILE",
                        help="an existing checkpoint to measure in place (repeatable)")
    parser.add_argument("--existing-only", action="store_true", help="skip the generated checkpoints")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-refdb-add-"))
    work.mkdir(parents=True, exist_ok=True)
    cases = [("7B-shaped", args.small_gb, 4096, 11008), ("7B-shaped", args.large_gb, 4096, 11008),
             ("70B-shaped, 1 layer", 0.0, 8192, 28672)]
    print("| checkpoint | file size | largest tensor | baseline: whole-tensor read | refdb add | ratio | refdb add time |")
    print("|---|---|---|---|---|---|---|")
    try:
        for existing in map(Path, args.existing):
            print(_row(existing.name, existing, work))
        for label, gb, n_embd, n_ff in ([] if args.existing_only else cases):
            path = work / f"{label.split(',')[0]}-{gb}.gguf"
            write_candidate(path, int(gb * 1024**3), "Q8_0", n_embd=n_embd, n_ff=n_ff)
            try:
                print(_row(label, path, work))
            finally:
                path.unlink()
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
