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

Structure (issue #14): the rotation-blind unit-space test's own null on the same pool plus
residual-rotated candidates (rotation does not change it; it must not change the residual
test's verdict either), and structural derivatives of stories260k and synth-s00 written
by the real tools (provenance.synth.structure: mergekit passthrough and merges,
save_pretrained): depth upscaling, a removed layer, swapped layers, vocabulary extended and
truncated, fewer MLP units, fewer KV heads, residual rotation of the parent and of its
fine-tune, linear/SLERP/TIES merges; each in fp and Q4_K_M; each must be related at
p < 1e-6 and described (the structure named, the merge called with its weights).

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
              "p_asymptotic", "z", "statistic", "mean_spearman", "seconds", "rotated", "unit_p_exact",
              "unit_p_asymptotic", "unit_z", "structure"]
STRUCTURE_FIELDS = [*CSV_FIELDS, "expect", "described", "verdict_p_asymptotic", "unit_rel_delta", "merge", "summary"]
STRUCTURE_SCHEMES = (None, "Q4_K_M")
ROTATED_NULL_PAIRS = 40
#: structural derivatives: id -> (builder, arguments); see provenance.synth.structure
STRUCTURE_PARENTS = ("stories260k", "synth-s00")


def model_path(model_id: str) -> str:
    return str(SYNTH / "models" / model_id)


def run_case(spec: dict[str, Any], permutations: int = 999) -> dict[str, Any]:
    """One calibration case: build the candidate variant if needed, compare, summarise."""
    import torch

    from provenance.compare import CompareOptions, compare
    from provenance.compare.variants import apply_symmetries, load_canonical, write_variant

    torch.set_num_threads(1)
    start = time.perf_counter()
    cand = spec.get("candidate_path") or model_path(spec["candidate"])
    with tempfile.TemporaryDirectory() as tmp:
        if spec.get("rotated"):
            from provenance.synth.structure import rotate_residual

            cand = os.fspath(rotate_residual(cand, os.path.join(tmp, "rotated"), seed=int(spec["rotation_seed"]))[0])
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
        structure = result.structure
        unit = structure.unit_test if structure else None
        row = {
            "case": spec["case"], "kind": spec["kind"], "candidate": spec["candidate"], "reference": spec["reference"],
            "permuted": bool(spec.get("permuted")), "scheme": spec.get("scheme") or "fp",
            "verdict": result.verdict.kind, "p_exact": test.p_exact if test else None,
            "p_asymptotic": test.p_asymptotic if test else None, "z": test.z if test else None,
            "statistic": test.statistic if test else None,
            "mean_spearman": float(np.mean([c.spearman for c in test.circuits])) if test and test.layers else None,
            "seconds": round(time.perf_counter() - start, 2), "rotated": bool(spec.get("rotated")),
            "unit_p_exact": unit.p_exact if unit else None, "unit_p_asymptotic": unit.p_asymptotic if unit else None,
            "unit_z": unit.z if unit else None, "structure": "+".join(structure.kinds) if structure else "",
        }
        if spec["kind"] == "structure":
            row.update(_describe_structure(spec, result, cand))
    return row


def _describe_structure(spec: dict[str, Any], result: Any, candidate: str) -> dict[str, Any]:
    """Was the structural derivative described as what it is? (typed fields, not the sentence)"""
    expect = spec["expect"]
    kinds = set(result.structure.kinds if result.structure else ())
    verdict = result.verdict
    merge = ""
    if expect == "merge":
        from provenance.compare.merge import estimate_merge

        estimate = estimate_merge(candidate, [model_path(r) for r in spec["parents"]],
                                  model_path(spec["base"]) if spec.get("base") else None)
        merge = estimate.describe()
        described = estimate.is_merge
    elif expect == "rotated":
        described = verdict.kind == "rotated"
    else:
        described = expect in kinds and verdict.kind not in ("identical", "unrelated", "inconclusive")
    unit = getattr(verdict.details, "unit_rel_delta", None)
    return {"expect": expect, "described": bool(described) and bool(verdict.related), "unit_rel_delta": unit,
            "verdict_p_asymptotic": verdict.p_asymptotic, "merge": merge, "summary": verdict.summary}


def structural_candidates(root: Path) -> list[dict[str, Any]]:
    """Build every structural derivative once under ``root`` (deterministic) and return
    the case specs (the builders are the real tools: mergekit, save_pretrained)."""
    from provenance.synth import structure as st

    out: list[dict[str, Any]] = []
    for parent in STRUCTURE_PARENTS:
        p = model_path(parent)
        ft = model_path(f"{parent}-ft-medium")
        builds: list[tuple[str, str, Any]] = [
            ("upscale", "depth-upscaled", lambda d, p=p, ft=ft: st.passthrough([(p, 0, 4), (p, 1, 5)], d)),
            ("drop2", "layers-removed", lambda d, p=p, ft=ft: st.passthrough([(p, 0, 2), (p, 3, 5)], d)),
            ("swap12", "reordered", lambda d, p=p, ft=ft: st.passthrough([(p, 0, 1), (p, 2, 3), (p, 1, 2), (p, 3, 5)], d)),
            ("vocab576", "vocabulary-extended", lambda d, p=p, ft=ft: st.resize_vocabulary(p, d, 576)),
            ("vocab448", "vocabulary-truncated", lambda d, p=p, ft=ft: st.resize_vocabulary(p, d, 448)),
            ("width128", "width-pruned", lambda d, p=p, ft=ft: st.prune_width(p, d, 128)),
            ("gqa2", "gqa-converted", lambda d, p=p, ft=ft: st.convert_gqa(p, d, 2)),
            ("rotated", "rotated", lambda d, p=p, ft=ft: st.rotate_residual(p, d, seed=11)),
            ("ft-rotated", "rotated", lambda d, p=p, ft=ft: st.rotate_residual(ft, d, seed=12)),
        ]
        for name, expect, build in builds:
            path = root / f"{parent}-{name}"
            if not path.exists():
                build(path)
            out.append({"id": f"{parent}-{name}", "path": str(path), "reference": parent, "expect": expect})
        other = "synth-s05"
        merges = [
            ("linear", "linear", [(ft, {"weight": 0.5}), (model_path(other), {"weight": 0.5})], None, None,
             [f"{parent}-ft-medium", other]),
            ("slerp", "slerp", [(ft, {}), (model_path(other), {})], ft, {"t": 0.5}, [f"{parent}-ft-medium", other]),
            ("ties", "ties", [(model_path(f"{parent}-ft-heavy"), {"weight": 0.5, "density": 0.5}),
                              (model_path(f"{parent}-lora"), {"weight": 0.5, "density": 0.5})], p, {"normalize": True},
             [f"{parent}-ft-heavy", f"{parent}-lora"]),
        ]
        for name, method, models, base, params, parents in merges:
            path = root / f"{parent}-merge-{name}"
            if not path.exists():
                st.merge(method, models, path, base=base, parameters=params)
            for ref in parents:
                out.append({"id": f"{parent}-merge-{name}", "path": str(path), "reference": ref, "expect": "merge",
                            "parents": parents, "base": parent if name == "ties" else None})
    return out


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
    rng_rot = np.random.default_rng(2027)
    for k in rng_rot.choice(len(null_pairs), size=min(ROTATED_NULL_PAIRS, len(null_pairs)), replace=False):
        ref, cand = null_pairs[int(k)]
        scheme = (None, "Q4_K_M")[int(k) % 2]
        out.append({"case": f"null-rotated:{cand}~{ref}:{scheme or 'fp'}", "kind": "null", "candidate": cand,
                    "reference": ref, "rotated": True, "rotation_seed": int(k), "scheme": scheme})
    derived = [m for m in models if m["kind"] in ("finetune", "lora", "continued-pretraining") and m.get("parent")]
    for i, m in enumerate(sorted(derived, key=lambda m: m["id"])):
        for permuted in (False, True):
            for scheme in SCHEMES:
                out.append({"case": f"derived:{m['id']}:{'perm' if permuted else 'plain'}:{scheme or 'fp'}",
                            "kind": "derived", "candidate": m["id"], "reference": m["parent"],
                            "permuted": permuted, "perm_seed": 1000 + i, "scheme": scheme})
    return out


def structure_cases(built: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in built:
        for scheme in STRUCTURE_SCHEMES:
            out.append({"case": f"structure:{b['id']}~{b['reference']}:{scheme or 'fp'}", "kind": "structure",
                        "candidate": b["id"], "candidate_path": b["path"], "reference": b["reference"],
                        "scheme": scheme, "expect": b["expect"], "parents": b.get("parents"), "base": b.get("base")})
    return out


def summarise_structure(null: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The unit-space test's null (all null pairs, rotated ones included) and, per kind of
    structural derivative, how many were related at p < 1e-6 and described correctly."""
    from scipy.stats import kstest

    unit = np.asarray([r["unit_p_asymptotic"] for r in null if r["unit_p_asymptotic"] is not None], dtype=float)
    unit_exact = np.asarray([r["unit_p_exact"] for r in null if r["unit_p_exact"] is not None], dtype=float)
    rotated = [r for r in null if r["rotated"]]
    per_kind: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = per_kind.setdefault(r["expect"], {"pairs": 0, "related_below_1e-6": 0, "described": 0, "schemes": set()})
        k["pairs"] += 1
        p = r["verdict_p_asymptotic"]
        k["related_below_1e-6"] += int(p is not None and p < DETECT)
        k["described"] += int(bool(r["described"]))
        k["schemes"].add(r["scheme"])
    for k in per_kind.values():
        k["schemes"] = sorted(k["schemes"])
    return {
        "unit_test_null": {
            "pairs": len(unit), "rotated_pairs": len(rotated),
            "ks_anticonservative_p": float(kstest(unit, "uniform", alternative="greater").pvalue),
            "ks_two_sided_p": float(kstest(unit, "uniform").pvalue),
            "exact_ks_anticonservative_p": float(kstest(unit_exact, "uniform", alternative="greater").pvalue),
            "min": float(unit.min()), "false_positives_at_1e-3": int((unit < ALPHA).sum()),
            "max_z": max(float(r["unit_z"]) for r in null if r["unit_z"] is not None),
        },
        "rotated_null": {"pairs": len(rotated), "verdicts": {v: sum(r["verdict"] == v for r in rotated)
                                                               for v in sorted({r["verdict"] for r in rotated})},
                         "min_p_asymptotic": min(r["p_asymptotic"] for r in rotated) if rotated else None},
        "per_kind": per_kind,
    }


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

    null_all, null = null, [r for r in null if not r["rotated"]]  # the residual test's pool as before
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
        "null_with_rotated": {"pairs": len(null_all),
                              "verdicts": {k: sum(r["verdict"] == k for r in null_all)
                                           for k in sorted({r["verdict"] for r in null_all})}},
    }


def write_outputs(results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    null = [r for r in results if r["kind"] == "null"]
    derived = [r for r in results if r["kind"] == "derived"]
    structural = [r for r in results if r["kind"] == "structure"]
    pd.DataFrame(null, columns=CSV_FIELDS).to_csv(out / "null_pairs.csv", index=False, float_format="%.6g")
    pd.DataFrame(derived, columns=CSV_FIELDS).to_csv(out / "derived_pairs.csv", index=False, float_format="%.6g")
    pd.DataFrame(structural, columns=STRUCTURE_FIELDS).to_csv(out / "structure_pairs.csv", index=False, float_format="%.6g")
    summary = {**meta, **summarise(null, derived), "structure": summarise_structure(null, structural)}
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
    build_dir = Path(tempfile.mkdtemp(prefix="calibrate-structure-"))
    todo += structure_cases(structural_candidates(build_dir))
    if args.quick:
        todo = ([c for c in todo if c["kind"] == "null"][:3] + [c for c in todo if c["kind"] == "derived"][::33][:3]
                + [c for c in todo if c["kind"] == "structure"][::17][:4])
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
    print(json.dumps({k: summary[k] for k in ("null", "derived", "structure")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
