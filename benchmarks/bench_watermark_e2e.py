"""End to end: ``provenance watermark embed / detect / trace`` on a Llama-2-7B-shaped F16 GGUF,
against the cold disk floor measured in the same run.

The model (``--shape 7b``: 32 layers, hidden 4096, ffn 11008, vocabulary 32000: 6.74 G
parameters, 13.5 GB; ``--shape 70b``: hidden 8192, ffn 28672, 8 KV heads, ``--layers`` of
its 80) is generated once under ``.cache/bench/`` with Gaussian weights (the watermark's own
generator, seeded: a few minutes) and reused. Each repeat then, with the page cache of every
file involved dropped first (``posix_fadvise(DONTNEED)``: cold reads), times as a user runs
them (fresh ``provenance`` processes, wall clock, peak RSS from ``wait4``):

* floor, embed: copy the reference to a new file in 16 MB reads and writes, then fsync
  (read + write, what ``embed`` cannot avoid);
* ``watermark embed`` (client ``acme``, a = 1e-3) -> the marked copy;
* floor, detect/trace: read the marked copy and the reference cold (16 MB reads);
* ``watermark detect`` with the reference, one client: sequential (the default) and
  ``--no-sequential`` (every block read);
* ``watermark trace`` with registries of 10 and 100 clients (the guilty one among them).

Ratios are to the floor of the same repeat; medians over ``--repeat`` runs; the load
average is printed beside them (the machine is shared). ``--layers N`` builds a slice of N
layers instead of the whole model (label the extrapolation).

    python benchmarks/bench_watermark_e2e.py [--shape 7b|70b] [--layers N] [--repeat 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "7b": {"hidden": 4096, "ffn": 11008, "heads": 32, "kv_heads": 32, "layers": 32, "vocab": 32000},
    "70b": {"hidden": 8192, "ffn": 28672, "heads": 64, "kv_heads": 8, "layers": 80, "vocab": 32000},
}
SECRET = b"bench-watermark-e2e-secret-0001\n"
CHUNK = 16 << 20


def tensor_shapes(shape: dict[str, int], layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) in llama.cpp's order."""
    h, f, v = shape["hidden"], shape["ffn"], shape["vocab"]
    kv = h * shape["kv_heads"] // shape["heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (v, h))]
    for layer in range(layers):
        b = f"blk.{layer}."
        out += [(b + "attn_norm.weight", (h,)), (b + "attn_q.weight", (h, h)), (b + "attn_k.weight", (kv, h)),
                (b + "attn_v.weight", (kv, h)), (b + "attn_output.weight", (h, h)), (b + "ffn_norm.weight", (h,)),
                (b + "ffn_gate.weight", (f, h)), (b + "ffn_up.weight", (f, h)), (b + "ffn_down.weight", (h, f))]
    return [*out, ("output_norm.weight", (h,)), ("output.weight", (v, h))]


def generate(path: Path, shape: dict[str, int], layers: int) -> None:
    """A Llama-shaped F16 GGUF of Gaussian weights (std 0.02; norms near 1), streamed tensor by tensor."""
    import gguf
    import numpy as np

    from provenance.watermark.keygen import fill_gaussian

    tmp = path.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(shape["hidden"])
    w.add_feed_forward_length(shape["ffn"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_context_length(4096)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(shape["vocab"])
    shapes = tensor_shapes(shape, layers)
    for name, s in shapes:
        dtype = np.float32 if len(s) == 1 else np.float16
        n = int(np.prod(s))
        w.add_tensor_info(name, s, np.dtype(dtype), n * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, s in shapes:
        words = np.frombuffer(hashlib.sha256(name.encode()).digest()[:16], dtype="<u4").astype(np.uint32)
        values = np.empty(int(np.prod(s)), dtype=np.float32)
        fill_gaussian(words, 0, values)
        if len(s) == 1:
            data = (1 + 0.05 * values).astype(np.float32)
        else:
            data = (values * np.float32(0.02)).astype(np.float16)
        w.write_tensor_data(data.reshape(s))
        del values, data
    w.close()
    os.replace(tmp, path)


def drop_cache(*paths: Path) -> None:
    """Drop the page cache of those of ``paths`` that exist (bench_quant_e2e's way: fsync, then
    ``posix_fadvise(DONTNEED)``)."""
    from benchmarks.bench_quant_e2e import drop_cache as drop_existing

    drop_existing([p for p in paths if p.exists()])


def read_floor(*paths: Path) -> float:
    """Seconds to read every byte of ``paths`` cold, in 16 MB reads."""
    drop_cache(*paths)
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t0


def copy_floor(src: Path, dst: Path) -> float:
    """Seconds to copy ``src`` cold to ``dst`` in 16 MB reads and writes, fsync included."""
    drop_cache(src)
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        while n := f.readinto(buf):
            g.write(memoryview(buf)[:n])
        os.fsync(g.fileno())
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def run(args: list[str], inputs: list[Path]) -> dict[str, float]:
    """One CLI command in a fresh process with cold inputs: wall and CPU seconds, peak RSS
    (GNU time, which measures the command alone), exit code."""
    drop_cache(*inputs)
    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "30"}
    stats = ROOT / ".cache" / "bench" / "time.txt"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %U %S %M", sys.executable, "-m", "provenance.cli",
                           *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err}")
    _, user, system, rss_kb = stats.read_text().split()[-4:]
    summary = [line.strip() for line in err.splitlines() if "decided after" in line or "ACCUSED" in line][:2]
    return {"seconds": elapsed, "cpu_seconds": float(user) + float(system), "user_seconds": float(user),
            "sys_seconds": float(system), "rss_mb": int(rss_kb) / 1024, "exit": proc.returncode, "summary": summary}


def registry(directory: Path, n: int) -> Path:
    """A registry of ``n`` clients, ``acme`` (the guilty one) among them."""
    d = directory / f"registry-{n}"
    d.mkdir(exist_ok=True)
    (d / "secret").write_bytes(SECRET)
    clients = ["acme", *[f"client-{i:03d}" for i in range(n - 1)]]
    (d / "clients.txt").write_text("\n".join(clients) + "\n")
    return d


def warm_up(directory: Path, secret: Path, reg: Path) -> None:
    """Each command once on the shared tiny model, untimed: numba compiles its kernels into
    its cache on a machine's first run (minutes on a busy machine), which is not what the
    commands cost afterwards."""
    tiny = ROOT.parent / "shared" / "data" / "llamacpp-quant" / "tiny-llama-f16.gguf"
    if not tiny.exists():
        return
    out = directory / "warm-up.gguf"
    t0 = time.perf_counter()
    run(["watermark", "embed", str(tiny), "--secret-file", str(secret), "--client", "acme", "-o", str(out),
         "--report", os.devnull], [])
    run(["watermark", "trace", str(out), "--reference", str(tiny), "--registry", str(reg), "-o", os.devnull], [])
    out.unlink()
    print(f"warm-up (compiled kernels cached, imports read) {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--layers", type=int, default=None, help="a slice of N layers (default: the whole model)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip (e.g. trace100)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    layers = args.layers or shape["layers"]
    args.dir.mkdir(parents=True, exist_ok=True)
    ref = args.dir / f"llama-{args.shape}-{layers}L-f16.gguf"
    marked = args.dir / f"llama-{args.shape}-{layers}L-acme.gguf"
    t0 = time.perf_counter()
    if not ref.exists():  # in a child process: this one stays small
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from benchmarks.bench_watermark_e2e import generate, SHAPES; from pathlib import Path; "
                        f"generate(Path({str(ref)!r}), SHAPES[{args.shape!r}], {layers})"], check=True)
    print(f"model {ref.name}: {ref.stat().st_size / 1e9:.2f} GB (generated or reused in {time.perf_counter() - t0:.0f} s)",
          flush=True)
    # one copy at a time beside the reference: the floor copy, then the marked one (deleted before each repeat)
    free = shutil.disk_usage(args.dir).free + (marked.stat().st_size if marked.exists() else 0)
    if free < 1.1 * ref.stat().st_size:
        raise SystemExit(f"only {free / 1e9:.1f} GB free: a copy of the model needs {ref.stat().st_size / 1e9:.1f}")
    secret = args.dir / "owner.secret"
    secret.write_bytes(SECRET)
    regs = {n: registry(args.dir, n) for n in (10, 100)}
    skip = set(filter(None, args.skip.split(",")))
    steps = {
        "embed": (["watermark", "embed", str(ref), "--secret-file", str(secret), "--client", "acme", "-o", str(marked),
                   "--report", os.devnull], [ref], "floor_embed"),
        "detect": (["watermark", "detect", str(marked), "--reference", str(ref), "--secret-file", str(secret),
                    "--client", "acme", "-o", os.devnull], [marked, ref], "floor_read"),
        "detect_full": (["watermark", "detect", str(marked), "--reference", str(ref), "--secret-file", str(secret),
                         "--client", "acme", "--no-sequential", "-o", os.devnull], [marked, ref], "floor_read"),
        "trace10": (["watermark", "trace", str(marked), "--reference", str(ref), "--registry", str(regs[10]),
                     "-o", os.devnull], [marked, ref], "floor_read"),
        "trace100": (["watermark", "trace", str(marked), "--reference", str(ref), "--registry", str(regs[100]),
                      "-o", os.devnull], [marked, ref], "floor_read"),
    }
    warm_up(args.dir, secret, regs[10])
    runs: list[dict] = []
    for rep in range(args.repeat):
        row: dict = {"load_before": os.getloadavg()[0]}
        marked.unlink(missing_ok=True)
        row["floor_embed"] = copy_floor(ref, marked.with_suffix(".floorcopy"))
        for step, (cli, inputs, floor) in steps.items():
            if step in skip:
                continue
            if step == "detect":  # the marked copy exists now: its floor too
                row["floor_read"] = read_floor(marked, ref)
            row[step] = run(cli, inputs)
            row[step]["ratio"] = row[step]["seconds"] / row[floor]
            print(f"repeat {rep + 1} {step:12s} {row[step]['seconds']:7.1f} s  {row[step]['ratio']:5.2f}x floor "
                  f"({row[floor]:.1f} s)  CPU {row[step]['user_seconds']:.1f}+{row[step]['sys_seconds']:.1f} s  "
                  f"RSS {row[step]['rss_mb']:.0f} MB  "
                  f"load {os.getloadavg()[0]:.1f}  "
                  f"{' | '.join(row[step]['summary'])}", flush=True)
        row["load_after"] = os.getloadavg()[0]
        runs.append(row)
    print("\nmedians over", len(runs), "repeats:")
    table = {}
    for step in steps:
        if step in skip:
            continue
        table[step] = {k: statistics.median(r[step][k] for r in runs) for k in ("seconds", "ratio", "cpu_seconds", "rss_mb")}
        print(f"  {step:12s} {table[step]['seconds']:7.1f} s  {table[step]['ratio']:5.2f}x floor  "
              f"CPU {table[step]['cpu_seconds']:.1f} s  peak RSS {table[step]['rss_mb']:.0f} MB")
    for floor in ("floor_embed", "floor_read"):
        print(f"  {floor:12s} {statistics.median(r[floor] for r in runs):7.1f} s")
    print(f"  load average (1 min) before/after each repeat: {[(round(r['load_before'], 1), round(r['load_after'], 1)) for r in runs]}")
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "layers": layers, "bytes": ref.stat().st_size,
                                         "runs": runs, "medians": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
