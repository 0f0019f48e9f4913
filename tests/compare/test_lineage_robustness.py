"""A leaker who knows the tool (scripts/lineage_robustness.py): the committed table, and a fast
subset rerun live on the shipped synth models."""
from __future__ import annotations

import pandas as pd
import pytest

from provenance.compare.result import COPY_KINDS
from scripts.lineage_robustness import FAST_SUBSET, OUT_CSV, recipes, run_case
from tests.conftest import ROOT

needs_synth = pytest.mark.skipif(not (ROOT / "data" / "synth" / "manifest.json").is_file(), reason="synth pool not built")
#: the residual-permutation test is blind to a rotated residual stream; the unit-space test
#: relates it and the verdict is "rotated" (docs/lineage.md, "Structure"): those rows have
#: their own test below
ROTATION = "residual rotation"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(OUT_CSV, keep_default_na=False)


def test_every_obfuscated_copy_is_a_copy_with_its_transformation_named(table: pd.DataFrame) -> None:
    copies = table[(table["on"] == "copy") & ~table["obfuscation"].str.startswith(ROTATION)]
    assert len(copies) >= 30
    assert copies["verdict"].isin(COPY_KINDS).all(), copies[~copies["verdict"].isin(COPY_KINDS)]
    assert (copies["verdict"] != "fine-tune").all() and copies["named"].astype(str).eq("True").all()
    # every obfuscation is in the table alone and with Q4_K_M, and every llama.cpp type plain
    labels = set(table["obfuscation"])
    assert {r.label for r, _ in recipes()} == labels
    assert {"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"} <= labels


def test_a_real_fine_tune_stays_a_fine_tune_under_every_obfuscation(table: pd.DataFrame) -> None:
    tuned = table[(table["on"] == "fine-tune") & ~table["obfuscation"].str.startswith(ROTATION)]
    assert len(tuned) >= 30 and (tuned["verdict"] == "fine-tune").all(), tuned[tuned["verdict"] != "fine-tune"]


def test_a_rotation_is_named_and_never_called_unrelated(table: pd.DataFrame) -> None:
    """The rotation-blind unit-space test relates every rotated row: the copy alone is a
    "rotated copy"; the copy quantized is a "quantized copy ... after a residual rotation" (its
    cells checked in its own basis, provenance.compare.rotgrid); a fine-tune, quantized or not,
    a "rotated derivative". Every row of the table is as expected."""
    rotated = table[table["obfuscation"].str.startswith(ROTATION)]
    assert len(rotated) == 4 and (rotated["verdict"] == "rotated").all(), rotated
    assert rotated["description"].str.contains("rotat").all()
    copy = rotated[(rotated["on"] == "copy") & (rotated["obfuscation"] == ROTATION)].iloc[0]
    assert copy["description"].startswith("rotated copy of the reference")
    quantized = rotated[(rotated["on"] == "copy") & (rotated["obfuscation"] != ROTATION)].iloc[0]
    assert quantized["description"].startswith("quantized copy (")
    assert "after a residual rotation" in quantized["description"] and "codes inside their cells" in quantized["description"]
    assert quantized["named"] is True or str(quantized["named"]) == "True"
    others = rotated[rotated["on"] == "fine-tune"]
    assert others["description"].str.startswith("rotated derivative of the reference").all()
    assert table["as_expected"].astype(str).eq("True").all(), table[~table["as_expected"].astype(str).eq("True")]


def test_the_table_in_the_docs_is_the_committed_one(table: pd.DataFrame) -> None:
    doc = (ROOT / "docs" / "lineage.md").read_text("utf-8")
    for row in table.itertuples():
        assert f"| {row.obfuscation} | {row.on} | {row.verdict} |" in doc


@needs_synth
@pytest.mark.parametrize("label", FAST_SUBSET)
def test_fast_subset_live(label: str, table: pd.DataFrame) -> None:
    recipe, words = next((r, w) for r, w in recipes() if r.label == label)
    for on in ("copy", "fine-tune"):
        row = run_case(recipe, words, on)
        committed = table[(table["obfuscation"] == label) & (table["on"] == on)].iloc[0]
        assert row["as_expected"], row
        assert row["verdict"] == committed["verdict"] and row["description"] == committed["description"]
        assert row["z"] == pytest.approx(float(committed["z"]), abs=0.05)
