"""Dequantization throughput: our kernels vs gguf.quants.dequantize (numpy).

One run measures, per ggml type, Melem/s of gguf's numpy kernels and of ours (compiled
CPU kernels where the type has one, else the torch kernels; ``--torch-kernels`` adds a
column of the torch kernels alone) with each torch thread count of ``--threads`` over the same >= 64 MiB of stored blocks, streamed in
row chunks (ours into one reused output buffer), and the process's peak RSS after each
type, which stays flat because nothing grows with the tensor size. Data:
llama.cpp-compatible blocks made by gguf.quants.quantize from Gaussian floats where it
supports the type (a 1 MiB piece, tiled), otherwise random bytes with sane f16 scales.

Timing is interleaved: each of ``--reps`` rounds runs gguf once and ours once per thread
count on the same bytes (order rotated per round), and the table shows the median of the
rounds, so load from other jobs on a shared machine hits all columns alike.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_dequant.py [--mib 64] [--types Q4_K,Q6_K] [--threads 1,2]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import

import argparse
import platform
import resource
import time
import warnings

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from provenance.codecs.dequant import dequantize_torch
from provenance.codecs.registry import find_quant_type

TYPES = [
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ3_XXS",
    "IQ3_S",
    "IQ1_S",
    "IQ1_M",
    "TQ1_0",
    "TQ2_0",
    "MXFP4",
    "NVFP4",
    "BF16",
    "F16",
]
QUANTIZABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4, T.BF16}
ROW = 4096  # weights per row: a multiple of every block size
CHUNK_ROWS_BYTES = 4 << 20  # stored bytes per streamed chunk


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_blocks(qtype: T, mib: int) -> np.ndarray:
    """``(rows, row_bytes)`` uint8, at least ``mib`` MiB."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    row_bytes = ROW // block_size * type_size
    rows = -(-(mib << 20) // row_bytes)
    rng = np.random.default_rng(int(qtype))
    if qtype in QUANTIZABLE or qtype == T.F16:
        piece_rows = max(1, (1 << 20) // row_bytes)
        floats = (rng.standard_normal((piece_rows, ROW)) * 0.02).astype(np.float32)
        piece = np.asarray(gguf.quants.quantize(floats, qtype)).view(np.uint8).reshape(piece_rows, row_bytes)
        return np.ascontiguousarray(np.tile(piece, (-(-rows // piece_rows), 1))[:rows])
    raw = rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)
    blocks = raw.reshape(-1, type_size)
    qt = find_quant_type(qtype)
    for offset in qt.f16_scales if qt is not None else ():
        scales = (np.abs(rng.standard_normal(blocks.shape[0])) * 1e-3 + 1e-4).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw


def chunks(raw: np.ndarray) -> list[np.ndarray]:
    step = max(1, CHUNK_ROWS_BYTES // raw.shape[1])
    return [raw[i : i + step] for i in range(0, raw.shape[0], step)]


def time_ours(parts: list[torch.Tensor], out: torch.Tensor, qtype: T, threads: int, native: bool = True) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for part in parts:
        dequantize_torch(part, qtype, out=out[: part.shape[0]], native=native)
    return time.perf_counter() - t0


def time_gguf(raw: np.ndarray, qtype: T) -> float:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for part in chunks(raw):
            gguf.quants.dequantize(part, qtype)
    return time.perf_counter() - t0


def time_gguf_whole(raw: np.ndarray, qtype: T) -> float:
    """One call on the whole tensor: how gguf-py's own reader users dequantize (no streaming)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gguf.quants.dequantize(raw, qtype)
    return time.perf_counter() - t0


def bench_device(types: list[T], mib: int, reps: int, device: torch.device) -> None:
    """Our kernels on an accelerator: whole tensors resident on the device."""
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}")
    print(f"{'type':8} {'MiB':>5} {'Gelem/s':>8} {'GB/s out':>9}")
    for qtype in types:
        raw = torch.from_numpy(make_blocks(qtype, mib)).to(device)
        out = torch.empty((raw.shape[0], ROW), dtype=torch.float32, device=device)
        dequantize_torch(raw, qtype, out=out, chunk_elems=1 << 26)
        torch.cuda.synchronize(device)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            dequantize_torch(raw, qtype, out=out, chunk_elems=1 << 26)
            torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        n = out.numel()
        print(f"{qtype.name:8} {raw.numel() / 2**20:5.0f} {n / best / 1e9:8.1f} {4 * n / best / 1e9:9.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="stored MiB per type (default 64)")
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated ggml type names")
    ap.add_argument("--threads", default="1,2", help="torch thread counts for our kernels (default 1,2)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds per type (median kept)")
    ap.add_argument(
        "--torch-kernels",
        action="store_true",
        help="also time the torch kernels on the CPU (the path before the compiled kernels)",
    )
    ap.add_argument("--device", default="cpu", help="cpu (vs gguf, the default) or cuda (ours alone, on the GPU)")
    args = ap.parse_args()
    types = [T[name] for name in args.types.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.device != "cpu":
        bench_device(types, args.mib, args.reps, torch.device(args.device))
        return
    print(
        f"torch {torch.__version__}, gguf {gguf.__version__ if hasattr(gguf, '__version__') else '?'}, "
        f"numpy {np.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}"
    )
    results: dict[T, dict] = {}
    # Phase 1: ours alone, one pass per thread count. Peak RSS is a high-water mark, so it
    # is read before any gguf call (whose whole-chunk temporaries would set it).
    for qtype in types:
        raw = make_blocks(qtype, args.mib)
        parts = [torch.from_numpy(c) for c in chunks(raw)]
        out = torch.empty((parts[0].shape[0], ROW), dtype=torch.float32)
        for th in threads:
            time_ours(parts, out, qtype, th)
        results[qtype] = {"mib": raw.nbytes / 2**20, "n": raw.shape[0] * ROW, "rss": peak_rss_mib()}
        del raw, parts, out
    # Phase 2: interleaved rounds, gguf and ours on the same bytes, medians.
    for qtype in types:
        raw = make_blocks(qtype, args.mib)
        parts = [torch.from_numpy(c) for c in chunks(raw)]
        out = torch.empty((parts[0].shape[0], ROW), dtype=torch.float32)
        times: dict[str, list[float]] = {"g": [], "w": [], "k": [], **{f"t{th}": [] for th in threads}}
        for r in range(args.reps):
            jobs = ["g", "w", *(f"t{th}" for th in threads), *(["k"] if args.torch_kernels else [])]
            for job in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                if job == "g":
                    times[job].append(time_gguf(raw, qtype))
                elif job == "w":
                    times[job].append(time_gguf_whole(raw, qtype))
                elif job == "k":
                    times[job].append(time_ours(parts, out, qtype, threads[-1], native=False))
                else:
                    times[job].append(time_ours(parts, out, qtype, int(job[1:])))
        results[qtype].update({k: float(np.median(v)) for k, v in times.items() if v})
        del raw, parts, out
    heads = [f"ours {th}t" for th in threads] + ([f"torch {threads[-1]}t"] if args.torch_kernels else [])
    ratio_threads = 2 if 2 in threads else threads[-1]
    print(
        f"\nmedians of {args.reps} interleaved rounds; gguf = gguf.quants.dequantize streamed over the same"
        " 4 MiB chunks (strongest baseline), gguf whole = one call on the whole tensor (how gguf-py's reader"
        f" users call it); x = ours on {ratio_threads} threads / baseline; torch = the torch kernels on the CPU"
    )
    print(
        f"{'type':8} {'MiB':>5} {'gguf':>8} {'whole':>8} "
        + " ".join(f"{h:>8}" for h in heads)
        + f" {'x gguf':>7} {'x whole':>8} {'peak RSS':>9}"
    )
    print(
        f"{'':8} {'':>5} {'Melem/s':>8} {'Melem/s':>8} "
        + " ".join(f"{'Melem/s':>8}" for _ in heads)
        + f" {'':>7} {'':>8} {'MiB':>9}"
    )
    worst = {"streamed": float("inf"), "whole": float("inf")}
    for qtype, r in results.items():
        g, w = r["n"] / r["g"] / 1e6, r["n"] / r["w"] / 1e6
        ours = [r["n"] / r[f"t{th}"] / 1e6 for th in threads] + ([r["n"] / r["k"] / 1e6] if "k" in r else [])
        best = r["n"] / r[f"t{ratio_threads}"] / 1e6
        worst["streamed"] = min(worst["streamed"], best / g)
        worst["whole"] = min(worst["whole"], best / w)
        print(
            f"{qtype.name:8} {r['mib']:5.0f} {g:8.0f} {w:8.0f} "
            + " ".join(f"{o:8.0f}" for o in ours)
            + f" {best / g:7.1f} {best / w:8.1f} {r['rss']:9.0f}"
        )
    print(
        f"\nworst ratio: vs streamed gguf {worst['streamed']:.1f}x, vs whole-tensor gguf {worst['whole']:.1f}x"
        f"   peak RSS after gguf phase: {peak_rss_mib():.0f} MiB   load average {os.getloadavg()[0]:.1f}"
    )
    # For contrast: one whole-tensor call of gguf (what a non-streaming reader does).
    raw = make_blocks(T.Q4_K, args.mib)
    before = peak_rss_mib()
    gguf.quants.dequantize(raw, T.Q4_K)
    print(
        f"whole-tensor gguf Q4_K dequantize of {raw.nbytes / 2**20:.0f} MiB: peak RSS {before:.0f} -> {peak_rss_mib():.0f} MiB"
    )


if __name__ == "__main__":
    main()
