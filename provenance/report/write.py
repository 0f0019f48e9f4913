"""Write rendered reports into a directory, all at once or not at all."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from provenance.document import Report
from provenance.fileio import write_files_atomic
from provenance.report.base import renderers

DEFAULT_FORMATS = ("json", "md", "html")


def render_files(reports: Sequence[Report], formats: Iterable[str], basename: str = "report") -> dict[str, str | bytes]:
    """Every file the chosen formats write, rendered in memory (``{file name: content}``)."""
    files: dict[str, str | bytes] = {}
    for r in renderers(formats):
        files.update(r.files(reports, basename))
    return files


def write_report(report: Report | Sequence[Report], out_dir: str | Path, formats: Iterable[str] = DEFAULT_FORMATS,
                 basename: str = "report") -> dict[str, Path]:
    """Render ``report`` (or a batch of reports) in ``formats`` and write every file into
    ``out_dir`` atomically (nothing is written if any renderer fails).

    Returns ``{format name: main file}`` plus ``{file name: path}`` for the other files
    (figures, per-table CSVs)."""
    reports = [report] if isinstance(report, Report) else list(report)
    chosen = renderers(formats)
    files = render_files(reports, [r.name for r in chosen], basename)
    written = write_files_atomic(out_dir, files)
    out = {name: path for name, path in written.items()}
    for r in chosen:
        out[r.name] = written[basename + r.suffix]
    return out
