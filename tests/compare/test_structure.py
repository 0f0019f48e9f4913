"""Lineage that says what was done: layer maps, shape changes, residual rotations, merges.

Every candidate is a structural derivative of a trained synth model written by the real
tools (mergekit passthrough/merges, save_pretrained; provenance.synth.structure), and the
quantized ones by the project's llama.cpp-exact writer (Q4_K_M).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("mergekit")

from provenance.compare import CompareOptions, compare
from provenance.compare.layermap import LayerMatch, describe
from provenance.compare.merge import estimate_merge
from provenance.compare.unitspace import layer_unit_circuits
from provenance.synth import structure as st
from tests.support.synth_models import q4_k_m as _q4
from tests.support.synth_models import synth_model as _model

OPTS = CompareOptions(permutations=199)



@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("structure")
    p = _model("stories260k")
    out = {
        "upscale": st.passthrough([(p, 0, 4), (p, 1, 5)], root / "upscale"),
        "drop2": st.passthrough([(p, 0, 2), (p, 3, 5)], root / "drop2"),
        "swap12": st.passthrough([(p, 0, 1), (p, 2, 3), (p, 1, 2), (p, 3, 5)], root / "swap12"),
        "vocab576": st.resize_vocabulary(p, root / "vocab576", 576),
        "vocab448": st.resize_vocabulary(p, root / "vocab448", 448),
        "width128": st.prune_width(p, root / "width128", 128),
        "gqa2": st.convert_gqa(p, root / "gqa2", 2),
        "rotated": st.rotate_residual(p, root / "rotated", seed=5)[0],
        "ft-rotated": st.rotate_residual(_model("stories260k-ft-heavy"), root / "ft-rotated", seed=6)[0],
        "unrelated-rotated": st.rotate_residual(_model("synth-s03"), root / "unrelated-rotated", seed=7)[0],
    }
    return out



def _related(res) -> None:  # type: ignore[no-untyped-def]
    assert res.verdict.related is True, res.verdict.summary
    assert res.verdict.p_asymptotic < 1e-6
    assert res.verdict.kind not in ("identical", "unrelated", "inconclusive")


@pytest.mark.parametrize("quantized", [False, True])
def test_depth_upscale_and_removed_layer_are_named(built: dict[str, Path], tmp_path: Path, quantized: bool) -> None:
    ref = _model("stories260k")
    up = _q4(built["upscale"], tmp_path) if quantized else built["upscale"]
    res = compare(up, ref, OPTS)
    _related(res)
    lmap = res.structure.layer_map
    assert "depth-upscaled" in res.structure.kinds
    assert [m.reference_layer for m in lmap.matches] == [0, 1, 2, 3, 1, 2, 3, 4]
    assert lmap.duplicated == (1, 2, 3)
    assert "depth-upscaled: reference layers 0-3, then 1-4" in res.verdict.summary
    assert res.verdict.kind == ("requantized" if quantized else "restructured")
    drop = compare(_q4(built["drop2"], tmp_path) if quantized else built["drop2"], ref, OPTS)
    _related(drop)
    assert drop.structure.layer_map.missing == (2,)
    removed = [u for u in drop.verdict.unpaired if u.reason == "layer-removed"]
    assert len(removed) == 9 and all(u.name.startswith("blk.2.") for u in removed)
    assert "reference layer 2 removed" in drop.verdict.summary


def test_reordered_layers_are_compared_where_they_went(built: dict[str, Path]) -> None:
    res = compare(built["swap12"], _model("stories260k"), OPTS)
    _related(res)
    assert res.structure.kinds == ("reordered",)
    assert [m.reference_layer for m in res.structure.layer_map.matches] == [0, 2, 1, 3, 4]
    # mapped layer for layer, every paired tensor is the reference's own
    assert all(t.max_abs_delta == 0.0 for t in res.tensors)


@pytest.mark.parametrize(("name", "kind", "extra"), [("vocab576", "vocabulary-extended", 64),
                                                     ("vocab448", "vocabulary-truncated", 64)])
def test_vocabulary_change_pairs_shared_rows_by_id(built: dict[str, Path], name: str, kind: str, extra: int) -> None:
    res = compare(built[name], _model("stories260k"), OPTS)
    _related(res)
    assert res.verdict.kind != "identical" and kind in res.structure.kinds
    (rows,) = [u for u in res.verdict.unpaired if u.reason == "vocabulary-rows"]
    assert rows.name == "token_embd.weight" and f"{extra} rows only in the" in rows.detail
    emb = next(t for t in res.tensors if t.name == "token_embd.weight")
    assert emb.max_abs_delta == 0.0 and emb.shape == f"{min(512, 512 + (extra if kind.endswith('extended') else -extra))}x64"


@pytest.mark.parametrize(("name", "kind", "roles"), [("width128", "width-pruned", {"ffn_gate", "ffn_up", "ffn_down"}),
                                                     ("gqa2", "gqa-converted", {"attn_k", "attn_v"})])
def test_width_changes_are_partial_pairs(built: dict[str, Path], tmp_path: Path, name: str, kind: str, roles: set[str]) -> None:
    for cand in (built[name], _q4(built[name], tmp_path)):
        res = compare(cand, _model("stories260k"), OPTS)
        _related(res)
        assert kind in res.structure.kinds
        changed = [u for u in res.verdict.unpaired if u.reason == "width-changed"]
        assert {u.name.split(".")[2] for u in changed} == roles and len(changed) == 5 * len(roles)


def test_rotation_is_seen_and_recovered(built: dict[str, Path], tmp_path: Path) -> None:
    ref = _model("stories260k")
    for cand in (built["rotated"], _q4(built["rotated"], tmp_path)):
        res = compare(cand, ref, OPTS)
        # stored F16 or quantized: the cells hold the reference rotated into the candidate's basis
        assert res.verdict.details.copy is True and res.verdict.details.grid.consistent, res.verdict.summary
        assert "of the reference after a residual rotation" in res.verdict.description
        assert res.test.p_asymptotic > 1e-3  # the residual test alone is blind to it
        _related(res)
        assert res.verdict.kind == "rotated" and "residual-rotated" in res.structure.kinds
        rot = res.structure.rotation
        assert rot.recovered and rot.fit_residual < 0.05 < rot.identity_residual
        assert rot.permutation_likeness < 0.9  # a dense rotation, not a permutation
        assert any(u.reason == "untied-output" for u in res.verdict.unpaired)
    assert compare(built["rotated"], ref, OPTS).verdict.details.copy is True
    heavy = compare(built["ft-rotated"], ref, OPTS)
    _related(heavy)
    assert heavy.verdict.kind == "rotated" and heavy.verdict.details.copy is False


def test_rotated_unrelated_model_stays_unrelated(built: dict[str, Path]) -> None:
    res = compare(built["unrelated-rotated"], _model("stories260k"), OPTS)
    assert res.verdict.kind == "unrelated", res.verdict.summary
    assert res.structure.unit_test.p_asymptotic > 1e-3


def test_restructured_unrelated_model_stays_unrelated(tmp_path: Path) -> None:
    """Layer spectra of independently trained synth models are close enough that some layers
    pass the match rule by chance (docs/lineage.md): an upscaled or pruned unrelated model
    is still tested through that map, and must come out unrelated with no structure claimed."""
    other = _model("synth-s03")
    for name, slices in (("up", [(other, 0, 4), (other, 1, 5)]), ("drop", [(other, 0, 2), (other, 3, 5)])):
        res = compare(st.passthrough(slices, tmp_path / name), _model("synth-s00"), OPTS)
        assert res.verdict.kind == "unrelated" and res.verdict.related is False, res.verdict.summary
        assert "structure" not in res.verdict.summary and not any(e.startswith("structure:") for e in res.verdict.evidence)


def test_unit_circuits_are_blind_to_rotation_and_unit_rescaling() -> None:
    rng = np.random.default_rng(0)
    d, n = 16, 12
    gate, up, down, gains = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(d, n)), rng.uniform(0.5, 2, d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = rng.uniform(0.5, 2, n) * rng.choice([-1.0, 1.0], n)
    a = layer_unit_circuits({"ffn_gate": gate, "ffn_up": up, "ffn_down": down, "ffn_norm": gains})
    # gains folded, residual rotated, units rescaled and sign-flipped (up x s, down / s)
    b = layer_unit_circuits({"ffn_gate": (gate * gains) @ q, "ffn_up": ((up * gains) @ q) * s[:, None],
                             "ffn_down": (q.T @ down) / s[None, :], "ffn_norm": np.ones(d)})
    for label in a:
        assert np.allclose(a[label], b[label], rtol=1e-4, atol=1e-4 * np.abs(a[label]).max()), label
    # a unit permutation moves them as P K P^T (the unit test's null)
    perm = rng.permutation(n)
    c = layer_unit_circuits({"ffn_gate": gate[perm], "ffn_up": up[perm], "ffn_down": down[:, perm], "ffn_norm": gains})
    assert np.allclose(c["unit_gg"], a["unit_gg"][np.ix_(perm, perm)], rtol=1e-4, atol=1e-3)


def test_layer_map_description_of_a_frankenmerge_and_new_layers() -> None:
    matches = [LayerMatch(0, 0, 0.0, 1.0, "a"), LayerMatch(1, 1, 0.0, 1.0, "a"), LayerMatch(2, 2, 0.0, 1.0, "b"),
               LayerMatch(3, None, 0.9, 1.0, "none")]
    lmap = describe(matches, 4)
    assert lmap.structure == ("frankenmerge", "new-layers")
    assert "a 0-1, then b 2" in lmap.description and "candidate layer 3 match" in lmap.description


@pytest.mark.parametrize("quantized", [False, True])
def test_merges_get_their_weights_and_a_fine_tune_is_not_a_merge(tmp_path: Path, quantized: bool) -> None:
    ft, other, base = _model("synth-s00-ft-medium"), _model("synth-s05"), _model("synth-s00")
    linear = st.merge("linear", [(ft, {"weight": 0.5}), (other, {"weight": 0.5})], tmp_path / "linear")
    cand = _q4(linear, tmp_path) if quantized else linear
    est = estimate_merge(cand, [ft, other])
    assert est.is_merge and est.weights == pytest.approx((0.5, 0.5), abs=0.02)
    assert est.describe().startswith("merge of synth-s00-ft-medium (0.50), synth-s05 (0.50)")
    for parent in (ft, other):  # related to each parent
        _related(compare(cand, parent, OPTS))
    ties = st.merge("ties", [(_model("synth-s00-ft-heavy"), {"weight": 0.5, "density": 0.5}),
                             (_model("synth-s00-lora"), {"weight": 0.5, "density": 0.5})], tmp_path / "ties",
                    base=base, parameters={"normalize": True})
    assert estimate_merge(ties, [_model("synth-s00-ft-heavy"), _model("synth-s00-lora")], base).is_merge
    single = estimate_merge(_model("synth-s00-ft-heavy"), [base, other])
    assert not single.is_merge and single.weights[0] > 0.9 and abs(single.weights[1]) < 0.05
    sibling = estimate_merge(_model("synth-s00-ft-heavy"), [base, _model("synth-s00-lora")])
    assert not sibling.is_merge


def test_investigate_says_merge_in_the_executive_summary(tmp_path: Path) -> None:
    from provenance.investigate import investigate

    ft, other = _model("synth-s00-ft-medium"), _model("synth-s05")
    linear = st.merge("linear", [(ft, {"weight": 0.5}), (other, {"weight": 0.5})], tmp_path / "merged")
    report = investigate(linear, [ft, other])
    assert report.executive_summary.startswith("merged is a merge of synth-s00-ft-medium (0.50; lineage p")
    finding = next(f for f in report.findings if f.id == "lineage.merge")
    assert finding.verdict == "merge" and finding.evidence["weights"] == pytest.approx([0.5, 0.5], abs=0.02)
    assert finding.evidence["is_merge"] is True
    up = investigate(st.passthrough([(_model("stories260k"), 0, 4), (_model("stories260k"), 1, 5)], tmp_path / "up"),
                     [_model("stories260k")])
    assert up.executive_summary.startswith("up is a restructured copy (depth-upscaled) of stories260k")
    assert any(f.name.endswith("layer_map") for s in up.sections for f in s.figures)


def test_investigate_merge_base_is_not_the_adapter_base(tmp_path: Path) -> None:
    """``--merge-base`` (the merged references' common base) and ``--base`` (the base a PEFT
    adapter input applies to) are different options; only the first feeds the merge weights."""
    import json

    from provenance.cli import run

    base, a, b = _model("synth-s00"), _model("synth-s00-ft-heavy"), _model("synth-s00-lora")
    ties = st.merge("ties", [(a, {"weight": 0.5, "density": 0.5}), (b, {"weight": 0.5, "density": 0.5})],
                    tmp_path / "ties", base=base, parameters={"normalize": True})

    def merge_evidence(*extra: str) -> dict:
        out = tmp_path / f"out{len(extra)}"
        assert run(["investigate", str(ties), "--reference", str(a), "--reference", str(b), *extra,
                    "-o", str(out), "--format", "json"]) == 0
        findings = json.loads((out / "report.json").read_text())["findings"]
        return next(f for f in findings if f["id"] == "lineage.merge")["evidence"]

    on_base = merge_evidence("--merge-base", str(base))
    assert on_base["is_merge"] and on_base["base"] is not None and on_base["base"].endswith("synth-s00")
    adapter_base_only = merge_evidence("--base", str(base))  # no adapter here: --base changes nothing
    assert adapter_base_only["base"] is None

def test_investigate_names_a_frankenmerge_of_two_parents(tmp_path: Path) -> None:
    from provenance.investigate import investigate

    a, b = _model("synth-s00"), _model("synth-s01")
    franken = st.passthrough([(a, 0, 3), (b, 3, 5)], tmp_path / "franken")
    report = investigate(franken, [a, b])
    assert report.executive_summary.startswith(
        "franken is a frankenmerge of layer slices: synth-s00 0-2, then synth-s01 3-4 (lineage synth-s00 p")
    finding = next(f for f in report.findings if f.id == "lineage.layers")
    assert [m["source"] for m in finding.evidence["matches"]] == ["synth-s00"] * 3 + ["synth-s01"] * 2


@pytest.mark.parametrize("rows", [128, 40])  # more probe rows than the width, and fewer (the thin-QR path)
def test_rotation_estimate_on_probe_rows(rows: int) -> None:
    from provenance.compare.structure import estimate_rotation

    rng = np.random.default_rng(1)
    d = 64
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    er = rng.normal(size=(rows, d))
    found = estimate_rotation(er, er @ q + 1e-3 * rng.normal(size=(rows, d)))
    assert found is not None and found.recovered and found.fit_residual < 2e-3 and found.identity_residual > 1
    unrelated = estimate_rotation(er, rng.normal(size=(rows, d)))
    assert unrelated is not None and not unrelated.recovered


def test_rotation_with_permuted_units_is_seen_through_once_derotated(tmp_path: Path) -> None:
    """Rotating the residual stream and permuting MLP units together defeats both calibrated
    tests (their null symmetries are then all among the moves made: docs/lineage.md); the
    rotation read from the embedding rows alone is undone and the residual test, blind to unit
    permutations, runs on the layers carried back by it: "rotated copy, units permuted"."""
    ref = _model("stories260k")
    copy = st.rotate_residual(ref, tmp_path / "rotperm", seed=5, permute_units=True)[0]
    ft = st.rotate_residual(_model("stories260k-ft-medium"), tmp_path / "ftrotperm", seed=6, permute_units=True)[0]
    for cand, is_copy in ((copy, True), (_q4(copy, tmp_path), False), (ft, False)):
        res = compare(cand, ref, OPTS)
        assert res.test.p_asymptotic > 1e-3 and res.structure.unit_test.p_asymptotic > 1e-3  # both blind to it
        v = res.verdict
        assert v.related is True, v.summary
        assert v.kind == "rotated" and v.details.derotated is not None and v.details.copy is is_copy, v.summary
        assert "permuted units" in v.details.derotated.moves and ", units permuted" in v.description
        assert v.description.startswith("rotated copy" if is_copy else "rotated derivative")
        # no p-value on the verdict: the de-rotated test's is not calibrated (it stays in the details)
        assert v.p_asymptotic is None and v.p_exact is None and v.z > 100
        assert v.details.derotated.test.p_asymptotic < 1e-6
        assert "not calibrated" in v.summary  # matched bases: independent pairs reach z 43 (docs/lineage.md)
        rot = res.structure.rotation
        assert rot.recovered and rot.full_rank and rot.fit_residual < 0.05 and rot.permutation_likeness < 0.9
    other = st.rotate_residual(_model("synth-s03"), tmp_path / "other", seed=7, permute_units=True)[0]
    res = compare(other, ref, OPTS)
    assert res.verdict.kind == "unrelated" and not res.structure.rotation.recovered, res.verdict.summary
    assert res.structure.derotated is None


def test_too_few_embedding_rows_say_why_no_rotation_was_looked_for(tmp_path: Path) -> None:
    """With fewer shared embedding rows than the width no rotation is determined on the whole
    residual space (unrelated pairs fit such a thin Procrustes: docs/lineage.md), so the
    rotated, unit-permuted copy stays "unrelated", and the verdict says what was not looked for."""
    ref = _model("stories260k")
    copy = st.rotate_residual(ref, tmp_path / "rotperm", seed=5, permute_units=True)[0]
    res = compare(copy, ref, CompareOptions(permutations=199, max_probe_tokens=32))
    assert res.verdict.kind == "unrelated" and res.structure.undetermined_rotation == (32, 64)
    assert any("fewer than the width 64" in e for e in res.verdict.evidence)
