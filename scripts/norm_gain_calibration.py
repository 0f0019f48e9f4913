#!/usr/bin/env python3
"""How far real fine-tunes move RMSNorm gains, against what a rescale or fold must show.

A residual gain rescaling is claimed only when it is beyond what training moves
(docs/lineage.md, "What kind of relation"): this measures the three statistics the rule reads
(gain log-ratio spread, its correlation with the columns' shrinkage, and the column fit) on
every norm of every real fine-tune here: the synth derivatives (of a synth base and of the real
stories260K) and, when ``provenance.casestudy`` can fetch it, a transformers fine-tune of the real
SmolLM2-135M. Writes data/calibration/norm_gains.csv and prints the extremes.

    python scripts/norm_gain_calibration.py
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "data" / "calibration" / "norm_gains.csv"
FIELDS = ["pair", "layer", "norm", "gain_ratio_log_sd", "corr_with_column_shrink", "column_fit", "applied"]


def pairs() -> list[tuple[str, Path, Path]]:
    from provenance.synth.store import load_manifest, synth_model_path

    out = [(m["id"], synth_model_path(m["id"]), synth_model_path(m["parent"]))
           for m in load_manifest()["models"] if m.get("parent")]
    try:
        from provenance.casestudy import CaseStudyUnavailable, build_case

        case = build_case()
        out.append(("smollm2-135m-finetune (30 steps)", case.finetuned, case.marked))
    except CaseStudyUnavailable as exc:
        print(f"real SmolLM2 fine-tune skipped: {exc}")
    return out


def rows_of(label: str, child: Path, parent: Path) -> list[dict[str, Any]]:
    from provenance.compare import CompareOptions, compare

    result = compare(child, parent, CompareOptions(permutations=99, threads=1))
    out = []
    for layer in result.alignment.layers if result.alignment else ():
        for name, norm in (("attn_norm", layer.attn_norm_rescale), ("ffn_norm", layer.ffn_norm_rescale)):
            out.append({"pair": label, "layer": layer.layer, "norm": name, "gain_ratio_log_sd": norm.gain_ratio_log_sd,
                        "corr_with_column_shrink": norm.corr_with_column_shrink, "column_fit": norm.column_fit,
                        "applied": norm.applied})
    print(f"{label:36s} {result.verdict.kind:22s} transformations={list(result.verdict.transformations)}", flush=True)
    return out


def main() -> int:
    rows = [row for label, child, parent in pairs() for row in rows_of(label, child, parent)]
    with open(OUT, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    def top(key: str) -> dict[str, Any]:
        return max(rows, key=lambda r: r[key] if r[key] is not None else float("-inf"))
    print("largest gain log-sd:", top("gain_ratio_log_sd"))
    print("largest correlation:", top("corr_with_column_shrink"))
    print("claimed rescales:", sum(bool(r["applied"]) for r in rows), "of", len(rows), "norms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
