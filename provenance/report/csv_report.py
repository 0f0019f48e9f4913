"""CSV: the findings as one table, and every section table as its own file.

Spreadsheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and some with a
tab or carriage return) as a formula: ``=cmd|' /C calc'!A0`` in a tensor name would run a
program on the reader's machine. Every text cell is therefore written through
:func:`provenance.textsafe.csv_cell` (control characters escaped, a leading ``'`` before any such character, the
OWASP rule); numbers stay numbers."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from provenance.document import Report
from provenance.report.base import BaseRenderer, subject_path
from provenance.textsafe import csv_cell

if TYPE_CHECKING:
    import pandas as pd

FINDING_COLUMNS = ["subject", "id", "title", "verdict", "severity", "p_value", "summary"]


def frame_csv(frame: pd.DataFrame) -> str:
    """``frame.to_csv`` with every text cell (and column name) neutralised."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    safe = frame.copy()
    safe.columns = [csv_cell(str(c)) for c in safe.columns]
    for i in range(safe.shape[1]):
        column = safe.iloc[:, i]
        if not (is_numeric_dtype(column) or is_bool_dtype(column)):  # text, or mixed: every cell checked
            safe.iloc[:, i] = column.astype(object).map(csv_cell)
    return safe.to_csv(index=False)


def rows_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    import pandas as pd

    # Names made safe and object columns before pandas sees them: with pyarrow installed, pandas
    # stores text as Arrow strings, which cannot hold a lone surrogate (it raises).
    safe_rows = [{csv_cell(str(k)): v for k, v in row.items()} for row in rows]
    return frame_csv(pd.DataFrame(safe_rows, columns=[csv_cell(c) for c in columns] if columns else None, dtype=object))


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
