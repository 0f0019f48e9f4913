#!/usr/bin/env python3
"""Measure how keyed watermarks survive what a leaker can do; writes the table in docs/watermark.md.

    python scripts/watermark_robustness.py            # everything (~10 min on 2 shared cores)
    python scripts/watermark_robustness.py --quick    # one amplitude, fewer innocent keys

Models (all measured here, nothing extrapolated):
* ``tiny-llama-f16.gguf`` (../shared/data/llamacpp-quant, llama.cpp layout): N = 1,703,936
  marked weights; quantization, pruning, permutation+rescale and collusion rows.
* ``synth-s00`` (data/synth, a trained tiny Llama): N = 247,040 marked weights;
  fine-tuning rows and the distillation negative control.

Every candidate is scored with the guilty key(s), ``--innocent`` innocent clients' keys
and 1000 decoy keys; an accusation needs z >= 7 (fixed in advance). Each candidate is traced
twice: with every block read (the fixed-sample test, whose z the table shows) and with the
sequential rule (docs/watermark.md, "Tracing"), whose decisions must be the same; the table
gives the share of the model the sequential pass read. Quantization uses the
project's llama.cpp-exact quantizer (provenance.quant.writer.quantize_model, llama.cpp's
type mixes); when llama-cpp-python is importable (built into .cache/llamacpp), every
quantized file is also written by llama.cpp itself and compared byte for byte.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance.watermark import (  # noqa: E402
    DerivedKey,
    TraceOptions,
    attacks,
    embed_checkpoint,
    trace,
)
from provenance.watermark.stats import DEFAULT_THRESHOLD_Z  # noqa: E402

TINY = ROOT.parent / "shared" / "data" / "llamacpp-quant" / "tiny-llama-f16.gguf"
SECRET = b"robustness-table-secret-v1-0000"
AMPLITUDES = (1e-2, 3e-3, 1e-3)
QUANTS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
COLLUSION_SIZES = (2, 4, 8)
FINETUNE = ("light", "medium", "heavy")


def blocks(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: v for n, v in tensors.items() if n.startswith("blk.") and "norm" not in n}


class Table:
    def __init__(self, innocent: list[DerivedKey]) -> None:
        self.rows: list[dict[str, Any]] = []
        self.innocent = innocent

    def score(self, label: str, amplitude: float, candidate: Path, reference: Path | None, guilty: list[DerivedKey],
              realign: str = "auto", expect_detect: bool = True, model: str = "tiny-llama") -> dict[str, Any]:
        t0 = time.time()
        keys = [*guilty, *self.innocent]
        result = trace(candidate, keys, reference, options=TraceOptions(decoys=1000, realign=realign, sequential=False))
        seq = trace(candidate, keys, reference, options=TraceOptions(decoys=0, realign=realign))
        guilty_labels = {k.label for k in guilty}
        zs = {s: [] for s in ("reference", "grid", "blind")}
        innocent_max = -np.inf
        for key in result.score.keys:
            for stat, acc in key.totals.items():
                if acc.q <= 0:
                    continue
                if key.label in guilty_labels:
                    zs[stat].append(acc.z)
                else:
                    innocent_max = max(innocent_max, acc.z)
        decoys = result.score.decoy_summary()
        row = {
            "attack": label, "model": model, "amplitude": amplitude, "n": result.score.n_weights,
            "z_reference": min(zs["reference"]) if zs["reference"] else None,
            "z_grid": min(zs["grid"]) if zs["grid"] else None,
            "z_blind": min(zs["blind"]) if zs["blind"] else None,
            "guilty": len(guilty_labels), "guilty_accused": len(guilty_labels & set(result.accused)),
            "false_accusations": len(set(result.accused) - guilty_labels),
            "innocent_max_z": float(innocent_max), "n_innocent_tests": len(self.innocent) * len(result.score.statistics),
            "decoy_max": max(d.max for d in decoys.values()), "decoy_min_ks_p": min(d.ks_p for d in decoys.values()),
            "decoy_mean": {s: d.mean for s, d in decoys.items()}, "decoy_std": {s: d.std for s, d in decoys.items()},
            "n_flips": result.score.n_flips, "expect_detect": expect_detect, "seconds": round(time.time() - t0, 1),
            "seq_accused": sorted(seq.accused), "seq_same_decisions": sorted(seq.accused) == sorted(result.accused),
            "seq_false_accusations": len(set(seq.accused) - guilty_labels),
            "seq_read_fraction": seq.score.weights_read / max(1, seq.score.n_weights),
        }
        self.rows.append(row)
        print(f"{label:34s} a={amplitude:<6g} ref={_f(row['z_reference'])} grid={_f(row['z_grid'])} blind={_f(row['z_blind'])} "
              f"accused {row['guilty_accused']}/{row['guilty']} false={row['false_accusations']} innocent_max={innocent_max:.2f} "
              f"decoy_max={row['decoy_max']:.2f} ks_p={row['decoy_min_ks_p']:.2g} seq same={row['seq_same_decisions']} "
              f"read={row['seq_read_fraction']:.1%} ({row['seconds']}s)", flush=True)
        return row

    def pending(self, label: str, amplitude: float, why: str) -> None:
        self.rows.append({"attack": label, "amplitude": amplitude, "pending": why})
        print(f"{label:34s} a={amplitude:<6g} pending: {why}", flush=True)


def _f(z: float | None) -> str:
    return "   -  " if z is None else f"{z:7.1f}"


def tiny_rows(table: Table, amplitude: float, work: Path, n_colluders: int) -> None:
    clients = [DerivedKey(SECRET, f"client-{i}") for i in range(n_colluders)]
    paths = []
    for key in clients:
        path = work / f"{key.client}-{amplitude:g}.gguf"
        embed_checkpoint(TINY, path, key, amplitude)
        paths.append(path)
    marked, me = paths[0], clients[:1]
    tensors = blocks(attacks.read_tensors(marked))
    table.score("none (F16 copy)", amplitude, marked, TINY, me)
    for mix in QUANTS:
        out = work / f"{mix}.gguf"
        attacks.quantize_mix(marked, out, mix)
        row = table.score(mix, amplitude, out, TINY, me)
        if attacks.llama_cpp_available():  # cross-check: the very file llama.cpp writes?
            check = work / f"{mix}-llama.cpp.gguf"
            attacks.quantize_with_llama_cpp(marked, check, mix)
            row["identical_to_llama_cpp"] = attacks.same_bytes(out, check)
    out = work / "pruned.gguf"
    attacks.write_gguf_variant(marked, out, {n: attacks.prune(v, 0.5) for n, v in tensors.items()})
    table.score("50% magnitude pruning", amplitude, out, TINY, me)
    out = work / "perm.gguf"
    moved = attacks.permute_rescale(tensors, layers=[0, 1], seed=11)
    attacks.write_gguf_variant(marked, out, moved)
    table.score("MLP permutation+rescale, no realign", amplitude, out, TINY, me, realign="never")
    table.score("MLP permutation+rescale, realigned", amplitude, out, TINY, me, realign="auto")
    outq = work / "perm-q4km.gguf"
    attacks.quantize_mix(out, outq, "Q4_K_M")
    table.score("permutation+rescale+Q4_K_M, realigned", amplitude, outq, TINY, me)
    copies = [blocks(attacks.read_tensors(p)) for p in paths]
    for size in COLLUSION_SIZES:
        if size > len(copies):
            continue
        for name, fn in (("average", attacks.average), ("midpoint", attacks.midpoint)):
            out = work / f"{name}-{size}.gguf"
            attacks.write_gguf_variant(TINY, out, fn(copies[:size]))
            table.score(f"{name} of {size} copies", amplitude, out, TINY, clients[:size])


def synth_rows(table: Table, amplitude: float, work: Path, distill_steps: int) -> None:
    from transformers import LlamaForCausalLM

    from provenance.synth import finetune, load_synth_tokens, synth_model_path
    from provenance.synth.store import save_model

    base = synth_model_path("synth-s00")
    key = DerivedKey(SECRET, "client-0")
    marked = work / f"synth-marked-{amplitude:g}"
    embed_checkpoint(base, marked, key, amplitude)
    table.score("none (synth F16 copy)", amplitude, marked, base, [key], model="synth-s00")
    tokens = load_synth_tokens("finetune")
    model = LlamaForCausalLM.from_pretrained(marked, dtype=torch.float32, attn_implementation="sdpa")
    for strength in FINETUNE:
        tuned = finetune(model, strength, seed=7, tokens=tokens)
        out = work / f"synth-{strength}"
        save_model(tuned, out)
        table.score(f"fine-tune {strength}", amplitude, out, base, [key], model="synth-s00")
    if distill_steps and amplitude == max(AMPLITUDES):
        out = work / "synth-distilled"
        save_model(distill(model, load_synth_tokens("corpus"), distill_steps), out)
        table.score(f"distillation ({distill_steps} steps, negative control)", amplitude, out, base, [key],
                    expect_detect=False, model="synth-s00")


def distill(teacher: Any, tokens: np.ndarray, steps: int, seed: int = 4242) -> Any:
    """A fresh model trained only on the marked teacher's output distribution."""
    from torch.nn import functional as F

    from provenance.synth.train import PRETRAIN_RECIPE, batches, deterministic, init_model, with_recipe

    recipe = with_recipe(PRETRAIN_RECIPE, steps=steps)
    student = init_model(seed)
    teacher.eval()
    with deterministic():
        opt = torch.optim.AdamW(student.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=False)
        student.train()
        for step, window in enumerate(batches(tokens, recipe, seed)):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step)
            with torch.no_grad():
                target = F.softmax(teacher(input_ids=window[:, :-1]).logits.float(), dim=-1)
            logits = student(input_ids=window[:, :-1]).logits.float()
            loss = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), recipe.grad_clip, foreach=False)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return student.eval()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model (N) | attack | a | z ref | z grid | z blind | guilty accused | false acc. | max innocent z | decoys mean/std, max, KS p "
        "| sequential: same decisions, read |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "pending" in r:
            lines.append(f"| tiny-llama | {r['attack']} | {r['amplitude']:g} | pending: {r['pending']} | | | | | | | |")
            continue
        stat = "grid" if r["z_grid"] is not None else "reference"
        dm, ds = r["decoy_mean"].get(stat, 0.0), r["decoy_std"].get(stat, 0.0)

        def z(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        lines.append(
            f"| {r['model']} ({r['n']:,}) | {r['attack']} | {r['amplitude']:g} | {z(r['z_reference'])} | {z(r['z_grid'])} | "
            f"{z(r['z_blind'])} | {r['guilty_accused']}/{r['guilty']} | {r['false_accusations']} | {r['innocent_max_z']:.2f} | "
            f"{dm:+.2f}/{ds:.2f}, {r['decoy_max']:.2f}, {r['decoy_min_ks_p']:.2g} | "
            f"{'yes' if r['seq_same_decisions'] else 'NO'}, {r['seq_read_fraction']:.0%} |"
        )
    return "\n".join(lines) + "\n"


N_7B = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # Llama-2-7B block matrices
N_70B = 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)  # Llama-2-70B (GQA, 8 kv heads)
EXTRAPOLATE = [
    ("none (F16 copy)", 1e-3, "z_blind"),
    ("Q4_K_M", 1e-3, "z_grid"),
    ("Q2_K", 1e-3, "z_grid"),
    ("Q4_K_M", 1e-3, "z_blind"),
    ("50% magnitude pruning", 1e-3, "z_reference"),
    ("midpoint of 8 copies", 1e-3, "z_reference"),
    ("fine-tune heavy", 1e-3, "z_reference"),
    ("fine-tune heavy", 3e-3, "z_reference"),
]


def extrapolation(rows: list[dict[str, Any]]) -> str:
    """z at 7B / 70B: sqrt(N) scaling of measured rows (a*sqrt(N) for blind). Not measured."""
    lines = ["| attack | a | measured z (statistic, N) | z at 7B | z at 70B |", "|---|---|---|---|---|"]
    for attack, a, stat in EXTRAPOLATE:
        row = next((r for r in rows if r.get("attack") == attack and r["amplitude"] == a and "pending" not in r), None)
        if row is None or row[stat] is None:
            continue
        z, n = row[stat], row["n"]
        big = [a * N**0.5 if stat == "z_blind" else z * (N / n) ** 0.5 for N in (N_7B, N_70B)]
        lines.append(f"| {attack} | {a:g} | {z:.1f} ({stat[2:]}, {n:,}) | {big[0]:,.0f} | {big[1]:,.0f} |")
    return "\n".join(lines) + "\n"


def update_docs(path: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Replace the generated block of docs/watermark.md (between the robustness markers)."""
    measured = [r for r in rows if "pending" not in r]
    checked = [r["identical_to_llama_cpp"] for r in rows if "identical_to_llama_cpp" in r]
    cross = (
        f"{sum(checked)} of {len(checked)} quantized files byte-identical to llama.cpp's own" if checked else "not run"
    )
    block = (
        f"Generated by `python scripts/watermark_robustness.py` ({summary['seconds']} s here; torch {summary['torch']}, "
        f"numpy {summary['numpy']}; llama.cpp cross-check: {cross}).\n\n"
        f"**Totals: {summary['innocent_tests_total']:,} innocent-key tests, {summary['false_accusations_total']} false accusations; "
        f"largest innocent z {summary['innocent_max_z']:.2f}; largest decoy z {summary['decoy_max']:.2f} "
        f"(of {sum(1000 * len(r['decoy_mean']) for r in measured):,} decoy scores over {len(measured)} candidates). "
        f"Sequential rule: the same decisions on {summary['seq_same_decisions']} of {len(measured)} candidates, "
        f"{summary['seq_false_accusations_total']} false accusations.**\n\n"
        + markdown(rows)
        + f"\nExtrapolation (stated, not measured): marked block weights N = {N_7B:,} for Llama-2-7B, {N_70B:,} for Llama-2-70B.\n\n"
        + extrapolation(rows)
    )
    text = path.read_text("utf-8")
    begin, end = "<!-- robustness:begin -->", "<!-- robustness:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + block + end + rest.split(end, 1)[1]
        path.write_text(text, "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one amplitude (1e-2), 20 innocent keys, 2 colluders")
    parser.add_argument("--innocent", type=int, default=100, help="innocent client keys scored on every candidate")
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "watermark")
    args = parser.parse_args()
    torch.set_num_threads(1)
    amplitudes = AMPLITUDES[:1] if args.quick else AMPLITUDES
    table = Table([DerivedKey(SECRET, f"innocent-{i:03d}") for i in range(20 if args.quick else args.innocent)])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="wm-robustness-") as tmp:
        for amplitude in amplitudes:
            work = Path(tmp) / f"a{amplitude:g}"
            work.mkdir()
            tiny_rows(table, amplitude, work, 2 if args.quick else 8)
            synth_rows(table, amplitude, work, args.distill_steps)
    measured = [r for r in table.rows if "pending" not in r]
    summary = {
        "threshold_z": DEFAULT_THRESHOLD_Z,
        "false_accusations_total": sum(r["false_accusations"] for r in measured),
        "innocent_tests_total": sum(r["n_innocent_tests"] for r in measured),
        "innocent_max_z": max(r["innocent_max_z"] for r in measured),
        "decoy_max": max(r["decoy_max"] for r in measured),
        "seq_same_decisions": sum(r["seq_same_decisions"] for r in measured),
        "seq_false_accusations_total": sum(r["seq_false_accusations"] for r in measured),
        "seconds": round(time.time() - started),
        "llama_cpp_cross_check": attacks.llama_cpp_available(),
        "identical_to_llama_cpp": sorted(
            {r.get("identical_to_llama_cpp") for r in table.rows if "identical_to_llama_cpp" in r}, key=str
        ),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps({"summary": summary, "rows": table.rows}, indent=1) + "\n")
    (args.out / "robustness.md").write_text(markdown(table.rows))
    if not args.quick:
        update_docs(ROOT / "docs" / "watermark.md", summary, table.rows)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
