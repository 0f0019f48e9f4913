"""Streamed comparison speed, precision and peak RSS on 7B-shaped layers.

Generates a reference (F16 GGUF) and a candidate (the same weights plus a small
perturbation, 1 - cos ~ 5e-5, F16 GGUF) of N Llama-7B-shaped layers (hidden 4096, ffn
11008), then, each in a fresh process so peak RSS is per mode:

* ``stream``: ``provenance.compare.compare`` (2 tensor threads, and 1), input GB/s of
  tensor bytes read (both files; warm page cache, so this is compute speed), called twice
  per process: the first call ("cold") also pays one-time costs (numba loading the compiled
  kernels from its cache, lazy imports), the second is the steady rate (reported as
  ``stream_*_gb_s``), which is what a model of many more layers sees;
* ``naive``: the baseline, whole tensors read and compared in float64 numpy;

and prints the 1 - cos relative error of the streamed result against an exact float64
computation, the error of the naive float32 formula, and the streamed peak RSS at each
depth (flat RSS: memory independent of the number of layers). ``--baseline-src DIR``
runs the same stream modes from another checkout in the same run (before/after numbers
on the same machine state); ``--repeat N`` alternates N runs of each.

    python benchmarks/bench_compare.py [--layers 1,2,4] [--keep DIR] [--baseline-src DIR] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN, FFN, HEADS = 4096, 11008, 32
SHAPES = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN, HIDDEN), "attn_v": (HIDDEN, HIDDEN),
          "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN),
          "ffn_down": (HIDDEN, FFN), "attn_norm": (HIDDEN,), "ffn_norm": (HIDDEN,)}


def generate(directory: Path, layers: int) -> tuple[Path, Path]:
    import gguf
    import numpy as np

    from provenance.names.arch import ArchRecord

    ref_path, cand_path = directory / f"ref-{layers}.gguf", directory / f"cand-{layers}.gguf"
    if ref_path.exists() and cand_path.exists():
        return cand_path, ref_path
    arch = ArchRecord(n_layer=layers, n_embd=HIDDEN, n_ff=FFN, n_head=HEADS, n_head_kv=HEADS, vocab_size=32000,
                      context_length=4096, rope_freq_base=10000.0, norm_eps=1e-5)
    rng = np.random.default_rng(0)
    writers = []
    for path in (ref_path, cand_path):
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_block_count(layers)
        w.add_embedding_length(HIDDEN)
        w.add_feed_forward_length(FFN)
        w.add_head_count(HEADS)
        w.add_head_count_kv(HEADS)
        w.add_context_length(4096)
        w.add_rope_freq_base(10000.0)
        w.add_vocab_size(arch.vocab_size)
        writers.append(w)
    tensors = []
    for layer in range(layers):
        for role, shape in SHAPES.items():
            name = f"blk.{layer}.{role}.weight"
            if len(shape) == 1:
                ref = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
                cand = ref.copy()
                tensors.append((name, ref, cand))
            else:
                ref = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
                noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02 * 0.01)
                tensors.append((name, ref.astype(np.float16), (ref + noise).astype(np.float16)))
    for name, ref, cand in tensors:
        writers[0].add_tensor(name, ref)
        writers[1].add_tensor(name, cand)
    for w in writers:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return cand_path, ref_path


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (per address space, reset by exec). ru_maxrss is not
    usable here: Linux carries it across fork/exec, so every child reported the parent's
    peak (the file generation, 3.6 GB for 4 layers)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mode_stream(cand: str, ref: str, threads: int) -> dict:
    import torch

    from provenance.compare import CompareOptions, compare

    torch.set_num_threads(1)
    opts = CompareOptions(threads=threads, permutations=99, grid_check=False)
    # first call: one-time costs too (loading the compiled kernels from numba's cache,
    # lazy imports); second call: the steady rate that a many-layer model sees
    t0 = time.perf_counter()
    cold = compare(cand, ref, opts)
    cold_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = compare(cand, ref, opts)
    wall = time.perf_counter() - t0
    return {"mode": f"stream-{threads}t", "wall_s": round(wall, 3), "stream_s": res.timing.stream_s,
            "cold_wall_s": round(cold_wall, 3), "cold_stream_gb_s": cold.timing.stream_gb_per_s,
            "bytes": res.timing.tensor_bytes, "stream_gb_s": res.timing.stream_gb_per_s,
            "one_minus_cos": {r.name: r.one_minus_cos for r in res.tensors if r.is_matrix},
            "verdict": res.verdict.kind, "peak_rss_mb": round(peak_rss_mb(), 1), "timing": res.timing.to_dict()}


def mode_naive(cand: str, ref: str) -> dict:
    """Baseline: whole tensors, float64 numpy; also the exact 1 - cos and the f32 formula's error."""
    import numpy as np

    from provenance.formats import open_checkpoint

    t0 = time.perf_counter()
    exact, naive32 = {}, {}
    nbytes = 0
    with open_checkpoint(cand) as c, open_checkpoint(ref) as r:
        for name, info in r.tensors.items():
            a64, b64 = c.read(name).astype(np.float64).ravel(), r.read(name).astype(np.float64).ravel()
            nbytes += info.n_bytes + c.info(name).n_bytes
            if len(info.shape) < 2:
                continue
            ua, ub = a64 / np.linalg.norm(a64), b64 / np.linalg.norm(b64)
            exact[name] = float(((ua - ub) ** 2).sum() / 2)  # exact: no subtraction of numbers near 1
            a32, b32 = a64.astype(np.float32), b64.astype(np.float32)
            naive32[name] = 1.0 - float(np.dot(a32, b32) / (np.linalg.norm(a32) * np.linalg.norm(b32)))
    wall = time.perf_counter() - t0
    return {"mode": "naive-float64", "wall_s": round(wall, 3), "bytes": nbytes, "gb_s": round(nbytes / wall / 1e9, 3),
            "exact": exact, "naive32": naive32, "peak_rss_mb": round(peak_rss_mb(), 1)}


def _child(args: list[str], src: Path | None = None) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    script = __file__ if src is None else str(src / "benchmarks" / "bench_compare.py")
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1,2,4", help="depths to run (peak RSS per depth); speed on the deepest")
    parser.add_argument("--keep", type=Path, help="directory for the generated files (kept)")
    parser.add_argument("--baseline-src", type=Path,
                        help="another checkout (e.g. the previous commit) to run the same stream modes from, same run")
    parser.add_argument("--repeat", type=int, default=1, help="alternate runs of each stream mode (machine noise)")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, cand, ref, *rest = args.child
        result = mode_naive(cand, ref) if mode == "naive" else mode_stream(cand, ref, int(rest[0]))
        print(json.dumps(result))
        return 0
    depths = sorted({int(x) for x in args.layers.split(",")})
    deep = depths[-1]
    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    directory = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = {d: generate(directory, d) for d in depths}
    print(f"generated {depths}-layer pairs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    sources: dict[str, Path | None] = {"new": None}
    if args.baseline_src is not None:
        sources = {"baseline": args.baseline_src, "new": None}
    report: dict = {"layers": depths, "input_gb_deepest": None, "sources": {k: str(v or ROOT) for k, v in sources.items()}}
    rss: dict[str, dict] = {label: {} for label in sources}
    speed: dict[str, dict] = {label: {"1t": [], "2t": []} for label in sources}
    for d in depths:
        for label, src in sources.items():
            r = _child(["--child", "stream", str(files[d][0]), str(files[d][1]), "2"], src)
            rss[label][f"{d}_layers"] = r["peak_rss_mb"]
            if d == deep:
                speed[label]["2t"].append(r)
    # sources alternated run by run (old, new, old, new...): same machine state for both
    for _ in range(args.repeat):
        for label, src in sources.items():
            speed[label]["1t"].append(_child(["--child", "stream", str(files[deep][0]), str(files[deep][1]), "1"], src))
            if args.repeat > 1:
                speed[label]["2t"].append(_child(["--child", "stream", str(files[deep][0]), str(files[deep][1]), "2"], src))
    for label in sources:
        sp, rs = speed[label], rss[label]
        report[label] = {
            "peak_rss_mb_stream_2t": rs,
            "rss_growth_mb_per_layer": round((rs[f"{deep}_layers"] - rs[f"{depths[0]}_layers"]) / max(1, deep - depths[0]), 1),
            "stream_2_threads_gb_s": [x["stream_gb_s"] for x in sp["2t"]],
            "stream_1_thread_gb_s": [x["stream_gb_s"] for x in sp["1t"]],
            "wall_2_threads_s": [x["wall_s"] for x in sp["2t"]],
            "median_stream_2t_gb_s": med([x["stream_gb_s"] for x in sp["2t"]]),
            "median_stream_1t_gb_s": med([x["stream_gb_s"] for x in sp["1t"]]),
            "median_wall_2t_s": med([x["wall_s"] for x in sp["2t"]]),
            "median_cold_stream_2t_gb_s": med([x["cold_stream_gb_s"] for x in sp["2t"]]),
            "median_cold_wall_2t_s": med([x["cold_wall_s"] for x in sp["2t"]]),
            "timing_2_threads": sp["2t"][-1].get("timing"),
            "one_minus_cos": sp["2t"][-1]["one_minus_cos"], "verdict": sp["2t"][-1]["verdict"],
        }
        speed_deep = sp["2t"]
    report["input_gb_deepest"] = round(speed_deep[-1]["bytes"] / 1e9, 3)
    if not args.no_naive:
        naive = _child(["--child", "naive", str(files[deep][0]), str(files[deep][1])])
        report["naive_float64"] = {"wall_s": naive["wall_s"], "gb_s": naive["gb_s"], "peak_rss_mb": naive["peak_rss_mb"]}
        for label in sources:
            got = report[label].pop("one_minus_cos")
            report[label]["one_minus_cos_max_rel_error"] = max(abs(got[k] - v) / v for k, v in naive["exact"].items())
        report["one_minus_cos_max_rel_error_naive_f32"] = max(abs(naive["naive32"][k] - v) / v for k, v in naive["exact"].items())
        report["one_minus_cos_exact_range"] = [min(naive["exact"].values()), max(naive["exact"].values())]
    else:
        for label in sources:
            report[label].pop("one_minus_cos")
    print(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
