"""Several references at once (``compare CAND --reference A --reference B``) and the slice merge
seen from one parent. Candidates are written by mergekit (linear merges, passthrough slices) from
trained synth models, and quantized by the project's llama.cpp-exact writer (Q4_K_M)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("mergekit")

from provenance.compare import CompareOptions, compare
from provenance.compare.multi import compare_references
from provenance.compare.result import PartialCopyDetails
from provenance.synth import structure as st
from tests.support.synth_models import q4_k_m as _q4
from tests.support.synth_models import synth_model as _model

OPTS = CompareOptions(permutations=199)




@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi")
    a, b = _model("synth-s00"), _model("synth-s01")
    ft, other = _model("synth-s00-ft-medium"), _model("synth-s05")
    out = {"slices": st.passthrough([(a, 0, 3), (b, 3, 5)], root / "slices"),
           "linear": st.merge("linear", [(ft, {"weight": 0.5}), (other, {"weight": 0.5})], root / "linear")}
    out["slices-q4"] = _q4(out["slices"], root)
    out["linear-q4"] = _q4(out["linear"], root)
    return out


@pytest.mark.parametrize("quantized", [False, True])
def test_slice_merge_seen_from_one_parent_is_a_partial_copy(built: dict[str, Path], quantized: bool) -> None:
    cand = built["slices-q4" if quantized else "slices"]
    res = compare(cand, _model("synth-s00"), OPTS)
    assert res.verdict.related is True and res.verdict.p_asymptotic < 1e-6
    assert res.verdict.kind == "partial-copy", res.verdict.summary
    details = res.verdict.details
    assert isinstance(details, PartialCopyDetails)
    assert details.related_layers == (0, 1, 2) and details.unrelated_layers == (3, 4)
    assert details.copied == ("quantized" if quantized else "identical")
    assert details.unrelated_p_min >= 1e-3
    assert res.verdict.description.startswith("partial copy: layers 0-2 ")
    assert "layers 3-4 unrelated to it" in res.verdict.description
    # the unrelated layers' assignment of units is not reported as a recovered permutation
    assert "permuted" not in res.verdict.description
    other = compare(cand, _model("synth-s01"), OPTS)
    assert other.verdict.kind == "partial-copy" and other.verdict.details.related_layers == (3, 4)


def test_a_fine_tune_is_not_a_partial_copy() -> None:
    res = compare(_model("synth-s00-ft-heavy"), _model("synth-s00"), OPTS)
    assert res.verdict.kind == "fine-tune", res.verdict.summary


@pytest.mark.parametrize("quantized", [False, True])
def test_several_references_name_a_merge_and_its_weights(built: dict[str, Path], quantized: bool) -> None:
    ft, other = _model("synth-s00-ft-medium"), _model("synth-s05")
    res = compare_references(built["linear-q4" if quantized else "linear"], [ft, other], OPTS)
    assert [r.verdict.related for r in res.results] == [True, True]
    assert res.verdict.kind == "merge", res.verdict.description
    assert res.verdict.weights == pytest.approx((0.5, 0.5), abs=0.02)
    assert res.verdict.description == "merge of synth-s00-ft-medium (0.50) and synth-s05 (0.50)"
    assert res.merge is not None and res.merge.is_merge and len(res.merge.layers) == 6  # 5 layers + the globals


def test_several_references_name_a_frankenmerge_from_the_per_layer_tests(built: dict[str, Path]) -> None:
    a, b = _model("synth-s00"), _model("synth-s01")
    res = compare_references(built["slices-q4"], [a, b], OPTS)
    assert res.verdict.kind == "frankenmerge", res.verdict.description
    assert res.verdict.description == "frankenmerge of layer slices: synth-s00 0-2, then synth-s01 3-4"
    assert res.parents.slices_from == "per-layer tests"
    assert [m.source for m in res.parents.layer_slices.matches] == ["synth-s00"] * 3 + ["synth-s01"] * 2


def test_a_fine_tune_of_one_parent_is_not_a_merge() -> None:
    base, other = _model("synth-s00"), _model("synth-s05")
    res = compare_references(_model("synth-s00-ft-heavy"), [base, other], OPTS)
    assert res.verdict.kind == "derived" and res.verdict.parents == (str(base),)
    assert res.merge is not None and not res.merge.is_merge
    assert res.verdict.description.startswith("derives from synth-s00: fine-tune of the reference")
    assert [r.verdict.kind for r in res.results] == ["fine-tune", "unrelated"]


def test_cli_takes_several_references(built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.cli import run

    ft, other = _model("synth-s00-ft-medium"), _model("synth-s05")
    out = tmp_path / "out"
    code = run(["compare", str(built["linear"]), "--reference", str(ft), "--reference", str(other),
                "--permutations", "99", "--json", "-o", str(out)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "provenance.compare-references/1"
    assert doc["verdict"]["kind"] == "merge" and doc["verdict"]["weights"] == pytest.approx([0.5, 0.5], abs=0.02)
    assert [c["verdict"]["kind"] for c in doc["comparisons"]] == ["fine-tune", "fine-tune"]
    summary = (out / "summary.md").read_text()
    assert "linear: merge of synth-s00-ft-medium (0.50) and synth-s05 (0.50) (lineage synth-s00-ft-medium" in summary
    assert {p.name for p in out.iterdir()} >= {"report.json", "summary.md", "tensors-0.csv", "tensors-1.csv"}
    assert run(["compare", str(built["linear"])]) == 64  # no reference at all: a usage error


@pytest.mark.parametrize("quantized", [False, True])
def test_a_merge_seen_from_one_parent_names_no_rescaling(built: dict[str, Path], quantized: bool) -> None:
    """A 50/50 merge with an unrelated model changes each unit's up and down norms independently;
    the norm ratios spread, but up and down disagree, so no unit or v-channel rescale is claimed
    (it was: "fine-tune of the reference (rescaled units)", a transformation nobody made)."""
    res = compare(built["linear-q4" if quantized else "linear"], _model("synth-s00-ft-medium"), OPTS)
    assert res.verdict.kind == "fine-tune" and res.verdict.related
    assert res.verdict.transformations == (), res.verdict.description
    assert "rescaled" not in res.verdict.description
