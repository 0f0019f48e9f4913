"""Figures of a :class:`CompareResult` (report documents embed them; renderers are in report/)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from provenance.compare.result import CompareResult
from provenance.document import Figure

ROLE_ORDER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")
CAPTIONS = {
    "similarity_by_layer": "Per-layer similarity (Pearson, after alignment) by tensor role",
    "delta_heatmap": "Relative change ||C - R|| / ||R|| per layer and role (log scale)",
    "permutation_null": "Test statistic against its residual-permutation null distribution",
    "layer_map": "Layer map: spectral distance of each candidate layer to each reference layer (+ = matched)",
}


def figures(result: CompareResult) -> list[Figure]:
    """Similarity vs layer per role, the delta-norm heat map and the test's null histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.table
    layered = table[table["layer"].notna()].copy()
    layered["layer"] = layered["layer"].astype(int)
    out: list[Figure] = []
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
    out.append(_figure("similarity_by_layer", fig))
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
    out.append(_figure("delta_heatmap", fig))
    if result.test and result.test.null_sample:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(result.test.null_sample, bins=30, label="residual permutations")
        ax.axvline(result.test.statistic, color="r", label="observed")
        ax.set(xlabel="statistic", ylabel="count", title="test statistic vs its permutation null")
        ax.legend(fontsize=8)
        out.append(_figure("permutation_null", fig))
    lmap = result.structure.layer_map if result.structure is not None else None
    if lmap is not None and lmap.distances and result.verdict.related:  # an unrelated candidate's map says nothing
        out.append(_layer_map_figure(lmap, plt))
    return out


def _layer_map_figure(lmap: Any, plt: Any) -> Figure:
    """The distance table (log scale) with each candidate layer's match marked."""
    d = np.array(lmap.distances, dtype=float)
    fig, ax = plt.subplots(figsize=(0.35 * d.shape[1] + 2.5, 0.3 * d.shape[0] + 1.8))
    img = ax.imshow(np.log10(np.maximum(np.where(np.isfinite(d), d, np.nan), 1e-6)), aspect="auto", cmap="viridis_r")
    for row, m in enumerate(lmap.matches):
        if m.reference_layer is not None:
            ax.plot(m.reference_layer, row, "r+", ms=8)
    ax.set(xlabel="reference layer", ylabel="candidate layer", title="layer map: log10 spectral distance (+ = match)")
    fig.colorbar(img, ax=ax)
    return _figure("layer_map", fig)


def _figure(name: str, fig: Any) -> Figure:
    fig.tight_layout()
    return Figure.from_matplotlib(name, CAPTIONS[name], fig, dpi=90)
