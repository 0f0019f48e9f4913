"""Watermark key generation per weight: the compiled ``provenance-wm-v2`` generator against
numpy's own Philox Gaussians, measured in the same run.

* baseline: ``numpy.random.Generator(Philox(key)).standard_normal(n, dtype=float32)`` into a
  reused buffer (numpy's ziggurat, the fastest way numpy offers to draw from Philox);
* ``fill_gaussian``: the v2 key (Philox4x32-10 + float32 Box-Muller) written into a buffer;
* ``gaussian_dots`` with 1 and 3 signals: the key generated in place and multiplied into
  the signals without being stored (what detection and tracing run per key).

Prints ns per weight (CPU time of the process, all threads) and the
ratio to the baseline. The machine may be shared: CPU time, not wall time, is reported.

    python benchmarks/bench_watermark_keygen.py [--weights 16777216] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_ns_per_weight(step: Callable[[], None], n: int, repeat: int) -> float:
    step()  # compiles (numba caches it) and faults the buffers in
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        step()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e9 / n


def main() -> int:
    import numpy as np

    from provenance.watermark.keygen import fill_gaussian, gaussian_dots
    from provenance.watermark.keys import key_seed

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.weights
    words = np.frombuffer(key_seed(b"bench-secret-0123456789", "acme", "blk.0.ffn_up.weight")[:16], dtype="<u4")
    words = words.astype(np.uint32)
    out = np.empty(n, dtype=np.float32)
    ys = np.random.default_rng(0).standard_normal((3, n), dtype=np.float32)
    sums = np.zeros(3)
    gen = np.random.Generator(np.random.Philox(key=int.from_bytes(words.tobytes(), "little")))
    rows = {
        "numpy Philox standard_normal (float32, into a buffer)": lambda: gen.standard_normal(n, dtype=np.float32, out=out),
        "v2 fill_gaussian (into a buffer)": lambda: fill_gaussian(words, np.int64(0), out),
        "v2 gaussian_dots, 1 signal (key not stored)": lambda: gaussian_dots(words, np.int64(0), ys[:1], np.int64(0),
                                                                          np.int64(n), sums[:1]),
        "v2 gaussian_dots, 3 signals (key not stored)": lambda: gaussian_dots(words, np.int64(0), ys, np.int64(0),
                                                                           np.int64(n), sums),
    }
    results = {label: cpu_ns_per_weight(step, n, args.repeat) for label, step in rows.items()}
    base = next(iter(results.values()))
    print(f"{n:,} weights, median of {args.repeat} runs, CPU time:")
    for label, ns in results.items():
        print(f"  {label:55s} {ns:6.2f} ns/weight  {base / ns:5.2f}x numpy's speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
