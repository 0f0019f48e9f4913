"""`provenance scan` throughput, local and on Ray, against `provenance check` run once per file.

Generates (cached under ``.cache/bench-scan``, never committed):

* ``small/``: N small models written by the real writers (gguf's GGUFWriter: F32, F16, Q8_0;
  safetensors' save_file), a few hundred KB each (``tests/support/model_corpus.py``);
* ``large/``: a few multi-GB llama-shaped F16 GGUF (TinyLlama-1.1B shape, 2.5 GB each) with
  the real Llama 2 vocabulary copied from ``../shared/data/gguf-vocab``, streamed to disk by
  the project's writer (``provenance.formats.write``).

Then, for each set, in this one run and on this machine (wall time of the whole command,
start-up included, fresh output directory each time):

* ``check, once per file``: the baseline asked for: `provenance check --policy P FILE` per file,
  in turn, as a CI loop does (check runs the policy only, less work than a scan);
* ``check+inspect+identify, once per file``: the same analyses as the scan, one command per
  analysis per file (each command re-opens the file), on the first ``--equivalent-sample`` files;
* ``scan local`` (``--jobs J``), ``scan ray`` (``--ray local --jobs J``, Ray start-up included),
  ``scan local again`` (the same output: every model already done), ``scan local --hashes``
  (every byte read: the disk-bound case).

Prints models/min and GB/s (model bytes covered per second of wall time) and the ratio to the
first baseline. Without ``--hashes`` a scan reads headers and sampled blocks of a multi-GB
model (identify hashes files up to 1 GiB), so GB/s there is bytes covered, not read.

    python benchmarks/bench_scan.py [--small 200] [--large 3] [--jobs 2] [--skip-ray] [--equivalent-sample 40]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = (ROOT / ".." / "shared" / "data").resolve()
PROVENANCE = [sys.executable, "-m", "provenance.cli"]
POLICY = """version = 1
[format]
allow = ["gguf", "gguf-split", "safetensors", "safetensors-sharded", "hf-directory"]
[metadata]
require = ["general.license"]
"""
# TinyLlama-1.1B's widths with full multi-head attention: 1.26 B weights, 2.5 GB in F16.
HIDDEN, FFN, LAYERS, VOCAB = 2048, 5632, 22, 32000


def write_small(directory: Path, count: int) -> None:
    import gguf

    from tests.support.model_corpus import write_tiny_gguf, write_tiny_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0)
    for i in range(count):
        if i % 4 == 3:
            write_tiny_safetensors(directory / f"model-{i:04d}.safetensors", i)
        else:
            write_tiny_gguf(directory / f"model-{i:04d}.gguf", i, types[i % 3], "apache-2.0" if i % 2 else None)


def _weights(shape: tuple[int, ...], seed: int) -> object:
    """Gaussian-looking F16 weights of ``shape`` without holding them: rows are overlapping,
    shifted windows of one small random buffer (every row differs), so the writer streams them."""
    import numpy as np

    if len(shape) == 1:
        return np.ones(shape, np.float32)  # norms
    rows, cols = shape
    step = 7
    base = (np.random.default_rng(seed).standard_normal((rows - 1) * step + cols) * 0.02).astype(np.float16)
    return np.lib.stride_tricks.as_strided(base, shape=(rows, cols), strides=(step * 2, 2), writeable=False)


def write_large(path: Path, seed: int) -> None:
    """A TinyLlama-shaped F16 GGUF with the real Llama 2 tokenizer, by the project's streaming writer."""
    from provenance.formats import open_checkpoint
    from provenance.formats.gguf_header import GGUFKeyValue, ValueType
    from provenance.formats.write import gguf_arch_key_values, write_gguf
    from provenance.names.arch import ArchRecord

    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                       **{f"blk.{i}.{r}.weight": (HIDDEN, HIDDEN) for r in ("attn_q", "attn_k", "attn_v", "attn_output")},
                       f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                       f"blk.{i}.ffn_down.weight": (HIDDEN, FFN)})
    arch = ArchRecord(arch="llama", n_layer=LAYERS, n_embd=HIDDEN, n_ff=FFN, n_head=32, n_head_kv=32, context_length=2048,
                      vocab_size=VOCAB)
    with open_checkpoint(SHARED / "gguf-vocab" / "ggml-vocab-llama-spm.gguf") as vocab:
        key_values = [kv for kv in vocab.key_values if kv.key.startswith("tokenizer.")]
        key_values += [GGUFKeyValue("general.name", f"large-{seed}", ValueType.STRING),
                       GGUFKeyValue("general.license", "llama2", ValueType.STRING), *gguf_arch_key_values(arch)]
        tensors = {name: _weights(shape, seed * 1000 + i) for i, (name, shape) in enumerate(shapes.items())}
        write_gguf(path, "llama", tensors, key_values, types={n: "F16" for n, s in shapes.items() if len(s) == 2})


def prepare(cache: Path, small: int, large: int) -> tuple[Path, Path]:
    marker = cache / "complete.json"
    wanted = {"small": small, "large": large, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return cache / "small", cache / "large"
    shutil.rmtree(cache, ignore_errors=True)
    free = shutil.disk_usage(cache.parent if cache.parent.exists() else ROOT).free
    need = large * 2.6e9 + small * 1e6
    if free < need + 5e9:
        raise SystemExit(f"not enough disk: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed plus 5 GB to spare")
    write_small(cache / "small", small)
    (cache / "large").mkdir(parents=True)
    for i in range(large):
        write_large(cache / "large" / f"large-{i}.gguf", i)
    marker.write_text(json.dumps(wanted))
    return cache / "small", cache / "large"


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode not in (0, 1, 2):
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return time.perf_counter() - started


def per_file(commands: list[list[str]], files: list[Path]) -> float:
    return sum(timed([*command, str(f)]) for f in files for command in commands)


def same_table(a: Path, b: Path) -> bool:
    import pandas as pd

    from provenance.scan.row import VOLATILE_COLUMNS

    def load(out: Path) -> pd.DataFrame:
        return pd.read_parquet(out / "scan.parquet").drop(columns=list(VOLATILE_COLUMNS)).sort_values("path").reset_index(drop=True)

    return load(a).equals(load(b))


def measure(name: str, directory: Path, policy: Path, work: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    sample = files[: args.equivalent_sample]
    sample_bytes = sum(p.stat().st_size for p in sample)
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    scan = [*PROVENANCE, "scan", str(directory), "--policy", str(policy), "--jobs", str(args.jobs), "--no-progress"]
    runs: list[tuple[str, int, int, float]] = []
    runs.append(("check, once per file", len(files), total, per_file([[*PROVENANCE, "check", "--policy", str(policy)]], files)))
    equivalent = [[*PROVENANCE, "check", "--policy", str(policy)], [*PROVENANCE, "inspect"], [*PROVENANCE, "identify"]]
    runs.append(("check+inspect+identify, once per file", len(sample), sample_bytes, per_file(equivalent, sample)))
    runs.append((f"scan local --jobs {args.jobs}", len(files), total, timed([*scan, "-o", str(out / "local")])))
    if not args.skip_ray:
        ray_seconds = timed([*scan, "-o", str(out / "ray"), "--ray", "local"])
        runs.append((f"scan ray (--ray local, {args.jobs} CPUs)", len(files), total, ray_seconds))
    runs.append(("scan local again (all done)", len(files), total, timed([*scan, "-o", str(out / "local")])))
    runs.append(("scan local --hashes (every byte read)", len(files), total, timed([*scan, "-o", str(out / "hashes"), "--hashes"])))
    if not args.skip_ray:
        print(f"[{name}] the Ray table equals the local one: {same_table(out / 'local', out / 'ray')}")
    base_rate = runs[0][1] / runs[0][3]
    rows = []
    for label, models, size, seconds in runs:
        rows.append({"set": name, "run": label, "models": models, "GB": round(size / 1e9, 3), "seconds": round(seconds, 1),
                     "models_per_min": round(60 * models / seconds, 1), "GB_per_s": round(size / 1e9 / seconds, 3),
                     "vs_check": round(models / seconds / base_rate, 2)})
    return rows


def driver_cost(work: Path, n: int = 500) -> float:
    """Seconds the driver spends per finished model (validate the answer, write the document
    atomically, append and fsync the journal line): the ceiling of one driver, whatever the cluster."""
    from provenance.scan.discover import file_unit
    from provenance.scan.model import ScanTask, scan_task
    from provenance.scan.options import ScanOptions
    from provenance.scan.row import decode_outcome, row_with
    from provenance.scan.store import ScanStore

    model = next((work.parent / "small").iterdir())
    answer = scan_task(ScanTask(file_unit(str(model)), ScanOptions(), "bench"))
    out = work / "driver"
    shutil.rmtree(out, ignore_errors=True)
    with ScanStore(out) as store:
        started = time.perf_counter()
        for i in range(n):
            result = decode_outcome(answer)
            unit = file_unit(str(model))
            unit = type(unit)(f"m{i}", f"{unit.path}.{i}", unit.members)
            result.row = row_with(result.row, path=unit.path, document=f"models/{i}.json")
            store.record(unit, result)
        return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--equivalent-sample", type=int, default=40)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-scan")
    args = parser.parse_args()
    small, large = prepare(args.cache, args.small, args.large)
    work = args.cache / "runs"
    work.mkdir(exist_ok=True)
    policy = work / "policy.toml"
    policy.write_text(POLICY)
    rows = [row for name, directory in (("small", small), ("large", large)) if any(directory.iterdir())
            for row in measure(name, directory, policy, work, args)]
    print(f"\n{'set':6} {'run':42} {'models':>6} {'GB':>7} {'s':>7} {'models/min':>10} {'GB/s':>7} {'vs check':>8}")
    for r in rows:
        print(f"{r['set']:6} {r['run']:42} {r['models']:>6} {r['GB']:>7} {r['seconds']:>7} {r['models_per_min']:>10} "
              f"{r['GB_per_s']:>7} {r['vs_check']:>7}x")
    per_model = driver_cost(work)
    print(f"\ndriver cost per finished model (decode, document, journal fsync): {1000 * per_model:.2f} ms "
          f"= a ceiling of {60 / per_model:,.0f} models/min for one driver")
    print(f"load average at the end: {os.getloadavg()} on {os.cpu_count()} CPUs (a shared machine: other jobs ran)")


if __name__ == "__main__":
    main()
