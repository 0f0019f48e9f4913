"""The report's comparison tables without pandas (:mod:`provenance.compare.records`): the same
records ``DataFrame.to_dict("records")`` gives, compared as rendered JSON (NaN != NaN)."""
from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from provenance.compare import compare
from provenance.compare.records import column, group_means
from provenance.fileio import to_json
from tests.conftest import QUANT_DIR, SHARED_DATA, VOCAB_DIR

PAIRS = [
    (QUANT_DIR / "tiny-llama-Q4_K_M.gguf", QUANT_DIR / "tiny-llama-f32.gguf"),  # grid columns, requantized
    (QUANT_DIR / "stories260K-Q8_0.gguf", QUANT_DIR / "tiny-llama-f32.gguf"),  # unrelated, other shapes
    (SHARED_DATA / "stories260K" / "stories260K.bin", QUANT_DIR / "stories260K-f32.gguf"),  # llama2.c vs GGUF
    (VOCAB_DIR / "ggml-vocab-phi-3.gguf", VOCAB_DIR / "ggml-vocab-llama-spm.gguf"),  # nothing per layer
]


@pytest.mark.parametrize(("candidate", "reference"), PAIRS, ids=lambda p: p.name)
def test_records_are_what_pandas_gives(candidate, reference) -> None:  # type: ignore[no-untyped-def]
    result = compare(candidate, reference)
    assert to_json(result.table_records()) == to_json(result.table.to_dict("records"))
    layers = result.layer_table
    assert to_json(result.layer_records()) == to_json(layers.to_dict("records") if len(layers) else [])


KINDS = [None, True, False, 0, 7, -3, 2.5, math.nan, math.inf, np.float32(1.1), np.float64(-0.25), np.int64(5),
         np.bool_(True), "Q4_K", "", ("a", "b")]


def test_columns_of_random_kinds_match_pandas() -> None:
    """Every mix of the value kinds a table holds (gaps, bools, ints, floats, numpy scalars, strings)."""
    rng = random.Random(0)
    for _ in range(3000):
        values = [rng.choice(KINDS) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.5:  # single-kind columns with gaps are the common case
            kind = rng.choice(KINDS)
            values = [kind if rng.random() < 0.7 else None for _ in values]
        expected = [row["x"] for row in pd.DataFrame([{"x": v} for v in values], columns=["x"]).to_dict("records")]
        got = column(values)
        assert [type(v) for v in got] == [type(v) for v in expected], values
        assert to_json(got) == to_json(expected), values


def test_group_means_are_pandas_groupby_means() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        keys = [float(k) if k >= 0 else math.nan for k in rng.integers(-1, 6, n)]
        values = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).tolist()
        for i in rng.integers(0, n, int(rng.integers(0, 4))):
            values[int(i)] = float(rng.choice([math.nan, math.inf, -math.inf]))
        frame = pd.DataFrame({"k": keys, "v": values})
        expected = frame.groupby("k").agg(m=("v", "mean"))["m"].to_dict()
        got = group_means(keys, values)
        assert sorted(got) == sorted(expected), (keys, values)
        assert [repr(got[k]) for k in sorted(got)] == [repr(expected[k]) for k in sorted(got)], (keys, values)
