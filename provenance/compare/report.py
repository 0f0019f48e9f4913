"""Render a :class:`CompareResult`: Markdown summary, CSV/JSON tables and PNG figures."""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from provenance.compare.api import CompareResult
from provenance.textsafe import md_escape, safe_text

ROLE_ORDER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3g}" if p > 0 else "< 1e-300"


def _md_escape(text: Any) -> str:
    """File-derived text in Markdown: the project's escaping (no HTML, links or emphasis)."""
    return md_escape(safe_text(text, 300))


def _code(text: Any) -> str:
    """File-derived text in a code span, where Markdown does not interpret anything but backticks."""
    return "`" + safe_text(text, 300).replace("`", "'") + "`"


def to_markdown(result: CompareResult) -> str:
    v = result.verdict
    lines = [
        "# Lineage comparison", "",
        f"- candidate: {_code(result.candidate['path'])} ({result.candidate['format']})",
        f"- reference: {_code(result.reference['path'])} ({result.reference['format']})", "",
        f"**Verdict: {v['kind']}** — {_md_escape(v['summary'])}", "",
        "## Evidence", "",
    ]
    lines += [f"- {_md_escape(e)}" for e in v.get("evidence", [])]
    test = result.test
    if test:
        lines += ["", "## Calibrated test", "",
                  f"H0: {test['null_hypothesis']}. Statistic: {test['statistic']}.", "",
                  f"- z = {test['z']:.2f}; asymptotic p = {_p(test['p_asymptotic'])} "
                  f"(assumes {test['asymptotic_assumption']})",
                  f"- exact permutation p = {test['p_exact']:.3g} with {test['permutations']} residual permutations "
                  f"(floor {test['p_exact_floor']:.3g})", "",
                  "| layer | circuits | mean Spearman | z | exact p | asymptotic p |",
                  "|---|---|---|---|---|---|"]
        for layer in test["layers"]:
            name = "embedding" if layer["layer"] is None else layer["layer"]
            lines.append(f"| {name} | {', '.join(layer['circuits'])} | {layer['mean_spearman']:.4f} | "
                         f"{layer['z']:.1f} | {layer['p_exact']:.3g} | {_p(layer['p_asymptotic'])} |")
    claims = result.claims
    lines += ["", "## Metadata claims (not evidence)", "", f"- {_md_escape(claims['status'])}"]
    for key, value in claims["candidate"].items():
        lines.append(f"- candidate {_code(key)} = {_md_escape(value)}")
    for key, value in claims["reference"].items():
        lines.append(f"- reference {_code(key)} = {_md_escape(value)}")
    for flag in claims["disagreements"]:
        lines.append(f"- **disagreement**: {_md_escape(flag)}")
    if result.alignment and not result.alignment["identity"]:
        lines += ["", "## Recovered alignment", ""]
        for layer in result.alignment["layers"]:
            mlp = layer.get("mlp", {})
            att = layer.get("attention", {})
            lines.append(f"- layer {layer['layer']}: MLP units moved {mlp.get('moved', 0)}/{mlp.get('units', '?')}"
                         f"{', scales ' + str(mlp['scales']) if 'scales' in mlp else ''}; "
                         f"KV groups moved {att.get('kv_groups', {}).get('moved', 0)}, q heads moved {att.get('q_heads_moved', 0)}; "
                         f"norm rescaling attn {bool(layer['attn_norm_rescale'].get('applied'))}, "
                         f"ffn {bool(layer['ffn_norm_rescale'].get('applied'))}")
    lines += ["", "## Per-tensor statistics (after alignment)", "",
              "Norm vectors are compared only by centred (Pearson) statistics: their raw cosine is ~0.99 "
              "for unrelated models.", "",
              "| tensor | types (cand/ref) | Pearson | 1-cos | rel. delta | rank90 | outside grid |",
              "|---|---|---|---|---|---|---|"]
    for r in result.rows:
        omc = "" if r["one_minus_cos"] is None else f"{r['one_minus_cos']:.3g}"
        rank = "" if r.get("rank_energy") is None else f"{r['rank_energy']}/{r['full_rank']}"
        grid = "" if r.get("grid_outside_fraction") is None else f"{r['grid_outside_fraction']:.2g} ({r['grid_type']})"
        pear = "" if r["pearson"] is None else f"{r['pearson']:.6f}"
        rel = "" if r["rel_delta_norm"] is None else f"{r['rel_delta_norm']:.3g}"
        lines.append(f"| {_md_escape(r['name'])} | {r['candidate_dtype']}/{r['reference_dtype']} | {pear} | {omc} | "
                     f"{rel} | {rank} | {grid} |")
    pairing = result.pairing
    if pairing["only_candidate"] or pairing["only_reference"] or pairing["shape_mismatch"]:
        lines += ["", f"Unpaired: {len(pairing['only_candidate'])} only in the candidate, "
                      f"{len(pairing['only_reference'])} only in the reference, "
                      f"{len(pairing['shape_mismatch'])} with other shapes."]
    t = result.timing
    lines += ["", f"_{t['tensor_bytes']:,} tensor bytes streamed in {t['stream_s']} s; total {t['total_s']} s._", ""]
    return "\n".join(lines)


def figures(result: CompareResult) -> dict[str, bytes]:
    """``{file name: PNG bytes}``: similarity vs layer per role, delta-norm heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.table
    layered = table[table["layer"].notna()].copy()
    layered["layer"] = layered["layer"].astype(int)
    out: dict[str, bytes] = {}
    roles = [r for r in ROLE_ORDER if r in set(layered["role"])]
    if not roles:  # nothing paired per layer (e.g. vocabulary-only files): no empty plots
        return out
    fig, ax = plt.subplots(figsize=(7, 4))
    for role in roles:
        sub = layered[layered["role"] == role].sort_values("layer")
        ax.plot(sub["layer"], sub["pearson"].astype(float), marker="o", label=role)
    ax.set(xlabel="layer", ylabel="Pearson (aligned)", title="per-layer similarity by role")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    out["similarity_by_layer.png"] = _png(fig, plt)
    layers = sorted(set(layered["layer"]))
    grid = np.full((len(layers), len(roles)), np.nan)
    for i, layer in enumerate(layers):
        for j, role in enumerate(roles):
            val = layered[(layered["layer"] == layer) & (layered["role"] == role)]["rel_delta_norm"]
            if len(val) and val.iloc[0] is not None and not math.isnan(float(val.iloc[0])):
                grid[i, j] = float(val.iloc[0])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(layers) + 1.8))
    img = ax.imshow(np.log10(np.maximum(grid, 1e-12)), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers)
    ax.set(ylabel="layer", title="log10 ||C - R|| / ||R||")
    fig.colorbar(img, ax=ax)
    out["delta_heatmap.png"] = _png(fig, plt)
    if result.null_sample and result.test:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(result.null_sample, bins=30, label="residual permutations")
        ax.axvline(result.test["value"], color="r", label="observed")
        ax.set(xlabel="statistic", ylabel="count", title="test statistic vs its permutation null")
        ax.legend(fontsize=8)
        out["permutation_null.png"] = _png(fig, plt)
    return out


def _png(fig: Any, plt: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
