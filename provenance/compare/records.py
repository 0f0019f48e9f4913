"""A comparison's tables as plain records, the values pandas gives, without importing pandas.

The report's ``tensors`` and ``layers`` tables were ``DataFrame(rows).to_dict("records")``;
importing pandas for that cost 0.2-0.6 s of a ``compare`` or ``investigate`` of a small model
(docs/benchmarks.md). These functions give the same values: a column takes the type pandas
infers for it (numbers with a gap become floats with NaN, an all-integer column stays
integers, a column of strings with a gap gets NaN in the gap as pandas 3's string columns do,
anything mixed keeps its values), and the per-layer means add in pandas' order with its
compensated (Kahan) sum, so the reports stay the same bit for bit
(``tests/compare/test_records.py`` holds them to pandas).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

_MISSING = None


def _native(value: Any) -> Any:
    """numpy scalars as Python ones (what pandas' ``maybe_box_native`` does)."""
    return value.item() if isinstance(value, np.generic) else value


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not _is_bool(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not _is_bool(value)


def column(values: Sequence[Any]) -> list[Any]:
    """One column's values as pandas infers and returns them."""
    present = [v for v in values if v is not _MISSING]
    if not present:
        return list(values)
    if len(present) == len(values) and all(_is_bool(v) for v in present):
        return [bool(v) for v in values]
    if all(_is_number(v) for v in present):
        if len(present) == len(values) and all(_is_int(v) for v in present):
            return [int(v) for v in values]
        return [math.nan if v is _MISSING else float(v) for v in values]
    strings = [v for v in present if not (isinstance(v, float) and math.isnan(v))]
    if strings and all(isinstance(v, str) for v in strings):  # NaN is a gap in a string column too
        return [v if isinstance(v, str) else math.nan for v in values]
    return [_native(v) for v in values]


def records(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """``pandas.DataFrame(rows, columns=columns).to_dict("records")``."""
    by_column = {c: column([row.get(c) for row in rows]) for c in columns}
    return [{c: by_column[c][i] for c in columns} for i in range(len(rows))]


def group_means(keys: Sequence[Any], values: Sequence[float]) -> dict[Any, float]:
    """The mean of ``values`` per key (NaN values skipped; NaN where a key has none), summed in
    row order with pandas' compensated sum (``groupby(...).mean()``); NaN keys are dropped."""
    sums: dict[Any, list[float]] = {}
    for key, value in zip(keys, values, strict=True):
        if isinstance(key, float) and math.isnan(key):
            continue
        state = sums.setdefault(key, [0.0, 0.0, 0])  # sum, compensation, count
        if math.isnan(value):
            continue
        y = value - state[1]
        t = state[0] + y
        state[1] = t - state[0] - y
        if math.isnan(state[1]):  # an infinite value: keep the sum infinite (pandas GH#50367)
            state[1] = 0.0
        state[0] = t
        state[2] += 1
    return {key: (s / n if n else math.nan) for key, (s, _, n) in sums.items()}
