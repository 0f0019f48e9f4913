"""Symmetries: the moves are function-preserving, the circuits ignore them, alignment undoes them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provenance.compare import CompareOptions, compare
from provenance.compare.invariants import HeadLayout, layer_circuits
from provenance.compare.variants import Q, apply_symmetries, load_canonical, write_gguf

ROOT = Path(__file__).resolve().parents[2]
STORIES = ROOT.parent / "shared" / "data" / "stories260K" / "stories260K.bin"


def _forward(t: dict[str, np.ndarray], tokens: np.ndarray, nh: int, nkv: int, hd: int, n_layer: int) -> np.ndarray:
    """A float64 numpy Llama forward in the canonical (llama.cpp, interleaved RoPE) layout."""
    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g

    f = {k: v.astype(np.float64) for k, v in t.items()}
    x = f["token_embd.weight"][tokens]
    T = len(tokens)
    pos = np.arange(T)[:, None]
    inv = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)

    def rope(v: np.ndarray) -> np.ndarray:  # (T, heads, hd), pairs (2i, 2i+1)
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * cos[:, None] - b * sin[:, None]
        out[..., 1::2] = a * sin[:, None] + b * cos[:, None]
        return out

    for L in range(n_layer):

        def w(role: str, layer: int = L) -> np.ndarray:
            return f[f"blk.{layer}.{role}.weight"]

        h = rms(x, w("attn_norm"))
        q = rope((h @ w("attn_q").T).reshape(T, nh, hd))
        k = rope((h @ w("attn_k").T).reshape(T, nkv, hd))
        v = (h @ w("attn_v").T).reshape(T, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + np.triu(np.full((T, T), -1e30), 1)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", att, v).reshape(T, nh * hd) @ w("attn_output").T
        h = rms(x, w("ffn_norm"))
        g = h @ w("ffn_gate").T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    return rms(x, f["output_norm.weight"]) @ f["token_embd.weight"].T


@pytest.fixture(scope="module")
def stories() -> tuple[dict[str, np.ndarray], object]:
    tensors, arch, _ = load_canonical(STORIES)
    return tensors, arch


def test_symmetries_preserve_the_function(stories: tuple) -> None:
    tensors, arch = stories
    moved, record = apply_symmetries(tensors, arch, seed=3)
    assert all(l["mlp_perm_moved"] > 150 for l in record["layers"])
    tokens = np.array([1, 403, 261, 32, 16, 400, 79, 330])
    args = (arch.n_head, arch.n_head_kv, arch.head_dim, arch.n_layer)
    before, after = _forward(tensors, tokens, *args), _forward(moved, tokens, *args)
    assert np.abs(before - after).max() < 1e-4 * np.abs(before).max()
    assert np.abs(tensors["blk.0.ffn_up.weight"] - moved["blk.0.ffn_up.weight"]).max() > 0.1  # weights did move


def test_circuits_are_invariant_to_the_symmetries(stories: tuple) -> None:
    tensors, arch = stories
    moved, _ = apply_symmetries(tensors, arch, seed=4)
    heads = HeadLayout(arch.n_head, arch.n_head_kv, arch.head_dim)
    parts = lambda t: {r: t[f"blk.2.{r}.weight"] for r in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",  # noqa: E731
                                                           "ffn_up", "ffn_down", "attn_norm", "ffn_norm")}
    a, b = layer_circuits(parts(tensors), heads), layer_circuits(parts(moved), heads)
    assert set(a) == {"qk", "ov", "mlp", "gate"}
    for key in a:
        assert np.allclose(a[key], b[key], rtol=1e-4, atol=1e-6 * np.abs(a[key]).max()), key


def test_alignment_recovers_permutations_and_scales(stories: tuple, tmp_path: Path) -> None:
    tensors, arch = stories
    moved, _ = apply_symmetries(tensors, arch, seed=5)
    path = tmp_path / "moved.gguf"
    write_gguf(path, {k: (v, Q.F32) for k, v in moved.items()}, arch, "moved")
    res = compare(path, STORIES, CompareOptions(permutations=199))
    assert res.verdict.kind == "identical", res.verdict
    assert "permuted units" in res.verdict.summary and "rescaled units" in res.verdict.summary
    assert not res.alignment.identity
    for layer in res.alignment.layers:
        assert layer.mlp.moved > 150 and layer.attn_norm_rescale.applied
    mats = res.table[res.table["kind"] == "matrix"]
    assert (mats["rel_delta_norm"] < 1e-6).all()
    # without alignment the same copy looks unrelated tensor by tensor, yet the test still sees it
    raw = compare(path, STORIES, CompareOptions(permutations=199, align=False))
    assert raw.verdict.related is True
    assert raw.table[raw.table["role"] == "ffn_up"]["pearson"].abs().max() < 0.3


def test_unit_scales_are_named_only_when_up_and_down_agree() -> None:
    """A rescale moves up rows by s and down columns by 1 / s (the two sides agree, up to a
    fine-tune's drift); a merge moves them independently (they disagree)."""
    from provenance.compare.align import SCALE_AGREEMENT, _disagreement, _spread_scale

    rng = np.random.default_rng(0)
    s = np.exp(rng.uniform(-0.7, 0.7, 512))
    drift = np.exp(0.05 * rng.standard_normal((2, 512)))
    forward, backward = s * drift[0], s * drift[1]  # candidate/reference up, reference/candidate down
    agreeing = _disagreement(forward, backward)
    assert agreeing < 0.2
    assert _spread_scale(np.sqrt(forward * backward), agreeing) is not None
    merged = np.exp(0.2 * rng.standard_normal((2, 512)))  # both norms changed, independently
    disagreeing = _disagreement(merged[0], 1 / merged[1])
    assert disagreeing > SCALE_AGREEMENT
    assert _spread_scale(np.sqrt(merged[0] / merged[1]), disagreeing) is None
    # a sign flip alone (no spread) is named whatever the ratios say
    flips = np.where(rng.random(512) < 0.1, -1.0, 1.0)
    assert _spread_scale(flips, 1.0) is not None
