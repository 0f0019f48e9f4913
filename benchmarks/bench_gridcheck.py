"""Grid-consistency throughput: ``quantcheck`` over the real llama.cpp files.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gridcheck.py [--threads 1]

Prints, per file, the verdict, the detected source precision and the weights checked
per second (end to end: reading both files, source-precision detection, all three
recipes' arithmetic, error statistics).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path

from provenance.quant import QuantCheckOptions, quantcheck

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "llamacpp-quant"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"{'file':28} {'verdict':10} {'precision':9} {'weights':>9} {'s':>6} {'Mw/s':>6}")
    for path in sorted(DATA.glob("tiny-llama-*.gguf")) + [DATA / "stories260K-Q8_0.gguf"]:
        if path.name.endswith(("f32.gguf", "f16.gguf")):
            continue
        reference = DATA / ("stories260K-f32.gguf" if path.name.startswith("stories") else "tiny-llama-f32.gguf")
        t0 = time.perf_counter()
        result = quantcheck(path, reference, QuantCheckOptions(threads=args.threads))
        dt = time.perf_counter() - t0
        n = result.n_weights_checked
        print(f"{path.name:28} {result.verdict:10} {result.source_precision:9} {n:9d} {dt:6.2f} {n / dt / 1e6:6.1f}")


if __name__ == "__main__":
    main()
