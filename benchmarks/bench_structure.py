"""What the layer map and the rotation-blind statistics cost `compare`, on 7B-shaped layers.

Same files as ``bench_compare.py`` (N Llama-7B-shaped F16 layers, candidate = reference +
noise), compared in one process with the structure evidence on (the defaults: unit-space
slices and test, layer signatures and map, probe rows) and off (``max_units=0,
max_probe_tokens=0, layer_map=False``: exactly the pass before issue #14), alternated
``--repeat`` times after one warm-up call each; prints the median wall times and their
ratio. Then the layer map alone at 80 layers: signatures of 7 circuits of 128 x 128 per
layer and side, the 80 x 80 distance table, the match and its description.

    python benchmarks/bench_structure.py [--layers 4] [--keep DIR] [--repeat 5]
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


def layer_map_80(layers: int = 80, m: int = 128) -> dict:
    import numpy as np

    from provenance.compare.invariants import Circuit
    from provenance.compare.layermap import LayerSignature, describe, distance_table, match_layers

    rng = np.random.default_rng(0)
    labels = ("qk", "ov", "mlp", "gate", "unit_gg", "unit_ud", "unit_gd")

    def circuits(layer: int) -> list[Circuit]:
        return [Circuit(label, layer, rng.standard_normal((m, m)), True) for label in labels]

    t0 = time.perf_counter()
    ref = [LayerSignature.of(k, circuits(k)) for k in range(layers)]
    cand = [LayerSignature.of(k, circuits(k)) for k in range(layers)]
    t1 = time.perf_counter()
    table = distance_table(cand, ref)
    lmap = describe(match_layers(table, range(layers), range(layers)), layers, table)
    t2 = time.perf_counter()
    return {"layers": layers, "signatures_s": round(t1 - t0, 3), "table_and_map_s": round(t2 - t1, 3),
            "total_s": round(t2 - t0, 3), "structure": list(lmap.structure)}


def main() -> int:
    from bench_compare import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="directory for the generated files (kept)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        cand, ref = generate(directory, args.layers)
        out = {"layers": args.layers, "compare": compare_overhead(str(cand), str(ref), args.repeat),
               "layer_map": layer_map_80()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
