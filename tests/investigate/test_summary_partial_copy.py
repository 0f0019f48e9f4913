"""The executive summary's phrase for a partial copy (a slice merge seen from one parent), built
from the verdict's typed details (investigate/summary.py ``what_it_is``; docs/reading-reports.md)."""
from __future__ import annotations

import pytest

from provenance.compare.result import LineageVerdict, PartialCopyDetails
from provenance.investigate.summary import what_it_is


@pytest.mark.parametrize(("copied", "quant"), [("identical", None), ("quantized", "unrelated"), ("changed", None)])
def test_partial_copy_names_its_layers(copied: str, quant: str | None) -> None:
    details = PartialCopyDetails((0, 1, 2), (3, 4), (), copied, 0.0 if copied != "changed" else 0.02, 0.25)
    verdict = LineageVerdict("partial-copy", True, "(not parsed)", "(not parsed)", details=details)
    assert what_it_is(verdict, quant, None, False) == f"a partial copy (layers 0-2 {copied}, layers 3-4 unrelated)"
