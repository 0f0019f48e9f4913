"""Benchmark: weight-fingerprint read time and bytes touched on a generated multi-GB GGUF.

The candidate is a llama-7B-shaped GGUF (4096 wide, ffn 11008, real Q8_0 or Q4_0 blocks
from ``gguf.quants.quantize``, rows drawn from a pool so writing stays fast), written
with gguf's own writer, streamed tensor by tensor. A reference fingerprint is built from
it once, then the timed runs start from a cold page cache for that file
(``posix_fadvise(DONTNEED)``, this file only):

* baseline: one sequential read + SHA-256 of the whole file (what ``--hashes`` costs);
* fingerprint: ``identify`` with ``hashes="never"`` (sampled blocks + summaries budget);
* fingerprint, sampled blocks only (``summary_budget=0``).

Printed: seconds, bytes requested, distinct 4 KiB pages, their share of the file, and
the speed-up against the baseline.

usage: python benchmarks/bench_fingerprint.py [--gb 2] [--type Q8_0|Q4_0] [--dir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_EMBD, N_FF, POOL_ROWS = 4096, 11008, 256


def write_candidate(path: Path, total_bytes: int, qtype_name: str, n_embd: int = N_EMBD, n_ff: int = N_FF) -> None:
    """Layers of a llama of width ``n_embd`` (ffn ``n_ff``) up to ``total_bytes``, at least one."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    shapes = [(r, n_embd) for r in (n_embd, n_embd // 4, n_embd // 4, n_embd, n_ff, n_ff)] + [(n_embd, n_ff)]
    roles = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    layer_bytes = sum(r * c // block_size * block_bytes for r, c in shapes)
    n_layers = max(1, total_bytes // layer_bytes)
    pools: dict[int, np.ndarray] = {}
    for _, cols in shapes:  # a pool of distinct real quantized rows per row length
        if cols not in pools:
            pools[cols] = gguf.quants.quantize((rng.standard_normal((POOL_ROWS, cols)) * 0.02).astype(np.float32), qtype)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layers), writer.add_embedding_length(n_embd), writer.add_feed_forward_length(n_ff)
    writer.add_head_count(32), writer.add_head_count_kv(8)
    plan = []
    for layer in range(n_layers):
        for role, (rows, cols) in zip(roles, shapes, strict=True):
            name = f"blk.{layer}.{role}.weight"
            nbytes = rows * cols // block_size * block_bytes
            writer.add_tensor_info(name, (rows, cols // block_size * block_bytes), np.dtype(np.uint8), nbytes, raw_dtype=qtype)
            plan.append((rows, cols))
        writer.add_tensor_info(f"blk.{layer}.attn_norm.weight", (n_embd,), np.dtype(np.float32), 4 * n_embd)
        plan.append((0, n_embd))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_ti_data_to_file()
    for rows, cols in plan:
        if rows == 0:
            writer.write_tensor_data((1 + 0.1 * rng.standard_normal(cols)).astype(np.float32))
        else:
            writer.write_tensor_data(pools[cols][rng.integers(0, POOL_ROWS, size=rows)])
    writer.close()


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a freshly written file) are not dropped otherwise
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--type", default="Q8_0", choices=["Q8_0", "Q4_0"])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from provenance.formats import open_checkpoint
    from provenance.refdb import RefDB, RefEntry, identify
    from provenance.refdb.weightfp import build_fingerprint

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-fp-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"candidate-{args.type}.gguf"
    try:
        t = time.perf_counter()
        write_candidate(path, int(args.gb * 1024**3), args.type)
        size = path.stat().st_size
        print(f"wrote {path.name}: {size / 1024**3:.2f} GiB in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        with open_checkpoint(path) as ckpt:
            fp = build_fingerprint(ckpt)
        (work / "refdb").mkdir(exist_ok=True)
        db = RefDB(work / "refdb")
        db.write(RefEntry(id="bench", family="bench", weights=fp,
                          provenance={"kind": "computed", "sources": ["benchmark"]}), overwrite=True)
        entry_bytes = sum(p.stat().st_size for p in (work / "refdb").iterdir())
        print(f"reference fingerprint built in {time.perf_counter() - t:.1f}s; entry on disk {entry_bytes / 1024:.0f} KiB "
              f"for {len(fp.tensors)} tensors")

        drop_cache(path)
        t = time.perf_counter()
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            buffer = bytearray(16 << 20)
            while n := handle.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
        baseline = time.perf_counter() - t
        print(f"baseline  sequential read + sha256: {baseline:7.2f}s  {size:>14,} bytes (100%)")
        for label, budget in (("identify (blocks + summaries)", None), ("identify (sampled blocks only)", 0)):
            drop_cache(path)
            t = time.perf_counter()
            result = identify(path, db, hashes="never", summary_budget=budget)
            took = time.perf_counter() - t
            ok = [c.entry_id for c in result.weight_matches()] == ["bench"]
            print(f"{label:<31}: {took:7.2f}s  {result.fingerprint_bytes_read:>14,} bytes "
                  f"({100 * result.fingerprint_bytes_read / size:.4f}%), pages {result.fingerprint_page_bytes:,} "
                  f"({100 * result.fingerprint_page_bytes / size:.4f}%), {result.fingerprint_reads} reads; "
                  f"{baseline / took:.1f}x faster than the baseline; identified itself: {ok}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
