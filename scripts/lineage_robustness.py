#!/usr/bin/env python3
"""A leaker who knows the tool: what `compare` says about obfuscated copies and fine-tunes.

Writes data/calibration/lineage_robustness.csv and the table in docs/lineage.md (between the
``robustness-table`` markers). Every row is measured here, nothing extrapolated:

* **copy**: a real fine-tuned model (``stories260k-ft-medium``, trained from the real
  stories260K) obfuscated, compared with that model as the reference: the verdict must be a
  copy kind (identical, requantized, magnitude-pruned or perturbed copy) with the
  transformation named, never "fine-tune";
* **fine-tune**: the same obfuscated model compared with its parent (``stories260k``): the
  verdict must stay "fine-tune".

Obfuscations (``provenance.synth.obfuscate``), each alone and combined with Q4_K_M (the
project's llama.cpp-exact quantizer; at stories260K's shape llama.cpp falls back to Q5_0/
Q8_0/F16, docs/lineage.md): unit and head permutations with unit, v-channel and residual
rescaling; norm folding; a residual rotation; i.i.d. noise 1e-4..1e-2 of each row's spread;
magnitude pruning 10-50%; requantization chains; every llama.cpp type from Q8_0 to Q2_K.

    python scripts/lineage_robustness.py           # everything (~5 min on 2 shared cores)
    python scripts/lineage_robustness.py --quick   # FAST_SUBSET only, prints, writes nothing
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance.synth.obfuscate import Recipe  # noqa: E402

OUT_CSV = ROOT / "data" / "calibration" / "lineage_robustness.csv"
DOC = ROOT / "docs" / "lineage.md"
LEAKED = "stories260k-ft-medium"
PARENT = "stories260k"
FIELDS = ["obfuscation", "on", "verdict", "z", "p_asymptotic", "p_exact", "named", "as_expected", "description"]

_PERMUTE = ("permute", 7)
_ALONE: list[tuple[Recipe, tuple[str, ...]]] = [
    (Recipe("none"), ()),
    (Recipe("unit+head permutations, rescaling", (_PERMUTE,)), ("permut", "rescal")),
    (Recipe("norm folding", (("fold", 0),)), ("norm gains",)),
    (Recipe("residual rotation", (("rotate", 3),)), ("rotat",)),
    *[(Recipe(f"noise {a:g}", (("noise", a),)), ("noise",)) for a in (1e-4, 1e-3, 1e-2)],
    *[(Recipe(f"magnitude pruning {p:.0%}", (("prune", p),)), ("pruned",)) for p in (0.1, 0.3, 0.5)],
    (Recipe("chain Q8_0 > F16", (("quantize", "Q8_0"), ("quantize", "F16"))), ("Q8_0",)),
    (Recipe("chain BF16", (("quantize", "BF16"),)), ("BF16",)),
    (Recipe("permutations + noise 1e-3", (_PERMUTE, ("noise", 1e-3))), ("permut", "noise")),
    (Recipe("norm folding + pruning 30%", (("fold", 0), ("prune", 0.3))), ("norm gains", "pruned")),
]
TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")


def recipes() -> list[tuple[Recipe, tuple[str, ...]]]:
    """Every obfuscation alone, each again with Q4_K_M, and plain storage in every type."""
    out = list(_ALONE)
    for recipe, words in _ALONE:
        label = "Q4_K_M" if not recipe.steps else f"{recipe.label} + Q4_K_M"
        if recipe.steps:
            out.append((Recipe(label, recipe.steps, "Q4_K_M"), (*words, "quantized")))
    out += [(Recipe(t, (), t), ("quantized",)) for t in TYPES]
    return out


FAST_SUBSET = ("none", "unit+head permutations, rescaling + Q4_K_M", "noise 0.001", "noise 0.001 + Q4_K_M",
               "magnitude pruning 30%", "chain Q8_0 > F16 + Q4_K_M", "residual rotation + Q4_K_M")

COPY_KINDS = ("identical", "requantized", "pruned-copy", "perturbed-copy")


def expected_kind(kind: str, rotated_copy: bool, on: str) -> bool:
    """A copy must be a copy kind, a fine-tune a fine-tune. A residual rotation hides the
    per-tensor deltas (docs/lineage.md, "Structure"): the unit-space test still relates it, and
    the verdict is a rotated copy ("rotated copy", or "quantized copy ... after a residual
    rotation" when the candidate's cells hold the reference rotated into its basis) or a "rotated
    derivative". So on a copy only a rotated copy is as expected, on a fine-tune only a derivative."""
    if kind == "rotated":
        return rotated_copy if on == "copy" else not rotated_copy
    return kind in COPY_KINDS if on == "copy" else kind == "fine-tune"


def run_case(recipe: Recipe, words: tuple[str, ...], on: str) -> dict[str, Any]:
    """One row: obfuscate LEAKED, compare with itself (copy) or with PARENT (fine-tune)."""
    from provenance.compare import CompareOptions, compare
    from provenance.synth.store import synth_model_path

    reference = LEAKED if on == "copy" else PARENT
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.gguf"
        recipe.write(synth_model_path(LEAKED), path)
        result = compare(path, synth_model_path(reference), CompareOptions(first_permutations=0, threads=1, seed=0))
    v = result.verdict
    text = v.description.lower()
    named = all(re.search(w.lower(), text) for w in words) if words else True
    expected = expected_kind(v.kind, getattr(v.details, "copy", False), on)
    return {"obfuscation": recipe.label, "on": on, "verdict": v.kind, "z": round(v.z or 0.0, 1),
            "p_asymptotic": v.p_asymptotic, "p_exact": v.p_exact, "named": named, "as_expected": expected,
            "description": v.description}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| obfuscation | on | verdict | z | exact p | named | as expected | what compare says |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['obfuscation']} | {r['on']} | {r['verdict']} | {float(r['z']):.0f} | {float(r['p_exact']):.3g} | "
                   f"{'yes' if str(r['named']) == 'True' else 'no'} | {'yes' if str(r['as_expected']) == 'True' else '**no**'} | "
                   f"{r['description']} |")
    return "\n".join(out)


def write_doc(rows: list[dict[str, Any]]) -> None:
    text = DOC.read_text("utf-8")
    start, end = "<!-- robustness-table:start -->", "<!-- robustness-table:end -->"
    if start not in text:
        raise SystemExit(f"{DOC}: markers {start} / {end} missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{start}\n{table(rows)}\n{end}{tail}", "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the fast subset only; prints, writes nothing")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    for recipe, words in recipes():
        if args.quick and recipe.label not in FAST_SUBSET:
            continue
        for on in ("copy", "fine-tune"):
            t0 = time.perf_counter()
            row = run_case(recipe, words, on)
            rows.append(row)
            print(f"{row['obfuscation']:42s} {on:9s} {row['verdict']:15s} z={row['z']:7.1f} named={row['named']!s:5s} "
                  f"ok={row['as_expected']!s:5s} {row['description']} ({time.perf_counter() - t0:.1f}s)", flush=True)
    if not args.quick:
        with open(OUT_CSV, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        write_doc(rows)
    bad = [r for r in rows if not r["as_expected"]]
    print(f"{len(rows)} rows, {len(bad)} not as expected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
