"""The grid checks on one and two threads: wall nanoseconds per weight of ``compare``'s cells
kernel and ``quantcheck``'s check kernel on a 7B-shaped matrix, against the single kernel call
per chunk (the serial baseline: what ``compare`` ran per chunk before the tiles, with every
weight's f16 rounding, which the cells kernel now skips for an F16 side), same run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gridcheck_threads.py [--rows 4096] [--cols 4096]
                                                                          [--types Q8_0,Q4_K] [--reps 5]

The matrix is Gaussian (std 0.02, rounded to f16 as an F16 reference is) quantized by the
project's quantizer (the tests hold it to llama.cpp byte for byte), and streamed in the chunks
the commands use: 128K weights per call for ``compare``, 1M for ``quantcheck``. Each mode is
timed ``--reps`` times in alternation (medians), wall time and this process's CPU time per
weight: on a 2-core machine shared with others the wall ratio is what the load left; the
CPU column shows that the tiles cost no extra work. Every mode's counts and float64 sums are
checked to be bit-identical to the 1-thread tiles' (the serial call's sums differ only in
summation order and are printed for reference).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from provenance.codecs.native import bind
from provenance.codecs.native import gridcheck as native
from provenance.codecs.quantize_ref import quantize_rows
from provenance.codecs.registry import quant_type
from provenance.compare.engine import GridCheck
from provenance.compare.shape import GRID_TOLERANCE_STEPS
from provenance.formats.base import TensorInfo
from provenance.quant.gridcheck import NEAR, CheckCounts, check_block_rows

COMPARE_CHUNK, QUANTCHECK_CHUNK = 1 << 17, 1 << 20


def matrix(rows: int, cols: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    return x.astype(np.float16).astype(np.float32)


def chunks(x: np.ndarray, raw: np.ndarray, elems: int) -> list[tuple[np.ndarray, np.ndarray]]:
    step = max(1, elems // x.shape[1])
    return [(x[a:a + step], raw[a:a + step]) for a in range(0, x.shape[0], step)]


def cells_serial(name: str, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int, float]:
    """One kernel call per chunk on this thread, every weight's f16 rounding computed (the code
    before the tiles)."""
    qt = quant_type(name)
    fn, tables = bind(qt.cells)
    outside = total = 0
    noise = 0.0
    for x, raw in parts:
        counts, sums = np.zeros(2, np.int64), np.zeros(1, np.float64)
        fn(raw.reshape(-1, qt.type_size), x.reshape(-1, qt.block_size), counts, sums, np.float32(GRID_TOLERANCE_STEPS),
           False, *tables)
        outside += int(counts[native.CELL_OUTSIDE])
        total += int(counts[native.CELL_TOTAL])
        noise += float(sums[native.CELL_NOISE]) / 12.0
    return outside, total, noise


def cells_tiles(name: str, parts: list[tuple[np.ndarray, np.ndarray]], threads: int) -> tuple[int, int, float]:
    qt = quant_type(name)
    info = TensorInfo(name="t", stored_name="t", shape=(1, 1), dtype=name, file="", offset=0, n_bytes=0,
                      block_size=qt.block_size, block_bytes=qt.type_size, ggml_type=qt.ggml_type)
    check = GridCheck("candidate", info, threads, other_f16=True)  # the matrix holds f16 values, as an F16 reference
    for x, raw in parts:
        check.add_compiled(qt, raw, torch.from_numpy(x))
    return check.outside, check.total, check.noise_energy


def check_serial(name: str, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, float]:
    """One check kernel call per chunk on this thread: mismatches and the error sum."""
    qt = quant_type(name)
    fn, tables = bind(qt.check)
    mismatches, sse = 0, 0.0
    for x, raw in parts:
        counts, sums = np.zeros(native.N_COUNTS, np.int64), np.zeros(native.N_SUMS, np.float64)
        fn(raw.reshape(-1, qt.type_size), x.reshape(-1, qt.block_size), counts, sums,
           np.empty(CheckCounts.MAX_KEPT, np.float32), native.PRECISION_CODES["f16"], np.float32(NEAR), *tables)
        mismatches += int(counts[native.N_MISMATCH])
        sse += float(sums[native.SSE])
    return mismatches, sse


def check_tiles(name: str, parts: list[tuple[np.ndarray, np.ndarray]], threads: int) -> tuple[object, ...]:
    qt = quant_type(name)
    totals = CheckCounts()
    sse = 0.0
    for x, raw in parts:
        counts, errors = check_block_rows(torch.from_numpy(x), raw, qt.ggml_type, "f16", threads)
        totals.add(counts)
        sse += errors.sse
    d = asdict(totals)
    d.pop("distances")
    return tuple(d.values()) + (sse,)


def timed(run: Callable[[], object]) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = run()
    return time.perf_counter() - w0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--types", default="Q8_0,Q4_K")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = matrix(args.rows, args.cols)
    n = x.size
    print(f"load average {tuple(round(v, 1) for v in os.getloadavg())}; {os.cpu_count()} CPUs; "
          f"{args.rows}x{args.cols} = {n / 1e6:.1f} M weights; medians of {args.reps}")
    print(f"{'kernel':22} {'mode':12} {'wall ns/w':>9} {'cpu ns/w':>9} {'x serial':>8}  result")
    for name in args.types.split(","):
        raw = quantize_rows(x, name, threads=2)
        small, large = chunks(x, raw, COMPARE_CHUNK), chunks(x, raw, QUANTCHECK_CHUNK)
        modes: dict[str, dict[str, Callable[[], object]]] = {
            f"cells {name}": {"serial": lambda s=small, t=name: cells_serial(t, s),
                              "tiles 1 thr": lambda s=small, t=name: cells_tiles(t, s, 1),
                              "tiles 2 thr": lambda s=small, t=name: cells_tiles(t, s, 2)},
            f"check {name}": {"serial": lambda s=large, t=name: check_serial(t, s),
                              "tiles 1 thr": lambda s=large, t=name: check_tiles(t, s, 1),
                              "tiles 2 thr": lambda s=large, t=name: check_tiles(t, s, 2)},
        }
        for kernel, runs in modes.items():
            for run in runs.values():
                run()  # compiled / loaded outside the timing
            times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in runs}
            results: dict[str, object] = {}
            for _ in range(args.reps):
                for mode, run in runs.items():
                    wall, cpu, results[mode] = timed(run)
                    times[mode].append((wall, cpu))
            assert results["tiles 1 thr"] == results["tiles 2 thr"], (kernel, results)
            base = statistics.median(w for w, _ in times["serial"])
            for mode, ts in times.items():
                wall, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
                shown = str(results[mode])[:60]
                print(f"{kernel:22} {mode:12} {wall / n * 1e9:9.2f} {cpu / n * 1e9:9.2f} {base / wall:8.2f}  {shown}")
    print("tiles on 1 and 2 threads: identical counts and sums (asserted)")


if __name__ == "__main__":
    main()
