"""The whole job a user runs, end to end at real size, against the disk floor measured in the same run.

    python benchmarks/bench_e2e.py [--shape 7b|70b] [--layers N] [--cache-dir DIR] [--reps 1]
                                   [--threads 2] [--json out.json] [--skip STEP,...] [--baseline CHECKOUT]

Every command runs as a user runs it: ``python -m provenance.cli ...`` in a fresh process
(progress lines on), the page cache of every file it reads dropped first with
``posix_fadvise(POSIX_FADV_DONTNEED)`` per file after an fsync (a cold read; if the kernel
refuses, or the following read still runs at page-cache speed, the table says so). Steps:

* ``watermark embed`` of the F16 reference for client ``acme`` (floor: copy the reference in
  16 MB reads and writes, then fsync: what embed cannot avoid). Skipped, and said, when the
  disk would keep less than ``--min-free-gb`` free with the marked copy on it;
* ``quantize --type Q4_K_M`` against llama.cpp's own quantizer (llama-cpp-python built in
  ``.cache/llamacpp``, same thread count) on the reference; the outputs must be byte-identical;
* ``quantize --type Q8_0``, then ``compare`` of that Q8_0 candidate with the reference (grid
  check on, the default) and ``quantcheck`` of it; with ``--baseline CHECKOUT`` each of these two
  runs first with that checkout's code (``python -m provenance.cli`` in it), then with this one's,
  and their JSON reports must agree (timings and paths aside);
* ``watermark detect`` of the marked copy (one client, with the reference), ``watermark trace``
  with the 10- and 100-client registries (the marked client among them);
* ``investigate`` of the marked copy with the reference and the 10-client registry (floor:
  reading candidate and reference once).

The reference, the marked copy, ``owner.secret``, ``registry-10/`` and ``registry-100/`` are read
in place from ``--cache-dir`` when there (``llama-7b-32L-f16.gguf``, ``llama-7b-32L-acme.gguf``),
generated there otherwise; the candidates this run makes (Q4_K_M twice, Q8_0) are written to
``.cache/bench-e2e`` with the project's own quantizer, one at a time, and deleted at the end.
Prints per step the wall time, the cold read floor of its files, their ratio, the child's peak
RSS (``ru_maxrss``) and the load average: the machine is shared, so others' load is in every figure.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import secrets
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quant_e2e as quant_bench  # shapes, reference writer, cold reads, timed runs
from bench_quant_e2e import SHAPES, Step, cold_read, drop_cache, measure, provenance_cmd, run

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench-e2e"
CLIENT = "acme"
PAGE_CACHE_SPEED = 4e9
"""Bytes/s above which a 'cold' read evidently came from the page cache (this disk reads ~1.5 GB/s)."""
STEPS = ("embed", "quantize", "compare", "quantcheck", "detect", "trace", "investigate")


def cache_files(cache: Path, shape: str, layers: int) -> dict[str, Path]:
    stem = f"llama-{shape}-{layers}L"
    return {"reference": cache / f"{stem}-f16.gguf", "marked": cache / f"{stem}-{CLIENT}.gguf",
            "secret": cache / "owner.secret", "registry-10": cache / "registry-10", "registry-100": cache / "registry-100"}


def make_registry(directory: Path, secret: Path, n_clients: int) -> None:
    """A registry directory (the owner's secret + clients.txt) with the marked client among n."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(secret, directory / "secret")
    clients = [CLIENT, *(f"client-{i:03d}" for i in range(n_clients - 1))]
    (directory / "clients.txt").write_text("\n".join(clients) + "\n")


def prepare_inputs(files: dict[str, Path], shape: str, layers: int) -> None:
    """Generate whatever of the reference, secret and registries is missing (the marked copy is
    the embed step's output)."""
    cache = files["reference"].parent
    cache.mkdir(parents=True, exist_ok=True)
    if not files["reference"].exists():
        t0 = time.perf_counter()
        quant_bench.make_reference(files["reference"], SHAPES[shape], layers)
        print(f"generated {files['reference'].name} in {time.perf_counter() - t0:.0f} s", flush=True)
    if not files["secret"].exists():
        files["secret"].write_bytes(secrets.token_hex(16).encode())
    for n in (10, 100):
        if not files[f"registry-{n}"].exists():
            make_registry(files[f"registry-{n}"], files["secret"], n)


def copy_floor(src: Path, dst: Path) -> float:
    """Seconds to copy ``src`` (cold) to ``dst`` in 16 MB reads and writes, fsync included: the
    faster of a buffered copy and an ``O_DIRECT`` one (both ends past the page cache, the last
    block padded then truncated), as ``cold_read`` takes the faster read."""
    return min(_copy_buffered(src, dst), _copy_direct(src, dst))


def _copy_buffered(src: Path, dst: Path) -> float:
    drop_cache([src])
    buffer = bytearray(quant_bench.READ_CHUNK)
    view = memoryview(buffer)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(view):
            fout.write(view[:n])
        os.fsync(fout.fileno())
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


def _copy_direct(src: Path, dst: Path) -> float:
    """``inf`` where the filesystem refuses ``O_DIRECT``."""
    drop_cache([src])
    align = 4096
    buffer = mmap.mmap(-1, quant_bench.READ_CHUNK)
    view = memoryview(buffer)
    direct = getattr(os, "O_DIRECT", 0)
    try:
        fin = os.open(src, os.O_RDONLY | direct)
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o644)
    except OSError:
        return float("inf")
    try:
        t0 = time.perf_counter()
        offset = 0
        while n := os.preadv(fin, [view], offset):
            os.pwritev(fout, [view[: -(-n // align) * align]], offset)
            offset += n
        os.ftruncate(fout, offset)
        os.fsync(fout)
        return time.perf_counter() - t0
    except OSError:
        return float("inf")
    finally:
        os.close(fin)
        os.close(fout)
        dst.unlink(missing_ok=True)
        view.release()
        buffer.close()


def check_cold(paths: list[Path]) -> str:
    """'' when dropping the page cache of ``paths`` works here, else why the floors are not cold."""
    probe = max(paths, key=lambda p: p.stat().st_size)
    try:
        seconds = cold_read(probe)
    except OSError as error:
        return f"page cache cannot be dropped ({error}): floors and commands read warm"
    speed = probe.stat().st_size / seconds
    if speed > PAGE_CACHE_SPEED:
        return f"cache apparently not dropped ({speed / 1e9:.1f} GB/s on {probe.name}): floors read warm"
    print(f"cold read of {probe.name}: {speed / 1e9:.2f} GB/s (page cache dropped)", flush=True)
    return ""


def summary(stderr: str) -> str:
    """The verdict-bearing line of a command's stderr (progress lines skipped)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "ETA" not in line and "%" not in line]
    for marker in ("verdict: ", "ACCUSED", "z="):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[0].removeprefix("verdict: ")[:70]
    return lines[-1][:70] if lines else ""


def step(name: str, args: list[str], reads: list[Path], reps: int, env: dict[str, str], cwd: Path | None = None) -> Step:
    s = Step(name, reads)
    s.verdict = summary(measure(s, provenance_cmd(*args), reps, env, cwd))
    return s


def with_baseline(name: str, args: list[str], reads: list[Path], run_args: argparse.Namespace, env: dict[str, str],
                  steps: list[Step]) -> None:
    """One step, preceded by the same command on ``--baseline``'s checkout (same inputs, same
    minutes, cold both times); each writes its JSON report, and the two documents must say the
    same (everything but file paths and timings), which the table's outcome says."""
    if run_args.baseline is None:
        steps.append(step(name, args, reads, run_args.reps, env))
        return
    outputs = []
    for label, cwd in (("baseline", run_args.baseline), ("this checkout", None)):
        out = WORK / f"report-{label.replace(' ', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        steps.append(step(f"{name} [{label}]", [*args, "-o", str(out)], reads, run_args.reps, env, cwd))
        outputs.append(out)
    same = _same_reports(*outputs)
    steps[-1].verdict = f"{'same report as baseline' if same else 'REPORT DIFFERS FROM BASELINE'}; {steps[-1].verdict}"
    print(f"  reports: {'the same' if same else 'DIFFERENT'}", flush=True)
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)


_VOLATILE = ("timing", "seconds", "elapsed", "time", "created", "generated", "version")


def _same_reports(a: Path, b: Path) -> bool:
    """Whether two report folders' JSON documents agree, timings, versions and file paths aside."""
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not any(word in k.lower() for word in _VOLATILE)
                    and not (isinstance(v, str) and os.sep in v)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    names = sorted(p.name for p in a.glob("*.json"))
    return bool(names) and names == sorted(p.name for p in b.glob("*.json")) and all(
        strip(json.loads((a / n).read_text())) == strip(json.loads((b / n).read_text())) for n in names)


def embed_step(files: dict[str, Path], out: Path, args: argparse.Namespace, env: dict[str, str]) -> Step | None:
    reference = files["reference"]
    free = shutil.disk_usage(out.parent).free
    if free - reference.stat().st_size < args.min_free_gb * 1e9:
        print(f"  embed skipped: {free / 1e9:.0f} GB free, the marked copy needs {reference.stat().st_size / 1e9:.1f} GB "
              f"and --min-free-gb {args.min_free_gb} must stay free", flush=True)
        return None
    s = Step("watermark embed (read + write)", [reference])
    cmd = provenance_cmd("watermark", "embed", str(reference), "--secret-file", str(files["secret"]), "--client", CLIENT,
                         "-o", str(out), "--report", str(WORK / "embed-report.json"))
    for _ in range(args.reps):
        s.floors.append(copy_floor(reference, out))
        wall, cpu, rss, stderr, load = run(cmd, [reference], env)
        s.walls.append(wall)
        s.cpu.append(cpu)
        s.rss_mb.append(rss)
        s.loads.append(load)
        s.verdict = summary(stderr) or f"marked copy written for {CLIENT}"
        print(f"  {s.name}: {wall:.1f} s (floor {s.floors[-1]:.1f} s), peak RSS {rss:.0f} MB, load {load:.1f}", flush=True)
        if files["marked"].exists() or _ < args.reps - 1:
            out.unlink()
    if not files["marked"].exists():
        shutil.move(out, files["marked"])
    return s


def quantize_steps(reference: Path, args: argparse.Namespace, env: dict[str, str]) -> list[Step]:
    ours, theirs = WORK / "ours-Q4_K_M.gguf", WORK / "llamacpp-Q4_K_M.gguf"
    try:
        return quant_bench.quantizer_steps(reference, ours, theirs, args.threads, args.reps, env)
    except SystemExit as failure:  # llama.cpp refusing the file is a finding, not the end of the run
        print(f"  quantizer step failed: {str(failure)[:300]}", flush=True)
        return []
    finally:
        for path in (ours, theirs):
            path.unlink(missing_ok=True)


def q8_steps(reference: Path, args: argparse.Namespace, env: dict[str, str], steps: list[Step]) -> None:
    q8, threads = WORK / "candidate-Q8_0.gguf", str(args.threads)
    try:
        steps.append(step("quantize Q8_0 (provenance)", ["quantize", str(reference), str(q8), "--type", "Q8_0",
                                                         "--threads", threads], [reference], 1, env))
        if "compare" not in args.skip:
            with_baseline("compare Q8_0 vs F16 (grid check)", ["compare", str(q8), str(reference), "--threads", threads],
                          [q8, reference], args, env, steps)
        if "quantcheck" not in args.skip:
            with_baseline("quantcheck Q8_0 -r F16", ["quantcheck", str(q8), "-r", str(reference), "--threads", threads],
                          [q8, reference], args, env, steps)
    finally:
        q8.unlink(missing_ok=True)


def watermark_steps(files: dict[str, Path], args: argparse.Namespace, env: dict[str, str], steps: list[Step]) -> None:
    marked, reference = files["marked"], files["reference"]
    if "detect" not in args.skip:
        steps.append(step("watermark detect, 1 client", ["watermark", "detect", str(marked), "--secret-file",
                                                        str(files["secret"]), "--client", CLIENT, "--reference",
                                                        str(reference), "-o", str(WORK / "detect.json")],
                          [marked, reference], args.reps, env))
    if "trace" not in args.skip:
        for n in args.registries:
            steps.append(step(f"watermark trace, {n} clients", ["watermark", "trace", str(marked), "--registry",
                                                              str(files[f"registry-{n}"]), "--reference", str(reference),
                                                              "-o", str(WORK / f"trace-{n}.json")],
                              [marked, reference], args.reps, env))


def investigate_step(files: dict[str, Path], args: argparse.Namespace, env: dict[str, str]) -> Step:
    out = WORK / "investigate-report"
    s = step("investigate, 1 reference, 10 clients", ["investigate", str(files["marked"]), "--reference",
                                                      str(files["reference"]), "--keys", str(files["registry-10"]),
                                                      "-o", str(out), "--format", "json"],
             [files["marked"], files["reference"]], args.reps, env)
    shutil.rmtree(out, ignore_errors=True)
    return s


def report(steps: list[Step], files: dict[str, Path], args: argparse.Namespace, layers: int, cold_note: str) -> None:
    m = SHAPES[args.shape]
    n_params = sum(int(np.prod(s)) for _, s in quant_bench.tensor_shapes(m, layers))
    llama = next((s for s in steps if "llama.cpp" in s.name), None)
    print(f"\n{args.shape.upper()} shape, {layers} of {m.layers} layers, {n_params / 1e9:.2f} G parameters, reference "
          f"{files['reference'].stat().st_size / 1e9:.1f} GB F16; medians of {args.reps} run(s); --threads {args.threads}; "
          f"{os.cpu_count()} CPUs, shared machine. {cold_note or 'Floors and commands read cold.'}")
    print("| step | wall s | cpu s | floor s | x floor | x llama.cpp | peak RSS MB | load | outcome |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for s in steps:
        wall, floor = statistics.median(s.walls), statistics.median(s.floors)
        versus = f"{wall / statistics.median(llama.walls):.2f}" if llama and s.name.startswith("quantize Q4") else ""
        print(f"| `{s.name}` | {wall:.1f} | {statistics.median(s.cpu):.1f} | {floor:.1f} | {wall / floor:.2f} | {versus} | "
              f"{max(s.rss_mb):.0f} | {statistics.median(s.loads):.1f} | {s.verdict} |")
        rows.append({**asdict(s), "reads": [str(p) for p in s.reads], "ratio_to_floor": wall / floor})
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "layers": layers, "parameters": n_params,
                                               "threads": args.threads, "cold": not cold_note, "note": cold_note,
                                               "steps": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, default=None, help="an N-layer slice of the shape (default: all its layers)")
    ap.add_argument("--cache-dir", type=Path, default=WORK, help="where the reference, marked copy and registries are "
                    "read in place (generated there when missing)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-free-gb", type=float, default=8.0, help="skip embed rather than leave less disk free")
    ap.add_argument("--skip", type=lambda t: set(t.split(",")), default=set(), help=f"steps to leave out: {','.join(STEPS)}")
    ap.add_argument("--registries", type=lambda t: [int(n) for n in t.split(",")], default=[10, 100],
                    help="trace with the registries of these sizes (10 and/or 100 clients)")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout (e.g. a worktree of main) whose compare and "
                    "quantcheck run just before this one's, on the same files; their reports must agree")
    args = ap.parse_args()
    layers = args.layers or SHAPES[args.shape].layers
    WORK.mkdir(parents=True, exist_ok=True)
    quant_bench.CACHE.mkdir(parents=True, exist_ok=True)  # its run() keeps the last stderr there
    files = cache_files(args.cache_dir.resolve(), args.shape, layers)  # absolute: a baseline runs in its own folder
    print(f"disk: {shutil.disk_usage(WORK).free / 1e9:.0f} GB free; cpus: {os.cpu_count()}; load {os.getloadavg()}", flush=True)
    prepare_inputs(files, args.shape, layers)
    env = {**os.environ, "PROVENANCE_PROGRESS_SECONDS": "30", "OMP_WAIT_POLICY": "PASSIVE"}
    cold_note = check_cold([files["reference"]])
    steps: list[Step] = []
    try:  # Ctrl-C (a step taking too long on a loaded machine) still prints what was measured
        # the marked copy is embed's output and the watermark steps' input: made when asked for,
        # or when a step that reads it is asked for and it is missing
        needs_marked = not {"detect", "trace", "investigate"} <= args.skip and not files["marked"].exists()
        if "embed" not in args.skip or needs_marked:
            embedded = embed_step(files, WORK / f"marked-{CLIENT}.gguf", args, env)
            steps += [embedded] if embedded else []
        if "quantize" not in args.skip:
            steps += quantize_steps(files["reference"], args, env)
        if not {"compare", "quantcheck"} <= args.skip:
            q8_steps(files["reference"], args, env, steps)
        if files["marked"].exists():
            watermark_steps(files, args, env, steps)
            if "investigate" not in args.skip:
                steps.append(investigate_step(files, args, env))
    finally:
        report([s for s in steps if s.walls], files, args, layers, cold_note)


if __name__ == "__main__":
    main()
