"""The scan table: one row per model as Parquet (pyarrow) and CSV, each written atomically.

Both are rebuilt whole from the journal at the end of every run (and of an interrupted one),
so they never hold a partial row. The column types come from :class:`ModelRow`, so the
Parquet schema is the same whatever the rows hold (a column of nulls is still typed).
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, get_type_hints

from provenance.fileio import write_atomic
from provenance.scan.row import ModelRow
from provenance.textsafe import csv_cell


def arrow_schema() -> Any:
    import pyarrow as pa

    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    hints = get_type_hints(ModelRow)
    columns = []
    for item in fields(ModelRow):
        hint = hints[item.name]
        base = next(a for a in getattr(hint, "__args__", (hint,)) if a is not type(None))
        columns.append(pa.field(item.name, kinds[base], nullable=base is not hint))
    return pa.schema(columns)


def write_parquet(rows: list[ModelRow], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([asdict(r) for r in rows], schema=arrow_schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_atomic(path, sink.getvalue().to_pybytes())


def write_csv(rows: list[ModelRow], path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f.name for f in fields(ModelRow)])
    for row in rows:
        writer.writerow([csv_cell(v) for v in asdict(row).values()])  # no cell becomes a spreadsheet formula
    write_atomic(path, buffer.getvalue())
