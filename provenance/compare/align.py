"""Recover the free symmetries an adversary (or a converter) may have applied.

From the sketches (residual-indexed slices, :mod:`.sketch`), per layer:

* MLP hidden units: a permutation by linear assignment (Hungarian,
  ``scipy.optimize.linear_sum_assignment``) on cosine similarities of gate rows, up rows
  and down columns (cosines are blind to the rescaling), then per-unit scales ``s`` (up
  row x s, down column / s; negative for a sign flip) from norm ratios of up and down,
  in which a fine-tune's decorrelation cancels;
* attention: a permutation of KV groups (k and v heads), then of q heads inside each
  matched group (q rows with the attention-output columns), then per-channel v scales;
* residual channels at each norm (gain x a, following columns / a), from gain ratios,
  accepted only when the columns moved the opposite way.

A recovered map is kept only when it beats the identity clearly, so an ordinary
fine-tune is never "aligned" into something else. Everything recovered is reported:
it is evidence too (a permuted copy is not an accident).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from provenance.compare.invariants import HeadLayout
from provenance.compare.sketch import Sketch
from provenance.compare.transform import Transform

#: a permutation replaces the identity only when its total similarity is this much higher
GAIN_OVER_IDENTITY = 1.05
#: scales are applied only when they spread this much (std of log|scale|) or flip signs
SCALE_SPREAD = 0.05
#: residual gain rescaling needs this correlation between gain ratios and column shrinkage
GAIN_COLUMN_CORR = 0.8


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``a`` with every row of ``b``."""
    return _unit_rows(a) @ _unit_rows(b).T


def _assign(sim: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Best assignment of reference rows (i) to candidate rows, or None for the identity."""
    n = sim.shape[0]
    ident = float(np.trace(sim))
    rows, cols = linear_sum_assignment(sim, maximize=True)
    perm = cols[np.argsort(rows)]
    best = float(sim[np.arange(n), perm].sum())
    moved = int((perm != np.arange(n)).sum())
    keep = moved > 0 and best > GAIN_OVER_IDENTITY * max(ident, 0.0) + 1e-9
    info = {"identity_score": round(ident / n, 6), "matched_score": round(best / n, 6),
            "moved": moved if keep else 0, "units": n}
    return (perm if keep else None), info


def _spread_scale(scale: np.ndarray) -> np.ndarray | None:
    if (scale < 0).any() or float(np.std(np.log(np.abs(scale) + 1e-30))) > SCALE_SPREAD:
        return scale
    return None


@dataclass
class Alignment:
    transforms: dict[str, Transform] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return all(t.is_identity for t in self.transforms.values())

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.is_identity, "layers": self.layers,
                "transforms": {k: v.summary() for k, v in self.transforms.items() if not v.is_identity}}


#: rows sampled to check whether the identity already matches (skips the O(n^3) assignment)
IDENTITY_SAMPLE = 512
IDENTITY_HITS = 0.95


def _mlp_features(part: dict[str, np.ndarray]) -> list[tuple[np.ndarray, bool]]:
    feats = []
    if "ffn_gate" in part:
        feats.append((_unit_rows(part["ffn_gate"]).astype(np.float32), False))  # gate cannot flip sign (SiLU)
    feats.append((_unit_rows(part["ffn_up"]).astype(np.float32), True))
    if "ffn_down" in part:
        feats.append((_unit_rows(part["ffn_down"].T).astype(np.float32), True))
    return feats


def _identity_hits(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> float:
    """Fraction of sampled reference units whose best candidate unit has the same index.

    A sample keeps this O(sample x n_ff x |S|), so an unpermuted 7B layer (n_ff 11008) never
    pays for a dense 11008^2 assignment."""
    fr, fc = _mlp_features(ref), _mlp_features(cand)
    n = fr[0][0].shape[0]
    rows = np.random.default_rng(n).choice(n, size=min(n, IDENTITY_SAMPLE), replace=False)
    sim = np.zeros((len(rows), n), dtype=np.float32)
    for (a, absolute), (b, _) in zip(fr, fc):
        block = a[rows] @ b.T
        sim += np.abs(block) if absolute else block
    return float((sim.argmax(axis=1) == rows).mean())


def _mlp(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    n = ref["ffn_up"].shape[0]
    hits = _identity_hits(ref, cand)
    if hits >= IDENTITY_HITS and n > IDENTITY_SAMPLE:
        perm, info = None, {"identity_hits": round(hits, 4), "moved": 0, "units": n, "assignment": "skipped"}
        return perm, _mlp_scale(ref, cand, None, info), info
    sim = np.zeros((n, n))
    if "ffn_gate" in ref and "ffn_gate" in cand:
        sim += _cos(ref["ffn_gate"], cand["ffn_gate"])  # gate cannot flip sign (SiLU)
    sim += np.abs(_cos(ref["ffn_up"], cand["ffn_up"]))
    if "ffn_down" in ref and "ffn_down" in cand:
        sim += np.abs(_cos(ref["ffn_down"].T, cand["ffn_down"].T))
    perm, info = _assign(sim)
    info["identity_hits"] = round(hits, 4)
    return perm, _mlp_scale(ref, cand, perm, info), info


def _mlp_scale(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], perm: np.ndarray | None,
               info: dict[str, Any]) -> np.ndarray | None:
    p = np.arange(ref["ffn_up"].shape[0]) if perm is None else perm
    up_r, up_c = ref["ffn_up"].astype(np.float64), cand["ffn_up"].astype(np.float64)[p]
    sign = np.sign((up_r * up_c).sum(axis=1))
    sign[sign == 0] = 1
    ratio = np.linalg.norm(up_c, axis=1) / np.maximum(np.linalg.norm(up_r, axis=1), 1e-30)
    if "ffn_down" in ref and "ffn_down" in cand:
        dr = np.linalg.norm(ref["ffn_down"].astype(np.float64), axis=0)
        dc = np.linalg.norm(cand["ffn_down"].astype(np.float64)[:, p], axis=0)
        ratio = np.sqrt(ratio * dr / np.maximum(dc, 1e-30))
    scale = _spread_scale(sign * ratio)
    if scale is not None:
        info["scales"] = {"min_abs": float(np.abs(scale).min()), "max_abs": float(np.abs(scale).max()),
                          "negative": int((scale < 0).sum())}
    return scale


def _row_mean_abs_cos(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |cos| of corresponding rows of two equal-shape blocks."""
    ua, ub = _unit_rows(a), _unit_rows(b)
    return float(np.abs((ua * ub).sum(axis=1)).mean())


def _attention(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], heads: HeadLayout) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    hd, nkv, nh = heads.head_dim, heads.n_head_kv, heads.n_head
    group = nh // nkv

    def kv_block(x: np.ndarray, g: int) -> np.ndarray:
        return x[g * hd:(g + 1) * hd]

    sim_kv = np.zeros((nkv, nkv))
    for g in range(nkv):
        for h in range(nkv):
            sim_kv[g, h] = (_row_mean_abs_cos(kv_block(ref["attn_k"], g), kv_block(cand["attn_k"], h))
                            + _row_mean_abs_cos(kv_block(ref["attn_v"], g), kv_block(cand["attn_v"], h)))
    kv_perm, kv_info = _assign(sim_kv)
    kvp = np.arange(nkv) if kv_perm is None else kv_perm
    q_map = np.arange(nh)
    moved_q = 0
    o_r, o_c = ref["attn_output"], cand["attn_output"]
    for g in range(nkv):
        ref_heads = np.arange(g * group, (g + 1) * group)
        cand_heads = np.arange(kvp[g] * group, (kvp[g] + 1) * group)
        sim = np.zeros((group, group))
        for i, h in enumerate(ref_heads):
            for j, h2 in enumerate(cand_heads):
                sim[i, j] = (_row_mean_abs_cos(ref["attn_q"][h * hd:(h + 1) * hd], cand["attn_q"][h2 * hd:(h2 + 1) * hd])
                             + _row_mean_abs_cos(o_r[:, h * hd:(h + 1) * hd].T, o_c[:, h2 * hd:(h2 + 1) * hd].T))
        perm, _ = _assign(sim) if group > 1 else (None, {})
        local = np.arange(group) if perm is None else perm
        q_map[ref_heads] = cand_heads[local]
        moved_q += int((cand_heads[local] != ref_heads).sum())
    q_perm = None if (q_map == np.arange(nh)).all() else q_map
    kv_rows = (kvp[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
    v_r, v_c = ref["attn_v"].astype(np.float64), cand["attn_v"].astype(np.float64)[kv_rows]
    sign = np.sign((v_r * v_c).sum(axis=1))
    sign[sign == 0] = 1
    ratio = np.linalg.norm(v_c, axis=1) / np.maximum(np.linalg.norm(v_r, axis=1), 1e-30)
    # o columns meeting v row r: every q head of r's group, channel r % hd
    q_cols = (q_map[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
    oc = np.linalg.norm(o_c.astype(np.float64)[:, q_cols], axis=0)
    orr = np.linalg.norm(o_r.astype(np.float64), axis=0)
    kv_of_q = heads.kv_of_q_rows()
    o_ratio = np.zeros(nkv * hd)
    np.add.at(o_ratio, kv_of_q, orr / np.maximum(oc, 1e-30))
    o_ratio /= group
    v_scale = _spread_scale(sign * np.sqrt(ratio * o_ratio))
    info = {"kv_groups": kv_info, "q_heads_moved": moved_q}
    if v_scale is not None:
        info["v_scales"] = {"min_abs": float(np.abs(v_scale).min()), "max_abs": float(np.abs(v_scale).max()),
                            "negative": int((v_scale < 0).sum())}
    return kv_perm, q_perm, v_scale, info


def _gain_scale(g_ref: np.ndarray | None, g_cand: np.ndarray | None, cols_ref: list[np.ndarray],
                cols_cand: list[np.ndarray], residual: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Residual-channel rescaling at a norm: gain x a, following columns / a."""
    if g_ref is None or g_cand is None or not cols_ref:
        return None, {}
    with np.errstate(divide="ignore", invalid="ignore"):
        a = g_cand.astype(np.float64) / g_ref.astype(np.float64)
    if not np.isfinite(a).all() or (a == 0).any():
        return None, {}
    spread = float(np.std(np.log(np.abs(a))))
    col_r = np.sqrt(sum((c.astype(np.float64) ** 2).sum(axis=0) for c in cols_ref))
    col_c = np.sqrt(sum((c.astype(np.float64) ** 2).sum(axis=0) for c in cols_cand))
    shrink = np.log(np.maximum(col_r, 1e-30) / np.maximum(col_c, 1e-30))
    la = np.log(np.abs(a[residual]))
    corr = float(np.corrcoef(la, shrink)[0, 1]) if la.std() > 0 and shrink.std() > 0 else 0.0
    info = {"gain_ratio_log_sd": round(spread, 6), "corr_with_column_shrink": round(corr, 4)}
    if (spread > SCALE_SPREAD and corr > GAIN_COLUMN_CORR) or (a < 0).any():
        info["applied"] = True
        return a, info
    return None, info


def _expand_heads(perm: np.ndarray, hd: int) -> np.ndarray:
    return (perm[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)


def align_layer(layer: int, r: dict[str, np.ndarray], c: dict[str, np.ndarray], heads: HeadLayout | None,
                res: np.ndarray, norms_ref: dict[str, np.ndarray],
                norms_cand: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Transform]]:
    """Recover one layer's permutations and scales from its sketches ``r`` / ``c``
    (residual-indexed slices, :class:`Sketch` ``.layers[layer]``); returns the layer's
    record and its per-tensor transforms. Layers are independent of each other, so the
    streamed pipeline aligns each layer while its sketches exist and then drops them."""
    record: dict[str, Any] = {"layer": layer}
    t: dict[str, dict[str, Any]] = {}
    name = lambda role: f"blk.{layer}.{role}.weight"
    # residual gains first: they act on the columns every other feature is read in
    a, info_a = _gain_scale(norms_ref.get(name("attn_norm")), norms_cand.get(name("attn_norm")),
                            [r[k] for k in ("attn_q", "attn_k", "attn_v") if k in r and k in c],
                            [c[k] for k in ("attn_q", "attn_k", "attn_v") if k in r and k in c], res)
    b, info_b = _gain_scale(norms_ref.get(name("ffn_norm")), norms_cand.get(name("ffn_norm")),
                            [r[k] for k in ("ffn_gate", "ffn_up") if k in r and k in c],
                            [c[k] for k in ("ffn_gate", "ffn_up") if k in r and k in c], res)
    record["attn_norm_rescale"], record["ffn_norm_rescale"] = info_a, info_b
    if a is not None:
        t["attn_norm"] = {"col_scale": 1.0 / a}
        for role in ("attn_q", "attn_k", "attn_v"):
            t.setdefault(role, {})["col_scale"] = a
    if b is not None:
        t["ffn_norm"] = {"col_scale": 1.0 / b}
        for role in ("ffn_gate", "ffn_up"):
            t.setdefault(role, {})["col_scale"] = b
    # features in the reference's residual frame: undo the gain scaling on the sketch
    cs = {k: (v * a[res][None, :] if a is not None and k in ("attn_q", "attn_k", "attn_v") else
              v * b[res][None, :] if b is not None and k in ("ffn_gate", "ffn_up") else v)
          for k, v in c.items()}
    if all(k in r and k in cs for k in ("ffn_up",)):
        perm, scale, info = _mlp(r, cs)
        record["mlp"] = info
        if perm is not None:
            t.setdefault("ffn_gate", {})["row_index"] = perm
            t.setdefault("ffn_up", {})["row_index"] = perm
            t.setdefault("ffn_down", {})["col_index"] = perm
        if scale is not None:
            t.setdefault("ffn_up", {})["row_scale"] = 1.0 / scale
            t.setdefault("ffn_down", {})["col_scale"] = scale
    if heads is not None and all(k in r and k in cs for k in ("attn_q", "attn_k", "attn_v", "attn_output")):
        kv_perm, q_perm, v_scale, info = _attention(r, cs, heads)
        record["attention"] = info
        hd = heads.head_dim
        if q_perm is not None:
            t.setdefault("attn_q", {})["row_index"] = _expand_heads(q_perm, hd)
            t.setdefault("attn_output", {})["col_index"] = _expand_heads(q_perm, hd)
        if kv_perm is not None:
            t.setdefault("attn_k", {})["row_index"] = _expand_heads(kv_perm, hd)
            t.setdefault("attn_v", {})["row_index"] = _expand_heads(kv_perm, hd)
        if v_scale is not None:
            t.setdefault("attn_v", {})["row_scale"] = 1.0 / v_scale
            t.setdefault("attn_output", {})["col_scale"] = v_scale[heads.kv_of_q_rows()]
    return record, {name(role): Transform(**spec) for role, spec in t.items()}


def align(ref: Sketch, cand: Sketch, heads: HeadLayout | None, norms_ref: dict[str, np.ndarray],
          norms_cand: dict[str, np.ndarray]) -> Alignment:
    """Recover permutations and scales layer by layer; returns per-tensor transforms."""
    result = Alignment()
    for layer in sorted(ref.layers):
        record, transforms = align_layer(layer, ref.layers[layer], cand.layers.get(layer, {}), heads, ref.residual,
                                         norms_ref, norms_cand)
        result.transforms.update(transforms)
        result.layers.append(record)
    return result
