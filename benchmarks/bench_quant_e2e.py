"""The quantization jobs at real size, against the disk floor measured in the same run.

    python benchmarks/bench_quant_e2e.py [--shape 7b|70b] [--layers N] [--reps 3] [--threads 2] [--keep]

Generates a Llama-2-7B-shaped F16 GGUF once (6.74 G parameters, 13.5 GB; cached under
``.cache/bench-quant-e2e``; ``--layers N`` for an N-layer slice of the same shape,
``--shape 70b --layers 1`` for one Llama-2-70B layer with its embeddings, whose MLP
matrices hold 235 M weights: the memory test) and, in
the same run, times each command as a user runs it (``python -m provenance.cli ...`` in a
fresh process, progress lines on, caches of every file it reads dropped first with
``posix_fadvise(POSIX_FADV_DONTNEED)`` after an fsync):

* the cold read floor of each file (dropped cache, then one sequential read);
* ``provenance quantize --type Q4_K_M`` and llama.cpp's own quantizer
  (``llama_model_quantize`` of llama-cpp-python built in ``.cache/llamacpp``, same thread
  count) on the same source; the two outputs must be byte-identical;
* ``provenance compare`` of the Q4_K_M and of a Q8_0 candidate against the reference
  (grid check on, the default);
* ``provenance quantcheck`` of the exact Q8_0 candidate and of a perturbed one (the
  reference plus Gaussian noise of 1e-3 of each matrix's std, quantized to Q8_0).

Prints, per step, the median wall time over ``--reps`` runs, the median cold read floor of
the files the step reads, their ratio, the peak RSS (``wait4``), the verdict, and the load
average around it: the machine is shared, so other jobs' load is part of every figure.
Disk: at most ~25 GB at once (the reference, one Q8_0 and two Q4_K_M files);
``--keep`` keeps the generated files for the next run (the reference always is).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-quant-e2e"
LLAMACPP = ROOT / ".cache" / "llamacpp"
READ_CHUNK = 16 << 20

NOISE = 1e-3


@dataclass(frozen=True)
class Shape:
    vocab: int
    embd: int
    ff: int
    heads: int
    kv_heads: int
    layers: int


SHAPES = {"7b": Shape(32000, 4096, 11008, 32, 32, 32), "70b": Shape(32000, 8192, 28672, 64, 8, 80)}
"""Llama-2-7B and Llama-2-70B (grouped KV heads: attn_k/attn_v are 1024 x 8192)."""


@dataclass
class Step:
    name: str
    reads: list[Path]
    walls: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """user + system seconds of the command (less sensitive to other jobs than wall time)."""
    loads: list[float] = field(default_factory=list)
    verdict: str = ""


# ----- files --------------------------------------------------------------------------------
def tensor_shapes(m: Shape, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    kv = m.embd // m.heads * m.kv_heads
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (m.vocab, m.embd))]
    for i in range(layers):
        p = f"blk.{i}."
        shapes.append((p + "attn_norm.weight", (m.embd,)))
        shapes += [(p + "attn_q.weight", (m.embd, m.embd)), (p + "attn_k.weight", (kv, m.embd)),
                   (p + "attn_v.weight", (kv, m.embd)), (p + "attn_output.weight", (m.embd, m.embd))]
        shapes.append((p + "ffn_norm.weight", (m.embd,)))
        shapes += [(p + "ffn_gate.weight", (m.ff, m.embd)), (p + "ffn_up.weight", (m.ff, m.embd)),
                   (p + "ffn_down.weight", (m.embd, m.ff))]
    shapes += [("output_norm.weight", (m.embd,)), ("output.weight", (m.vocab, m.embd))]
    return shapes


def make_reference(path: Path, m: Shape, layers: int) -> None:
    """An F16 GGUF of the shape (norms F32 at 1), streamed row chunk by row chunk: Gaussian
    weights of std 0.02, seed 0, a llama header llama.cpp's quantizer accepts."""
    import gguf

    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"bench-{path.stem}")
    writer.add_context_length(4096)
    writer.add_embedding_length(m.embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(m.ff)
    writer.add_head_count(m.heads)
    writer.add_head_count_kv(m.kv_heads)
    writer.add_rope_dimension_count(m.embd // m.heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(m.vocab)])
    writer.add_token_scores([0.0] * m.vocab)
    writer.add_token_types([1] * m.vocab)
    shapes = tensor_shapes(m, layers)
    for name, shape in shapes:
        dtype = np.float16 if len(shape) > 1 else np.float32
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    handle = writer.fout[0]
    rng = np.random.default_rng(0)
    for _name, shape in shapes:
        handle.write(b"\0" * (-handle.tell() % writer.data_alignment))
        if len(shape) == 1:
            handle.write(np.ones(shape, np.float32).tobytes())
            continue
        rows = max(1, (1 << 22) // shape[1])
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            block = rng.standard_normal((n, shape[1]), dtype=np.float32) * np.float32(0.02)
            handle.write(block.astype(np.float16).tobytes())
    writer.close()
    tmp.rename(path)


def make_perturbed_q8_0(reference: Path, out: Path) -> None:
    """The reference plus Gaussian noise (NOISE x each matrix's std, 0.02) on every matrix,
    quantized to Q8_0 through the one model writer."""
    from provenance.formats import open_checkpoint
    from provenance.formats.write import write_checkpoint

    with open_checkpoint(reference) as ref:
        replace: dict[str, Callable[[int, int], np.ndarray]] = {}
        for index, (name, info) in enumerate(ref.tensors.items()):
            if len(info.shape) < 2:
                continue

            def rows(start: int, stop: int, name: str = name, index: int = index) -> np.ndarray:
                x = np.asarray(ref.read_rows(name, start, stop), dtype=np.float32)
                noise = np.random.default_rng((index, start)).standard_normal(x.shape, dtype=np.float32)
                return x + noise * np.float32(NOISE * 0.02)

            replace[name] = rows
        write_checkpoint(ref, out, replace=replace, retype={name: "Q8_0" for name in replace}, to="gguf")


# ----- measuring ----------------------------------------------------------------------------
def drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_read(path: Path) -> float:
    """Seconds to read ``path`` sequentially, cold: the faster of a buffered read and an
    ``O_DIRECT`` read (``dd iflag=direct``), each in 16 MB reads with the page cache dropped
    first. Both are measured because either can be the faster: a buffered cold read costs the
    kernel ~1.2-1.5 s of CPU per GB here (page cache fill and reclaim), which on a loaded
    machine slows it below the disk, and the commands read large ranges ``O_DIRECT``
    (docs/architecture.md, "Reading cold files"): the floor is the best either way reads."""
    return min(_cold_read_buffered(path), _cold_read_direct(path))


def _cold_read_buffered(path: Path) -> float:
    drop_cache([path])
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(view):
            pass
    return time.perf_counter() - t0


def _cold_read_direct(path: Path) -> float:
    """An ``O_DIRECT`` read into page-aligned memory; ``inf`` where the filesystem refuses it."""
    drop_cache([path])
    buffer = mmap.mmap(-1, READ_CHUNK)
    view = memoryview(buffer)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return float("inf")
    try:
        t0 = time.perf_counter()
        offset = 0
        while n := os.preadv(fd, [view], offset):
            offset += n
        return time.perf_counter() - t0
    except OSError:
        return float("inf")
    finally:
        os.close(fd)
        view.release()
        buffer.close()


def run(cmd: list[str], reads: list[Path], env: dict[str, str] | None = None,
        cwd: Path | None = None) -> tuple[float, float, float, str, float]:
    """Wall seconds, CPU seconds, peak RSS (MB), stderr and the 1-minute load average of one
    command run cold (the caches of ``reads`` dropped); ``cwd``: a checkout whose code
    ``python -m provenance.cli`` runs (a baseline)."""
    drop_cache(reads)
    load = os.getloadavg()[0]
    log = CACHE / "last-stderr.txt"
    with open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    text = log.read_text()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{text[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text, (load + os.getloadavg()[0]) / 2


def provenance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "provenance.cli", *args]


def llamacpp_cmd(src: Path, dst: Path, ftype: str, threads: int) -> list[str]:
    script = (f"import ctypes, sys; sys.path.insert(0, {str(LLAMACPP)!r}); import llama_cpp; "
              "p = llama_cpp.llama_model_quantize_default_params(); "
              f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{ftype}; p.nthread = {threads}; "
              "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")
    return [sys.executable, "-c", script, str(src), str(dst)]


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(READ_CHUNK), fb.read(READ_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def verdict_line(stderr: str, prefix: str = "verdict: ") -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    return lines[-1].removeprefix(prefix)[:60] if lines else ""


def measure(step: Step, cmd: list[str], reps: int, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    stderr = ""
    for _ in range(reps):
        step.floors.append(sum(cold_read(p) for p in step.reads))
        wall, cpu, rss, stderr, load = run(cmd, step.reads, env, cwd)
        step.walls.append(wall)
        step.cpu.append(cpu)
        step.rss_mb.append(rss)
        step.loads.append(load)
        print(f"  {step.name}: {wall:.1f} s (cpu {cpu:.1f} s, floor {step.floors[-1]:.1f} s), peak RSS {rss:.0f} MB, "
              f"load {load:.1f}", flush=True)
    return stderr


# ----- the run -------------------------------------------------------------------------------
def quantizer_steps(reference: Path, ours: Path, theirs: Path, threads: int, reps: int, env: dict[str, str]) -> list[Step]:
    step = Step("quantize Q4_K_M (provenance)", [reference])
    measure(step, provenance_cmd("quantize", str(reference), str(ours), "--type", "Q4_K_M", "--threads", str(threads)),
            reps, env)
    steps = [step]
    if (LLAMACPP / "llama_cpp").is_dir():
        step = Step("quantize Q4_K_M (llama.cpp)", [reference])
        measure(step, llamacpp_cmd(reference, theirs, "Q4_K_M", threads), reps, env)
        step.verdict = "output byte-identical to ours" if same_bytes(ours, theirs) else "OUTPUT DIFFERS FROM OURS"
        steps.append(step)
        theirs.unlink()
    return steps


def analysis_step(name: str, args: list[str], reads: list[Path], reps: int, env: dict[str, str]) -> Step:
    step = Step(name, reads)
    step.verdict = verdict_line(measure(step, provenance_cmd(*args), reps, env))
    return step


def report(steps: list[Step], reference: Path, args: argparse.Namespace) -> None:
    m, layers = SHAPES[args.shape], args.layers or SHAPES[args.shape].layers
    n_params = sum(int(np.prod(s)) for _, s in tensor_shapes(m, layers))
    llama = next((s for s in steps if "llama.cpp" in s.name), None)
    print(f"\n{args.shape.upper()} shape, {layers} of {m.layers} layers, {n_params / 1e9:.2f} G parameters, reference "
          f"{reference.stat().st_size / 1e9:.1f} GB F16; medians of {args.reps} runs "
          f"({args.quantize_reps or args.reps} for the quantizers); --threads {args.threads}; shared machine")
    print(f"{'step':32} {'wall s':>7} {'cpu s':>7} {'floor s':>7} {'x floor':>7} {'x llama':>7} {'RSS MB':>7} "
          f"{'load':>5}  verdict")
    table = []
    for s in steps:
        wall, floor = statistics.median(s.walls), statistics.median(s.floors)
        versus = wall / statistics.median(llama.walls) if llama and s.name.startswith("quantize") else float("nan")
        print(f"{s.name:32} {wall:7.1f} {statistics.median(s.cpu):7.1f} {floor:7.1f} {wall / floor:7.2f} {versus:7.2f} "
              f"{max(s.rss_mb):7.0f} {statistics.median(s.loads):5.1f}  {s.verdict}")
        table.append({"step": s.name, "walls": s.walls, "cpu": s.cpu, "floors": s.floors, "rss_mb": s.rss_mb,
                      "loads": s.loads, "verdict": s.verdict})
    (CACHE / f"results-{args.shape}-{layers}l.json").write_text(json.dumps(table, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, default=None, help="an N-layer slice of the shape (default: all its layers)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quantize-reps", type=int, default=None, help="repetitions of the two quantizers (default --reps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the candidates for the next run")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "30", "OMP_WAIT_POLICY": "PASSIVE"}
    m = SHAPES[args.shape]
    layers = args.layers or m.layers
    tag, threads = f"{args.shape}-{layers}l", str(args.threads)
    reference = CACHE / f"ref-{tag}-f16.gguf"
    print(f"disk: {shutil.disk_usage(CACHE).free / 1e9:.0f} GB free; cpus: {os.cpu_count()}; "
          f"load average {os.getloadavg()}", flush=True)
    if not reference.exists():
        t0 = time.perf_counter()
        make_reference(reference, m, layers)
        print(f"generated {reference.name} ({reference.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - t0:.0f} s")
    ours, theirs = CACHE / f"ours-{tag}-Q4_K_M.gguf", CACHE / f"llamacpp-{tag}-Q4_K_M.gguf"
    exact, perturbed = CACHE / f"exact-{tag}-Q8_0.gguf", CACHE / f"perturbed-{tag}-Q8_0.gguf"
    steps = quantizer_steps(reference, ours, theirs, args.threads, args.quantize_reps or args.reps, env)
    steps.append(analysis_step("compare Q4_K_M vs F16", ["compare", str(ours), str(reference), "--threads", threads],
                               [ours, reference], args.reps, env))
    if not args.keep:
        ours.unlink()
    if not exact.exists():
        subprocess.run(provenance_cmd("quantize", str(reference), str(exact), "--type", "Q8_0", "--threads", threads),
                       check=True, env=env, stderr=subprocess.DEVNULL)
    steps.append(analysis_step("compare Q8_0 vs F16", ["compare", str(exact), str(reference), "--threads", threads],
                               [exact, reference], args.reps, env))
    steps.append(analysis_step("quantcheck exact Q8_0", ["quantcheck", str(exact), "-r", str(reference), "--threads", threads],
                               [exact, reference], args.reps, env))
    if not args.keep:
        exact.unlink()
    if not perturbed.exists():
        make_perturbed_q8_0(reference, perturbed)
    steps.append(analysis_step("quantcheck perturbed Q8_0",
                               ["quantcheck", str(perturbed), "-r", str(reference), "--threads", threads],
                               [perturbed, reference], args.reps, env))
    if not args.keep:
        perturbed.unlink()
    report(steps, reference, args)


if __name__ == "__main__":
    main()
