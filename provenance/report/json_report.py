"""JSON: the report document itself (schema ``provenance.report/1``, docs/report-schema.json).

Strict JSON with every non-ASCII character escaped (:func:`provenance.fileio.to_json`), so no
raw control or bidi character reaches a terminal; the values are the data, unaltered."""
from __future__ import annotations

from collections.abc import Sequence

from provenance.document import Report
from provenance.fileio import to_json
from provenance.report.base import BaseRenderer

BATCH_SCHEMA = "provenance.report-batch/1"
"""Several reports (one per file of a batch): ``{"schema", "reports": [report, ...]}``."""


class JsonRenderer(BaseRenderer):
    name = "json"
    suffix = ".json"
    description = "the report document (schema provenance.report/1); figures as files beside it (drawn with md or html)"

    def render(self, reports: Sequence[Report]) -> str:
        if len(reports) == 1:
            return to_json(reports[0].to_dict())
        return to_json({"schema": BATCH_SCHEMA, "reports": [r.to_dict() for r in reports]})

    def files(self, reports: Sequence[Report], basename: str) -> dict[str, str | bytes]:
        out: dict[str, str | bytes] = {basename + self.suffix: self.render(reports)}
        out.update(figure_files(reports))
        return out


def figure_files(reports: Sequence[Report]) -> dict[str, bytes]:
    """The figures' PNG files, named as the documents refer to them."""
    return {figure.filename: figure.png for report in reports for figure in report.figures}


def render_json(report: Report) -> str:
    return JsonRenderer().render([report])
