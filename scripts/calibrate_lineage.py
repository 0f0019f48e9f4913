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
truncated, token ids shuffled with some tokens replaced (paired by token string), fewer MLP
units, fewer KV heads, residual rotation of the parent and of its fine-tune, same-depth slice
merges seen from each parent (partial copies) and from both (frankenmerge), a frankenmerge of
another depth, linear/SLERP/TIES merges (several references); each in fp and Q4_K_M; each
must be related at p < 1e-6 and described (the structure named, every unpaired tensor
listed, the merge called with its weights). Each is also compared with a reference it is
independent of (the other parent's family): the false-positive rate per kind.

Every case is a pure function of its spec (seeds fixed), so tests rerun a few cases and
compare with the committed CSVs. Usage::

    python scripts/calibrate_lineage.py            # full run (~10 min on 2 cores)
    python scripts/calibrate_lineage.py --quick    # a handful of cases, prints only
    python scripts/calibrate_lineage.py --only 'structure(-null)?:[^~]*-rotated~' --update
        # rerun some structural cases and replace their rows in the committed files
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
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
STRUCTURE_FIELDS = [*CSV_FIELDS, "label", "expect", "described", "verdict_p_asymptotic", "verdict_z", "unit_rel_delta",
                    "merge",
                    "unpaired", "unpaired_missing", "summary"]
STRUCTURE_SCHEMES = (None, "Q4_K_M")
ROTATED_NULL_PAIRS = 40
#: structural derivatives: id -> (builder, arguments); see provenance.synth.structure
STRUCTURE_PARENTS = ("stories260k", "synth-s00")
#: the parent a structural derivative is independent of (its false-positive pair), by parent
INDEPENDENT_OF = {"stories260k": "synth-s00", "synth-s00": "stories260k"}
#: the second parent of slice merges and linear/SLERP merges (independent of both parents above)
SLICE_DONOR = "synth-s01"
MERGE_DONOR = "synth-s05"
#: token strings for the vocabulary kinds: the first rows of the real Llama 2 vocabulary GGUF
#: llama.cpp's converter wrote (../shared/data, read in place)
LLAMA_VOCAB = ROOT.parent / "shared" / "data" / "gguf-vocab" / "ggml-vocab-llama-spm.gguf"


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
    if spec.get("references"):
        return _run_multi(spec, cand, permutations, start)
    with tempfile.TemporaryDirectory() as tmp:
        if spec.get("rotated"):
            from provenance.synth.structure import rotate_residual

            cand = os.fspath(rotate_residual(cand, os.path.join(tmp, "rotated"), seed=int(spec["rotation_seed"]))[0])
        if spec.get("permuted") or (spec.get("scheme") and not spec.get("prebuilt")):
            tensors, arch, _ = load_canonical(cand)
            if spec.get("permuted"):
                tensors, _ = apply_symmetries(tensors, arch, seed=int(spec["perm_seed"]))
            cand = os.path.join(tmp, "candidate.gguf")
            write_variant(cand, tensors, arch, spec.get("scheme"), spec["candidate"],
                          base_model=spec["reference"] if spec["kind"] == "derived" else None)
        reference = spec.get("reference_path") or model_path(spec["reference"])
        result = compare(cand, reference, CompareOptions(permutations=permutations, first_permutations=0, threads=1, seed=0))
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
        if spec["kind"] in ("structure", "structure-null"):
            row.update(_describe_structure(spec, result, cand, reference))
    return row


def _run_multi(spec: dict[str, Any], cand: str, permutations: int, start: float) -> dict[str, Any]:
    """A candidate compared with several references at once (``compare_references``): a merge or
    a frankenmerge must be named with its parents (and, for a merge, weights that fit)."""
    from provenance.compare import CompareOptions
    from provenance.compare.multi import compare_references

    with tempfile.TemporaryDirectory() as tmp:
        if spec.get("scheme"):
            cand = _quantized(cand, spec, tmp)
        refs = [model_path(r) for r in spec["references"]]
        base = model_path(spec["base"]) if spec.get("base") else None
        many = compare_references(cand, refs, CompareOptions(permutations=permutations, first_permutations=0, threads=1, seed=0),
                                  merge_base=base)
    tests = [r.test for r in many.results if r.test is not None]
    ps = [r.verdict.p_asymptotic for r in many.results]
    verdict = many.verdict
    expect = spec["expect"]
    if spec["kind"] == "structure-null":
        described = verdict.kind == "unrelated"
    elif expect == "merge":
        described = (verdict.kind == "merge" and set(verdict.parents) == set(refs)
                     and (spec.get("weights") is None
                          or all(abs(w - t) <= 0.1 for w, t in zip(verdict.weights, spec["weights"], strict=True))))
    else:  # frankenmerge: the slices and their sources as built
        slices = many.parents.layer_slices
        described = (verdict.kind == "frankenmerge" and slices is not None
                     and [(src, a, b) for src, a, b in slices.segments] == [tuple(x) for x in spec["segments"]])
    related = all(p is not None and p < DETECT for p in ps)
    return {
        "case": spec["case"], "kind": spec["kind"], "candidate": spec["candidate"],
        "reference": "+".join(spec["references"]), "permuted": False, "scheme": spec.get("scheme") or "fp",
        "verdict": verdict.kind, "p_exact": max((t.p_exact for t in tests), default=None),
        "p_asymptotic": max((t.p_asymptotic for t in tests), default=None),
        "z": min((t.z for t in tests), default=None), "statistic": None, "mean_spearman": None,
        "seconds": round(time.perf_counter() - start, 2), "rotated": False,
        "unit_p_exact": None, "unit_p_asymptotic": None, "unit_z": None,
        "structure": "+".join(many.parents.layer_slices.structure) if many.parents.layer_slices else "",
        "label": spec["label"], "expect": expect,
        "described": bool(described) and (related if spec["kind"] == "structure" else True),
        "verdict_p_asymptotic": max((p for p in ps if p is not None), default=None),
        "verdict_z": min((r.verdict.z for r in many.results if r.verdict.z is not None), default=None),
        "unit_rel_delta": None,
        "merge": many.merge.describe() if many.merge else "", "unpaired": 0, "unpaired_missing": "",
        "summary": verdict.description,
    }


def _quantized(cand: str, spec: dict[str, Any], tmp: str) -> str:
    from provenance.compare.variants import load_canonical, write_variant

    tensors, arch, _ = load_canonical(cand)
    out = os.path.join(tmp, "candidate.gguf")
    write_variant(out, tensors, arch, spec["scheme"], spec["candidate"])
    return out


def _describe_structure(spec: dict[str, Any], result: Any, candidate: str, reference: str) -> dict[str, Any]:
    """Was the structural derivative described as what it is? (typed fields, not the sentence):
    the structure named and every tensor that cannot be paired element for element listed
    (:func:`_expected_unpaired`, read from the two files' tables, not from the comparison)."""
    expect = spec["expect"]
    kinds = set(result.structure.kinds if result.structure else ())
    verdict = result.verdict
    listed = {u.name for u in verdict.unpaired}
    if spec["kind"] == "structure-null":
        return {"label": spec["label"], "expect": expect, "described": verdict.kind == "unrelated",
                "unit_rel_delta": None, "verdict_p_asymptotic": verdict.p_asymptotic, "verdict_z": verdict.z, "merge": "",
                "unpaired": len(listed), "unpaired_missing": "", "summary": verdict.summary}
    merge = ""
    if expect == "merge":
        from provenance.compare.merge import estimate_merge

        estimate = estimate_merge(candidate, [model_path(r) for r in spec["parents"]],
                                  model_path(spec["base"]) if spec.get("base") else None)
        merge = estimate.describe()
        described = estimate.is_merge
    elif expect == "rotated":
        described = verdict.kind == "rotated"
    elif expect == "partial-copy":
        details = verdict.details
        described = verdict.kind == "partial-copy" and tuple(getattr(details, "related_layers", ())) == tuple(spec["layers"])
    else:
        described = expect in kinds and verdict.kind not in ("identical", "unrelated", "inconclusive")
    layer_map = result.structure.layer_map if result.structure else None
    missing = sorted(_expected_unpaired(candidate, reference, layer_map.mapping() if layer_map else None,
                                        spec.get("rows_changed", ())) - listed)
    unit = getattr(verdict.details, "unit_rel_delta", None)
    return {"label": spec["label"], "expect": expect,
            "described": bool(described) and bool(verdict.related) and not missing, "unit_rel_delta": unit,
            "verdict_p_asymptotic": verdict.p_asymptotic, "verdict_z": verdict.z, "merge": merge, "unpaired": len(listed),
            "unpaired_missing": " ".join(missing), "summary": verdict.summary}


def _expected_unpaired(candidate: str, reference: str, mapping: dict[int, int] | None,
                       rows_changed: Any = ()) -> set[str]:
    """Tensors the verdict must list as unpaired, from the files' tables alone: a candidate tensor
    whose counterpart (same role, its layer mapped by the layer map; by index without one) is
    missing or of another shape, a reference tensor no candidate tensor pairs with, and the
    token-indexed tensors whose rows the builder moved or replaced (``rows_changed``)."""
    from provenance.formats import open_checkpoint

    with open_checkpoint(candidate) as c, open_checkpoint(reference) as r:
        cand = {n: (i.layer, i.shape) for n, i in c.tensors.items()}
        ref = {n: i.shape for n, i in r.tensors.items()}
    expected: set[str] = {n for n in rows_changed if n in cand or n in ref}
    covered: set[str] = set()
    for name, (layer, shape) in cand.items():
        counterpart = name
        if layer is not None and mapping is not None:
            if layer not in mapping:
                expected.add(name)
                continue
            counterpart = name.replace(f"blk.{layer}.", f"blk.{mapping[layer]}.", 1)
        if ref.get(counterpart) != shape:
            expected.add(name)
        covered.add(counterpart)
    return expected | (set(ref) - covered)


def _llama_tokens(n: int) -> list[bytes]:
    from provenance.formats import open_checkpoint
    from provenance.formats.vocabulary import checkpoint_vocabulary

    with open_checkpoint(LLAMA_VOCAB) as ckpt:
        vocab = checkpoint_vocabulary(ckpt)
    if vocab is None or len(vocab.tokens) < n:
        raise RuntimeError(f"{LLAMA_VOCAB}: fewer than {n} tokens")
    return list(vocab.tokens[:n])


def structural_candidates(root: Path) -> list[dict[str, Any]]:
    """Build every structural derivative once under ``root`` (deterministic) and return
    the case specs (the builders are the real tools: mergekit, save_pretrained, the gguf
    writer). ``label`` is the kind's row in docs/lineage.md, ``expect`` what must be named."""
    from provenance.synth import structure as st

    out: list[dict[str, Any]] = []
    donor = model_path(SLICE_DONOR)
    for parent in STRUCTURE_PARENTS:
        p = model_path(parent)
        ft = model_path(f"{parent}-ft-medium")
        independent = INDEPENDENT_OF[parent]
        builds: list[tuple[str, str, str, Any]] = [
            ("upscale", "depth-upscaled", "depth-upscaled", lambda d, p=p: st.passthrough([(p, 0, 4), (p, 1, 5)], d)),
            ("drop2", "layers-removed", "layers-removed", lambda d, p=p: st.passthrough([(p, 0, 2), (p, 3, 5)], d)),
            ("swap12", "reordered", "reordered",
             lambda d, p=p: st.passthrough([(p, 0, 1), (p, 2, 3), (p, 1, 2), (p, 3, 5)], d)),
            ("vocab576", "vocabulary-extended", "vocabulary-extended", lambda d, p=p: st.resize_vocabulary(p, d, 576)),
            ("vocab448", "vocabulary-truncated", "vocabulary-truncated", lambda d, p=p: st.resize_vocabulary(p, d, 448)),
            ("width128", "width-pruned", "width-pruned", lambda d, p=p: st.prune_width(p, d, 128)),
            ("gqa2", "gqa-converted", "gqa-converted", lambda d, p=p: st.convert_gqa(p, d, 2)),
            ("rotated", "rotated copy", "rotated", lambda d, p=p: st.rotate_residual(p, d, seed=11)),
            ("ft-rotated", "rotated fine-tune", "rotated", lambda d, ft=ft: st.rotate_residual(ft, d, seed=12)),
            # no calibrated test sees through this one (docs/lineage.md): tabulated, not required
            ("rotperm", "rotated + MLP units permuted", "rotated",
             lambda d, p=p: st.rotate_residual(p, d, seed=13, permute_units=True)),
            ("slices", "slice merge (partial copy)", "partial-copy",
             lambda d, p=p: st.passthrough([(p, 0, 3), (donor, 3, 5)], d)),
        ]
        for name, label, expect, build in builds:
            path = root / f"{parent}-{name}"
            if not path.exists():
                build(path)
            spec = {"id": f"{parent}-{name}", "path": str(path), "reference": parent, "expect": expect,
                    "label": label, "null_reference": independent}
            if name == "slices":  # seen from each parent: its own layers related, the others unrelated
                out.append({**spec, "layers": (0, 1, 2)})
                out.append({**spec, "reference": SLICE_DONOR, "layers": (3, 4)})
                continue
            out.append(spec)
        # the same slices from both parents at once, and a frankenmerge of another depth
        for name, label, parents, segments in (
                ("slices", "frankenmerge (same depth)", [parent, SLICE_DONOR], [(parent, 0, 2), (SLICE_DONOR, 3, 4)]),
                ("franken8", "frankenmerge (8 layers)", [parent, SLICE_DONOR], [(parent, 0, 3), (SLICE_DONOR, 1, 4)])):
            path = root / f"{parent}-{name}"
            if not path.exists():  # "slices" was built above
                st.passthrough([(p, 0, 4), (donor, 1, 5)], path)
            out.append({"id": f"{parent}-{name}", "path": str(path), "references": parents, "expect": "frankenmerge",
                        "label": label, "segments": segments, "null_references": [independent, MERGE_DONOR]})
        # token ids shuffled and 12 tokens replaced (GGUFs with token lists: paired by token string)
        tokens = _llama_tokens(512)
        ref_vocab = root / f"{parent}-vocab.gguf"
        null_vocab = root / f"{independent}-vocab.gguf"
        for src, dst in ((p, ref_vocab), (model_path(independent), null_vocab)):
            if not dst.exists():
                st.with_vocabulary(src, dst, tokens)
        for scheme in STRUCTURE_SCHEMES:
            path = root / f"{parent}-vocab-shuffled-{scheme or 'fp'}.gguf"
            if not path.exists():
                st.reorder_vocabulary(p, path, tokens, seed=3, replaced=12, scheme=scheme)
            out.append({"id": f"{parent}-vocab-shuffled", "path": str(path), "reference": parent,
                        "reference_path": str(ref_vocab), "expect": "vocabulary-changed", "label": "vocabulary shuffled",
                        "scheme": scheme, "prebuilt": True, "rows_changed": ("token_embd.weight", "output.weight"),
                        "null_reference": independent, "null_reference_path": str(null_vocab)})
        merges = [
            ("linear", "merge (linear)", [(ft, {"weight": 0.5}), (model_path(MERGE_DONOR), {"weight": 0.5})], None, None,
             [f"{parent}-ft-medium", MERGE_DONOR], (0.5, 0.5)),
            ("slerp", "merge (SLERP)", [(ft, {}), (model_path(MERGE_DONOR), {})], ft, {"t": 0.5},
             [f"{parent}-ft-medium", MERGE_DONOR], (0.71, 0.71)),
            ("ties", "merge (TIES)", [(model_path(f"{parent}-ft-heavy"), {"weight": 0.5, "density": 0.5}),
                                      (model_path(f"{parent}-lora"), {"weight": 0.5, "density": 0.5})], p,
             {"normalize": True}, [f"{parent}-ft-heavy", f"{parent}-lora"], None),
        ]
        for name, label, models, base, params, parents, weights in merges:
            path = root / f"{parent}-merge-{name}"
            if not path.exists():
                st.merge(name, models, path, base=base, parameters=params)
            merge_base = parent if name == "ties" else None
            for ref in parents:  # each parent alone: related, and the estimate on both a merge
                out.append({"id": f"{parent}-merge-{name}", "path": str(path), "reference": ref, "expect": "merge",
                            "label": label, "parents": parents, "base": merge_base, "null_reference": independent})
            # both parents at once: "merge of A (0.50) and B (0.50)" (TIES: weights not checked, its
            # trimming shrinks them)
            out.append({"id": f"{parent}-merge-{name}", "path": str(path), "references": parents, "expect": "merge",
                            "label": label, "weights": weights, "base": merge_base,
                            "null_references": [independent, "synth-s07"]})
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
    """Each built derivative in fp and Q4_K_M (unless built in one scheme), against its parent
    (kind ``structure``) and against a reference it is independent of (``structure-null``)."""
    out = []
    null_seen: set[tuple[str, str | None]] = set()
    for b in built:
        for scheme in (b["scheme"],) if "scheme" in b else STRUCTURE_SCHEMES:
            common = {"candidate": b["id"], "candidate_path": b["path"], "scheme": scheme, "expect": b["expect"],
                      "label": b["label"], "parents": b.get("parents"), "base": b.get("base"),
                      "prebuilt": b.get("prebuilt", False), "rows_changed": b.get("rows_changed", ()),
                      "layers": b.get("layers"), "segments": b.get("segments"), "weights": b.get("weights")}
            if "references" in b:
                out.append({**common, "case": f"structure:{b['id']}~{'+'.join(b['references'])}:{scheme or 'fp'}",
                            "kind": "structure", "references": b["references"], "reference": "+".join(b["references"])})
                out.append({**common, "case": f"structure-null:{b['id']}~{'+'.join(b['null_references'])}:{scheme or 'fp'}",
                            "kind": "structure-null", "references": b["null_references"],
                            "reference": "+".join(b["null_references"]), "base": None})
                continue
            out.append({**common, "case": f"structure:{b['id']}~{b['reference']}:{scheme or 'fp'}", "kind": "structure",
                        "reference": b["reference"], "reference_path": b.get("reference_path")})
            if (b["id"], scheme) not in null_seen:  # one null pair per candidate file
                null_seen.add((b["id"], scheme))
                out.append({**common, "case": f"structure-null:{b['id']}~{b['null_reference']}:{scheme or 'fp'}",
                            "kind": "structure-null", "reference": b["null_reference"],
                            "reference_path": b.get("null_reference_path")})
    return out


def summarise_structure(null: list[dict[str, Any]], rows: list[dict[str, Any]], null_test: bool = True) -> dict[str, Any]:
    """The unit-space test's null (all null pairs, rotated ones included; not with
    ``null_test=False``) and, per kind of structural derivative, how many were related at
    p < 1e-6 and described correctly."""
    from scipy.stats import kstest

    unit = np.asarray([r["unit_p_asymptotic"] for r in null if r["unit_p_asymptotic"] is not None], dtype=float)
    unit_exact = np.asarray([r["unit_p_exact"] for r in null if r["unit_p_exact"] is not None], dtype=float)
    rotated = [r for r in null if r["rotated"]]
    per_kind: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = per_kind.setdefault(f"{r['label']} | {r['scheme']}", {
            "label": r["label"], "scheme": r["scheme"], "pairs": 0, "related_below_1e-6": 0, "described": 0,
            "max_p_asymptotic": None, "min_z": math.inf, "null_pairs": 0, "null_related": 0, "null_inconclusive": 0,
            "null_min_p": 1.0, "related_uncalibrated": 0})
        p = r["verdict_p_asymptotic"]
        if r["kind"] == "structure-null":
            k["null_pairs"] += 1
            k["null_related"] += int(r["verdict"] not in ("unrelated", "inconclusive"))
            k["null_inconclusive"] += int(r["verdict"] == "inconclusive")
            k["null_min_p"] = min(k["null_min_p"], 1.0 if p is None else float(p))
            continue
        k["pairs"] += 1
        k["related_below_1e-6"] += int(p is not None and p < DETECT)
        # a relation the verdict states without a calibrated p-value (the de-rotated test's z bound)
        k["related_uncalibrated"] += int(p is None and r["verdict"] not in ("unrelated", "inconclusive"))
        k["described"] += int(bool(r["described"]))
        if p is not None:
            k["max_p_asymptotic"] = max(k["max_p_asymptotic"] or 0.0, float(p))
        if r["verdict_z"] is not None:
            k["min_z"] = min(k["min_z"], float(r["verdict_z"]))
    for k in per_kind.values():
        k["min_z"] = None if math.isinf(k["min_z"]) else k["min_z"]
    if not null_test:
        return {"per_kind": per_kind}
    nulls = [r for r in rows if r["kind"] == "structure-null"]
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
        "structure_null": {"pairs": len(nulls),
                           "related": sum(r["verdict"] not in ("unrelated", "inconclusive") for r in nulls),
                           "inconclusive": sum(r["verdict"] == "inconclusive" for r in nulls),
                           "min_p_asymptotic": min((r["verdict_p_asymptotic"] for r in nulls
                                                    if r["verdict_p_asymptotic"] is not None), default=None)},
    }


def structure_table(per_kind: dict[str, dict[str, Any]]) -> str:
    """The per-kind table of docs/lineage.md (also written to data/calibration/structure_table.md,
    which tests/compare/test_calibration.py holds the page to)."""
    def p(x: float | None) -> str:
        if x is None:
            return "none calibrated"
        return "< 1e-300" if x < 1e-300 else f"{x:.2g}"

    lines = ["| kind | storage | pairs | related at p < 1e-6 | described correctly | largest p | smallest z "
             "| independent pairs | called related (FPR) | smallest p of those |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k in per_kind.values():
        z = "" if k["min_z"] is None else f"{k['min_z']:.0f}"
        fpr = f"{k['null_related']} ({k['null_related'] / k['null_pairs']:.0%})" if k["null_pairs"] else ""
        if k["null_inconclusive"]:
            fpr += f", {k['null_inconclusive']} inconclusive"
        related = f"{k['related_below_1e-6']}"
        if k.get("related_uncalibrated"):
            related += f" (+{k['related_uncalibrated']} by the de-rotated z >= 100, p not calibrated)"
        lines.append(f"| {k['label']} | {k['scheme']} | {k['pairs']} | {related} | {k['described']} "
                     f"| {p(k['max_p_asymptotic'])} | {z} | {k['null_pairs']} | {fpr} | {p(k['null_min_p'])} |")
    return "\n".join(lines) + "\n"


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
    structural = [r for r in results if r["kind"] in ("structure", "structure-null")]
    pd.DataFrame(null, columns=CSV_FIELDS).to_csv(out / "null_pairs.csv", index=False, float_format="%.6g")
    pd.DataFrame(derived, columns=CSV_FIELDS).to_csv(out / "derived_pairs.csv", index=False, float_format="%.6g")
    pd.DataFrame(structural, columns=STRUCTURE_FIELDS).to_csv(out / "structure_pairs.csv", index=False, float_format="%.6g")
    summary = {**meta, **summarise(null, derived), "structure": summarise_structure(null, structural)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "structure_table.md").write_text(structure_table(summary["structure"]["per_kind"]))
    _figure(null, derived, out / "null_hist.png")
    return summary


def update_structure(results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Replace the committed rows of the structural cases in ``results`` (by case) and recompute
    the per-kind summary of the kinds they belong to, the structural null's counts and the
    table; the null pool and its summaries are left as committed (no null case may be rerun
    this way)."""
    import csv
    import io

    import pandas as pd

    if any(r["kind"] not in ("structure", "structure-null") for r in results):
        raise SystemExit("--update replaces structural rows only")
    # the new rows formatted as write_outputs formats them, then swapped in as text (the other rows untouched)
    text = pd.DataFrame(results, columns=STRUCTURE_FIELDS).to_csv(index=False, float_format="%.6g")
    fresh_rows = {r["case"]: r for r in csv.DictReader(io.StringIO(text))}
    with open(out / "structure_pairs.csv", newline="") as f:
        committed = list(csv.DictReader(f))
    missing = set(fresh_rows) - {r["case"] for r in committed}
    if missing:
        raise SystemExit(f"--update: cases not in the committed table: {sorted(missing)}")
    with open(out / "structure_pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STRUCTURE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(fresh_rows.get(r["case"], r) for r in committed)
    summary = json.loads((out / "summary.json").read_text())
    labels = {r["label"] for r in results}
    fresh = summarise_structure([], results, null_test=False)
    per_kind = summary["structure"]["per_kind"]
    for key, value in fresh["per_kind"].items():
        if value["label"] in labels:
            per_kind[key] = value
    everything = pd.read_csv(out / "structure_pairs.csv")
    nulls = everything[everything["kind"] == "structure-null"]
    summary["structure"]["structure_null"] = {
        "pairs": len(nulls), "related": int((~nulls["verdict"].isin(["unrelated", "inconclusive"])).sum()),
        "inconclusive": int((nulls["verdict"] == "inconclusive").sum()),
        "min_p_asymptotic": float(nulls["verdict_p_asymptotic"].min())}
    summary.setdefault("updates", []).append({**meta, "cases": len(results), "kinds": sorted(labels)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "structure_table.md").write_text(structure_table(per_kind))
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
    parser.add_argument("--only", help="run the cases whose name matches this regular expression; print them, write nothing")
    parser.add_argument("--build-dir", type=Path, help="where the structural derivatives are built (kept; default: a temporary folder)")
    parser.add_argument("--update", action="store_true",
                        help="with --only (structural cases): replace their rows in the committed files and recompute "
                             "the per-kind summary and table of their kinds")
    args = parser.parse_args(argv)
    manifest = json.loads((SYNTH / "manifest.json").read_text())
    todo = cases(manifest)
    build_dir = args.build_dir or Path(tempfile.mkdtemp(prefix="calibrate-structure-"))
    build_dir.mkdir(parents=True, exist_ok=True)
    todo += structure_cases(structural_candidates(build_dir))
    if args.only:
        import re

        todo = [c for c in todo if re.search(args.only, c["case"])]
        args.quick = not args.update
    elif args.quick:
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
    if args.update:
        summary = update_structure(results, args.out, meta)
        print(json.dumps({k: v for k, v in summary["structure"]["per_kind"].items()
                          if v["label"] in {r["label"] for r in results}}, indent=1, default=str))
        return 0
    summary = write_outputs(results, args.out, meta)
    print(json.dumps({k: summary[k] for k in ("null", "derived", "structure")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
