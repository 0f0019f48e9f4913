"""CPU cost of one fuzz execution per target, of the harness as it is against its previous form.

The fuzz campaign (docs/security.md, "Fuzzing") runs on a shared machine, so executions per
CPU second decide how far it gets. Each target here replays the same deterministic,
libFuzzer-like mutations of its seeds (byte flips, inserted and erased runs, truncations and
copies; fixed seed) through :class:`tests.fuzz.targets.Runner` twice, interleaved in rounds:

* ``before``: the input's files unlinked and created anew per execution (the harness's former
  way), with the start-up heap left to the cyclic collector;
* ``after``: the harness as it is: files rewritten in place, start-up objects frozen
  (``gc.freeze``, as ``tests/fuzz/run.py`` does before fuzzing).

The read path is the same in both (open, the inspect document, rows of the first tensors), so
the ratio is the harness's share. CPU time (``time.process_time``), not wall time: the machine
is shared. Uninstrumented (atheris adds its own per-branch cost to both sides alike).

    python benchmarks/bench_fuzz_harness.py [--inputs 400] [--rounds 3] [TARGET ...]
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance.errors import ProvenanceError  # noqa: E402
from tests.fuzz.targets import CORPUS, TARGETS, Runner, read_everything  # noqa: E402


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four libFuzzer-style mutations (most inputs a fuzzer runs are near a seed)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 2:
            del out[at:at + rng.randint(1, 16)]
        elif kind == 3:
            del out[at:]
        elif out:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randint(1, 32)]
    return bytes(out)


def inputs(target: str, count: int) -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((CORPUS / target).glob("*"))]
    rng = random.Random(1)
    return [mutate(rng.choice(seeds), rng) for _ in range(count)]


def run_before(runner: Runner, data: bytes) -> None:
    """The former harness: stale files removed by listing, each input file unlinked and created."""
    for name in set(os.listdir(runner.directory)) - runner.fixed:
        os.unlink(runner.directory / name)
    for name, content in runner.target.files(data).items():
        (runner.directory / name).write_bytes(content)
    try:
        read_everything(runner.opened)
    except ProvenanceError:
        pass


def cpu_per_input(run, runner: Runner, batch: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    for data in batch:
        run(runner, data)
    return (time.process_time() - start) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} (shared machine); CPU microseconds per execution, "
          f"best of {args.rounds} rounds")
    print(f"{'target':18} {'before':>8} {'after':>8} {'ratio':>6}")
    for target in args.targets:
        runner = Runner(TARGETS[target])
        batch = inputs(target, args.inputs)
        for data in batch:  # warm-up: lazy imports, compiled kernels
            runner.run(data)
        before, after = [], []
        for _ in range(args.rounds):
            gc.unfreeze()
            before.append(cpu_per_input(run_before, runner, batch))
            gc.collect()
            gc.freeze()
            after.append(cpu_per_input(lambda r, d: r.run(d), runner, batch))
        gc.unfreeze()
        runner.close()
        b, a = min(before), min(after)
        print(f"{target:18} {b * 1e6:8.0f} {a * 1e6:8.0f} {b / a:6.2f}", flush=True)


if __name__ == "__main__":
    main()
