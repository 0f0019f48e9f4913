"""Grid-consistency throughput on the real llama.cpp files: the compiled check against the
torch implementation (the baseline, run on the same chunks in the same process).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gridcheck.py [--threads 1] [--reps 3]

Per file: the verdict and source precision ``quantcheck`` reports end to end, then the grid
check alone (reference rows already decoded, the candidate's stored blocks in memory) in
million weights per CPU second for the compiled kernels (``QuantType.check``) and for the
torch recipes (``check_block_rows_torch``), medians of ``--reps`` rounds, and their ratio.
CPU seconds rather than wall time: the machine is shared, and other jobs' load shows in wall
time far more than in the CPU time a process gets.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from provenance.codecs.registry import quant_type
from provenance.formats import open_checkpoint
from provenance.quant import QuantCheckOptions, quantcheck
from provenance.quant.gridcheck import check_block_rows, check_block_rows_torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "llamacpp-quant"


def chunks(candidate: Path, reference: Path) -> list[tuple[torch.Tensor, np.ndarray, int]]:
    out = []
    with open_checkpoint(candidate) as cand, open_checkpoint(reference) as ref:
        for name, info in cand.tensors.items():
            if info.block_size > 1 and quant_type(info.dtype).check is not None:
                out.append((torch.from_numpy(np.ascontiguousarray(ref.read_rows(name))), cand.raw_rows(name),
                            info.ggml_type))
    return out


def cpu_seconds(run, work: list[tuple[torch.Tensor, np.ndarray, int]], precision: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    for x, raw, ggml_type in work:
        run(x, raw, ggml_type, precision)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    compiled = lambda x, raw, t, p: check_block_rows(x, raw, t, p, threads=args.threads)  # noqa: E731
    print(f"load average {os.getloadavg()}; CPU seconds; compiled on {args.threads} thread(s), torch on 1")
    print(f"{'file':28} {'verdict':10} {'precision':9} {'weights':>9} {'torch Mw/s':>10} {'compiled Mw/s':>13} {'x':>6}")
    for path in sorted(DATA.glob("tiny-llama-*.gguf")) + [DATA / "stories260K-Q8_0.gguf"]:
        if path.name.endswith(("f32.gguf", "f16.gguf")):
            continue
        reference = DATA / ("stories260K-f32.gguf" if path.name.startswith("stories") else "tiny-llama-f32.gguf")
        result = quantcheck(path, reference, QuantCheckOptions(threads=args.threads))
        work = chunks(path, reference)
        cpu_seconds(compiled, work[:1], result.source_precision)  # compiled once, outside the timing
        rounds = [(cpu_seconds(check_block_rows_torch, work, result.source_precision),
                   cpu_seconds(compiled, work, result.source_precision)) for _ in range(args.reps)]
        base, ours = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        n = sum(x.numel() for x, _, _ in work)
        print(f"{path.name:28} {result.verdict:10} {result.source_precision:9} {n:9d} {n / base / 1e6:10.1f} "
              f"{n / ours / 1e6:13.1f} {base / ours:6.1f}")


if __name__ == "__main__":
    main()
