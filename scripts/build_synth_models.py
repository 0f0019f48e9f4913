#!/usr/bin/env python3
"""Regenerate data/synth: the corpora, a pool of independent models, derivatives, manifest.

    python scripts/build_synth_models.py                 # everything (about 15 min, 2 jobs)
    python scripts/build_synth_models.py --reuse-corpus  # keep the shipped corpora
    python scripts/build_synth_models.py --check         # re-train one model, compare bits

Every model is a pure function of (shipped inputs, seeds, recipe): training runs on one
thread with deterministic kernels, and a derivative starts from its parent *as
shipped* (float16-rounded), so jobs can run in any order or process. ``--check``
re-trains ``synth-s00`` (and a light fine-tune of it) and compares the tensor hash with
the manifest; on another CPU kind or torch version kernels may round differently, in
which case it reports how far the weights moved instead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

# One thread per process before torch loads: two jobs share the two cores without
# oversubscription (2 threads per process can run 16-75x slower when a core is busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

transformers.utils.logging.disable_progress_bar()

from provenance.synth import corpus as corpus_mod  # noqa: E402
from provenance.synth.arch import rope_theta_of  # noqa: E402
from provenance.synth.convert import load_stories260k_as_hf  # noqa: E402
from provenance.synth.llama2c import Llama2cModel, load_llama2c  # noqa: E402
from provenance.synth.lora import LORA_RECIPE, lora_finetune  # noqa: E402
from provenance.synth.store import (  # noqa: E402
    MANIFEST_NAME,
    file_sha256,
    load_synth_model,
    read_weights,
    save_model,
)
from provenance.synth.train import (  # noqa: E402
    CPT_RECIPE,
    FINETUNE_STRENGTHS,
    PRETRAIN_RECIPE,
    TrainRecipe,
    continued_pretraining,
    eval_loss,
    finetune,
    independent_data_seed,
    train_independent,
)

STORIES = ROOT.parent / "shared" / "data" / "stories260K"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
DERIVED_PARENTS = ("synth-s00", "stories260k")
DERIVATIVE_SEED = 7  # data-order (and LoRA init) seed of every derivative


def independent_id(seed: int) -> str:
    return f"synth-s{seed:02d}"


def _tokens(out: Path) -> dict[str, np.ndarray]:
    pre_train, pre_eval = corpus_mod.split_pretrain(np.load(out / "corpus.npy"))
    ft_train, ft_eval = corpus_mod.split_finetune(np.load(out / "finetune.npy"))
    return {"pre_train": pre_train, "pre_eval": pre_eval, "ft_train": ft_train, "ft_eval": ft_eval}


def _recipe_fields(recipe: TrainRecipe | None) -> dict[str, Any]:
    if recipe is None:
        return {"steps": 0, "lr": 0.0}
    fields = asdict(recipe)
    fields["betas"] = list(recipe.betas)
    return fields


def _finish(model: torch.nn.Module, out: Path, model_id: str, dtype: str, record: dict[str, Any],
            history: list[float], seconds: float) -> dict[str, Any]:
    """Save, reload what was saved (the shipped model is what gets evaluated), record."""
    path = out / "models" / model_id
    if path.exists():
        shutil.rmtree(path)
    weights_hash = save_model(model, path, DTYPES[dtype])
    shipped = load_synth_model(model_id, out)
    tokens = _tokens(out)
    record.update(
        id=model_id,
        path=f"models/{model_id}",
        dtype=dtype,
        rope_theta=rope_theta_of(shipped.config),
        max_position_embeddings=shipped.config.max_position_embeddings,
        final_loss=round(float(np.mean(history[-10:])), 4) if history else None,
        eval_loss=round(eval_loss(shipped, tokens["pre_eval"]), 4),
        finetune_eval_loss=round(eval_loss(shipped, tokens["ft_eval"]), 4),
        train_seconds=round(seconds, 1),
        weights_sha256=weights_hash,
        files={name: file_sha256(path / name) for name in sorted(os.listdir(path))},
    )
    print(f"  {model_id}: eval loss {record['eval_loss']:.3f}, {seconds:.0f}s", file=sys.stderr, flush=True)
    return record


def build_independent(out: str, seed: int, dtype: str, recipe: TrainRecipe = PRETRAIN_RECIPE) -> dict[str, Any]:
    outp = Path(out)
    history: list[float] = []
    start = time.perf_counter()
    model = train_independent(seed, _tokens(outp)["pre_train"], recipe, history=history)
    seconds = time.perf_counter() - start
    record = {"kind": "independent", "parent": None, "seed": seed,
              "data_seed": independent_data_seed(seed), "data": "corpus", **_recipe_fields(recipe)}
    return _finish(model, outp, independent_id(seed), dtype, record, history, seconds)


def build_stories260k(out: str, dtype: str) -> dict[str, Any]:
    source = STORIES / "stories260K.bin"
    model = load_stories260k_as_hf(source)
    record = {"kind": "converted", "parent": None, "seed": None, "data_seed": None, "data": None,
              "source": "../shared/data/stories260K/stories260K.bin", "source_sha256": file_sha256(source),
              "license": "MIT (karpathy/llama2.c), see LICENSE-llama2c", **_recipe_fields(None)}
    return _finish(model, Path(out), "stories260k", dtype, record, [], 0.0)


def build_derivative(out: str, parent: str, kind: str, variant: str, dtype: str) -> dict[str, Any]:
    outp = Path(out)
    tokens = _tokens(outp)
    base = load_synth_model(parent, outp)  # as shipped: float16-rounded, back in float32
    history: list[float] = []
    start = time.perf_counter()
    if kind == "finetune":
        recipe = FINETUNE_STRENGTHS[variant]
        model = finetune(base, recipe, DERIVATIVE_SEED, tokens["ft_train"], history=history)
        model_id, data = f"{parent}-ft-{variant}", "finetune"
        extra: dict[str, Any] = {"strength": variant}
    elif kind == "lora":
        recipe = LORA_RECIPE
        model = lora_finetune(base, DERIVATIVE_SEED, tokens["ft_train"], history=history)
        model_id, data = f"{parent}-lora", "finetune"
        extra = {"lora_rank": 4, "lora_alpha": 8.0,
                 "lora_targets": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]}
    elif kind == "continued-pretraining":
        recipe = CPT_RECIPE
        model = continued_pretraining(base, DERIVATIVE_SEED, tokens["pre_train"], history=history)
        model_id, data = f"{parent}-cpt", "corpus"
        extra = {"parent_rope_theta": rope_theta_of(base.config)}
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - start
    record = {"kind": kind, "parent": parent, "seed": DERIVATIVE_SEED, "data_seed": DERIVATIVE_SEED,
              "data": data, **extra, **_recipe_fields(recipe)}
    return _finish(model, outp, model_id, dtype, record, history, seconds)


def build_corpora(out: Path) -> dict[str, Any]:
    source = STORIES / "stories260K.bin"
    teacher = Llama2cModel(load_llama2c(source))
    info: dict[str, Any] = {}
    for name, spec in (("corpus", corpus_mod.PRETRAIN_SPEC), ("finetune", corpus_mod.FINETUNE_SPEC)):
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            rows = corpus_mod.sample_corpus(source, spec.n_rows, spec.seed, spec.temperature, spec.row_len)
        np.save(out / f"{name}.npy", rows, allow_pickle=False)
        info[name] = {"seconds": round(time.perf_counter() - start, 1)}
    return _corpus_info(out, teacher, info)


def _corpus_info(out: Path, teacher: Llama2cModel, info: dict[str, Any]) -> dict[str, Any]:
    """Sanity numbers: stories260K's own loss on held-out rows vs the same tokens shuffled
    (a real sample scores far better than its own tokens in random order)."""
    tokens = _tokens(out)
    shuffled = tokens["pre_eval"].copy().reshape(-1)
    np.random.default_rng(0).shuffle(shuffled)
    specs = {"corpus": (corpus_mod.PRETRAIN_SPEC, corpus_mod.EVAL_ROWS, "pre_eval"),
             "finetune": (corpus_mod.FINETUNE_SPEC, corpus_mod.FINETUNE_EVAL_ROWS, "ft_eval")}
    for name, (spec, held, key) in specs.items():
        rows = np.load(out / f"{name}.npy")
        info.setdefault(name, {}).update(
            file=f"{name}.npy", sha256=file_sha256(out / f"{name}.npy"), rows=int(rows.shape[0]),
            row_len=int(rows.shape[1]), tokens=int(rows.size), seed=spec.seed,
            temperature=spec.temperature, eval_rows=held,
            stories260k_eval_loss=round(eval_loss(teacher, tokens[key]), 4),
            bos_fraction=round(float((rows == 1).mean()), 5))
    info["corpus"]["stories260k_shuffled_eval_loss"] = round(
        eval_loss(teacher, shuffled.reshape(tokens["pre_eval"].shape)), 4)
    return info


def _run(jobs: int, calls: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [fn(*args) for fn, *args in calls]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        return [f.result() for f in futures]


def build(out: Path, n_seeds: int, dtype: str, jobs: int, reuse_corpus: bool,
          derivatives_only: bool = False) -> None:
    t0 = time.perf_counter()
    (out / "models").mkdir(parents=True, exist_ok=True)
    stale = set(os.listdir(out / "models"))
    if derivatives_only:
        # Keep the shipped corpora and base models (and their records); redo derivatives.
        with open(out / MANIFEST_NAME, encoding="utf-8") as fh:
            previous = json.load(fh)
        corpora = previous["corpora"]
        records = [r for r in previous["models"] if r["parent"] is None]
        print("corpora and base models: reused", file=sys.stderr)
    else:
        if reuse_corpus and (out / "corpus.npy").is_file() and (out / "finetune.npy").is_file():
            corpora = _corpus_info(out, Llama2cModel(load_llama2c(STORIES / "stories260K.bin")), {})
            print("corpora: reused", file=sys.stderr)
        else:
            corpora = build_corpora(out)
            print(f"corpora: sampled in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        shutil.copyfile(STORIES / "LICENSE-llama2c", out / "LICENSE-llama2c")
        bases = [(build_independent, str(out), seed, dtype) for seed in range(n_seeds)]
        bases.append((build_stories260k, str(out), dtype))
        records = _run(jobs, bases)
        print(f"independent pool: done at {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    t_derived = time.perf_counter()
    parents = [p for p in DERIVED_PARENTS if p in {r["id"] for r in records}]
    derived: list[tuple[Any, ...]] = []
    for parent in parents:
        derived += [(build_derivative, str(out), parent, "finetune", s, dtype) for s in FINETUNE_STRENGTHS]
        derived += [(build_derivative, str(out), parent, "lora", "", dtype),
                    (build_derivative, str(out), parent, "continued-pretraining", "", dtype)]
    records += _run(jobs, derived)
    for old in sorted(stale - {r["id"] for r in records}):
        shutil.rmtree(out / "models" / old)

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.name != MANIFEST_NAME)
    manifest = {
        "format": 1,
        "generator": "scripts/build_synth_models.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "threads_per_job": 1,
        "jobs": jobs,
        "build_seconds": round(time.perf_counter() - t0, 1) + (
            previous["build_seconds"] - previous.get("derivative_seconds", 0.0) if derivatives_only else 0.0),
        "derivative_seconds": round(time.perf_counter() - t_derived, 1),
        "total_bytes_without_manifest": total,
        "corpora": corpora,
        "models": records,
    }
    with open(out / MANIFEST_NAME, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    print(f"{len(records)} models, {total / 1e6:.1f} MB, {manifest['build_seconds']:.0f}s", file=sys.stderr)


def check(out: Path, model_ids: list[str]) -> int:
    """Verify every shipped file's hash, then re-train ``model_ids`` into a scratch copy and
    compare the tensors bit for bit. Returns the exit code."""
    with open(out / MANIFEST_NAME, encoding="utf-8") as fh:
        manifest = json.load(fh)
    status = 0
    for info in manifest["corpora"].values():
        if file_sha256(out / info["file"]) != info["sha256"]:
            print(f"FAIL {info['file']}: sha256 differs from the manifest")
            status = 1
    by_id = {m["id"]: m for m in manifest["models"]}
    for rec in manifest["models"]:
        for fname, digest in rec["files"].items():
            if file_sha256(out / rec["path"] / fname) != digest:
                print(f"FAIL {rec['path']}/{fname}: sha256 differs from the manifest")
                status = 1
    print(f"hashes: {len(manifest['models'])} models checked", file=sys.stderr)
    if manifest["torch"] != torch.__version__:
        print(f"note: shipped with torch {manifest['torch']}, running {torch.__version__}; "
              "bit-exactness is only expected on the same build")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for name in ("corpus.npy", "finetune.npy"):
            shutil.copyfile(out / name, scratch / name)
        for model_id in model_ids:
            rec = by_id[model_id]
            parent = rec["parent"]
            if parent:  # derivatives start from the shipped parent (not a re-trained one)
                shutil.rmtree(scratch / "models" / parent, ignore_errors=True)
                shutil.copytree(out / by_id[parent]["path"], scratch / "models" / parent)
            start = time.perf_counter()
            if rec["kind"] == "independent":
                new = build_independent(str(scratch), rec["seed"], rec["dtype"])
            elif rec["kind"] == "converted":
                new = build_stories260k(str(scratch), rec["dtype"])
            else:
                variant = rec.get("strength", "")
                new = build_derivative(str(scratch), parent, rec["kind"], variant, rec["dtype"])
            took = time.perf_counter() - start
            if new["weights_sha256"] == rec["weights_sha256"]:
                print(f"OK   {model_id}: re-trained in {took:.0f}s, weights bit-identical")
                continue
            status = 1
            a = read_weights(out / rec["path"])
            b = read_weights(scratch / "models" / model_id)
            diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
            n_diff = sum(int((a[k] != b[k]).sum()) for k in a)
            print(f"FAIL {model_id}: weights differ ({n_diff} elements, max |diff| {diff:.3g}); "
                  f"expected only across CPU kinds / torch builds")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "synth")
    parser.add_argument("--n-seeds", type=int, default=24, help="independent models in the pool")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="storage dtype")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    parser.add_argument("--reuse-corpus", action="store_true", help="keep corpus.npy/finetune.npy")
    parser.add_argument("--derivatives-only", action="store_true",
                        help="keep the shipped corpora and base models, rebuild the derivatives")
    parser.add_argument("--check", nargs="*", metavar="MODEL_ID",
                        help="verify hashes and re-train these models (default synth-s00 and "
                             "synth-s00-ft-light) instead of building")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.check is not None:
        return check(args.out, args.check or ["synth-s00", "synth-s00-ft-light"])
    build(args.out, args.n_seeds, args.dtype, args.jobs, args.reuse_corpus, args.derivatives_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
