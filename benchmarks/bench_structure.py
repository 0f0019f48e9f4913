"""What the layer map and the rotation-blind statistics cost `compare`, on 7B-shaped layers.

Same files as ``bench_compare.py`` (N Llama-7B-shaped F16 layers, candidate = reference +
noise), compared in one process with the structure evidence on (the defaults: unit-space
slices and test, layer signatures and map, probe rows) and off (``max_units=0,
max_probe_tokens=0, layer_map=False``: exactly the pass before issue #14), alternated
``--repeat`` times after one warm-up call each; prints the median wall times and their
ratio. Then the layer map alone at 80 layers, from sketches: per layer and side the
circuits of a sketch of the sizes ``compare`` keeps (|S| = 128 residual coordinates, |U| =
128 MLP units; Llama-7B widths 4096 / 11008 / 32 heads and Llama-70B widths 8192 / 28672 /
64 heads, 8 KV heads), their 7 spectra, then the 80 x 80 distance table, the match and its
description: computed as before (the test's circuits, one thread, layer after layer) and as
``layermap.read_signatures`` does now (``signatures_of``: circuits arranged for their spectra,
on 1 and on 2 worker threads), alternated ``--map-repeat`` times in one process; prints each
way's times, the speedups of the medians, and whether the maps agree (same matches, largest
change of a distance).

    python benchmarks/bench_structure.py [--layers 4] [--keep DIR] [--repeat 5] [--map-only] [--map-repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def compare_overhead(cand: str, ref: str, repeat: int) -> dict:
    import torch

    from provenance.compare import CompareOptions, compare

    torch.set_num_threads(1)
    on = CompareOptions(threads=2, permutations=99, grid_check=False)
    off = replace(on, max_units=0, max_probe_tokens=0, layer_map=False)
    for opts in (on, off):  # warm-up: compiled kernels, lazy imports, page cache
        compare(cand, ref, opts)
    walls: dict[str, list[float]] = {"on": [], "off": []}
    test_s: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeat):
        for key, opts in (("off", off), ("on", on)):
            t0 = time.perf_counter()
            res = compare(cand, ref, opts)
            walls[key].append(time.perf_counter() - t0)
            test_s[key].append(res.timing.test_during_stream_s)
    med = {k: sorted(v)[len(v) // 2] for k, v in walls.items()}
    return {"wall_off_s": walls["off"], "wall_on_s": walls["on"], "median_off_s": round(med["off"], 3),
            "median_on_s": round(med["on"], 3), "ratio_on_over_off": round(med["on"] / med["off"], 3),
            "test_during_stream_on_s": test_s["on"], "test_during_stream_off_s": test_s["off"],
            "verdict": res.verdict.kind,
            "unit_test_p": res.structure.unit_test.p_asymptotic if res.structure and res.structure.unit_test else None}


#: (name, n_embd, n_ff, n_head, n_head_kv): the widths of the sketches the map starts from
MAP_SHAPES = (("llama-7b", 4096, 11008, 32, 32), ("llama-70b", 8192, 28672, 64, 8))


def _sketch_layer(rng, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, s: int = 128, u: int = 128):
    """One layer's sketch as ``compare`` keeps it (random values: the cost does not depend on them):
    columns S of the readers, rows S of the writers, full rows/columns of the units U."""
    import numpy as np

    from provenance.compare.sketch import Sketch

    head_dim = n_embd // n_head

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    parts = {"attn_q": r(n_head * head_dim, s), "attn_k": r(n_head_kv * head_dim, s), "attn_v": r(n_head_kv * head_dim, s),
             "attn_output": r(s, n_head * head_dim), "ffn_gate": r(n_ff, s), "ffn_up": r(n_ff, s), "ffn_down": r(s, n_ff),
             "attn_norm": 1 + 0.1 * r(s), "ffn_norm": 1 + 0.1 * r(s)}
    units = {"ffn_gate": r(u, n_embd), "ffn_up": r(u, n_embd), "ffn_down": r(n_embd, u), "ffn_norm": 1 + 0.1 * r(n_embd)}
    sketch = Sketch(np.arange(s), np.arange(0))
    sketch.layers[0], sketch.units[0] = parts, units
    return sketch


def _at_layer(sketch, layer: int):
    """The pooled sketch under another layer index (the same arrays, no copy)."""
    from provenance.compare.sketch import Sketch

    return Sketch(sketch.residual, sketch.tokens, {layer: sketch.layers[0]}, {}, {layer: sketch.units[0]})


def _signatures_before(sketches, heads):
    """The signatures as ``read_signatures`` computed them before (the test's circuits, one
    thread, layer after layer), timing circuits and spectra apart."""
    import time

    from provenance.compare.invariants import circuits
    from provenance.compare.layermap import LayerSignature
    from provenance.compare.unitspace import unit_circuits

    out, circuits_s, spectra_s = [], 0.0, 0.0
    for layer, sketch in sketches:
        t0 = time.perf_counter()
        mats = circuits(sketch, heads) + unit_circuits(sketch.units)
        t1 = time.perf_counter()
        out.append(LayerSignature.of(layer, mats))
        circuits_s, spectra_s = circuits_s + t1 - t0, spectra_s + time.perf_counter() - t1
    return out, circuits_s, spectra_s


def layer_map_80(layers: int = 80, shape: tuple = MAP_SHAPES[0], pool: int = 4, repeat: int = 1,
                 threads: int = 2) -> dict:
    """An ``layers``-layer map from sketches: circuits, spectra, table, match, computed as before
    (``_signatures_before``) and as ``read_signatures`` does now (``signatures_of`` on 1 and on
    ``threads`` threads), alternated ``repeat`` times in this process. ``pool`` distinct random
    layer sketches per side are generated up front (outside the timing) and reused, so generating
    2 x ``layers`` sketches does not dominate the run."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from provenance.compare.invariants import HeadLayout
    from provenance.compare.layermap import describe, distance_table, match_layers, signatures_of

    torch.set_num_threads(1)
    name, n_embd, n_ff, n_head, n_head_kv = shape
    heads = HeadLayout(n_head, n_head_kv, n_embd // n_head)
    rng = np.random.default_rng(0)
    pools = {side: [_sketch_layer(rng, n_embd, n_ff, n_head, n_head_kv) for _ in range(pool)] for side in ("r", "c")}

    def stream(side: str):
        return ((k, _at_layer(pools[side][k % pool], k)) for k in range(layers))

    def one_map(signatures: dict) -> tuple:
        table = distance_table(signatures["c"], signatures["r"])
        lmap = describe(match_layers(table, range(layers), range(layers)), layers, table)
        return lmap, table

    runs: dict[str, list[dict]] = {"before": [], "after_1_thread": [], f"after_{threads}_threads": []}
    maps = {}
    for _ in range(repeat):
        for mode in runs:
            t0 = time.perf_counter()
            timing = {}
            if mode == "before":
                with threadpool_limits(1, user_api="blas"):
                    got = {side: _signatures_before(stream(side), heads) for side in ("r", "c")}
                signatures = {side: v[0] for side, v in got.items()}
                timing = {"circuits_s": sum(v[1] for v in got.values()), "spectra_s": sum(v[2] for v in got.values())}
            else:
                n = 1 if mode == "after_1_thread" else threads
                signatures = {side: signatures_of(stream(side), heads, n) for side in ("r", "c")}
            t1 = time.perf_counter()
            lmap, table = one_map(signatures)
            t2 = time.perf_counter()
            runs[mode].append({**{k: round(v, 3) for k, v in timing.items()}, "signatures_s": round(t1 - t0, 3),
                               "table_and_map_s": round(t2 - t1, 3), "from_sketches_s": round(t2 - t0, 3)})
            maps[mode] = (lmap, table)
    before_map, before_table = maps["before"]
    same = {mode: [m.reference_layer for m in lmap.matches] == [m.reference_layer for m in before_map.matches]
            for mode, (lmap, _) in maps.items()}
    diff = {mode: float(np.max(np.abs(np.where(np.isfinite(table), table, 0) - np.where(np.isfinite(before_table), before_table, 0))))
            for mode, (_, table) in maps.items()}

    def median(mode: str) -> float:
        xs = sorted(r["from_sketches_s"] for r in runs[mode])
        return xs[len(xs) // 2]

    return {"shape": name, "layers": layers, "runs": runs,
            "median_from_sketches_s": {mode: median(mode) for mode in runs},
            "speedup": {mode: round(median("before") / median(mode), 2) for mode in runs if mode != "before"},
            "same_matches_as_before": same, "max_distance_change": diff, "structure": list(before_map.structure)}


def main() -> int:
    from bench_compare import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="directory for the generated files (kept)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--map-only", action="store_true", help="only the 80-layer maps (no 7B files written)")
    parser.add_argument("--map-repeat", type=int, default=3, help="alternated runs of each way of computing the map")
    args = parser.parse_args()
    maps = [layer_map_80(shape=shape, repeat=args.map_repeat) for shape in MAP_SHAPES]
    if args.map_only:
        print(json.dumps({"layer_map": maps}, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        cand, ref = generate(directory, args.layers)
        out = {"layers": args.layers, "compare": compare_overhead(str(cand), str(ref), args.repeat), "layer_map": maps}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
