"""Benchmark: `inspect` time and peak RSS on generated multi-GB GGUF and sharded safetensors.

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
Baselines measured in the same run: gguf-py's GGUFReader open, safetensors' safe_open
over every shard, and a plain hashlib pass over the same bytes (the speed limit for
--hashes). RSS must stay flat (< 300 MB) whatever the file size.

usage: python benchmarks/bench_inspect.py [--sizes-gb 1 4] [--dir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHUNK = 64 * 1024 * 1024


def write_gguf(path: Path, total_bytes: int, n_vocab: int = 32000) -> None:
    """A llama-shaped F16 GGUF with a real-size tokenizer array, written in streamed chunks."""
    import gguf

    n_embd = 4096
    rows_per_tensor = 4096  # 32 MiB of f16 per tensor
    tensor_bytes = rows_per_tensor * n_embd * 2
    n_tensors = max(1, total_bytes // tensor_bytes)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(n_tensors)
    writer.add_embedding_length(n_embd)
    writer.add_token_list([f"tok{i}" for i in range(n_vocab)])
    writer.add_token_scores([float(-i) for i in range(n_vocab)])
    for i in range(n_tensors):
        writer.add_tensor_info(f"blk.{i}.ffn_up.weight", (rows_per_tensor, n_embd), np.dtype(np.float16), tensor_bytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    block = np.random.default_rng(0).standard_normal(CHUNK // 2).astype(np.float16).tobytes()
    with open(path, "ab") as handle:
        handle.write(b"\0" * (-handle.tell() % 32))
        for _ in range(n_tensors):
            left = tensor_bytes
            while left:
                n = min(left, len(block))
                handle.write(block[:n])
                left -= n


def write_sharded(directory: Path, total_bytes: int, shard_bytes: int = 512 * 1024 * 1024) -> None:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    n_embd, rows = 4096, 4096
    per_tensor = rows * n_embd * 2
    n_tensors = max(1, total_bytes // per_tensor)
    per_shard = max(1, shard_bytes // per_tensor)
    n_shards = -(-n_tensors // per_shard)
    weight_map, base = {}, torch.randn(rows, n_embd).half()
    for shard in range(n_shards):
        name = f"model-{shard + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {}
        for i in range(shard * per_shard, min(n_tensors, (shard + 1) * per_shard)):
            key = f"model.layers.{i}.mlp.up_proj.weight"
            tensors[key] = base.clone()
            weight_map[key] = name
        save_file(tensors, directory / name)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": n_embd,
              "num_hidden_layers": n_tensors, "num_attention_heads": 32, "intermediate_size": rows, "vocab_size": 32000}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


CHILD = r"""
import glob, hashlib, json, os, sys, time
import gguf
from safetensors import safe_open
from provenance import inspect_checkpoint
kind, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()  # after imports: measure the work, not interpreter start-up
if kind == "inspect":
    report = inspect_checkpoint(path)
elif kind == "inspect-hashes":
    report = inspect_checkpoint(path, hashes=True)
elif kind == "gguf-py-open":
    gguf.GGUFReader(path)
elif kind == "safe_open":
    for shard in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        with safe_open(shard, framework="pt") as handle:
            list(handle.keys())
elif kind == "hashlib":
    files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) if os.path.isdir(path) else [path]
    buffer = bytearray(16 << 20)
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the parent's peak.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm / 1024}))
"""


def measure(kind: str, path: Path) -> dict[str, float]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-inspect-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'input':<34}{'GB':>6}  {'what':<16}{'seconds':>9}{'GB/s':>7}{'peak RSS MB':>13}  ratio")
    try:
        for gb in args.sizes_gb:
            total = int(gb * (1 << 30))
            cases = [(work / f"model-{gb:g}GB.gguf", write_gguf, "gguf-py-open"),
                     (work / f"sharded-{gb:g}GB", write_sharded, "safe_open")]
            for path, writer, baseline_kind in cases:
                if not path.exists():
                    writer(path, total)
                size = size_of(path) / (1 << 30)
                base = measure(baseline_kind, path)
                ours = measure("inspect", path)
                hash_base = measure("hashlib", path)
                hashes = measure("inspect-hashes", path)
                rows = [
                    (baseline_kind, base, ""),
                    ("inspect", ours, f"{base['seconds'] / ours['seconds']:.1f}x faster than {baseline_kind}"),
                    ("hashlib sha256", hash_base, ""),
                    (
                        "inspect --hashes",
                        hashes,
                        f"{hash_base['seconds'] / hashes['seconds']:.2f}x of plain hashlib speed",
                    ),
                ]
                for what, result, ratio in rows:
                    rate = size / result["seconds"] if "hash" in what else float("nan")
                    print(
                        f"{path.name:<34}{size:>6.2f}  {what:<16}{result['seconds']:>9.3f}{rate:>7.2f}"
                        f"{result['peak_rss_mb']:>13.1f}  {ratio}"
                    )
                assert ours["peak_rss_mb"] < 300 and hashes["peak_rss_mb"] < 300, "RSS must stay under 300 MB"
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("note: files were just written, so reads mostly come from the page cache; RSS is per subprocess.")


if __name__ == "__main__":
    main()
