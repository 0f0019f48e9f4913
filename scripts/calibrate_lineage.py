"""Calibrate `provenance compare` on the synth pool; write data/calibration/*.

Null: every pair of independently trained models of the pool (synth-sNN seeds and
stories260k, same shape, same data distribution), plus a subset with the candidate
symmetry-transformed and quantized (the test must stay calibrated under them). The
p-values must be uniform or conservative (KS test) with no false positive at 1e-3.

Derived: every derivative in the manifest (fine-tunes of three strengths, merged LoRA,
continued pretraining with a new RoPE base) against its parent, each as shipped and
permuted+rescaled, each in fp and quantized (Q8_0, Q4_K_M, Q2_K byte-identical to what
llama-quantize writes from an F32 GGUF of the candidate, fallbacks included, via
provenance.quant.writer.quantize_model; and an emulated 2-bit level); each must be
detected at p < 1e-6.

Every case is a pure function of its spec (seeds fixed), so tests rerun a few cases and
compare with the committed CSVs. Usage::

    python scripts/calibrate_lineage.py            # full run (~10 min on 2 cores)
    python scripts/calibrate_lineage.py --quick    # a handful of cases, prints only
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "data" / "calibration"
SYNTH = ROOT / "data" / "synth"
ALPHA = 1e-3
DETECT = 1e-6
NULL_VARIANT_PAIRS = 40
SCHEMES = (None, "Q8_0", "Q4_K_M", "Q2_K", "2bit-emu")
CSV_FIELDS = ["case", "kind", "candidate", "reference", "permuted", "scheme", "verdict", "p_exact",
              "p_asymptotic", "z", "statistic", "mean_spearman", "seconds"]


def model_path(model_id: str) -> str:
    return str(SYNTH / "models" / model_id)


def run_case(spec: dict[str, Any], permutations: int = 999) -> dict[str, Any]:
    """One calibration case: build the candidate variant if needed, compare, summarise."""
    import torch

    from provenance.compare import CompareOptions, compare
    from provenance.compare.variants import apply_symmetries, load_canonical, write_variant

    torch.set_num_threads(1)
    start = time.perf_counter()
    cand = model_path(spec["candidate"])
    with tempfile.TemporaryDirectory() as tmp:
        if spec.get("permuted") or spec.get("scheme"):
            tensors, arch, _ = load_canonical(cand)
            if spec.get("permuted"):
                tensors, _ = apply_symmetries(tensors, arch, seed=int(spec["perm_seed"]))
            cand = os.path.join(tmp, "candidate.gguf")
            write_variant(cand, tensors, arch, spec.get("scheme"), spec["candidate"],
                          base_model=spec["reference"] if spec["kind"] == "derived" else None)
        result = compare(cand, model_path(spec["reference"]),
                         CompareOptions(permutations=permutations, threads=1, seed=0))
    test = result.test
    return {
        "case": spec["case"], "kind": spec["kind"], "candidate": spec["candidate"], "reference": spec["reference"],
        "permuted": bool(spec.get("permuted")), "scheme": spec.get("scheme") or "fp",
        "verdict": result.verdict.kind, "p_exact": test.p_exact if test else None,
        "p_asymptotic": test.p_asymptotic if test else None, "z": test.z if test else None,
        "statistic": test.statistic if test else None,
        "mean_spearman": float(np.mean([c.spearman for c in test.circuits])) if test and test.layers else None,
        "seconds": round(time.perf_counter() - start, 2),
    }


def cases(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    models = manifest["models"]
    pool = sorted(m["id"] for m in models if m["kind"] in ("independent", "converted"))
    out: list[dict[str, Any]] = []
    null_pairs = list(itertools.combinations(pool, 2))
    for ref, cand in null_pairs:
        out.append({"case": f"null:{cand}~{ref}", "kind": "null", "candidate": cand, "reference": ref})
    rng = np.random.default_rng(2026)
    for k in rng.choice(len(null_pairs), size=min(NULL_VARIANT_PAIRS, len(null_pairs)), replace=False):
        ref, cand = null_pairs[int(k)]
        scheme = SCHEMES[1 + int(k) % (len(SCHEMES) - 1)]
        out.append({"case": f"null-variant:{cand}~{ref}:{scheme}", "kind": "null", "candidate": cand,
                    "reference": ref, "permuted": True, "perm_seed": int(k), "scheme": scheme})
    derived = [m for m in models if m["kind"] in ("finetune", "lora", "continued-pretraining") and m.get("parent")]
    for i, m in enumerate(sorted(derived, key=lambda m: m["id"])):
        for permuted in (False, True):
            for scheme in SCHEMES:
                out.append({"case": f"derived:{m['id']}:{'perm' if permuted else 'plain'}:{scheme or 'fp'}",
                            "kind": "derived", "candidate": m["id"], "reference": m["parent"],
                            "permuted": permuted, "perm_seed": 1000 + i, "scheme": scheme})
    return out


def summarise(null: list[dict[str, Any]], derived: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import kstest

    def ks(values: list[float]) -> dict[str, Any]:
        v = np.asarray(values, dtype=float)
        # H1 "anti-conservative": p-values stochastically smaller than uniform
        less = kstest(v, "uniform", alternative="greater")
        two = kstest(v, "uniform")
        return {"n": len(v), "ks_anticonservative_stat": float(less.statistic), "ks_anticonservative_p": float(less.pvalue),
                "ks_two_sided_stat": float(two.statistic), "ks_two_sided_p": float(two.pvalue),
                "min": float(v.min()), "false_positives_at_1e-3": int((v < ALPHA).sum())}

    plain = [r for r in null if not r["permuted"]]
    return {
        "alpha": ALPHA, "detect_threshold": DETECT,
        "null": {
            "pairs": len(null), "independent_pairs_plain": len(plain),
            "models": sorted({r["candidate"] for r in null} | {r["reference"] for r in null}),
            "p_asymptotic": ks([r["p_asymptotic"] for r in null]),
            "p_exact": ks([r["p_exact"] for r in null]),
            "max_z": max(r["z"] for r in null),
            "verdicts": {k: sum(r["verdict"] == k for r in null) for k in sorted({r["verdict"] for r in null})},
        },
        "derived": {
            "pairs": len(derived),
            "detected_below_1e-6": sum(r["p_asymptotic"] < DETECT for r in derived),
            "max_p_asymptotic": max(r["p_asymptotic"] for r in derived),
            "min_z": min(r["z"] for r in derived),
            "max_p_exact": max(r["p_exact"] for r in derived),
            "verdicts": {k: sum(r["verdict"] == k for r in derived) for k in sorted({r["verdict"] for r in derived})},
        },
    }


def write_outputs(results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    null = [r for r in results if r["kind"] == "null"]
    derived = [r for r in results if r["kind"] == "derived"]
    pd.DataFrame(null, columns=CSV_FIELDS).to_csv(out / "null_pairs.csv", index=False, float_format="%.6g")
    pd.DataFrame(derived, columns=CSV_FIELDS).to_csv(out / "derived_pairs.csv", index=False, float_format="%.6g")
    summary = {**meta, **summarise(null, derived)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _figure(null, derived, out / "null_hist.png")
    return summary


def _figure(null: list[dict[str, Any]], derived: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    pa = np.array([r["p_asymptotic"] for r in null])
    pe = np.array([r["p_exact"] for r in null])
    axes[0].hist([pa, pe], bins=20, range=(0, 1), label=["asymptotic", "exact (999 perms)"])
    axes[0].axhline(len(null) / 20, color="k", lw=0.8, ls="--", label="uniform")
    axes[0].set(title=f"null p-values, {len(null)} independent pairs", xlabel="p", ylabel="pairs")
    axes[0].legend(fontsize=8)
    srt = np.sort(pa)
    exp = (np.arange(1, len(srt) + 1) - 0.5) / len(srt)
    axes[1].loglog(exp, srt, ".", ms=3)
    axes[1].loglog([1e-4, 1], [1e-4, 1], "k--", lw=0.8)
    axes[1].set(title="QQ: asymptotic p vs uniform", xlabel="expected", ylabel="observed")
    zn = np.array([r["z"] for r in null])
    zd = np.array([r["z"] for r in derived])
    bins = np.linspace(min(zn.min(), -4), max(zd.max(), 10), 60)
    axes[2].hist(zn, bins=bins, label="independent pairs", alpha=0.8)
    axes[2].hist(zd, bins=bins, label="derived pairs", alpha=0.8)
    axes[2].axvline(4.753, color="r", lw=0.8, label="p = 1e-6")
    axes[2].set(title="test z", xlabel="z", ylabel="pairs", xscale="symlog")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--quick", action="store_true", help="run 6 cases and print them; write nothing")
    args = parser.parse_args(argv)
    manifest = json.loads((SYNTH / "manifest.json").read_text())
    todo = cases(manifest)
    if args.quick:
        todo = [c for c in todo if c["kind"] == "null"][:3] + [c for c in todo if c["kind"] == "derived"][::33][:3]
    t0 = time.perf_counter()
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(run_case, c, args.permutations) for c in todo]
        results = []
        for i, f in enumerate(futures):
            results.append(f.result())
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{len(todo)} cases, {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    if args.quick:
        for r in results:
            print(json.dumps(r))
        return 0
    import torch

    meta = {"generator": "scripts/calibrate_lineage.py", "permutations": args.permutations, "torch": torch.__version__,
            "synth_manifest_build_seconds": manifest.get("build_seconds"), "seconds": round(time.perf_counter() - t0, 1)}
    summary = write_outputs(results, args.out, meta)
    print(json.dumps({k: summary[k] for k in ("null", "derived")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
