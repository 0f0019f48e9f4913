"""Peak RSS and time of the rotated grid check (``compare/rotgrid.py``) at a real model's width.

    python benchmarks/bench_rotgrid_memory.py [--shape 7b|70b] [--tensors ffn_down,...] [--baseline CHECKOUT]
                                              [--polar-float32] [--keep]

The reference is a one-layer slice of the shape (``bench_quant_e2e.make_reference``: F16,
Gaussian weights, a 256-token vocabulary so the embedding stays small); the candidate is the
listed matrices of layer 0 with the embedding and norms, rotated by the project's synth tool
(``provenance.synth.obfuscate.rotate_residual``: gains folded, readers ``W Q``, writers ``Q^T W``)
and stored Q8_0 by the project's writer (``compare.variants.write_variant``). Both go to
``.cache/bench-rotgrid`` and are deleted at the end unless ``--keep``.

``check_rotated_grid`` then runs in a fresh process per checkout (this one, and ``--baseline``'s
first, in the same run), which prints its peak RSS (``ru_maxrss``), wall time and the check's
counts; the counts must agree. The peak is the child's ``VmHWM`` (``ru_maxrss`` survives ``execve``:
it would include this script's own size at the fork). ``--polar-float32`` forces the float32 polar factor at any width
(to measure its distance from the float64 one). The machine is shared: the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant_e2e import SHAPES, make_reference

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench-rotgrid"

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from provenance.compare import rotgrid
from provenance.formats import open_checkpoint
if sys.argv[5] == "1":
    from provenance.compare import polar
    polar.FLOAT64_BUDGET_BYTES = 0
fit = rotgrid.fit_rotation
def saving_fit(*a):
    q = fit(*a)
    if len(sys.argv) > 6:
        np.save(sys.argv[6], q)
    return q
rotgrid.fit_rotation = saving_fit
t0 = time.perf_counter()
with open_checkpoint(sys.argv[2]) as c, open_checkpoint(sys.argv[3]) as r:
    found = rotgrid.check_rotated_grid(c, r, sys.argv[4].split(","))
    seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child forked from this script
# (which held the generated tensors) would report the parent's size
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "rss_mb": hwm / 1024,
                  "check": found.to_dict() if found else None}))
"""


def make_candidate(reference: Path, out: Path, names: list[str]) -> None:
    """The embedding, the norms and ``names`` of ``reference``, rotated and stored Q8_0."""
    from provenance.compare.variants import write_variant
    from provenance.formats import open_checkpoint
    from provenance.synth.obfuscate import rotate_residual

    with open_checkpoint(reference) as ref:
        keep = [n for n, info in ref.tensors.items() if n in names or n == "token_embd.weight" or len(info.shape) == 1]
        tensors = {n: ref.read(n) for n in keep}
        arch = ref.architecture
    write_variant(out, rotate_residual(tensors, seed=3), arch, "Q8_0", "bench-rotgrid")


def run_check(checkout: Path, cand: Path, ref: Path, names: list[str], float32: bool, q_out: Path | None) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(checkout), str(cand), str(ref), ",".join(names), "1" if float32 else "0"]
    if q_out is not None:
        cmd.append(str(q_out))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=checkout)
    if done.returncode != 0:
        raise SystemExit(f"check failed in {checkout}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--tensors", default="ffn_down", help="layer-0 matrices to rotate and check (comma-separated roles)")
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout whose rotgrid runs first, same inputs")
    ap.add_argument("--polar-float32", action="store_true", help="force the float32 polar factor (this checkout)")
    ap.add_argument("--save-q", action="store_true", help="save each checkout's fitted Q and compare them")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    shape = replace(SHAPES[args.shape], vocab=256)
    names = [f"blk.0.{role}.weight" for role in args.tensors.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    ref, cand = WORK / f"{args.shape}-1L-f16.gguf", WORK / f"{args.shape}-{args.tensors.replace(',', '+')}-rot-q8_0.gguf"
    try:
        if not ref.exists():
            make_reference(ref, shape, 1)
        if not cand.exists():
            t0 = time.perf_counter()
            make_candidate(ref, cand, names)
            print(f"generated {cand.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {}
        for label, checkout, f32 in ((("baseline", args.baseline, False),) if args.baseline else ()) + (
                ("this", ROOT, args.polar_float32),):
            q_out = WORK / f"q-{label}.npy" if args.save_q else None
            load = os.getloadavg()[0]
            res = run_check(checkout, cand, ref, names, f32, q_out)
            results[label] = res
            check = res["check"]
            print(f"{label:9s} {args.shape} {','.join(names)}: {res['seconds']:.0f} s, peak RSS {res['rss_mb']:.0f} MB, "
                  f"load {load:.1f}; {check['description']}; consistent {check['consistent']}, "
                  f"noise ratio max {check['noise_ratio_max']:.6g}, fit residual {check['fit_residual']:.6g}", flush=True)
        if args.baseline:
            a, b = results["baseline"]["check"], results["this"]["check"]
            same = [k for k in a if isinstance(a[k], float) or a[k] == b[k]]
            print("counts and flags equal:", len(same) == len(a), {k: (a[k], b[k]) for k in a if k not in same})
            if args.save_q:
                import numpy as np
                qa, qb = np.load(WORK / "q-baseline.npy"), np.load(WORK / "q-this.npy")
                print(f"max |Q_this - Q_baseline| = {np.abs(qa - qb).max():.3g}")
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
