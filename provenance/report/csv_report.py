"""CSV: the findings as one table, and every section table as its own file.

Spreadsheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and some with a
tab or carriage return) as a formula: ``=cmd|' /C calc'!A0`` in a tensor name would run a
program on the reader's machine. Every text cell is therefore written through
:func:`csv_cell` (control characters escaped, a leading ``'`` before any such character, the
OWASP rule); numbers stay numbers.

The text is written by the stdlib ``csv`` module, never by pandas: with pyarrow installed,
pandas stores text in Arrow strings, which cannot hold the lone surrogates a leniently
decoded tensor name may carry, so a table of hostile names would fail before
:func:`csv_cell` could escape them. Cells are made safe first, then written."""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from provenance.document import Report
from provenance.report.base import BaseRenderer, subject_path
from provenance.textsafe import safe_text

if TYPE_CHECKING:
    import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FINDING_COLUMNS = ["subject", "id", "title", "verdict", "severity", "p_value", "summary"]


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: strings made safe, numbers, booleans and None as they are."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        return value
    text = safe_text(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _number_text(value: Any) -> Any:
    """Numbers as pandas' ``to_csv`` wrote them: missing values (None, NaN) as empty cells."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def table_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text of ``rows`` (one value per column) under a header of ``columns``, every text
    cell and column name neutralised by :func:`csv_cell`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_cell(str(c)) for c in columns])
    for row in rows:
        writer.writerow([_number_text(csv_cell(v.item() if hasattr(v, "item") and not isinstance(v, str) else v))
                         for v in row])
    return buffer.getvalue()


def frame_csv(frame: pd.DataFrame) -> str:
    """A DataFrame as CSV (:func:`table_csv`: its cells read back as Python values)."""
    return table_csv([str(c) for c in frame.columns], frame.itertuples(index=False, name=None))


def rows_csv(rows: list[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Dict rows as CSV: ``columns`` in that order (missing keys empty), else every key in
    first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    return table_csv(columns, ([row.get(c) for c in columns] for row in rows))


def _table_name(report_index: int | None, kind: str, name: str) -> str:
    prefix = "" if report_index is None else f"{report_index}-"
    return prefix + re.sub(r"[^A-Za-z0-9_-]+", "_", f"{kind}-{name}")[:80] + ".csv"


class CsvRenderer(BaseRenderer):
    name = "csv"
    suffix = ".csv"
    description = "the findings as a table, and each section's tables as CSV files (spreadsheet-safe)"

    def render(self, reports: Sequence[Report]) -> str:
        rows = [{"subject": subject_path(r), "id": f.id, "title": f.title, "verdict": f.verdict,
                 "severity": f.severity.value, "p_value": f.p_value, "summary": f.summary}
                for r in reports for f in r.findings]
        return rows_csv(rows, FINDING_COLUMNS)

    def files(self, reports: Sequence[Report], basename: str) -> dict[str, str | bytes]:
        out: dict[str, str | bytes] = {basename + self.suffix: self.render(reports)}
        for i, report in enumerate(reports):
            for section in report.sections:
                for name, rows in section.tables.items():
                    if rows:
                        out[_table_name(i if len(reports) > 1 else None, section.kind, name)] = rows_csv(rows)
        return out
